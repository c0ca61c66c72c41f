"""Encode the Grad-CAM overlays of a study as Secondary Capture images.

Per hip, right before left: the whole radiograph with the hip's heat map, box and
caption burned in, then the CT axial, coronal and sagittal planes through the
heat-map maximum. The pixels are the RGB renderings of
:mod:`hipfuse.inference.outputs`, the same images researchers get as PNG files.

Each hip gets its own series, because Laterality (0020,0060) belongs to the
General Series module and so must be the same for every image of a series.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import structlog
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from hipfuse.inference.outputs import CT_PLANES, ct_overlays, radiograph_overlay
from hipfuse.inference.types import Laterality
from hipfuse.node.encode import codes
from hipfuse.node.encode.labels import (
    MANUFACTURER,
    BundleIdentity,
    DeviceIdentity,
    labelled_description,
    not_for_clinical_use_statement,
)
from hipfuse.node.encode.sources import (
    SourceSets,
    find_radiograph,
    nearest_ct_slice,
    split_sources,
)
from hipfuse.node.encode.sr import ordered_hips

if TYPE_CHECKING:
    from hipfuse.inference.pipeline import HipResult, StudyResult

log = structlog.get_logger(__name__)

# Patient Orientation (0020,0020) of each CT rendering, as (direction of increasing
# column index, direction of increasing row index). The renderings slice the
# canonical volume (axis 0 superior, 1 posterior, 2 patient left), so an axial
# slice is [posterior, left]. Coronal [superior, left] and sagittal [superior,
# posterior] slices are flipped upside down to put superior up, so their rows run
# to the feet.
CT_PLANE_ORIENTATION: dict[str, tuple[str, str]] = {
    "axial": ("L", "P"),
    "coronal": ("L", "F"),
    "sagittal": ("P", "F"),
}

_ORIENTATION_LETTERS = frozenset("APRLHF")

# Body Part Examined (0018,0015) defined term, DICOM PS3.16 Annex L.
_BODY_PART = "HIP"


@dataclass(frozen=True)
class _BundleView:
    """The ``bundle.config`` access path that the overlay renderers use."""

    config: BundleIdentity


@dataclass(frozen=True)
class _Capture:
    """One rendering with what its DICOM header needs."""

    pixels: np.ndarray
    orientation: tuple[str, str]
    sources: tuple[Dataset, ...]
    view: str


def _side(laterality: Laterality) -> str:
    return "right" if laterality is Laterality.RIGHT else "left"


def _check_orientation(orientation: tuple[str, str]) -> tuple[str, str]:
    for value in orientation:
        if not value or len(value) > 3 or not set(value) <= _ORIENTATION_LETTERS:
            raise ValueError(
                f"radiograph Patient Orientation {orientation} is not made of the letters "
                "A, P, R, L, H, F; fix the radiograph's row_direction and column_direction"
            )
    return orientation


def ct_peak_index(result: StudyResult, hip: HipResult) -> tuple[int, int, int]:
    """Return the canonical CT index that the rendered planes pass through.

    Mirrors :func:`hipfuse.inference.outputs.ct_overlays`: the heat-map maximum,
    or the located femoral head centre when the map is flat.
    """
    cam = hip.ct_cam
    if cam.max() > 0:
        return tuple(int(v) for v in np.unravel_index(int(np.argmax(cam)), cam.shape))
    inverse = np.linalg.inv(result.ct.affine)
    index = inverse @ np.array([*hip.ct_region.centre_mm, 1.0])
    return tuple(
        int(np.clip(round(v), 0, n - 1)) for v, n in zip(index[:3], cam.shape, strict=True)
    )


def _radiograph_capture(
    result: StudyResult, hip: HipResult, bundle: BundleIdentity, sources: SourceSets
) -> _Capture | None:
    if hip.radiograph_cam is None or hip.radiograph_region is None or result.radiograph is None:
        return None
    instance = result.radiograph.instance
    source = find_radiograph(sources, instance.sop_instance_uid if instance else None)
    orientation = _check_orientation(
        (result.radiograph.row_direction, result.radiograph.column_direction)
    )
    pixels = radiograph_overlay(result, hip, _BundleView(bundle))
    return _Capture(pixels, orientation, (source,) if source is not None else (), "radiograph")


def _ct_captures(
    result: StudyResult, hip: HipResult, bundle: BundleIdentity, sources: SourceSets
) -> list[_Capture]:
    if hip.ct_cam is None or hip.ct_region is None or result.ct is None:
        return []
    renderings = ct_overlays(result, hip, _BundleView(bundle))
    peak = ct_peak_index(result, hip)
    peak_mm = (result.ct.affine @ np.array([*peak, 1.0]))[:3]
    captures = []
    for plane, _axis in CT_PLANES:
        if plane == "axial":
            # An axial plane of the canonical volume is one source slice.
            nearest = nearest_ct_slice(sources.ct_slices, peak_mm)
            plane_sources = (nearest,) if nearest is not None else ()
        else:
            # Coronal and sagittal planes cut through every slice of the series.
            plane_sources = sources.ct_slices
        captures.append(
            _Capture(renderings[plane], CT_PLANE_ORIENTATION[plane], plane_sources, f"CT {plane}")
        )
    return captures


def _source_image_sequence(images: Sequence[Dataset]) -> list[Dataset]:
    items = []
    purpose = Dataset()
    purpose.CodeValue = codes.SOURCE_FOR_IMAGE_PROCESSING.value
    purpose.CodingSchemeDesignator = codes.SOURCE_FOR_IMAGE_PROCESSING.scheme_designator
    purpose.CodeMeaning = codes.SOURCE_FOR_IMAGE_PROCESSING.meaning
    for ds in images:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        item.PurposeOfReferenceCodeSequence = [purpose]
        items.append(item)
    return items


def _derivation_description(hip: HipResult, bundle: BundleIdentity, view: str) -> str:
    predicted = hip.prediction.predicted.value
    text = (
        f"AI output: Grad-CAM heat map of the hipfuse model {bundle.name} {bundle.version} "
        f"for the class {predicted} of the {_side(hip.laterality)} hip, blended over the "
        f"{view} source image; heat map, region box and caption are burned in."
    )
    statement = not_for_clinical_use_statement(bundle)
    return f"{text} {statement}" if statement else text


def _copy_lossy_compression(sc: Dataset, images: Sequence[Dataset]) -> None:
    # General Image module: an image derived from lossy-compressed pixels stays
    # marked as lossy.
    for ds in images:
        if ds.get("LossyImageCompression") == "01":
            sc.LossyImageCompression = "01"
            for keyword in ("LossyImageCompressionRatio", "LossyImageCompressionMethod"):
                if keyword in ds:
                    setattr(sc, keyword, ds[keyword].value)
            return


def _encode_capture(
    capture: _Capture,
    hip: HipResult,
    bundle: BundleIdentity,
    sources: SourceSets,
    device: DeviceIdentity,
    *,
    series_instance_uid: str,
    series_number: int,
    instance_number: int,
    series_description: str,
) -> SCImage:
    row, column = capture.orientation
    simple = len(row) == 1 and len(column) == 1

    sc = SCImage.from_ref_dataset(
        ref_dataset=sources.primary,
        pixel_array=np.ascontiguousarray(capture.pixels, dtype=np.uint8),
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        laterality=hip.laterality.value,
        # highdicom accepts single letters only, so compound values are set below.
        patient_orientation=capture.orientation if simple else (row[0], column[0]),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description,
        manufacturer_model_name=bundle.name,
        software_versions=device.software_version,
        device_serial_number=device.serial_number,
        institution_name=device.institution_name,
    )

    # General Image and SC Image modules.
    sc.PatientOrientation = [row, column]
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = labelled_description(f"AI output: Grad-CAM, {capture.view}", bundle)
    sc.DerivationDescription = _derivation_description(hip, bundle, capture.view)
    if capture.sources:
        sc.SourceImageSequence = _source_image_sequence(capture.sources)
    _copy_lossy_compression(sc, capture.sources)

    # General Series and SC Equipment modules.
    sc.BodyPartExamined = _BODY_PART
    sc.ConversionType = "WSD"  # workstation: rendered by software, not digitised
    if device.station_name:
        sc.StationName = device.station_name
    return sc


def build_secondary_captures(
    result: StudyResult,
    bundle_config: BundleIdentity,
    source_datasets: Sequence[Dataset],
    *,
    series_number: int,
    device: DeviceIdentity | None = None,
) -> list[Dataset]:
    """Build the Secondary Capture images of one study's Grad-CAM overlays.

    Parameters
    ----------
    result
        Per-hip results with their heat maps (``radiograph_cam``, ``ct_cam``).
    bundle_config
        Configuration of the bundle that produced them (``BundleConfig``).
    source_datasets
        The source radiograph and CT slices (headers are enough). The images go
        into the study of the first one and copy its Patient and General Study
        modules.
    series_number
        Series Number of the first hip's series; the next hip's series gets the
        following number.
    device
        The node that writes the images; defaults to ``DeviceIdentity()``.

    Returns
    -------
    list of pydicom.dataset.Dataset
        ``highdicom.sc.SCImage`` objects, right hip before left, each hip's
        radiograph first, then its axial, coronal and sagittal CT planes. A hip
        without heat maps gets no image; no heat map at all gives an empty list.

    Raises
    ------
    ValueError
        When the source datasets belong to different patients or lack UIDs, or
        the result has no hip.
    """
    device = device or DeviceIdentity()
    sources = split_sources(source_datasets)
    images: list[Dataset] = []
    next_series_number = series_number
    for hip in ordered_hips(result):
        captures = []
        radiograph = _radiograph_capture(result, hip, bundle_config, sources)
        if radiograph is not None:
            captures.append(radiograph)
        captures.extend(_ct_captures(result, hip, bundle_config, sources))
        if not captures:
            continue
        series_instance_uid = generate_uid()
        description = labelled_description(
            f"hipfuse Grad-CAM {_side(hip.laterality)} hip (AI output)", bundle_config
        )
        for instance_number, capture in enumerate(captures, start=1):
            images.append(
                _encode_capture(
                    capture,
                    hip,
                    bundle_config,
                    sources,
                    device,
                    series_instance_uid=series_instance_uid,
                    series_number=next_series_number,
                    instance_number=instance_number,
                    series_description=description,
                )
            )
        log.info(
            "secondary_captures_built",
            study_instance_uid=sources.primary.StudyInstanceUID,
            series_instance_uid=series_instance_uid,
            laterality=hip.laterality.value,
            images=len(captures),
        )
        next_series_number += 1
    return images
