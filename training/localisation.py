"""Grad-CAM localisation on cohorts with lesion masks: pointing game and energy inside the mask.

For every abnormal hip with a lesion mask, the study is analysed exactly as at
the node (:func:`hipfuse.inference.pipeline.analyze_study`), and each heat map
is compared with the mask in the source geometry:

- radiograph: ``radiograph_cam`` is on the source radiograph's pixel grid, and
  the mask PNG (``lesion_mask_radiograph_path``) must have the same shape;
- CT: ``ct_cam`` is on the canonical CT volume grid, and the mask NIfTI
  (``lesion_mask_ct_path``) is resampled onto that grid through both affines,
  nearest neighbour.

Two figures per map:

pointing game
    Whether the heat map's maximum lies inside the mask, dilated by a
    tolerance in millimetres (Zhang et al., "Top-down neural attention by
    excitation backprop", ECCV 2016, arXiv:1608.00507).
energy inside
    Share of the heat map's sum that lies inside the (undilated) mask. The
    ``uniform_baseline`` beside it is the mask's share of the crop footprint,
    which a flat heat map would score.

Grad-CAM explains the predicted class, so a hip predicted normal is scored on
the map of "normal". The ``predicted`` column of each row lets a reader
restrict the figures to correct predictions.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from scipy import ndimage

from hipfuse.inference.types import HIP_CLASSES, CTVolume, HipClass, InputError, InputModality
from hipfuse.training.cohort import Cohort, HipRecord

if TYPE_CHECKING:
    from hipfuse.inference.model.bundle import Bundle
    from hipfuse.inference.pipeline import HipResult, StudyResult

log = structlog.get_logger(__name__)

RADIOGRAPH_MASK_COLUMN = "lesion_mask_radiograph_path"
CT_MASK_COLUMN = "lesion_mask_ct_path"
MASK_COLUMNS = {InputModality.RADIOGRAPH: RADIOGRAPH_MASK_COLUMN, InputModality.CT: CT_MASK_COLUMN}
LOCALISED_MODALITIES = (InputModality.RADIOGRAPH, InputModality.CT)
SUMMARY_FILE_NAME = "localisation.json"
HIPS_FILE_NAME = "localisation_hips.csv"

# RAS (NIfTI world) to LPS (DICOM patient) and back: x and y change sign.
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


class SkipReason(StrEnum):
    """Reason a hip's map of one modality is not scored."""

    NO_MASK = "no_mask"  # empty mask path in the manifest
    EMPTY_MASK = "empty_mask"  # the mask has no lesion voxel (lesion outside the image)
    NO_HEAT_MAP = "no_heat_map"  # the hip was not found in this image, or no image
    FLAT_HEAT_MAP = "flat_heat_map"  # the map is zero everywhere: it has no maximum
    ANALYSIS_FAILED = "analysis_failed"  # analyze_study raised InputError
    MASK_MISMATCH = "mask_mismatch"  # the mask's shape or geometry does not fit the image


class LocalisationError(ValueError):
    """A mask that cannot be compared with its image; the message names the file and the fix."""


@dataclass(frozen=True)
class HipLocalisation:
    """Localisation figures of one hip's heat map in one modality.

    Attributes
    ----------
    hip_id, patient_id
        Manifest identifiers.
    label, predicted
        True and predicted class (Grad-CAM explains ``predicted``).
    modality
        Radiograph or CT.
    hit
        Pointing game result, ``None`` when skipped.
    energy_inside
        Share of the heat map's sum inside the mask, NaN when skipped.
    uniform_baseline
        Mask's share of the crop footprint (the energy share of a flat map), NaN when skipped.
    mask_size
        Lesion pixels or voxels on the image grid.
    skipped
        Why the map was not scored, else ``None``.
    """

    hip_id: str
    patient_id: str
    label: HipClass
    predicted: HipClass | None
    modality: InputModality
    hit: bool | None
    energy_inside: float
    uniform_baseline: float
    mask_size: int
    skipped: SkipReason | None = None


