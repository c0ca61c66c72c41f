from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hipfuse.inference.types import HIP_CLASSES, Laterality
from hipfuse.training.cohort import Cohort, HipRecord, Split
from hipfuse.training.splits import (
    SplitError,
    assign_splits,
    cross_validation_folds,
    split_summary,
)


def make_cohort(n_patients: int, seed: int = 0, external_patients: int = 0) -> Cohort:
    rng = np.random.default_rng(seed)
    hips = []
    for index in range(n_patients + external_patients):
        centre = "B" if index >= n_patients else "A"
        for side in (Laterality.RIGHT, Laterality.LEFT):
            hips.append(
                HipRecord(
                    hip_id=f"p{index}-{side.value}",
                    patient_id=f"p{index}",
                    laterality=side,
                    label=HIP_CLASSES[int(rng.integers(len(HIP_CLASSES)))],
                    radiograph_path=Path(f"/data/p{index}.dcm"),
                    ct_path=None,
                    text_path=None,
                    centre=centre,
                    row=len(hips) + 1,
                )
            )
    return Cohort(Path("/data/manifest.csv"), tuple(hips))


def patients_by_split(cohort: Cohort) -> dict[Split, set[str]]:
    result: dict[Split, set[str]] = {}
    for hip in cohort.hips:
        result.setdefault(hip.split, set()).add(hip.patient_id)
    return result


@pytest.mark.parametrize("seed", [0, 1, 2], ids=["seed0", "seed1", "seed2"])
def test_splits_never_share_patient(seed):
    cohort = assign_splits(make_cohort(100, seed), seed=seed)

    groups = patients_by_split(cohort)
    assert set(groups) == {Split.TRAIN, Split.VALIDATION, Split.TEST}
    assert not groups[Split.TRAIN] & groups[Split.TEST]
    assert not groups[Split.TRAIN] & groups[Split.VALIDATION]
    assert not groups[Split.VALIDATION] & groups[Split.TEST]


def test_splits_keep_class_proportions():
    cohort = assign_splits(make_cohort(200), seed=3)

    overall = Counter(hip.label for hip in cohort.hips)
    for split in (Split.TRAIN, Split.VALIDATION, Split.TEST):
        hips = cohort.hips_in(split)
        counts = Counter(hip.label for hip in hips)
        for hip_class in HIP_CLASSES:
            share = counts[hip_class] / len(hips)
            expected = overall[hip_class] / len(cohort)
            assert abs(share - expected) < 0.06, (split, hip_class, share, expected)


def test_split_sizes_follow_fractions():
    cohort = assign_splits(make_cohort(200), test_fraction=0.2, validation_fraction=0.2, seed=0)

    sizes = {split: len(cohort.hips_in(split)) / len(cohort) for split in Split}
    assert sizes[Split.TEST] == pytest.approx(0.2, abs=0.03)
    assert sizes[Split.VALIDATION] == pytest.approx(0.2, abs=0.03)
    assert sizes[Split.EXTERNAL] == 0


def test_splits_repeat_with_seed():
    first = assign_splits(make_cohort(60), seed=7)
    second = assign_splits(make_cohort(60), seed=7)
    other = assign_splits(make_cohort(60), seed=8)

    assert [hip.split for hip in first.hips] == [hip.split for hip in second.hips]
    assert [hip.split for hip in first.hips] != [hip.split for hip in other.hips]


def test_external_centre_never_trained_on():
    cohort = assign_splits(make_cohort(50, external_patients=6), seed=0, external_centres=["B"])

    external = cohort.hips_in(Split.EXTERNAL)
    assert len(external) == 12
    assert {hip.centre for hip in external} == {"B"}
    assert all(hip.centre == "A" for hip in cohort.hips if hip.split is not Split.EXTERNAL)
    assert "external" in split_summary(cohort)


def test_existing_splits_kept():
    base = make_cohort(20)
    given = base.with_splits(
        {hip.hip_id: Split.TEST if hip.patient_id == "p0" else Split.TRAIN for hip in base.hips}
    )

    cohort = assign_splits(given, seed=0)

    assert [hip.split for hip in cohort.hips] == [hip.split for hip in given.hips]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"external_centres": ["Z"]}, r"external centre\(s\) \['Z'\] not in the cohort"),
        ({"test_fraction": 0.7}, r"test fraction 0.7 is outside"),
        ({"external_centres": ["A"]}, "nothing is left to train on"),
    ],
    ids=["unknown centre", "fraction too large", "all external"],
)
def test_split_errors(kwargs, message):
    with pytest.raises(SplitError, match=message):
        assign_splits(make_cohort(20), **kwargs)


def test_too_few_patients_rejected():
    with pytest.raises(SplitError, match="needs at least 5 patients, the cohort has 3"):
        assign_splits(make_cohort(3), test_fraction=0.2)


def test_cross_validation_covers_every_hip_once():
    cohort = make_cohort(40, external_patients=5)

    folds = cross_validation_folds(cohort, 5, seed=0, external_centres=["B"])

    assert len(folds) == 5
    held_out = Counter(hip_id for fold in folds for hip_id in fold.validation)
    internal_ids = {hip.hip_id for hip in cohort.hips if hip.centre == "A"}
    assert set(held_out) == internal_ids
    assert set(held_out.values()) == {1}
    patient_of = {hip.hip_id: hip.patient_id for hip in cohort.hips}
    for fold in folds:
        train_patients = {patient_of[hip_id] for hip_id in fold.train}
        validation_patients = {patient_of[hip_id] for hip_id in fold.validation}
        assert not train_patients & validation_patients
