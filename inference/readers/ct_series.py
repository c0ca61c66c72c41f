"""Find the files of one CT series: read headers, group by series, drop localizers and strays."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import structlog
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from hipfuse.inference.readers.codes import ErrorCode, WarningCode
from hipfuse.inference.readers.dicom_common import text_value
from hipfuse.inference.types import InputError, InputWarning

log = structlog.get_logger(__name__)

# Image Orientation (Patient) cosines that differ by less than this are the same orientation.
ORIENTATION_TOLERANCE = 1e-3
# Slices in another orientation are dropped as strays when they are at most this
# fraction of the series; a larger share means the series mixes orientations.
MAX_STRAY_ORIENTATION_FRACTION = 0.1


@dataclass
class SliceHeader:
    """Header of one single-frame CT image, read without its pixel data."""

    path: Path
    ds: Dataset

    @property
    def series_uid(self) -> str:
        """Series Instance UID, ``""`` when absent or empty."""
        return text_value(self.ds, "SeriesInstanceUID")

    @property
    def is_localizer(self) -> bool:
        """Whether Image Type (0008,0008) marks the image as a localizer (scout)."""
        image_type = self.ds.get("ImageType") or []
        values = [image_type] if isinstance(image_type, str) else list(image_type)
        return any(str(value).strip().upper() == "LOCALIZER" for value in values)

    @property
    def orientation(self) -> np.ndarray | None:
        """Image Orientation (Patient) as six floats, or ``None`` when absent or malformed."""
        value = self.ds.get("ImageOrientationPatient")
        if value is None or len(value) != 6:
            return None
        return np.array([float(v) for v in value], dtype=np.float64)


@dataclass
class SeriesGroup:
    """The headers that belong to one series, with the key that grouped them."""

    key: tuple[str, ...]
    series_uid: str
    headers: list[SliceHeader]

    def describe(self) -> str:
        """Describe the group for an error message, without patient data."""
        first = self.headers[0].ds
        number = text_value(first, "SeriesNumber") or "none"
        description = text_value(first, "SeriesDescription")
        modality = text_value(first, "Modality") or "unknown modality"
        uid = self.series_uid or (
            "no Series Instance UID, Frame of Reference "
            f"{text_value(first, 'FrameOfReferenceUID') or 'none'}"
        )
        return (
            f"{uid} (Series Number {number}, {modality}, {description!r}, "
            f"{len(self.headers)} images)"
        )


def collect_files(paths_or_dir: Path | str | Sequence[Path | str]) -> list[Path]:
    """List the files to read: every file under a folder (recursively), or the given files.

    Hidden files and ``DICOMDIR`` are skipped.

    Raises
    ------
    InputError
        ``file_not_found`` when a path does not exist, ``ct_no_images`` when
        nothing is left to read.
    """
    if isinstance(paths_or_dir, str | Path):
        roots = [Path(paths_or_dir)]
    else:
        roots = [Path(p) for p in paths_or_dir]
    files: list[Path] = []
    for root in roots:
        if root.is_dir():
            files.extend(
                path
                for path in sorted(root.rglob("*"))
                if path.is_file()
                and not path.name.startswith(".")
                and path.name.upper() != "DICOMDIR"
            )
        elif root.is_file():
            files.append(root)
        else:
            raise InputError(ErrorCode.FILE_NOT_FOUND, f"CT input {root} does not exist")
    if not files:
        raise InputError(ErrorCode.CT_NO_IMAGES, f"no files found in {paths_or_dir}")
    return files


def read_headers(files: Iterable[Path]) -> tuple[list[SliceHeader], int]:
    """Read the header of every file that is a DICOM image with a geometry.

    Returns
    -------
    headers, skipped_count
        Image headers, and how many files were not DICOM or not images
        (no Rows or no Image Position), such as reports or presentation states.
    """
    headers: list[SliceHeader] = []
    skipped = 0
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, ValueError, KeyError, OSError):
            skipped += 1
            continue
        if "Rows" not in ds or "Columns" not in ds:
            skipped += 1
            continue
        headers.append(SliceHeader(path, ds))
    return headers, skipped


def _group_key(header: SliceHeader) -> tuple[str, ...]:
    if header.series_uid:
        return ("uid", header.series_uid)
    # Without a Series Instance UID, images of one series share the Frame of
    # Reference, modality and Series Number. Orientation is left to
    # keep_majority_orientation, so that a stray slice is dropped rather than
    # turned into a series of its own.
    return (
        "no_uid",
        text_value(header.ds, "FrameOfReferenceUID"),
        text_value(header.ds, "Modality"),
        text_value(header.ds, "SeriesNumber"),
    )


def select_series(
    headers: list[SliceHeader], series_instance_uid: str | None
) -> tuple[SeriesGroup, list[InputWarning]]:
    """Group image headers by series and return the requested one, localizers removed.

    Localizers (Image Type LOCALIZER) are removed before grouping. Without a
    requested UID, the only CT series is chosen; non-CT series are ignored.

    Raises
    ------
    InputError
        ``ct_several_series`` (lists them), ``ct_series_not_found`` or ``ct_no_images``.
    """
    localizers = [header for header in headers if header.is_localizer]
    images = [header for header in headers if not header.is_localizer]

    groups: dict[tuple[str, ...], SeriesGroup] = {}
    for header in images:
        key = _group_key(header)
        if key not in groups:
            groups[key] = SeriesGroup(key, header.series_uid, [])
        groups[key].headers.append(header)

    if series_instance_uid is not None:
        chosen = [group for group in groups.values() if group.series_uid == series_instance_uid]
        if not chosen:
            available = "; ".join(group.describe() for group in groups.values()) or "none"
            raise InputError(
                ErrorCode.CT_SERIES_NOT_FOUND,
                f"Series Instance UID {series_instance_uid} is not among the images; "
                f"series found: {available}",
            )
    else:
        chosen = [group for group in groups.values() if _group_modality(group) == "CT"]
        if not chosen:
            found = "; ".join(group.describe() for group in groups.values()) or "none"
            raise InputError(
                ErrorCode.CT_NO_IMAGES,
                f"no CT image found ({len(localizers)} localizers); series found: {found}",
            )
    if len(chosen) > 1:
        listing = "; ".join(group.describe() for group in chosen)
        raise InputError(
            ErrorCode.CT_SEVERAL_SERIES,
            f"the input holds {len(chosen)} CT series: {listing}. Pass series_instance_uid, "
            "or the files of one series only",
        )
    group = chosen[0]

    warnings: list[InputWarning] = []
    own_localizers = [header for header in localizers if _same_series(header, group)]
    if own_localizers:
        warnings.append(
            InputWarning(
                WarningCode.CT_LOCALIZER_DROPPED,
                f"{len(own_localizers)} localizer images in the series were dropped",
            )
        )
    if len(localizers) > len(own_localizers):
        log.info(
            "ct_localizers_ignored",
            count=len(localizers) - len(own_localizers),
            series_instance_uid=group.series_uid,
        )
    if not group.series_uid:
        warnings.append(
            InputWarning(
                WarningCode.SERIES_UID_MISSING,
                "the images have no Series Instance UID; they were grouped by Frame of "
                "Reference, Modality and Series Number",
            )
        )
    return group, warnings


def _group_modality(group: SeriesGroup) -> str:
    return text_value(group.headers[0].ds, "Modality")


def _same_series(header: SliceHeader, group: SeriesGroup) -> bool:
    if group.series_uid:
        return header.series_uid == group.series_uid
    return not header.series_uid and text_value(header.ds, "FrameOfReferenceUID") == text_value(
        group.headers[0].ds, "FrameOfReferenceUID"
    )


def keep_majority_orientation(
    headers: list[SliceHeader],
) -> tuple[list[SliceHeader], list[InputWarning]]:
    """Drop the few slices whose orientation differs from the majority.

    Raises
    ------
    InputError
        ``ct_geometry_invalid`` when a slice has no valid Image Orientation,
        ``ct_mixed_orientation`` when more than 10 % of slices differ.
    """
    orientations = []
    for header in headers:
        orientation = header.orientation
        if orientation is None or "ImagePositionPatient" not in header.ds:
            raise InputError(
                ErrorCode.CT_GEOMETRY_INVALID,
                f"{header.path} lacks Image Orientation (Patient) or Image Position "
                "(Patient), which every CT image must have; the series cannot be stacked",
            )
        orientations.append(orientation)

    labels = _cluster_orientations(orientations)
    counts = Counter(labels)
    majority_label, majority_count = counts.most_common(1)[0]
    stray_count = len(headers) - majority_count
    if stray_count == 0:
        return headers, []
    if stray_count / len(headers) > MAX_STRAY_ORIENTATION_FRACTION:
        raise InputError(
            ErrorCode.CT_MIXED_ORIENTATION,
            f"the series mixes {len(counts)} orientations ({majority_count} of {len(headers)} "
            "slices share the most common one); pass the images of one orientation",
        )
    kept = [
        header for header, label in zip(headers, labels, strict=True) if label == majority_label
    ]
    warning = InputWarning(
        WarningCode.CT_ORIENTATION_MINORITY_DROPPED,
        f"{stray_count} of {len(headers)} slices have another Image Orientation (Patient) "
        "than the rest and were dropped",
    )
    return kept, [warning]


def _cluster_orientations(orientations: list[np.ndarray]) -> list[int]:
    representatives: list[np.ndarray] = []
    labels = []
    for orientation in orientations:
        for index, representative in enumerate(representatives):
            if np.max(np.abs(orientation - representative)) < ORIENTATION_TOLERANCE:
                labels.append(index)
                break
        else:
            representatives.append(orientation)
            labels.append(len(representatives) - 1)
    return labels