# --- Geometry -----------------------------------------------------------------


def read_radiograph_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a radiograph lesion mask (any non-zero pixel is lesion) of the image's ``shape``.

    Raises
    ------
    LocalisationError
        When the mask's shape differs from the radiograph's.
    """
    from PIL import Image

    with Image.open(path) as image:
        mask = np.asarray(image.convert("L")) > 0
    if mask.shape != tuple(shape):
        raise LocalisationError(
            f"radiograph mask {path} is {mask.shape[0]}x{mask.shape[1]} pixels but the radiograph "
            f"is {shape[0]}x{shape[1]}: write the mask on the radiograph's stored pixel grid"
        )
    return mask


def ct_mask_on_volume(path: Path, volume: CTVolume) -> np.ndarray:
    """Resample a NIfTI lesion mask onto ``volume``'s grid (nearest neighbour).

    Only the block of ``volume`` that the mask's non-zero voxels cover is
    sampled, so a small lesion in a large volume costs little.

    Returns
    -------
    numpy.ndarray
        Boolean array of ``volume.voxels``' shape.
    """
    import nibabel as nib

    image = nib.load(str(path))
    data = np.asarray(image.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise LocalisationError(f"CT mask {path} has shape {data.shape}: expected a 3D volume")
    mask = data > 0
    output = np.zeros(volume.voxels.shape, dtype=bool)
    if not mask.any():
        return output

    # Mask voxel -> LPS mm -> volume index.
    mask_to_lps = RAS_TO_LPS @ np.asarray(image.affine, dtype=np.float64)
    mask_to_volume = np.linalg.solve(np.asarray(volume.affine, dtype=np.float64), mask_to_lps)
    volume_to_mask = np.linalg.inv(mask_to_volume)

    # Bounding box of the lesion voxels' corners in volume indices.
    lesion = np.argwhere(mask)
    low, high = lesion.min(axis=0) - 0.5, lesion.max(axis=0) + 0.5
    corners = np.array(
        [
            [x, y, z, 1.0]
            for x in (low[0], high[0])
            for y in (low[1], high[1])
            for z in (low[2], high[2])
        ]
    )
    mapped = (mask_to_volume @ corners.T)[:3]
    start = np.maximum(np.floor(mapped.min(axis=1)).astype(int) - 1, 0)
    stop = np.minimum(np.ceil(mapped.max(axis=1)).astype(int) + 2, volume.voxels.shape)
    if np.any(stop <= start):
        raise LocalisationError(
            f"CT mask {path} lies outside the CT volume: check that the mask belongs to this "
            "series and that its affine is in RAS"
        )
    block_shape = tuple(int(b - a) for a, b in zip(start, stop, strict=True))
    # affine_transform maps output (block) index o to input (mask) index M @ (o + start).
    matrix = volume_to_mask[:3, :3]
    offset = volume_to_mask[:3, :3] @ start + volume_to_mask[:3, 3]
    block = ndimage.affine_transform(
        mask.astype(np.uint8), matrix, offset=offset, output_shape=block_shape, order=0, cval=0
    )
    output[tuple(slice(a, b) for a, b in zip(start, stop, strict=True))] = block > 0
    return output


def dilate_mask(mask: np.ndarray, spacing_mm: Sequence[float], tolerance_mm: float) -> np.ndarray:
    """Grow ``mask`` by every pixel or voxel within ``tolerance_mm`` (Euclidean, in mm)."""
    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm is {tolerance_mm}: use 0 or a positive distance")
    if tolerance_mm == 0 or not mask.any():
        return mask
    spacing = np.asarray(spacing_mm, dtype=np.float64)
    reach = np.ceil(tolerance_mm / spacing).astype(int) + 1
    lesion = np.argwhere(mask)
    start = np.maximum(lesion.min(axis=0) - reach, 0)
    stop = np.minimum(lesion.max(axis=0) + reach + 1, mask.shape)
    window = tuple(slice(a, b) for a, b in zip(start, stop, strict=True))
    distance = ndimage.distance_transform_edt(~mask[window], sampling=spacing)
    grown = mask.copy()
    grown[window] = distance <= tolerance_mm
    return grown


def pointing_hit(heat_map: np.ndarray, target: np.ndarray) -> bool | None:
    """Return whether the map's maximum lies in ``target``; ``None`` for a map without a maximum.

    On a tie the first maximum in C order counts, as ``numpy.argmax`` picks it.
    """
    heat_map = np.nan_to_num(np.asarray(heat_map, dtype=np.float64), nan=0.0)
    if heat_map.shape != target.shape:
        raise ValueError(f"heat map shape {heat_map.shape} differs from mask {target.shape}")
    if not heat_map.max() > 0:
        return None
    return bool(target.flat[int(np.argmax(heat_map))])


def energy_inside(heat_map: np.ndarray, mask: np.ndarray) -> float:
    """Return the share of the heat map's sum inside ``mask`` (NaN for an all-zero map)."""
    heat_map = np.clip(np.nan_to_num(np.asarray(heat_map, dtype=np.float64), nan=0.0), 0.0, None)
    total = float(heat_map.sum())
    if total <= 0:
        return float("nan")
    return float(heat_map[mask].sum()) / total


