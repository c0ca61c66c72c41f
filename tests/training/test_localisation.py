"""Grad-CAM localisation: mask geometry, pointing game, energy share, cohort scoring."""

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from hipfuse.inference.model.bundle import build_untrained_bundle
from hipfuse.inference.model.config import IntendedUse, ModelPreset, make_bundle_config
from hipfuse.inference.pipeline import analyze_study, read_inputs
from hipfuse.inference.types import CTVolume, HipClass, InputModality
from hipfuse.training.cohort import load_cohort
from hipfuse.training.localisation import (
    LocalisationError,
    SkipReason,
    ct_mask_on_volume,
    dilate_mask,
    energy_inside,
    has_mask_columns,
    localise_cohort,
    pointing_hit,
    read_radiograph_mask,
    score_map,
    summarise_localisation,
    write_localisation,
)
from hipfuse.training.simulate import simulate_cohort

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _canonical_volume(shape=(10, 12, 14), spacing=(3.0, 2.0, 1.5), origin=(-20.0, -15.0, 40.0)):
    # Axis 0 superior (+z), 1 posterior (+y), 2 patient left (+x), as reorient_to_canonical gives.
    affine = np.zeros((4, 4))
    affine[2, 0], affine[1, 1], affine[0, 2] = spacing
    affine[:3, 3] = origin
    affine[3, 3] = 1.0
    return CTVolume(voxels=np.zeros(shape, np.float32), affine=affine)


def _write_nifti(path, data, affine_lps):
    image = nib.Nifti1Image(data.astype(np.uint8), LPS_TO_RAS @ affine_lps)
    nib.save(image, path)
    return path


@pytest.mark.parametrize("flip_first_axis", [False, True], ids=["permuted", "permuted_flipped"])
def test_ct_mask_maps_onto_canonical_grid(tmp_path, flip_first_axis):
    volume = _canonical_volume()
    expected = np.zeros(volume.voxels.shape, bool)
    expected[3:6, 4:7, 8:11] = True
    expected[5, 9, 2] = True
    # Store the mask as the simulator does: array axes (column, row, slice).
    data = expected.transpose(2, 1, 0)
    affine = volume.affine[:, [2, 1, 0, 3]].copy()
    if flip_first_axis:
        data = data[::-1]
        affine[:3, 3] += affine[:3, 0] * (data.shape[0] - 1)
        affine[:3, 0] *= -1
    path = _write_nifti(tmp_path / "mask.nii.gz", np.ascontiguousarray(data), affine)

    mapped = ct_mask_on_volume(path, volume)

    assert mapped.shape == expected.shape
    assert np.array_equal(mapped, expected)


def test_ct_mask_outside_volume_raises(tmp_path):
    volume = _canonical_volume()
    data = np.ones((2, 2, 2))
    affine = volume.affine[:, [2, 1, 0, 3]].copy()
    affine[:3, 3] += 1000.0
    path = _write_nifti(tmp_path / "far.nii.gz", data, affine)

    with pytest.raises(LocalisationError, match="lies outside the CT volume"):
        ct_mask_on_volume(path, volume)


def test_radiograph_mask_shape_mismatch_raises(tmp_path):
    path = tmp_path / "mask.png"
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(path)

    with pytest.raises(LocalisationError, match="stored pixel grid"):
        read_radiograph_mask(path, (30, 20))


def test_dilate_mask_uses_millimetres_per_axis():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True

    grown = dilate_mask(mask, (1.0, 5.0), 3.0)

    assert grown[:, 10].sum() == 7  # 3 pixels of 1 mm each side along rows
    assert grown[10, :].sum() == 1  # 5 mm pixels: no neighbour within 3 mm
    assert dilate_mask(mask, (1.0, 1.0), 0.0) is mask


@pytest.mark.parametrize(
    ("peak", "tolerance_mm", "expected"),
    [
        ((5, 5), 0.0, True),
        ((5, 9), 0.0, False),
        ((5, 9), 2.0, True),
        ((5, 9), 1.5, False),
    ],
    ids=["inside", "outside", "within_tolerance", "beyond_tolerance"],
)
def test_pointing_game(peak, tolerance_mm, expected):
    mask = np.zeros((12, 12), bool)
    mask[4:7, 4:8] = True
    heat = np.zeros((12, 12))
    heat[peak] = 1.0
    heat[0, 0] = 0.5

    assert pointing_hit(heat, dilate_mask(mask, (1.0, 1.0), tolerance_mm)) is expected


