"""Hip regions on simulated adult studies, against the true centres in the cohort manifest."""

from __future__ import annotations

import numpy as np
import pytest

from hipfuse.inference.readers.ct import read_ct_series
from hipfuse.inference.readers.radiograph import read_radiograph
from hipfuse.inference.regions.ct import find_ct_hips
from hipfuse.inference.regions.radiograph import find_radiograph_hips
from hipfuse.inference.types import HipClass, Laterality
from hipfuse.training.simulate.cohort import CohortOptions, simulate_patient
from hipfuse.training.simulate.text import NoteLanguage

# Both simulated centres and all classes, with a third of the films stored mirrored (R\F).
OPTIONS = CohortOptions(
    seed=7,
    class_mix=dict.fromkeys(HipClass, 0.25),
    language_mix={NoteLanguage.ENGLISH: 1.0},
    centre_mix={"SIM-A": 0.5, "SIM-B": 0.5},
    flip_fraction=0.3,
)
PATIENTS = range(6)
TOLERANCE_MM = 10.0


@pytest.fixture(scope="module", params=PATIENTS, ids=lambda index: f"patient_{index}")
def study(request, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp(f"patient_{request.param}")
    result = simulate_patient(out_dir, request.param, OPTIONS)
    manifest = {Laterality(row["laterality"]): row for row in result.manifest_rows}
    truth = {Laterality(row["hip_id"][-1]): row for row in result.truth_rows}
    return out_dir, manifest, truth


def test_radiograph_centres(study):
    out_dir, manifest, truth = study
    film = read_radiograph(out_dir / manifest[Laterality.RIGHT]["radiograph_path"])

    regions = find_radiograph_hips(film, 128, 120.0).regions

    for side in (Laterality.RIGHT, Laterality.LEFT):
        true_px = np.array(
            [float(v) for v in manifest[side]["hip_centre_radiograph_px"].split(";")]
        )
        spacing_mm = float(truth[side]["radiograph_pixel_spacing_mm"])
        error_mm = np.linalg.norm(np.subtract(regions[side].centre, true_px)) * spacing_mm
        assert error_mm <= TOLERANCE_MM, f"{side.name} hip {error_mm:.1f} mm from truth"


def test_ct_centres(study):
    out_dir, manifest, _ = study
    volume = read_ct_series(out_dir / manifest[Laterality.RIGHT]["ct_path"])

    result = find_ct_hips(volume, (64, 96, 96), (1.5, 1.5, 1.5))

    assert not result.missing
    for side in (Laterality.RIGHT, Laterality.LEFT):
        true_mm = np.array([float(v) for v in manifest[side]["hip_centre_ct_mm"].split(";")])
        error_mm = np.linalg.norm(np.subtract(result.regions[side].centre_mm, true_mm))
        assert error_mm <= TOLERANCE_MM, f"{side.name} head {error_mm:.1f} mm from truth"
