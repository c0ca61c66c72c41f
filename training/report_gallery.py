"""Grad-CAM gallery for reports: a few hips per class rendered as PNG overlays with an index.

``hipfuse-train evaluate`` writes the gallery beside the metrics, because it
has the cohort's images; ``hipfuse-train report`` only reads it. Overlays come
from the renderers the node uses (:mod:`hipfuse.inference.outputs`), so they
carry the same burned-in labels.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from PIL import Image

from hipfuse.inference.types import HIP_CLASSES, InputError
from hipfuse.training.cohort import HipRecord

if TYPE_CHECKING:
    from hipfuse.inference.model.bundle import Bundle

log = structlog.get_logger(__name__)

GALLERY_DIR_NAME = "gallery"
GALLERY_INDEX_NAME = "gallery.json"
DEFAULT_HIPS_PER_CLASS = 2
# Overlays are shrunk to this width so a report with a dozen of them stays a few MB.
MAX_OVERLAY_WIDTH_PX = 384
# CT planes shown per hip (the axial plane adds little beside the coronal one for a hip).
GALLERY_CT_PLANES = ("coronal", "axial")


def select_gallery_hips(
    hips: Sequence[HipRecord], per_class: int = DEFAULT_HIPS_PER_CLASS
) -> list[HipRecord]:
    """Return the first ``per_class`` hips of each true class, in manifest order."""
    chosen: list[HipRecord] = []
    for hip_class in HIP_CLASSES:
        chosen.extend([hip for hip in hips if hip.label is hip_class][:per_class])
    return chosen


def _save_png(rgb: np.ndarray, path: Path) -> None:
    image = Image.fromarray(rgb)
    if image.width > MAX_OVERLAY_WIDTH_PX:
        height = max(1, round(image.height * MAX_OVERLAY_WIDTH_PX / image.width))
        image = image.resize((MAX_OVERLAY_WIDTH_PX, height), Image.BILINEAR)
    image.save(path, optimize=True)


def write_gallery(
    bundle: Bundle,
    hips: Sequence[HipRecord],
    out_dir: Path,
    *,
    per_class: int = DEFAULT_HIPS_PER_CLASS,
) -> dict[str, Any]:
    """Analyse a few hips per class and write their overlays and ``gallery.json``.

    Parameters
    ----------
    bundle
        The model to explain.
    hips
        Candidate hips (typically the evaluated split); the first ``per_class``
        of each true class are shown.
    out_dir
        Evaluation folder; files go to ``out_dir / "gallery"``.

    Returns
    -------
    dict
        The index: ``entries``, a list of ``{"hip_id", "label", "predicted",
        "probability", "attention", "sources", "images": [{"file", "view"}]}``
        with files relative to ``out_dir``.
    """
    from hipfuse.inference.outputs import ct_overlays, radiograph_overlay
    from hipfuse.inference.pipeline import analyze_study, read_inputs

    gallery_dir = Path(out_dir) / GALLERY_DIR_NAME
    gallery_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for hip in select_gallery_hips(hips, per_class):
        try:
            inputs = read_inputs(hip.radiograph_path, hip.ct_path, hip.text_path)
            study = analyze_study(bundle, inputs, gradcam=True)
        except InputError as error:
            log.warning("gallery_hip_skipped", hip_id=hip.hip_id, code=error.code)
            continue
        result = next((r for r in study.hips if r.laterality is hip.laterality), None)
        if result is None:
            log.warning("gallery_hip_skipped", hip_id=hip.hip_id, code="hip_not_found")
            continue
        stem = "".join(c if c.isalnum() or c in "-_" else "_" for c in hip.hip_id)
        images = []
        if result.radiograph_cam is not None:
            name = f"{stem}_radiograph.png"
            _save_png(radiograph_overlay(study, result, bundle), gallery_dir / name)
            images.append({"file": f"{GALLERY_DIR_NAME}/{name}", "view": "radiograph"})
        if result.ct_cam is not None:
            planes = ct_overlays(study, result, bundle)
            for plane in GALLERY_CT_PLANES:
                name = f"{stem}_ct_{plane}.png"
                _save_png(planes[plane], gallery_dir / name)
                images.append({"file": f"{GALLERY_DIR_NAME}/{name}", "view": f"CT {plane}"})
        prediction = result.prediction
        entries.append(
            {
                "hip_id": hip.hip_id,
                "label": hip.label.value,
                "predicted": prediction.predicted.value,
                "probability": float(prediction.probabilities[prediction.predicted]),
                "attention": {m.value: float(w) for m, w in prediction.attention.items()},
                "sources": [
                    str(path)
                    for path in (hip.radiograph_path, hip.ct_path, hip.text_path)
                    if path is not None
                ],
                "images": images,
            }
        )
    index = {"explained_class": "predicted", "entries": entries}
    (Path(out_dir) / GALLERY_INDEX_NAME).write_text(
        json.dumps(index, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    log.info("gallery_written", n_hips=len(entries), folder=str(gallery_dir))
    return index
