"""Training runs on a synthetic cohort whose crops come from a stand-in region finder."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from synthetic_cohort import use_fake_cropper, write_synthetic_cohort

from hipfuse.inference.model.bundle import WEIGHTS_FILE_NAME, load_bundle
from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.inference.model.predict import HipInputs, predict
from hipfuse.inference.types import HIP_CLASSES, Laterality
from hipfuse.training import loop as loop_module
from hipfuse.training.checkpoint import CheckpointError
from hipfuse.training.cohort import load_cohort
from hipfuse.training.fit import FitError, fit


@pytest.fixture(scope="module")
def demo_config():
    return make_bundle_config(
        ModelPreset.DEMO, name="test-bundle", version="0.0.1", intended_use=IntendedUse.DEMO
    )


@pytest.fixture
def cohort(tmp_path, monkeypatch):
    use_fake_cropper(monkeypatch)
    manifest = write_synthetic_cohort(
        tmp_path / "cohort", 12, missing_side=("p001", "L"), split_column=True
    )
    return load_cohort(manifest)


def run_fit(cohort, config, out_dir, **overrides):
    settings = {
        "mode": "two_stage",
        "epochs": 2,
        "batch_size": 8,
        "seed": 3,
        "n_bootstrap": 20,
        "progress": False,
        "cache_dir": out_dir.parent / "cache",
    }
    settings.update(overrides)
    return fit(cohort, config, out_dir, **settings)


def weights_of(bundle_dir):
    return load_file(str(bundle_dir / WEIGHTS_FILE_NAME))


def test_fit_writes_loadable_bundle(cohort, demo_config, tmp_path):
    result = run_fit(cohort, demo_config, tmp_path / "bundle")

    bundle = load_bundle(result.bundle_dir, device="cpu")
    summary = bundle.config.training_data
    assert summary["cohort_sha256"] == cohort.content_hash()
    assert summary["seed"] == 3
    assert summary["mode"] == "two_stage"
    assert summary["class_counts"] == cohort.class_counts()
    assert summary["splits"]["train"]["n_patients"] == 8
    assert summary["centres"] == {"A": 24}
    assert bundle.config.metrics["temperature"] == pytest.approx(float(bundle.model.temperature))
    assert set(bundle.config.metrics) >= {"validation", "test"}
    assert (result.work_dir / "evaluation" / "test" / "predictions.csv").is_file()

    crops = np.load(next((tmp_path / "cache" / "radiograph").rglob("R.npy")))
    hips = [HipInputs(Laterality.RIGHT, radiograph=crops, text="Groin pain on walking.")]
    predictions = predict(bundle, hips, gradcam=False)
    assert sum(predictions[0].probabilities.values()) == pytest.approx(1.0)
    assert set(predictions[0].probabilities) == set(HIP_CLASSES)


def test_hip_not_found_is_masked_and_counted(cohort, demo_config, tmp_path):
    result = run_fit(cohort, demo_config, tmp_path / "bundle", epochs=1)

    masked = result.training_data["masked_inputs"]["masked"]
    assert masked["radiograph"] == {"hip_not_found": 1}
    assert "ct" not in masked


def test_end_to_end_loss_decreases(cohort, demo_config, tmp_path):
    result = run_fit(cohort, demo_config, tmp_path / "bundle", mode="end_to_end", epochs=3)

    losses = [record["train_loss"] for record in result.history]
    assert len(losses) == 3
    assert losses[-1] < losses[0]


@pytest.mark.parametrize("mode", ["two_stage", "end_to_end"])
def test_resume_matches_uninterrupted(cohort, demo_config, tmp_path, monkeypatch, mode):
    uninterrupted = run_fit(cohort, demo_config, tmp_path / "full", mode=mode, epochs=3)

    real_save = loop_module.save_checkpoint
    saves = []

    def save_then_crash(*args, **kwargs):
        path = real_save(*args, **kwargs)
        saves.append(path)
        if len(saves) == 2:
            raise KeyboardInterrupt("simulated crash after epoch 2")
        return path

    monkeypatch.setattr(loop_module, "save_checkpoint", save_then_crash)
    work_dir = tmp_path / "resumed.work"
    with pytest.raises(KeyboardInterrupt):
        run_fit(cohort, demo_config, tmp_path / "resumed", mode=mode, epochs=3, work_dir=work_dir)
    monkeypatch.setattr(loop_module, "save_checkpoint", real_save)
    resumed = run_fit(
        cohort,
        demo_config,
        tmp_path / "resumed",
        mode=mode,
        epochs=3,
        work_dir=work_dir,
        resume=True,
    )

    assert resumed.epochs_run == 3
    assert resumed.history == [
        {**record, "seconds": resumed.history[i]["seconds"]}
        for i, record in enumerate(uninterrupted.history)
    ]
    expected = weights_of(uninterrupted.bundle_dir)
    found = weights_of(resumed.bundle_dir)
    assert expected.keys() == found.keys()
    mismatched = [name for name in expected if not torch.equal(expected[name], found[name])]
    assert mismatched == []


def test_resume_rejects_other_settings(cohort, demo_config, tmp_path):
    work_dir = tmp_path / "run.work"
    run_fit(cohort, demo_config, tmp_path / "first", epochs=1, work_dir=work_dir)

    with pytest.raises(CheckpointError, match="belongs to another run: lr differ"):
        run_fit(
            cohort,
            demo_config,
            tmp_path / "second",
            epochs=2,
            work_dir=work_dir,
            resume=True,
            lr=0.01,
        )


def test_existing_bundle_rejected(cohort, demo_config, tmp_path):
    (tmp_path / "bundle").mkdir()

    with pytest.raises(FitError, match="already exists"):
        run_fit(cohort, demo_config, tmp_path / "bundle")


def test_init_from_keeps_frozen_encoders(cohort, demo_config, tmp_path):
    first = run_fit(cohort, demo_config, tmp_path / "first", mode="end_to_end", epochs=1)
    source_config = load_bundle(first.bundle_dir, device="cpu").config
    config = source_config.model_copy(update={"training_data": {}, "metrics": {}})

    second = run_fit(
        cohort, config, tmp_path / "second", epochs=2, init_from=first.bundle_dir, seed=5
    )

    before = weights_of(first.bundle_dir)
    after = weights_of(second.bundle_dir)
    encoder_names = [name for name in before if name.endswith("_encoder.resnet.conv1.weight")]
    assert len(encoder_names) == 2
    for name in encoder_names:
        assert torch.equal(before[name], after[name])
    classifier = "classifier.weight"
    assert not torch.equal(before[classifier], after[classifier])
    assert second.training_data["init_from"]["weights_sha256"] == source_config.weights_sha256
