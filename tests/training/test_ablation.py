"""Modality ablation: masking, the seven-row table, determinism and the ablate command."""

import csv
import json

import numpy as np
import pytest
import structlog
import torch

from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.training.ablation import (
    MODALITY_SUBSETS,
    MaskedSource,
    mask_source,
    run_ablation,
    subset_keep,
    subset_name,
)
from hipfuse.training.ablation_table import ablation_table, format_table
from hipfuse.training.batches import HipSource
from hipfuse.training.cli import main
from hipfuse.training.cohort import load_cohort
from hipfuse.training.simulate import simulate_cohort

SUBSET_NAMES = [
    "radiograph",
    "ct",
    "text",
    "radiograph+ct",
    "radiograph+text",
    "ct+text",
    "radiograph+ct+text",
]
SETTINGS = {"epochs": 3, "batch_size": 8, "seed": 5, "patience": 3, "test_fraction": 0.34}


@pytest.fixture(autouse=True)
def reset_logging():
    # main() points structlog at pytest's capture file; later tests must not log into it.
    yield
    structlog.reset_defaults()


class RecordingSource(HipSource):
    """Source that returns ones for present modalities and records what was asked."""

    def __init__(self, mask):
        mask = np.asarray(mask, bool)
        n = mask.shape[0]
        hip_ids = [f"h{i}" for i in range(n)]
        super().__init__(hip_ids, [f"p{i}" for i in range(n)], np.zeros(n), mask)
        self.requests = []

    def load(self, index, present, rng, draw):
        self.requests.append((index, tuple(bool(v) for v in present)))
        return (
            np.ones((1, 4, 4), np.float32) if present[0] else None,
            np.ones((1, 2, 4, 4), np.float32) if present[1] else None,
            np.ones(3, np.float32) if present[2] else None,
        )


def test_subset_names_follow_input_order():
    assert [subset_name(subset) for subset in MODALITY_SUBSETS] == SUBSET_NAMES


def test_masked_source_never_loads_masked_modality():
    inner = RecordingSource([[True, True, True], [False, True, False], [True, False, True]])
    keep = subset_keep(MODALITY_SUBSETS[0])  # radiograph only

    masked = mask_source(inner, keep)
    batch = masked.batch([0, 1], torch.device("cpu"))

    assert masked.hip_ids == ["h0", "h2"]
    assert inner.requests == [(0, (True, False, False)), (2, (True, False, False))]
    assert batch.ct is None
    assert batch.text is None
    assert batch.mask.tolist() == [[True, False, False], [True, False, False]]


def test_masked_source_keeps_rows_in_given_order():
    inner = RecordingSource([[True, True, True]] * 3)

    masked = MaskedSource(inner, np.array([False, True, True]), np.array([2, 0]))

    assert masked.hip_ids == ["h2", "h0"]
    assert masked.mask.tolist() == [[False, True, True], [False, True, True]]


@pytest.fixture(scope="module")
def cohort_and_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    cohort = load_cohort(simulate_cohort(root / "cohort", 14, seed=21, workers=2))
    config = make_bundle_config(
        ModelPreset.DEMO, name="ablation-test", version="0", intended_use=IntendedUse.RESEARCH
    )
    runs = run_ablation(
        cohort,
        config,
        root / "work",
        mode="two_stage",
        cache_dir=root / "cache",
        workers=2,
        progress=False,
        **SETTINGS,
    )
    return root, cohort, runs


def test_table_has_seven_rows_against_full_model(cohort_and_runs):
    _, _, runs = cohort_and_runs

    table = ablation_table(runs, n_bootstrap=50, seed=5)

    assert [row["subset"] for row in table["rows"]] == SUBSET_NAMES
    assert {row["n_hips"] for row in table["rows"]} == {len(runs.hip_ids)}
    full = table["rows"][-1]
    assert full["p_value_vs_full"] in (1.0, None)
    assert full["macro_auc_difference_vs_full"] in (0.0, None)
    for row in table["rows"]:
        if row["accuracy"] is not None:
            assert 0.0 <= row["accuracy"] <= 1.0
    text = format_table(table)
    assert len(text.splitlines()) >= 3 + 7
    assert "radiograph+ct+text" in text


def test_runs_share_test_hips(cohort_and_runs):
    _, cohort, runs = cohort_and_runs

    test_hips = {hip.hip_id for hip in cohort.hips} & set(runs.hip_ids)

    assert len(runs.runs) == 7
    assert len(test_hips) == len(runs.hip_ids) > 0
    for run in runs.runs:
        assert run.probabilities.shape == (len(runs.hip_ids), 4)
        assert np.allclose(run.probabilities.sum(axis=1), 1.0)


def test_ablate_command_repeats_library_run(cohort_and_runs, tmp_path, capsys):
    root, cohort, runs = cohort_and_runs
    expected = ablation_table(runs, n_bootstrap=50, seed=SETTINGS["seed"])

    status = main(
        [
            "ablate",
            "--manifest",
            str(cohort.manifest_path),
            "--out",
            str(tmp_path / "ablation"),
            "--preset",
            "demo",
            "--mode",
            "two_stage",
            "--epochs",
            str(SETTINGS["epochs"]),
            "--batch-size",
            str(SETTINGS["batch_size"]),
            "--seed",
            str(SETTINGS["seed"]),
            "--patience",
            str(SETTINGS["patience"]),
            "--test-fraction",
            str(SETTINGS["test_fraction"]),
            "--bootstrap",
            "50",
            "--cache-dir",
            str(root / "cache"),
            "--work-dir",
            str(tmp_path / "work"),
            "--no-progress",
        ]
    )

    assert status == 0
    table = json.loads((tmp_path / "ablation" / "ablation.json").read_text())
    for got, want in zip(table["rows"], expected["rows"], strict=True):
        for key in ("macro_auc", "macro_auc_ci", "accuracy", "accuracy_ci", "p_value_vs_full"):
            assert got[key] == want[key], (got["subset"], key)
    with (tmp_path / "ablation" / "ablation.csv").open() as stream:
        assert [row["subset"] for row in csv.DictReader(stream)] == SUBSET_NAMES
    with (tmp_path / "ablation" / "predictions.csv").open() as stream:
        predictions = list(csv.DictReader(stream))
    assert len(predictions) == 7 * len(runs.hip_ids)
    output = capsys.readouterr().out
    assert "modality ablation on" in output
    assert "ablation.csv" in output
