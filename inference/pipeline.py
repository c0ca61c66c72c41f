"""Analyse one study: read inputs, find each hip, run the bundle, map heat maps back.

This is the one path from inputs to per-hip results; ``hipfuse-analyze``, the
node and the benchmark all call :func:`analyze_study`.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import structlog

from hipfuse.inference.readers.consistency import check_same_patient
from hipfuse.inference.readers.ct import read_ct_series, reorient_to_canonical
from hipfuse.inference.readers.nifti import read_nifti_ct
from hipfuse.inference.readers.radiograph import read_radiograph
from hipfuse.inference.readers.text import read_clinical_text
from hipfuse.inference.regions.ct import ct_map_to_volume, find_ct_hips
from hipfuse.inference.regions.radiograph import find_radiograph_hips, radiograph_map_to_source
from hipfuse.inference.types import (
    ClinicalText,
    CTRegion,
    CTVolume,
    InputError,
    InputWarning,
    Laterality,
    Radiograph,
    RadiographRegion,
)

if TYPE_CHECKING:
    from hipfuse.inference.model.bundle import Bundle
    from hipfuse.inference.model.predict import HipPrediction

log = structlog.get_logger(__name__)

# Right before left, matching the order of findings in the SR.
HIP_ORDER = (Laterality.RIGHT, Laterality.LEFT)


@dataclass
class StudyInputs:
    """Decoded inputs of one study; any of them may be absent."""

    radiograph: Radiograph | None = None
    ct: CTVolume | None = None
    text: ClinicalText | None = None
    decode_s: float = 0.0


@dataclass
class HipResult:
    """Everything known about one hip after analysis.

    Attributes
    ----------
    prediction
        Probabilities, predicted class, modality attention and crop-shaped maps.
    radiograph_region, ct_region
        Where the hip was found, or ``None`` when that image is absent or the
        hip was not found in it.
    radiograph_cam
        Grad-CAM map pasted back onto the source radiograph pixels.
    ct_cam
        Grad-CAM map on the canonical CT volume grid (``StudyResult.ct``).
    """

    prediction: HipPrediction
    radiograph_region: RadiographRegion | None
    ct_region: CTRegion | None
    radiograph_cam: np.ndarray | None = None
    ct_cam: np.ndarray | None = None

    @property
    def laterality(self) -> Laterality:
        """The patient's hip this result belongs to."""
        return self.prediction.laterality


@dataclass
class StudyResult:
    """Per-hip results of one study with the inputs they refer to.

    ``ct`` is the volume in canonical orientation, the grid of every ``ct_cam``.
    """

    hips: list[HipResult]
    radiograph: Radiograph | None
    ct: CTVolume | None
    text: ClinicalText | None
    warnings: list[InputWarning] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)


def read_inputs(
    radiograph_path: Path | None = None,
    ct_path: Path | None = None,
    text_path: Path | None = None,
) -> StudyInputs:
    """Read and decode the inputs of one study.

    ``ct_path`` may be a folder or list of DICOM files or a NIfTI file
    (``.nii`` or ``.nii.gz``).
    """
    if radiograph_path is None and ct_path is None and text_path is None:
        raise InputError(
            "no_input", "no input given: pass a radiograph, a CT series or a clinical text"
        )
    started = time.perf_counter()
    radiograph = read_radiograph(Path(radiograph_path)) if radiograph_path else None
    ct = None
    if ct_path:
        ct_path = Path(ct_path)
        if ct_path.name.endswith((".nii", ".nii.gz")):
            ct = read_nifti_ct(ct_path)
        else:
            ct = read_ct_series(ct_path)
    text = read_clinical_text(Path(text_path)) if text_path else None
    return StudyInputs(radiograph, ct, text, decode_s=time.perf_counter() - started)


