"""Per-hip prediction with a loaded bundle: checks, normalisation, text, fusion, Grad-CAM."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import structlog
import torch

from hipfuse.inference.model.bundle import Bundle
from hipfuse.inference.model.fusion import CT_INDEX, RADIOGRAPH_INDEX, TEXT_INDEX, FusionOutput
from hipfuse.inference.model.gradcam import compute_gradcam
from hipfuse.inference.model.preprocess import (
    check_ct_crop,
    check_radiograph_crop,
    normalise_ct,
    normalise_radiograph,
)
from hipfuse.inference.model.text import TextEmbedding
from hipfuse.inference.types import (
    HIP_CLASSES,
    INPUT_MODALITIES,
    HipClass,
    InputError,
    InputModality,
    Laterality,
)

__all__ = [
    "HipInputs",
    "HipPrediction",
    "Predictions",
    "normalise_ct",
    "normalise_radiograph",
    "predict",
]

log = structlog.get_logger(__name__)

DEFAULT_BATCH_SIZE = 4
"""Hips per forward pass; a study has two."""


@dataclass
class HipInputs:
    """Inputs for one hip; any non-empty subset of the three modalities.

    Attributes
    ----------
    laterality
        Which hip.
    radiograph
        ``float32`` crop ``[row, column]`` on the ``[0, 1]`` scale, of the bundle's
        crop shape, already mirrored to the canonical side.
    ct
        ``float32`` crop ``[k, j, i]`` in HU, of the bundle's crop shape and spacing.
    text
        The patient's note; ``None``, empty or whitespace-only means no text.
    """

    laterality: Laterality
    radiograph: np.ndarray | None = None
    ct: np.ndarray | None = None
    text: str | None = None


@dataclass
class HipPrediction:
    """Result for one hip.

    Attributes
    ----------
    laterality
        Which hip.
    probabilities
        Calibrated probability of every class (they sum to 1).
    predicted
        Most probable class; Grad-CAM maps explain this class.
    attention
        Weight each modality received in the fusion, 0 for a missing one.
    available_modalities
        Modalities the prediction used, in ``INPUT_MODALITIES`` order.
    radiograph_cam, ct_cam
        Grad-CAM maps in ``[0, 1]`` of the crop's shape, ``None`` when the
        modality is missing or Grad-CAM was not requested.
    """

    laterality: Laterality
    probabilities: dict[HipClass, float]
    predicted: HipClass
    attention: dict[InputModality, float]
    available_modalities: tuple[InputModality, ...]
    radiograph_cam: np.ndarray | None = None
    ct_cam: np.ndarray | None = None


# Stages of ``Predictions.timings`` that are network compute; the rest is
# preprocessing and bookkeeping.
MODEL_COMPUTE_STAGES = (
    "text_encoding_s",
    "radiograph_encoder_s",
    "ct_encoder_s",
    "fusion_s",
    "gradcam_backward_s",
)


def model_compute_s(timings: dict[str, float]) -> float:
    """Return the seconds of network compute in a study's ``timings``."""
    return sum(timings.get(stage, 0.0) for stage in MODEL_COMPUTE_STAGES)


class Predictions(list[HipPrediction]):
    """Predictions in input order, with the seconds spent per stage in ``timings``.

    ``timings`` keys: ``preprocessing_s``, ``text_encoding_s``,
    ``radiograph_encoder_s``, ``ct_encoder_s``, ``fusion_s``,
    ``gradcam_backward_s`` (0 without Grad-CAM) and ``total_s``.
    """

    timings: dict[str, float]

    def __init__(self, items: list[HipPrediction], timings: dict[str, float]) -> None:
        super().__init__(items)
        self.timings = timings


@dataclass
class _PreparedHip:
    laterality: Laterality
    radiograph: np.ndarray | None
    ct: np.ndarray | None
    text: str | None
    text_vector: torch.Tensor | None = field(default=None)


def _prepare(bundle: Bundle, index: int, hip: HipInputs) -> _PreparedHip:
    preprocessing = bundle.config.preprocessing
    where = f"hip {index} ({hip.laterality.value})"
    radiograph = None
    ct = None
    try:
        if hip.radiograph is not None:
            crop = check_radiograph_crop(hip.radiograph, preprocessing.radiograph)
            radiograph = normalise_radiograph(crop, preprocessing.radiograph)
        if hip.ct is not None:
            crop = check_ct_crop(hip.ct, preprocessing.ct)
            ct = normalise_ct(crop, preprocessing.ct)
    except InputError as error:
        raise InputError(error.code, f"{where}: {error}") from error
    text = hip.text if hip.text is not None and hip.text.strip() else None
    return _PreparedHip(hip.laterality, radiograph, ct, text)


def _stack(arrays: list[np.ndarray | None], device: torch.device) -> torch.Tensor | None:
    present = [array for array in arrays if array is not None]
    if not present:
        return None
    # Rows of hips without this modality stay zero; the model never reads them.
    batch = np.zeros((len(arrays), 1, *present[0].shape), dtype=np.float32)
    for row, array in enumerate(arrays):
        if array is not None:
            batch[row, 0] = array
    return torch.from_numpy(batch).to(device)