def score_map(
    heat_map: np.ndarray,
    mask: np.ndarray,
    footprint: np.ndarray,
    spacing_mm: Sequence[float],
    tolerance_mm: float,
) -> tuple[bool | None, float, float]:
    """Return ``(hit, energy inside, uniform baseline)`` of one heat map against one mask.

    ``footprint`` marks the pixels or voxels the crop covers, where the map can be non-zero.
    """
    hit = pointing_hit(heat_map, dilate_mask(mask, spacing_mm, tolerance_mm))
    covered = int(footprint.sum())
    baseline = float(np.count_nonzero(mask & footprint)) / covered if covered else float("nan")
    return hit, energy_inside(heat_map, mask), baseline


# --- Cohort ---------------------------------------------------------------------


def has_mask_columns(cohort: Cohort) -> bool:
    """Return whether the manifest has at least one lesion mask column."""
    return any(column in cohort.extra_columns for column in MASK_COLUMNS.values())


def _mask_path(cohort: Cohort, hip: HipRecord, modality: InputModality) -> Path | None:
    text = hip.extras.get(MASK_COLUMNS[modality], "").strip()
    if not text:
        return None
    path = Path(text)
    return path if path.is_absolute() else cohort.manifest_path.parent / path


def _skipped(
    hip: HipRecord, modality: InputModality, reason: SkipReason, predicted: HipClass | None = None
) -> HipLocalisation:
    nan = float("nan")
    return HipLocalisation(
        hip.hip_id, hip.patient_id, hip.label, predicted, modality, None, nan, nan, 0, reason
    )


