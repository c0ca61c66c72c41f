"""Crop cache reuse and invalidation, and evaluation of an external centre."""

import pytest
from synthetic_cohort import fake_crop_one_image, write_synthetic_cohort

from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.training import crops as crops_module
from hipfuse.training.cohort import Split, load_cohort
from hipfuse.training.crops import MaskReason, prepare_crops
from hipfuse.training.fit import fit, load_text_encoder


@pytest.fixture(scope="module")
def demo_config():
    return make_bundle_config(
        ModelPreset.DEMO, name="crops-test", version="0.0.1", intended_use=IntendedUse.DEMO
    )


@pytest.fixture
def counted_cropper(monkeypatch):
    calls = []

    def cropper(job):
        calls.append(job[0])
        fake_crop_one_image(job)

    monkeypatch.setattr(crops_module, "_crop_one_image", cropper)
    return calls


def test_cache_reused_then_invalidated(tmp_path, demo_config, counted_cropper):
    cohort = load_cohort(write_synthetic_cohort(tmp_path / "cohort", 3))
    encoder = load_text_encoder(demo_config)
    cache = tmp_path / "cache"

    first = prepare_crops(cohort, demo_config.preprocessing, cache, encoder, progress=False)
    calls_after_first = len(counted_cropper)
    second = prepare_crops(cohort, demo_config.preprocessing, cache, encoder, progress=False)
    calls_after_second = len(counted_cropper)
    wider = demo_config.preprocessing.model_copy(
        update={
            "radiograph": demo_config.preprocessing.radiograph.model_copy(update={"crop_mm": 160.0})
        }
    )
    prepare_crops(cohort, wider, cache, encoder, progress=False)

    assert calls_after_first == 6
    assert calls_after_second == calls_after_first
    assert counted_cropper[calls_after_second:] == ["radiograph"] * 3
    assert first.hips == second.hips
    assert all(crops.text is not None for crops in first.hips.values())


def test_changed_input_recropped(tmp_path, demo_config, counted_cropper):
    cohort = load_cohort(write_synthetic_cohort(tmp_path / "cohort", 2))
    encoder = load_text_encoder(demo_config)
    prepare_crops(cohort, demo_config.preprocessing, tmp_path / "cache", encoder, progress=False)
    before = len(counted_cropper)

    ct_file = tmp_path / "cohort" / "p001" / "ct.json"
    ct_file.write_text(ct_file.read_text() + " ", encoding="utf-8")
    prepare_crops(cohort, demo_config.preprocessing, tmp_path / "cache", encoder, progress=False)

    assert counted_cropper[before:] == ["ct"]


def test_missing_text_is_masked(tmp_path, demo_config, counted_cropper):
    manifest = write_synthetic_cohort(tmp_path / "cohort", 2)
    (tmp_path / "cohort" / "p000" / "note.txt").write_text("   \n", encoding="utf-8")
    cohort = load_cohort(manifest)

    crops = prepare_crops(
        cohort,
        demo_config.preprocessing,
        tmp_path / "cache",
        load_text_encoder(demo_config),
        progress=False,
    )

    assert crops["p000-R"].mask == (True, True, False)
    assert crops["p001-R"].mask == (True, True, True)
    assert crops.report.masked["text"] == {MaskReason.EMPTY_TEXT: 2}


def test_external_centre_evaluated_not_trained(tmp_path, demo_config, counted_cropper):
    manifest = write_synthetic_cohort(tmp_path / "cohort", 14, centre_b_patients=3)
    cohort = load_cohort(manifest)

    result = fit(
        cohort,
        demo_config,
        tmp_path / "bundle",
        mode="two_stage",
        epochs=1,
        batch_size=8,
        external_centres=["B"],
        validation_fraction=0.25,
        test_fraction=0.25,
        n_bootstrap=10,
        progress=False,
    )

    splits = result.training_data["splits"]
    assert splits[Split.EXTERNAL.value]["centres"] == {"B": 6}
    assert all(set(splits[split]["centres"]) == {"A"} for split in ("train", "validation", "test"))
    assert result.metrics["external"]["n_cases"] == 6
    assert result.training_data["external_centres"] == ["B"]