def _to_prediction(
    hip: _PreparedHip,
    row: int,
    mask: torch.Tensor,
    output: FusionOutput,
    radiograph_cam: torch.Tensor | None,
    ct_cam: torch.Tensor | None,
) -> HipPrediction:
    probabilities = output.probabilities[row].double().cpu().tolist()
    attention = output.attention[row].double().cpu().tolist()
    present = mask[row].cpu().tolist()
    return HipPrediction(
        laterality=hip.laterality,
        probabilities={cls: float(p) for cls, p in zip(HIP_CLASSES, probabilities, strict=True)},
        predicted=HIP_CLASSES[int(np.argmax(probabilities))],
        attention={m: float(a) for m, a in zip(INPUT_MODALITIES, attention, strict=True)},
        available_modalities=tuple(m for m, p in zip(INPUT_MODALITIES, present, strict=True) if p),
        radiograph_cam=(
            radiograph_cam[row].cpu().numpy()
            if radiograph_cam is not None and present[RADIOGRAPH_INDEX]
            else None
        ),
        ct_cam=ct_cam[row].cpu().numpy() if ct_cam is not None and present[CT_INDEX] else None,
    )


def predict(
    bundle: Bundle,
    hips: list[HipInputs],
    gradcam: bool = True,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    text_embeddings: Mapping[str, TextEmbedding | None] | None = None,
) -> Predictions:
    """Classify hips and explain the predicted class with Grad-CAM.

    Parameters
    ----------
    bundle
        A loaded bundle.
    hips
        One entry per hip; each needs at least one modality.
    gradcam
        Compute heat maps (one extra backward pass to the last stages). Without
        them the forward runs under ``torch.inference_mode``.
    batch_size
        Hips per forward pass.
    text_embeddings
        Notes already embedded with ``bundle.text_encoder``, keyed by the note
        text; other notes are embedded here.

    Raises
    ------
    InputError
        ``no_modality`` for a hip without any input, or a crop check code
        (``radiograph_crop_shape``, ``ct_crop_not_finite``...) naming the hip.
    """
    started = time.perf_counter()
    timings = dict.fromkeys(
        (
            "preprocessing_s",
            "text_encoding_s",
            "radiograph_encoder_s",
            "ct_encoder_s",
            "fusion_s",
            "gradcam_backward_s",
        ),
        0.0,
    )
    prepared = [_prepare(bundle, index, hip) for index, hip in enumerate(hips)]
    timings["preprocessing_s"] = time.perf_counter() - started

    text_started = time.perf_counter()
    # Both hips of a study carry the same note: encode each distinct text once.
    vectors: dict[str, torch.Tensor | None] = {}
    ready = text_embeddings or {}
    for hip in prepared:
        if hip.text is not None and hip.text not in vectors:
            if hip.text in ready:
                encoded = ready[hip.text]
            else:
                encoded = bundle.text_encoder.encode(hip.text)
            vectors[hip.text] = encoded.vector if encoded is not None else None
        hip.text_vector = vectors.get(hip.text) if hip.text is not None else None
    timings["text_encoding_s"] = time.perf_counter() - text_started

    for index, hip in enumerate(prepared):
        if hip.radiograph is None and hip.ct is None and hip.text_vector is None:
            raise InputError(
                "no_modality",
                f"hip {index} ({hip.laterality.value}) has no radiograph, no CT and no "
                f"usable text: give at least one",
            )

    results: list[HipPrediction] = []
    device = bundle.device
    model = bundle.model
    for first in range(0, len(prepared), batch_size):
        batch = prepared[first : first + batch_size]
        radiograph = _stack([hip.radiograph for hip in batch], device)
        ct = _stack([hip.ct for hip in batch], device)
        text_rows = [hip.text_vector for hip in batch]
        text = None
        if any(vector is not None for vector in text_rows):
            dim = next(vector for vector in text_rows if vector is not None).shape[0]
            text = torch.stack(
                [vector if vector is not None else torch.zeros(dim) for vector in text_rows]
            ).to(device)
        mask = torch.zeros((len(batch), len(INPUT_MODALITIES)), dtype=torch.bool)
        for row, hip in enumerate(batch):
            mask[row, RADIOGRAPH_INDEX] = hip.radiograph is not None
            mask[row, CT_INDEX] = hip.ct is not None
            mask[row, TEXT_INDEX] = hip.text_vector is not None
        mask = mask.to(device)

        if gradcam:
            result = compute_gradcam(model, radiograph, ct, text, mask, timings=timings)
            output, radiograph_cam, ct_cam = result.output, result.radiograph_cam, result.ct_cam
        else:
            with torch.inference_mode():
                output = model(radiograph, ct, text, mask, timings=timings)
            radiograph_cam = ct_cam = None
        results.extend(
            _to_prediction(hip, row, mask, output, radiograph_cam, ct_cam)
            for row, hip in enumerate(batch)
        )

    timings["total_s"] = time.perf_counter() - started
    log.info(
        "hips_predicted",
        hip_count=len(results),
        gradcam=gradcam,
        bundle=bundle.config.name,
        total_s=round(timings["total_s"], 4),
    )
    return Predictions(results, timings)