def _score_hip(
    cohort: Cohort,
    hip: HipRecord,
    result: HipResult | None,
    study: StudyResult,
    modality: InputModality,
    tolerance_mm: float,
) -> HipLocalisation:
    from hipfuse.inference.regions.ct import ct_map_to_volume
    from hipfuse.inference.regions.radiograph import radiograph_map_to_source

    predicted = result.prediction.predicted if result is not None else None
    path = _mask_path(cohort, hip, modality)
    if path is None:
        return _skipped(hip, modality, SkipReason.NO_MASK, predicted)
    if modality is InputModality.RADIOGRAPH:
        heat_map = result.radiograph_cam if result is not None else None
        region = result.radiograph_region if result is not None else None
    else:
        heat_map = result.ct_cam if result is not None else None
        region = result.ct_region if result is not None else None
    if heat_map is None or region is None:
        return _skipped(hip, modality, SkipReason.NO_HEAT_MAP, predicted)
    try:
        if modality is InputModality.RADIOGRAPH:
            pixels = study.radiograph.pixels
            mask = read_radiograph_mask(path, pixels.shape)
            # NOTE: without a trustworthy Pixel Spacing the tolerance counts pixels, not mm.
            spacing = study.radiograph.pixel_spacing_mm or (1.0, 1.0)
            footprint = (
                radiograph_map_to_source(region, np.ones_like(region.crop), pixels.shape) > 0
            )
        else:
            mask = ct_mask_on_volume(path, study.ct)
            spacing = study.ct.spacing_mm
            footprint = ct_map_to_volume(region, np.ones_like(region.crop), study.ct) > 0
    except LocalisationError as error:
        log.warning(
            "localisation_mask_mismatch",
            hip_id=hip.hip_id,
            modality=modality.value,
            error=str(error),
        )
        return _skipped(hip, modality, SkipReason.MASK_MISMATCH, predicted)
    if not mask.any():
        return _skipped(hip, modality, SkipReason.EMPTY_MASK, predicted)
    hit, energy, baseline = score_map(heat_map, mask, footprint, spacing, tolerance_mm)
    if hit is None:
        return _skipped(hip, modality, SkipReason.FLAT_HEAT_MAP, predicted)
    return HipLocalisation(
        hip.hip_id,
        hip.patient_id,
        hip.label,
        predicted,
        modality,
        hit,
        energy,
        baseline,
        int(mask.sum()),
    )


def localise_cohort(
    bundle: Bundle,
    cohort: Cohort,
    hips: Iterable[HipRecord] | None = None,
    *,
    tolerance_mm: float = 0.0,
    on_study: Any = None,
) -> list[HipLocalisation]:
    """Score the Grad-CAM maps of every abnormal hip of ``hips`` against its lesion masks.

    Parameters
    ----------
    bundle
        The model to explain.
    cohort
        Cohort whose manifest has ``lesion_mask_radiograph_path`` and/or
        ``lesion_mask_ct_path`` columns (relative to the manifest's folder).
    hips
        Hips to score (default every hip); normal hips are left out.
    tolerance_mm
        Dilation of the mask for the pointing game.
    on_study
        Called as ``on_study(study, hips_by_laterality)`` after each analysed
        study, so a caller can render overlays without analysing twice.

    Returns
    -------
    list of HipLocalisation
        One row per abnormal hip and modality, skipped ones included.
    """
    from hipfuse.inference.pipeline import analyze_study, read_inputs

    if tolerance_mm < 0:
        raise ValueError(f"tolerance_mm is {tolerance_mm}: use 0 or a positive distance")
    selected = cohort.hips if hips is None else hips
    abnormal = [hip for hip in selected if hip.label is not HipClass.NORMAL]
    # Both hips of a patient share their inputs, so one analysis serves both.
    studies: dict[tuple[Path | None, ...], list[HipRecord]] = defaultdict(list)
    for hip in abnormal:
        studies[(hip.radiograph_path, hip.ct_path, hip.text_path)].append(hip)

    rows: list[HipLocalisation] = []
    for (radiograph_path, ct_path, text_path), study_hips in studies.items():
        try:
            inputs = read_inputs(radiograph_path, ct_path, text_path)
            study = analyze_study(bundle, inputs, gradcam=True)
        except InputError as error:
            log.warning(
                "localisation_analysis_failed",
                hip_ids=[hip.hip_id for hip in study_hips],
                code=error.code,
            )
            for hip in study_hips:
                for modality in LOCALISED_MODALITIES:
                    rows.append(_skipped(hip, modality, SkipReason.ANALYSIS_FAILED))
            continue
        by_laterality = {result.laterality: result for result in study.hips}
        if on_study is not None:
            on_study(study, by_laterality)
        for hip in study_hips:
            result = by_laterality.get(hip.laterality)
            for modality in LOCALISED_MODALITIES:
                rows.append(_score_hip(cohort, hip, result, study, modality, tolerance_mm))
    log.info(
        "localisation_scored",
        n_hips=len(abnormal),
        n_studies=len(studies),
        n_scored=sum(row.skipped is None for row in rows),
    )
    return rows