def test_flat_map_has_no_pointing_result():
    assert pointing_hit(np.zeros((4, 4)), np.ones((4, 4), bool)) is None
    assert np.isnan(energy_inside(np.zeros((4, 4)), np.ones((4, 4), bool)))


def test_energy_share_and_flat_baseline():
    mask = np.zeros((4, 4), bool)
    mask[:2, :2] = True
    heat = np.ones((4, 4))
    heat[0, 0] = 5.0
    footprint = np.zeros((4, 4), bool)
    footprint[:, :2] = True

    hit, energy, baseline = score_map(heat, mask, footprint, (1.0, 1.0), 0.0)

    assert hit is True
    assert energy == pytest.approx(8.0 / 20.0)
    assert baseline == pytest.approx(4.0 / 8.0)


@pytest.fixture(scope="module")
def abnormal_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("localisation")
    manifest = simulate_cohort(
        root / "cohort",
        3,
        seed=11,
        class_mix={"osteoarthritis": 1.0, "osteonecrosis_of_femoral_head": 1.0},
        workers=1,
    )
    return load_cohort(manifest)


@pytest.fixture(scope="module")
def untrained_bundle():
    config = make_bundle_config(
        ModelPreset.DEMO, name="untrained", version="0", intended_use=IntendedUse.DEMO
    )
    return build_untrained_bundle(config, seed=0, device="cpu")


def test_simulated_masks_sit_on_their_hip(abnormal_cohort, untrained_bundle):
    hip = abnormal_cohort.hips[0]
    study = analyze_study(untrained_bundle, read_inputs(hip.radiograph_path, hip.ct_path, None))
    root = abnormal_cohort.manifest_path.parent

    radiograph_mask = read_radiograph_mask(
        root / hip.extras["lesion_mask_radiograph_path"], study.radiograph.pixels.shape
    )
    ct_mask = ct_mask_on_volume(root / hip.extras["lesion_mask_ct_path"], study.ct)

    spacing_mm = study.radiograph.pixel_spacing_mm[0]
    centre_px = np.array([float(v) for v in hip.extras["hip_centre_radiograph_px"].split(";")])
    offset_px = np.linalg.norm(np.argwhere(radiograph_mask).mean(axis=0) - centre_px)
    assert offset_px * spacing_mm < 35.0
    centre_mm = np.array([float(v) for v in hip.extras["hip_centre_ct_mm"].split(";")])
    centroid_mm = (study.ct.affine @ np.r_[np.argwhere(ct_mask).mean(axis=0), 1.0])[:3]
    assert np.linalg.norm(centroid_mm - centre_mm) < 35.0


def test_localise_cohort_scores_every_abnormal_hip(abnormal_cohort, untrained_bundle, tmp_path):
    analysed = []

    rows = localise_cohort(
        untrained_bundle,
        abnormal_cohort,
        tolerance_mm=5.0,
        on_study=lambda study, hips: analysed.append(len(hips)),
    )
    summary = summarise_localisation(rows, 5.0)
    written = write_localisation(rows, summary, tmp_path)

    abnormal = [hip for hip in abnormal_cohort.hips if hip.label is not HipClass.NORMAL]
    assert has_mask_columns(abnormal_cohort)
    assert len(analysed) == len({hip.patient_id for hip in abnormal})
    assert len(rows) == 2 * len(abnormal)
    assert {row.modality for row in rows} == {InputModality.RADIOGRAPH, InputModality.CT}
    for row in rows:
        assert row.skipped in (None, SkipReason.EMPTY_MASK, SkipReason.NO_HEAT_MAP)
        if row.skipped is None:
            assert 0.0 <= row.energy_inside <= 1.0
            assert 0.0 < row.uniform_baseline < 1.0
            assert row.mask_size > 0
    scored_ct = [row for row in rows if row.modality is InputModality.CT and row.skipped is None]
    ct_all = summary["modalities"]["ct"]["all"]
    assert ct_all["n_hips"] == len(scored_ct)
    assert ct_all["pointing_hits"] == sum(row.hit for row in scored_ct)
    assert "normal" not in summary["modalities"]["ct"]["per_class"]
    assert json.loads(written[0].read_text()) == summary
    with written[1].open() as stream:
        assert len(list(csv.DictReader(stream))) == len(rows)
