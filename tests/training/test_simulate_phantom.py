"""Checks of the simulator's pieces: lesions, masks, ONFH contrast, resampling, UIDs, options."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from pydicom.uid import UID

from hipfuse.inference.types import HipClass, Laterality
from hipfuse.training.simulate import (
    HipLesion,
    build_phantom,
    ct_lesion_mask,
    derived_uid,
    project_mask,
    render_ct,
    render_radiograph,
    sample_ct_acquisition,
    sample_patient_spec,
    sample_radiograph_acquisition,
    simulate_cohort,
    simulation_grid,
    write_ct_series,
)
from hipfuse.training.simulate.resample import resample_separable

GRID = simulation_grid()


def _spec(seed: int, right: HipClass, left: HipClass = HipClass.NORMAL):
    rng = np.random.default_rng(seed)
    return sample_patient_spec(rng, {Laterality.RIGHT: right, Laterality.LEFT: left}, 45, "M")


@pytest.mark.parametrize("hip_class", list(HipClass), ids=[c.name.lower() for c in HipClass])
def test_lesion_mask_follows_class(hip_class: HipClass) -> None:
    phantom = build_phantom(_spec(3, hip_class), GRID)
    right = phantom.lesion_masks[Laterality.RIGHT]
    assert not phantom.lesion_masks[Laterality.LEFT].any()
    if hip_class is HipClass.NORMAL:
        assert not right.any()
        return
    assert right.sum() > 50
    z, y, x = np.nonzero(right)
    centroid = np.array(
        [GRID.axis_mm(0)[x].mean(), GRID.axis_mm(1)[y].mean(), GRID.axis_mm(2)[z].mean()]
    )
    assert np.linalg.norm(centroid - phantom.head_centres_mm[Laterality.RIGHT]) < 45.0


def test_phantom_tissue_values() -> None:
    phantom = build_phantom(_spec(4, HipClass.NORMAL), GRID)
    centre = phantom.head_centres_mm[Laterality.RIGHT]
    index = tuple(
        round((centre[axis] - GRID.origin_mm[axis]) / GRID.spacing_mm[axis]) for axis in (2, 1, 0)
    )
    assert 150.0 < phantom.hu[index] < 450.0  # cancellous bone of the femoral head
    assert phantom.hu[0, 0, 0] == pytest.approx(-1000.0)  # air outside the body
    assert phantom.hu.max() > 1000.0  # cortical bone


def _contrast_to_noise(stage: int, seed: int) -> tuple[float, float]:
    """Return the mean lesion signal over noise on CT and on the radiograph for one ONFH stage.

    The same patient is rendered with and without the lesion using identical
    noise draws, so the difference is the lesion's signal alone. The noise level
    comes from a second render of the healthy hip with other noise.
    """
    spec = _spec(seed, HipClass.OSTEONECROSIS)
    lesion = dataclasses.replace(spec.lesions[Laterality.RIGHT], onfh_stage=stage, severity=0.6)
    sick = build_phantom(
        dataclasses.replace(spec, lesions={**spec.lesions, Laterality.RIGHT: lesion}), GRID
    )
    healthy_lesions = {**spec.lesions, Laterality.RIGHT: HipLesion(HipClass.NORMAL)}
    healthy = build_phantom(dataclasses.replace(spec, lesions=healthy_lesions), GRID)
    anatomy = spec.anatomy
    ct = sample_ct_acquisition(
        np.random.default_rng(1),
        sick,
        anatomy.body_half_width_mm,
        anatomy.body_centre_y_mm + anatomy.body_half_depth_mm,
        "SIM-A",
    )
    dx = sample_radiograph_acquisition(np.random.default_rng(2), GRID, "SIM-A", flip_fraction=0.0)

    ct_sick = render_ct(sick, ct, np.random.default_rng(3))
    ct_healthy = render_ct(healthy, ct, np.random.default_rng(3))
    ct_noise = np.std(render_ct(healthy, ct, np.random.default_rng(4)) - ct_healthy) / np.sqrt(2.0)
    ct_mask = ct_lesion_mask(sick.lesion_masks[Laterality.RIGHT], GRID, ct).astype(bool)
    ct_cnr = float(np.abs(ct_sick - ct_healthy)[ct_mask].mean() / ct_noise)

    dx_sick = render_radiograph(sick, dx, np.random.default_rng(5)).pixels.astype(np.float64)
    dx_healthy = render_radiograph(healthy, dx, np.random.default_rng(5)).pixels.astype(np.float64)
    dx_other = render_radiograph(healthy, dx, np.random.default_rng(6)).pixels.astype(np.float64)
    row, column = (int(v) for v in dx.pixel_of(sick.head_centres_mm[Laterality.RIGHT]))
    window = np.s_[row - 40 : row + 40, column - 40 : column + 40]
    dx_noise = np.std((dx_other - dx_healthy)[window]) / np.sqrt(2.0)
    dx_mask = project_mask(sick.lesion_masks[Laterality.RIGHT], GRID, dx)
    dx_cnr = float(np.abs(dx_sick - dx_healthy)[dx_mask].mean() / dx_noise)
    return ct_cnr, dx_cnr


def test_early_onfh_shows_on_ct_not_radiograph() -> None:
    ct_cnr, dx_cnr = _contrast_to_noise(stage=2, seed=11)
    print(f"\nARCO 2 lesion contrast-to-noise: CT {ct_cnr:.2f}, radiograph {dx_cnr:.2f}")
    assert ct_cnr > 3.0
    assert dx_cnr < 0.6
    assert ct_cnr > 5.0 * dx_cnr


def test_late_onfh_shows_on_radiograph() -> None:
    _, early = _contrast_to_noise(stage=2, seed=11)
    _, late = _contrast_to_noise(stage=4, seed=11)
    print(f"\nradiograph contrast-to-noise: ARCO 2 {early:.2f}, ARCO 4 {late:.2f}")
    assert late > 1.5 * early


def test_resampling_keeps_constants_and_positions() -> None:
    source = np.full((20, 30), 7.0, dtype=np.float32)
    axes_in = (np.arange(20) * 1.5, np.arange(30) * 1.5)
    axes_out = (np.linspace(6.0, 20.0, 17), np.linspace(8.0, 30.0, 41))
    out = resample_separable(source, axes_in, axes_out, (0.4, 0.4))
    np.testing.assert_allclose(out, 7.0, rtol=1e-5)
    # A single bright line lands at its own coordinate.
    line = np.zeros((20, 30), dtype=np.float32)
    line[:, 12] = 1.0
    moved = resample_separable(
        line, axes_in, (np.arange(20) * 1.5, np.arange(0.0, 43.5, 0.5)), (0.5, 0.5)
    )
    assert np.arange(0.0, 43.5, 0.5)[int(np.argmax(moved[10]))] == pytest.approx(18.0)


def test_resampling_fades_to_fill_outside() -> None:
    source = np.zeros((10,), dtype=np.float32)
    out = resample_separable(
        source, (np.arange(10.0),), (np.array([-50.0, 4.5, 60.0]),), (1.0,), fill=-1000.0
    )
    np.testing.assert_allclose(out, [-1000.0, 0.0, -1000.0], atol=1e-3)


def test_derived_uid_is_stable_and_valid() -> None:
    first = derived_uid(1, 2, "study")
    assert first == derived_uid(1, 2, "study")
    assert first != derived_uid(1, 2, "series")
    assert first != derived_uid(12, "study")
    assert first.startswith("2.25.")
    assert UID(first).is_valid


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_patients": 0}, "at least 1 patient"),
        ({"class_mix": {"arthritis": 1.0}}, "class_mix has an unknown key 'arthritis'"),
        ({"class_mix": {"normal": -1.0}}, "weights must be finite and >= 0"),
        ({"class_mix": {"normal": 0.0}}, "at least one weight must be positive"),
        ({"language_mix": {"fr": 1.0}}, "language_mix has an unknown key 'fr'"),
        ({"flip_fraction": 1.5}, "flip_fraction = 1.5 is invalid"),
        ({"centre_mix": {"A/B": 1.0}}, "without slashes"),
    ],
    ids=[
        "no-patients",
        "unknown-class",
        "negative-weight",
        "zero-weights",
        "unknown-language",
        "bad-fraction",
        "bad-centre",
    ],
)
def test_simulate_cohort_rejects_bad_options(tmp_path: Path, kwargs: dict, message: str) -> None:
    arguments = {"out_dir": tmp_path / "out", "n_patients": 1, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        simulate_cohort(**arguments)


def test_simulate_cohort_refuses_non_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(
        ValueError, match="is not empty: choose an empty folder or pass overwrite=True"
    ):
        simulate_cohort(tmp_path, 1, 0)


def test_class_mix_selects_classes(tmp_path: Path) -> None:
    manifest = simulate_cohort(tmp_path / "fai", 2, 5, class_mix={HipClass.FAI: 1.0}, workers=1)
    labels = [line.split(",")[3] for line in manifest.read_text(encoding="utf-8").splitlines()[1:]]
    assert labels == [HipClass.FAI.value] * 4


def test_ct_writer_rejects_float_pixels(tmp_path: Path) -> None:
    spec = _spec(2, HipClass.NORMAL)
    phantom = build_phantom(spec, GRID)
    anatomy = spec.anatomy
    acquisition = sample_ct_acquisition(
        np.random.default_rng(0),
        phantom,
        anatomy.body_half_width_mm,
        anatomy.body_half_depth_mm,
        "SIM-A",
    )
    volume = render_ct(phantom, acquisition, np.random.default_rng(0))
    with pytest.raises(ValueError, match="CT pixels must be a 3D int16 array, got float32"):
        write_ct_series(tmp_path, volume, acquisition, None, "1.2.3", "1.2.4")  # type: ignore[arg-type]
