"""Patient-grouped, class-stratified splits and cross-validation folds.

Both hips of a patient always land in the same split, because the two hips
share a radiograph, a CT and a note: a patient in training and test would leak.
Hips of an external centre are never split; they are evaluated with the model
trained on the other centres.

scikit-learn's ``StratifiedGroupKFold`` does the work: a test fraction of 0.2
is the first of ``round(1 / 0.2) = 5`` grouped, stratified folds.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from hipfuse.inference.types import HIP_CLASSES
from hipfuse.training.cohort import Cohort, HipRecord, Split


class SplitError(ValueError):
    """A split that cannot be made from this cohort; the message names the fix."""


@dataclass(frozen=True)
class CrossValidationFold:
    """One fold of k-fold cross-validation, as hip ids.

    ``validation`` is the held-out fold; ``train`` is every other internal hip.
    """

    index: int
    train: tuple[str, ...]
    validation: tuple[str, ...]


def assign_splits(
    cohort: Cohort,
    *,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    seed: int = 0,
    external_centres: Iterable[str] = (),
    keep_existing: bool = True,
) -> Cohort:
    """Return ``cohort`` with every hip assigned to train, validation, test or external.

    Parameters
    ----------
    test_fraction, validation_fraction
        Approximate fractions of the internal hips (all centres but the
        external ones) for test and validation; 0 leaves that split empty.
        Each is realised as one fold of ``round(1 / fraction)`` grouped folds,
        so the result is close to, not exactly, the fraction.
    seed
        Seed of the fold shuffling; the same seed gives the same splits.
    external_centres
        Centres whose hips become ``external`` and are never trained on.
    keep_existing
        When every hip already has a split in the manifest, return the cohort
        unchanged (external centres are still applied).

    Raises
    ------
    SplitError
        When a fraction is outside ``[0, 0.5]``, an external centre is not in
        the cohort, or too few patients remain for the requested splits.
    """
    external = set(external_centres)
    unknown = external - {hip.centre for hip in cohort.hips}
    if unknown:
        raise SplitError(
            f"external centre(s) {sorted(unknown)} not in the cohort; its centres are "
            f"{sorted({hip.centre for hip in cohort.hips})}"
        )
    for name, fraction in (("test", test_fraction), ("validation", validation_fraction)):
        if not 0.0 <= fraction <= 0.5:
            raise SplitError(f"{name} fraction {fraction} is outside [0, 0.5]")

    if keep_existing and cohort.has_splits:
        return cohort.with_splits(
            {hip.hip_id: Split.EXTERNAL for hip in cohort.hips if hip.centre in external}
        )

    internal = [hip for hip in cohort.hips if hip.centre not in external]
    if not internal:
        raise SplitError("every hip is in an external centre: nothing is left to train on")
    splits: dict[str, Split] = {
        hip.hip_id: Split.EXTERNAL for hip in cohort.hips if hip.centre in external
    }

    remaining = internal
    test_ids: set[str] = set()
    if test_fraction > 0:
        test_ids, remaining = _hold_out_fold(internal, test_fraction, seed, "test")
    validation_ids: set[str] = set()
    if validation_fraction > 0:
        # The validation fraction is of the whole internal cohort, so rescale it
        # to the hips that the test split left.
        fraction_of_rest = min(0.5, validation_fraction / (1.0 - test_fraction))
        validation_ids, remaining = _hold_out_fold(
            remaining, fraction_of_rest, seed + 1, "validation"
        )
    for hip in internal:
        if hip.hip_id in test_ids:
            splits[hip.hip_id] = Split.TEST
        elif hip.hip_id in validation_ids:
            splits[hip.hip_id] = Split.VALIDATION
        else:
            splits[hip.hip_id] = Split.TRAIN
    return cohort.with_splits(splits)


def cross_validation_folds(
    cohort: Cohort, n_folds: int = 5, *, seed: int = 0, external_centres: Iterable[str] = ()
) -> list[CrossValidationFold]:
    """Split the internal hips into ``n_folds`` patient-grouped, class-stratified folds.

    Hips of ``external_centres`` take part in no fold. Every internal hip is in
    exactly one validation fold.

    Raises
    ------
    SplitError
        When there are fewer patients than folds.
    """
    external = set(external_centres)
    internal = [hip for hip in cohort.hips if hip.centre not in external]
    _require_patients(internal, n_folds, f"{n_folds}-fold cross-validation")
    folds = []
    for index, (train_index, validation_index) in enumerate(_fold_indices(internal, n_folds, seed)):
        folds.append(
            CrossValidationFold(
                index,
                tuple(internal[i].hip_id for i in train_index),
                tuple(internal[i].hip_id for i in validation_index),
            )
        )
    return folds


def split_summary(cohort: Cohort) -> dict[str, dict[str, int]]:
    """Count hips per class in each split that has hips, for logs and bundles."""
    summary = {}
    for split in Split:
        if cohort.hips_in(split):
            summary[split.value] = cohort.class_counts(split)
    return summary


def _hold_out_fold(
    hips: Sequence[HipRecord], fraction: float, seed: int, name: str
) -> tuple[set[str], list[HipRecord]]:
    n_folds = max(2, round(1.0 / fraction))
    _require_patients(hips, n_folds, f"a {name} fraction of {fraction:.2f}")
    _, held_out = _fold_indices(hips, n_folds, seed)[0]
    held_out_ids = {hips[i].hip_id for i in held_out}
    return held_out_ids, [hip for hip in hips if hip.hip_id not in held_out_ids]


def _fold_indices(
    hips: Sequence[HipRecord], n_folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import StratifiedGroupKFold

    class_index = {hip_class: i for i, hip_class in enumerate(HIP_CLASSES)}
    labels = np.array([class_index[hip.label] for hip in hips])
    groups = np.array([hip.patient_id for hip in hips])
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # A class rarer than the number of folds cannot appear in every fold.
        # scikit-learn warns about it and still balances the other classes, which
        # is the right outcome for small cohorts.
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        return list(splitter.split(np.zeros(len(hips)), labels, groups))


def _require_patients(hips: Sequence[HipRecord], n_folds: int, purpose: str) -> None:
    n_patients = len({hip.patient_id for hip in hips})
    if n_patients < n_folds:
        raise SplitError(
            f"{purpose} needs at least {n_folds} patients, the cohort has {n_patients}: "
            "add patients or lower the fraction"
        )