def analyze_study(bundle: Bundle, inputs: StudyInputs, gradcam: bool = True) -> StudyResult:
    """Run the bundle on every hip found in the study's inputs.

    A hip found in one image but not the other is analysed with the
    modalities that show it, with a warning in the result. Inputs from different
    patients are rejected before any model work.

    Raises
    ------
    InputError
        When inputs belong to different patients, or no hip is found in any
        image and there is no image-free input to analyse.
    """
    from hipfuse.inference.model.predict import HipInputs, predict

    timings: dict[str, float] = {"decode_s": inputs.decode_s}
    warnings: list[InputWarning] = []
    if inputs.radiograph is not None:
        warnings.extend(inputs.radiograph.warnings)
    warnings.extend(check_same_patient(inputs.radiograph, inputs.ct, inputs.text))

    # The note is embedded in a thread while the images are searched for hips,
    # so text encoding overlaps the region search instead of following it.
    text_thread = _TextEmbeddingThread(bundle, inputs.text)
    text_thread.start()

    preprocessing = bundle.config.preprocessing
    started = time.perf_counter()
    radiograph_regions: dict[Laterality, RadiographRegion] = {}
    if inputs.radiograph is not None:
        try:
            search = find_radiograph_hips(
                inputs.radiograph,
                preprocessing.radiograph.crop_px,
                preprocessing.radiograph.crop_mm,
            )
        except InputError as error:
            if error.code != "hip_not_found" or not (inputs.ct or inputs.text):
                raise
            # Another input remains, so the radiograph is masked instead of failing the study.
            warnings.append(_masked_input_warning("radiograph", error))
        else:
            radiograph_regions = search.regions
            warnings.extend(search.warnings)
    timings["radiograph_regions_s"] = time.perf_counter() - started

    started = time.perf_counter()
    canonical_ct = None
    ct_regions: dict[Laterality, CTRegion] = {}
    if inputs.ct is not None:
        # The canonical volume carries the reader's warnings plus any from reorienting.
        canonical_ct = reorient_to_canonical(inputs.ct)
        warnings.extend(canonical_ct.warnings)
        try:
            search = find_ct_hips(
                canonical_ct,
                tuple(preprocessing.ct.crop_shape),
                tuple(preprocessing.ct.spacing_mm),
            )
        except InputError as error:
            if error.code != "hip_not_found" or not (inputs.radiograph or inputs.text):
                raise
            warnings.append(_masked_input_warning("CT", error))
        else:
            ct_regions = search.regions
            warnings.extend(search.warnings)
    timings["ct_regions_s"] = time.perf_counter() - started

    text = inputs.text.text if inputs.text is not None else None
    hips: list[HipInputs] = []
    for laterality in HIP_ORDER:
        radiograph_region = radiograph_regions.get(laterality)
        ct_region = ct_regions.get(laterality)
        if radiograph_region is None and ct_region is None and (inputs.radiograph or inputs.ct):
            warnings.append(
                InputWarning(
                    "hip_not_analysed",
                    f"the {_side_name(laterality)} hip was not found in any image, "
                    "so it is not analysed",
                )
            )
            continue
        hips.append(
            HipInputs(
                laterality=laterality,
                radiograph=radiograph_region.crop if radiograph_region else None,
                ct=ct_region.crop if ct_region else None,
                text=text,
            )
        )
    text_thread.join()
    if text_thread.error is not None:
        raise text_thread.error
    if not hips:
        raise InputError("hip_not_found", "no hip was found in the radiograph or the CT")

    ready = {text_thread.text: text_thread.embedding} if text_thread.text is not None else None
    predictions = predict(bundle, hips, gradcam=gradcam, text_embeddings=ready)
    timings.update(predictions.timings)
    # predict found the embedding ready: the encoding time is the thread's.
    timings["text_encoding_s"] = text_thread.elapsed_s

    started = time.perf_counter()
    results = []
    for prediction in predictions:
        radiograph_region = radiograph_regions.get(prediction.laterality)
        ct_region = ct_regions.get(prediction.laterality)
        result = HipResult(prediction, radiograph_region, ct_region)
        if gradcam and radiograph_region is not None and prediction.radiograph_cam is not None:
            result.radiograph_cam = radiograph_map_to_source(
                radiograph_region, prediction.radiograph_cam, inputs.radiograph.pixels.shape
            )
        if gradcam and ct_region is not None and prediction.ct_cam is not None:
            result.ct_cam = ct_map_to_volume(ct_region, prediction.ct_cam, canonical_ct)
        results.append(result)
    timings["map_back_s"] = time.perf_counter() - started

    log.info(
        "study_analyzed",
        study_instance_uid=_study_uid(inputs),
        hips=len(results),
        warnings=[warning.code for warning in warnings],
        **{name: round(value, 4) for name, value in timings.items()},
    )
    return StudyResult(results, inputs.radiograph, canonical_ct, inputs.text, warnings, timings)


class _TextEmbeddingThread(threading.Thread):
    """Embed a study's note with the bundle's text encoder, timing it."""

    def __init__(self, bundle: Bundle, text: ClinicalText | None) -> None:
        super().__init__(name="hipfuse-text-embedding", daemon=True)
        self.bundle = bundle
        self.text = text.text if text is not None else None
        self.embedding = None
        self.elapsed_s = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        if self.text is None:
            return
        started = time.perf_counter()
        try:
            self.embedding = self.bundle.text_encoder.encode(self.text)
        except BaseException as error:  # re-raised in the calling thread
            self.error = error
        self.elapsed_s = time.perf_counter() - started


def _masked_input_warning(name: str, error: InputError) -> InputWarning:
    return InputWarning(
        "input_masked",
        f"no hip was found in the {name} ({error}), so the {name} is left out "
        "and the model uses the other inputs",
    )


def _side_name(laterality: Laterality) -> str:
    return "right" if laterality is Laterality.RIGHT else "left"


def _study_uid(inputs: StudyInputs) -> str:
    for source in (inputs.radiograph, inputs.ct):
        if source is not None and source.identity.study_instance_uid:
            return source.identity.study_instance_uid
    return ""
