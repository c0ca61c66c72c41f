"""Two gloo processes on 127.0.0.1 train the same head as one process."""

import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file
from synthetic_cohort import use_fake_cropper, write_synthetic_cohort

from hipfuse.inference.model.bundle import WEIGHTS_FILE_NAME
from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.training.cohort import load_cohort
from hipfuse.training.crops import prepare_crops
from hipfuse.training.distributed import (
    DistributedContext,
    GlobalBatchSampler,
    fit_in_local_processes,
)
from hipfuse.training.fit import fit, load_text_encoder


@pytest.mark.parametrize(
    ("n_samples", "batch_size", "world_size"),
    [(12, 4, 2), (13, 4, 2), (10, 6, 3)],
    ids=["even", "remainder one", "three processes"],
)
def test_shards_cover_global_batches(n_samples, batch_size, world_size):
    single = GlobalBatchSampler(n_samples, batch_size, seed=1, context=DistributedContext())
    shards = [
        GlobalBatchSampler(n_samples, batch_size, 1, DistributedContext(rank, world_size, rank))
        for rank in range(world_size)
    ]

    expected = single.global_batches(epoch=4)
    per_rank = [list(sampler.epoch(4)) for sampler in shards]
    kept = [batch for batch in expected if batch.size >= world_size]
    assert len(per_rank[0]) == len(kept)
    for step, batch in enumerate(kept):
        union = sorted(int(i) for rank in range(world_size) for i in per_rank[rank][step][0])
        assert union == sorted(batch.tolist())
        assert {per_rank[rank][step][1] for rank in range(world_size)} == {batch.size}


def test_two_processes_match_one(tmp_path, monkeypatch):
    use_fake_cropper(monkeypatch)
    cohort = load_cohort(write_synthetic_cohort(tmp_path / "cohort", 10, split_column=True))
    base = make_bundle_config(
        ModelPreset.DEMO, name="ddp-test", version="0.0.1", intended_use=IntendedUse.DEMO
    )
    # nn.Dropout draws from each process's own generator, so it cannot match
    # across process counts; every other random draw is keyed by hip.
    architecture = base.architecture.model_copy(update={"dropout": 0.0})
    config = base.model_copy(update={"architecture": architecture})
    cache_dir = tmp_path / "cache"
    # Fill the crop cache here, where the stand-in region finder is patched in;
    # the spawned processes only read it.
    prepare_crops(
        cohort, config.preprocessing, cache_dir, load_text_encoder(config), progress=False
    )
    settings = {
        "mode": "two_stage",
        "epochs": 3,
        "batch_size": 4,
        "seed": 11,
        "patience": 5,
        "n_bootstrap": 10,
        "progress": False,
        "cache_dir": cache_dir,
    }

    fit(cohort, config, tmp_path / "single", device="cpu", **settings)
    fit_in_local_processes(2, cohort, config, tmp_path / "double", **settings)

    single = load_file(str(tmp_path / "single" / WEIGHTS_FILE_NAME))
    double = load_file(str(tmp_path / "double" / WEIGHTS_FILE_NAME))
    assert single.keys() == double.keys()
    compared = [name for name in single if single[name].is_floating_point()]
    differences = {name: float((single[name] - double[name]).abs().max()) for name in compared}
    worst = max(differences, key=differences.get)
    assert differences[worst] < 1e-5, (worst, differences[worst])

    single_probabilities = predicted_probabilities(tmp_path / "single.work")
    double_probabilities = predicted_probabilities(tmp_path / "double.work")
    assert np.abs(single_probabilities - double_probabilities).max() < 1e-5


def predicted_probabilities(work_dir):
    table = pd.read_csv(work_dir / "evaluation" / "validation" / "predictions.csv")
    return table.filter(like="prob_").to_numpy()
