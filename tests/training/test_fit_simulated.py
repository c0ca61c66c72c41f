"""Training on a simulated cohort with the real readers and region finders."""

import json

import numpy as np
import pytest
import structlog

from hipfuse.inference.model.bundle import load_bundle
from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.inference.pipeline import analyze_study, read_inputs
from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training.cli import main
from hipfuse.training.cohort import load_cohort
from hipfuse.training.crops import prepare_crops
from hipfuse.training.fit import fit, load_text_encoder
from hipfuse.training.simulate import simulate_cohort


@pytest.fixture(autouse=True)
def reset_logging():
    # main() points structlog at the current sys.stderr, which is pytest's capture
    # file. Later tests must not log into that file after pytest closes it.
    yield
    structlog.reset_defaults()


@pytest.fixture(scope="module")
def simulated_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("simulated")
    return load_cohort(simulate_cohort(root / "cohort", 12, seed=7, workers=2))


@pytest.fixture(scope="module")
def demo_config():
    return make_bundle_config(
        ModelPreset.DEMO, name="simulated-test", version="0.0.1", intended_use=IntendedUse.DEMO
    )


def test_simulated_bundle_analyses_study(simulated_cohort, demo_config, tmp_path):
    cache = tmp_path / "cache"
    fit(
        simulated_cohort,
        demo_config,
        tmp_path / "bundle",
        mode="end_to_end",
        epochs=1,
        batch_size=8,
        seed=1,
        n_bootstrap=20,
        progress=False,
        workers=2,
        cache_dir=cache,
    )
    bundle = load_bundle(tmp_path / "bundle", device="cpu")
    hip = simulated_cohort.hips[0]

    inputs = read_inputs(hip.radiograph_path, hip.ct_path, hip.text_path)
    study = analyze_study(bundle, inputs, gradcam=False)

    assert len(study.hips) == 2
    for result in study.hips:
        probabilities = result.prediction.probabilities
        assert set(probabilities) == set(HIP_CLASSES)
        assert sum(probabilities.values()) == pytest.approx(1.0)
    crops = prepare_crops(
        simulated_cohort,
        demo_config.preprocessing,
        cache,
        load_text_encoder(demo_config),
        progress=False,
    )
    analysed = next(r for r in study.hips if r.laterality is hip.laterality)
    trained = crops[hip.hip_id]
    # Training saw exactly the crops that analysis at the node computes.
    assert np.array_equal(np.load(trained.radiograph), analysed.radiograph_region.crop)
    assert np.array_equal(np.load(trained.ct), analysed.ct_region.crop)


@pytest.mark.slow
def test_demo_bundle_command(tmp_path, capsys):
    status = main(
        [
            "demo-bundle",
            "--out",
            str(tmp_path / "demo"),
            "--patients",
            "30",
            "--epochs",
            "3",
            "--work-dir",
            str(tmp_path / "work"),
            "--no-progress",
        ]
    )

    assert status == 0
    config = json.loads((tmp_path / "demo" / "bundle.json").read_text())
    assert config["intended_use"] == "demo"
    assert config["training_data"]["n_patients"] == 30
    assert config["metrics"]["test"]["n_cases"] > 0
    assert "test:" in capsys.readouterr().out