# --- Summary and files ------------------------------------------------------------


def _figures(rows: list[HipLocalisation]) -> dict[str, Any]:
    scored = [row for row in rows if row.skipped is None]
    hits = [row.hit for row in scored]
    energies = np.array([row.energy_inside for row in scored], dtype=np.float64)
    baselines = np.array([row.uniform_baseline for row in scored], dtype=np.float64)
    skipped: dict[str, int] = defaultdict(int)
    for row in rows:
        if row.skipped is not None:
            skipped[row.skipped.value] += 1
    return {
        "n_hips": len(scored),
        "pointing_game": (sum(hits) / len(hits)) if hits else None,
        "pointing_hits": int(sum(hits)),
        "energy_inside_mean": _finite(np.nanmean(energies)) if energies.size else None,
        "energy_inside_median": _finite(np.nanmedian(energies)) if energies.size else None,
        "uniform_baseline_mean": _finite(np.nanmean(baselines)) if baselines.size else None,
        "skipped": dict(sorted(skipped.items())),
    }


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def summarise_localisation(rows: list[HipLocalisation], tolerance_mm: float) -> dict[str, Any]:
    """Summarise rows per modality, overall and per true class (abnormal classes only).

    Returns
    -------
    dict
        JSON-ready: ``tolerance_mm``, ``explained_class`` (``"predicted"``) and
        ``modalities[modality]`` with ``all`` and ``per_class[class]``, each
        holding ``n_hips``, ``pointing_game``, ``pointing_hits``,
        ``energy_inside_mean``, ``energy_inside_median``,
        ``uniform_baseline_mean`` and ``skipped`` (reason to count).
    """
    modalities = {}
    for modality in LOCALISED_MODALITIES:
        of_modality = [row for row in rows if row.modality is modality]
        modalities[modality.value] = {
            "all": _figures(of_modality),
            "per_class": {
                hip_class.value: _figures([row for row in of_modality if row.label is hip_class])
                for hip_class in HIP_CLASSES
                if hip_class is not HipClass.NORMAL
            },
        }
    return {"tolerance_mm": tolerance_mm, "explained_class": "predicted", "modalities": modalities}


def write_localisation(
    rows: list[HipLocalisation], summary: dict[str, Any], out_dir: Path
) -> list[Path]:
    """Write ``localisation.json`` (the summary) and ``localisation_hips.csv`` (one row per map)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary_path = out_dir / SUMMARY_FILE_NAME
    summary_path.write_text(json.dumps(summary, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    hips_path = out_dir / HIPS_FILE_NAME
    fields = list(HipLocalisation.__dataclass_fields__)
    with hips_path.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.DictWriter(stream, fieldnames=fields)
        writer.writeheader()
        for row in rows:
            record = asdict(row)
            for key, value in record.items():
                if isinstance(value, StrEnum):
                    record[key] = value.value
                elif value is None or (isinstance(value, float) and not math.isfinite(value)):
                    record[key] = ""
            writer.writerow(record)
    return [summary_path, hips_path]


def format_localisation(summary: dict[str, Any]) -> list[str]:
    """Return printable lines: pointing game and energy inside per modality and class."""
    tolerance = summary["tolerance_mm"]
    lines = [f"localisation (Grad-CAM of the predicted class, tolerance {tolerance:g} mm):"]
    for modality, entry in summary["modalities"].items():
        groups = [("all abnormal", entry["all"]), *entry["per_class"].items()]
        for name, figures in groups:
            if figures["n_hips"] == 0:
                continue
            energy = figures["energy_inside_mean"]
            baseline = figures["uniform_baseline_mean"]
            lines.append(
                f"  {modality:<10} {name:<30} n={figures['n_hips']:<4} "
                f"pointing {figures['pointing_game']:.2f}  energy inside "
                f"{'n/a' if energy is None else f'{energy:.2f}'} "
                f"(flat map {'n/a' if baseline is None else f'{baseline:.2f}'})"
            )
    return lines
