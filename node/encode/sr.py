"""Encode a study's per-hip results as a Comprehensive 3D SR (TID 1500 Measurement Report).

Document layout::

    CONTAINER Imaging Measurement Report (TID 1500)
      Language, Device observer (TID 1002/1004), Procedure reported
      Image Library (TID 1600): the images the measurement groups reference
      Imaging Measurements
        Measurement Group (TID 1501), right hip before left, each with
          Tracking Identifier and Tracking Unique Identifier (TID 4108)
          Algorithm Identification (TID 4019): bundle name, version, checksum
          Finding = predicted class; Finding Site = Hip joint with Laterality
          Probability of each class (TID 300, unit "1", post-coordinated
            with the class as Finding)
          Attention weight of each model input (TID 300, unit "1")
          Source images: the radiograph and the CT slice through the hip
      Qualitative Evaluations
        Clinical text available (Yes/No); "not for clinical use" statement;
        input warnings as comments

The evidence (every source instance) is listed in the Current Requested
Procedure Evidence Sequence, or in Pertinent Other Evidence for instances of
another study.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import structlog
from highdicom.sr import (
    AlgorithmIdentification,
    CodeContentItem,
    Comprehensive3DSR,
    ContainerContentItem,
    ContentSequence,
    DeviceObserverIdentifyingAttributes,
    FindingSite,
    Measurement,
    MeasurementReport,
    MeasurementsAndQualitativeEvaluations,
    ObservationContext,
    ObserverContext,
    QualitativeEvaluation,
    RelationshipTypeValues,
    SourceImageForMeasurementGroup,
    TextContentItem,
    TrackingIdentifier,
)
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as pydicom_codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid

from hipfuse.inference.types import HipClass, InputModality, Laterality
from hipfuse.node.encode import codes
from hipfuse.node.encode.labels import (
    MANUFACTURER,
    BundleIdentity,
    DeviceIdentity,
    labelled_description,
    not_for_clinical_use_statement,
)
from hipfuse.node.encode.library import image_library
from hipfuse.node.encode.sources import (
    SourceSets,
    find_radiograph,
    nearest_ct_slice,
    split_sources,
)

if TYPE_CHECKING:
    from hipfuse.inference.pipeline import HipResult, StudyResult

log = structlog.get_logger(__name__)

SR_SERIES_DESCRIPTION = "hipfuse AI result"

# Right before left, the order of the measurement groups.
_HIP_ORDER = (Laterality.RIGHT, Laterality.LEFT)

# Probabilities from a float32 softmax sum to 1 within about 1e-7. A larger gap
# means the values are not a distribution over the four classes.
_PROBABILITY_SUM_TOLERANCE = 1e-4

# Text Value (0040,A160) is UT, but viewers show short comments best.
_MAX_COMMENT_CHARS = 1024


def _side(laterality: Laterality) -> str:
    return "right" if laterality is Laterality.RIGHT else "left"


def ordered_hips(result: StudyResult) -> list[HipResult]:
    """Return the study's hips right before left.

    Raises
    ------
    ValueError
        When the result has no hip or two hips of the same side.
    """
    by_side: dict[Laterality, HipResult] = {}
    for hip in result.hips:
        if hip.laterality in by_side:
            raise ValueError(
                f"the result contains the {_side(hip.laterality)} hip twice; "
                "pass one HipResult per side"
            )
        by_side[hip.laterality] = hip
    if not by_side:
        raise ValueError("the result contains no hip, so there is no finding to encode")
    return [by_side[side] for side in _HIP_ORDER if side in by_side]


def _check_probabilities(hip: HipResult) -> None:
    probabilities = hip.prediction.probabilities
    missing = [c.value for c in HipClass if c not in probabilities]
    if missing:
        raise ValueError(
            f"{_side(hip.laterality)} hip: probabilities lack the classes {missing}; "
            "pass one probability per HipClass"
        )
    for hip_class, value in probabilities.items():
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            raise ValueError(
                f"{_side(hip.laterality)} hip: probability of {hip_class.value} is {value}, "
                "outside [0, 1]"
            )
    total = math.fsum(float(v) for v in probabilities.values())
    if abs(total - 1.0) > _PROBABILITY_SUM_TOLERANCE:
        raise ValueError(
            f"{_side(hip.laterality)} hip: probabilities sum to {total:.6f}, not 1; "
            "pass the softmax output of the model"
        )
    if hip.prediction.predicted not in probabilities:
        raise ValueError(
            f"{_side(hip.laterality)} hip: predicted class {hip.prediction.predicted!r} "
            "is not a HipClass"
        )


# TID 4019 Algorithm Identification


def algorithm_identification(bundle: BundleIdentity) -> AlgorithmIdentification:
    """Build TID 4019 for the bundle: name, version, and its checksum and intended use."""
    parameters = [f"intended_use={bundle.intended_use.value}"]
    if bundle.weights_sha256:
        parameters.append(f"weights_sha256={bundle.weights_sha256}")
    return AlgorithmIdentification(
        name=bundle.name,
        version=bundle.version,
        parameters=parameters,
        manufacturer=MANUFACTURER,
    )


# TID 300 Measurement


def _unit_measurement(name: Code, value: float) -> Measurement:
    return Measurement(name=name, value=float(value), unit=codes.UNIT_ONE)


def probability_measurement(hip_class: HipClass, value: float) -> Measurement:
    """Build the NUM item "Probability" of one class, unit "1".

    The class is a HAS CONCEPT MOD child (Finding = class), the post-coordination
    of the measurement name that TID 300 row "$ModType" allows.
    """
    measurement = _unit_measurement(codes.PROBABILITY, value)
    modifier = CodeContentItem(
        name=codes.FINDING,
        value=codes.HIP_CLASS_CODES[hip_class],
        relationship_type=RelationshipTypeValues.HAS_CONCEPT_MOD,
    )
    num_item = measurement[0]
    if "ContentSequence" not in num_item:
        num_item.ContentSequence = ContentSequence()
    num_item.ContentSequence.insert(0, modifier)
    return measurement


# TID 1501 Measurement and Qualitative Evaluation Group


def _group_source_images(
    hip: HipResult, sources: SourceSets, radiograph_uid: str | None
) -> list[Dataset]:
    images: list[Dataset] = []
    if hip.radiograph_region is not None:
        radiograph = find_radiograph(sources, radiograph_uid)
        if radiograph is not None:
            images.append(radiograph)
    if hip.ct_region is not None and sources.ct_slices:
        ct_slice = nearest_ct_slice(sources.ct_slices, hip.ct_region.centre_mm)
        if ct_slice is not None:
            images.append(ct_slice)
    return images


def measurement_group(
    hip: HipResult,
    bundle: BundleIdentity,
    source_images: Sequence[Dataset],
    tracking_uid: str,
) -> MeasurementsAndQualitativeEvaluations:
    """Build the TID 1501 group of one hip."""
    prediction = hip.prediction
    probabilities = [
        probability_measurement(hip_class, prediction.probabilities[hip_class])
        for hip_class in HipClass
    ]
    attention = [
        _unit_measurement(codes.ATTENTION_CODES[modality], prediction.attention[modality])
        for modality in InputModality
        if modality in prediction.attention
    ]
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(
            uid=tracking_uid, identifier=f"{_side(hip.laterality)} hip"
        ),
        algorithm_id=algorithm_identification(bundle),
        finding_type=codes.HIP_CLASS_CODES[prediction.predicted],
        finding_sites=[
            FindingSite(
                anatomic_location=codes.HIP_JOINT,
                laterality=codes.LATERALITY_CODES[hip.laterality],
            )
        ],
        measurements=[*probabilities, *attention],
        source_images=[
            SourceImageForMeasurementGroup.from_source_image(ds) for ds in source_images
        ],
    )


# TID 1500 row "Qualitative Evaluations"


def qualitative_evaluations(result: StudyResult, bundle: BundleIdentity) -> ContainerContentItem:
    """Build the document-level Qualitative Evaluations container.

    It contains whether clinical text was available, the not-for-clinical-use
    statement of a non-clinical bundle and each input warning as a comment.
    """
    text_available = QualitativeEvaluation(
        name=codes.CLINICAL_TEXT_AVAILABLE,
        value=codes.YES if result.text is not None else codes.NO,
    )
    items = [*text_available]
    statement = not_for_clinical_use_statement(bundle)
    if statement is not None:
        items.append(_comment(statement))
    for warning in result.warnings:
        items.append(_comment(f"Input warning {warning.code}: {warning.message}"))
    container = ContainerContentItem(
        name=codes.QUALITATIVE_EVALUATIONS,
        relationship_type=RelationshipTypeValues.CONTAINS,
    )
    container.ContentSequence = ContentSequence(items)
    return container


def _comment(text: str) -> TextContentItem:
    return TextContentItem(
        name=codes.COMMENT,
        value=text[:_MAX_COMMENT_CHARS],
        relationship_type=RelationshipTypeValues.CONTAINS,
    )


def _procedures(sources: SourceSets) -> list[Code]:
    procedures = []
    if sources.radiographs:
        procedures.append(codes.PLAIN_RADIOGRAPHY)
    if sources.ct_slices:
        procedures.append(codes.COMPUTED_TOMOGRAPHY)
    return procedures


def _observer_context(bundle: BundleIdentity, device: DeviceIdentity) -> ObservationContext:
    device_uid = device.device_uid or generate_uid(
        entropy_srcs=[MANUFACTURER, device.serial_number]
    )
    attributes = DeviceObserverIdentifyingAttributes(
        uid=device_uid,
        name=device.station_name or MANUFACTURER,
        manufacturer_name=MANUFACTURER,
        model_name=bundle.name,
        serial_number=device.serial_number,
    )
    return ObservationContext(
        observer_device_context=ObserverContext(
            observer_type=pydicom_codes.DCM.Device,
            observer_identifying_attributes=attributes,
        )
    )


def build_sr(
    result: StudyResult,
    bundle_config: BundleIdentity,
    source_datasets: Sequence[Dataset],
    *,
    series_number: int,
    instance_number: int = 1,
    device: DeviceIdentity | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """Build the Comprehensive 3D SR of one study's result.

    Parameters
    ----------
    result
        Per-hip results of the study.
    bundle_config
        Configuration of the bundle that produced them (``BundleConfig``).
    source_datasets
        The source radiograph and CT slices (headers are enough). The SR goes
        into the study of the first one and copies its Patient and General Study
        modules; all of them are listed as evidence.
    series_number, instance_number
        Series Number and Instance Number of the SR.
    device
        The node that writes the SR; defaults to ``DeviceIdentity()``.
    series_instance_uid, sop_instance_uid
        UIDs to use, for example to rebuild the same SR after a restart; new
        UIDs are generated when ``None``.

    Returns
    -------
    pydicom.dataset.Dataset
        The SR (a ``highdicom.sr.Comprehensive3DSR``), ready for ``save_as``.

    Raises
    ------
    ValueError
        When the source datasets belong to different patients or lack UIDs,
        the result has no hip, or a hip's probabilities are not a distribution.
    """
    device = device or DeviceIdentity()
    sources = split_sources(source_datasets)
    hips = ordered_hips(result)
    for hip in hips:
        _check_probabilities(hip)

    sop_instance_uid = sop_instance_uid or generate_uid()
    series_instance_uid = series_instance_uid or generate_uid()
    radiograph_uid = (
        result.radiograph.instance.sop_instance_uid
        if result.radiograph is not None and result.radiograph.instance is not None
        else None
    )

    groups = []
    library: dict[str, Dataset] = {}
    for hip in hips:
        images = _group_source_images(hip, sources, radiograph_uid)
        library.update({ds.SOPInstanceUID: ds for ds in images})
        tracking_uid = generate_uid(entropy_srcs=[sop_instance_uid, hip.laterality.value])
        groups.append(measurement_group(hip, bundle_config, images, tracking_uid))

    report = MeasurementReport(
        observation_context=_observer_context(bundle_config, device),
        procedure_reported=_procedures(sources),
        imaging_measurements=groups,
        title=codes.IMAGING_MEASUREMENT_REPORT,
    )
    root_items = report[0].ContentSequence
    if library:
        # TID 1500 puts the Image Library right before Imaging Measurements, the last item.
        orientation = (
            (result.radiograph.row_direction, result.radiograph.column_direction)
            if result.radiograph is not None
            else None
        )
        root_items.insert(len(root_items) - 1, image_library(list(library.values()), orientation))
    root_items.append(qualitative_evaluations(result, bundle_config))

    evidence = [sources.primary, *(ds for ds in sources.all if ds is not sources.primary)]
    sr = Comprehensive3DSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=series_instance_uid,
        series_number=series_number,
        sop_instance_uid=sop_instance_uid,
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        institution_name=device.institution_name,
        series_description=labelled_description(SR_SERIES_DESCRIPTION, bundle_config),
        manufacturer_model_name=bundle_config.name,
        software_versions=device.software_version,
        device_serial_number=device.serial_number,
        coding_schemes=[codes.PRIVATE_SCHEME_ITEM],
    )
    if device.station_name:
        sr.StationName = device.station_name
    log.info(
        "sr_built",
        study_instance_uid=sr.StudyInstanceUID,
        sop_instance_uid=sr.SOPInstanceUID,
        hips=[hip.laterality.value for hip in hips],
        evidence_instances=len(evidence),
    )
    return sr
