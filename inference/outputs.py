"""Write a study's results as JSON and PNG overlays for research use.

The JSON contains UIDs but no patient name, ID or birth date, so result folders
can be shared inside a research group without further de-identification of
the JSON itself (the overlays show only pixels and burned-in model output).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from hipfuse.inference.overlays import (
    Caption,
    blend_heat_map,
    burn_in_caption,
    draw_box,
    window_ct,
)
from hipfuse.inference.types import Laterality

if TYPE_CHECKING:
    from hipfuse.inference.model.bundle import Bundle
    from hipfuse.inference.pipeline import HipResult, StudyResult

RESULT_FORMAT_VERSION = 1

# CT planes through the heat-map maximum, as (name, array axis held fixed) on
# the canonical volume (axis 0 superior, 1 posterior, 2 patient left).
CT_PLANES = (("axial", 0), ("coronal", 1), ("sagittal", 2))


def result_to_dict(result: StudyResult, bundle: Bundle) -> dict[str, Any]:
    """Build the JSON-serialisable result document for one study."""
    config = bundle.config
    hips = []
    for hip in result.hips:
        prediction = hip.prediction
        entry: dict[str, Any] = {
            "laterality": hip.laterality.value,
            "predicted_class": prediction.predicted.value,
            "probabilities": {k.value: float(v) for k, v in prediction.probabilities.items()},
            "attention": {k.value: float(v) for k, v in prediction.attention.items()},
        }
        if hip.radiograph_region is not None:
            entry["radiograph_box_px"] = [float(v) for v in hip.radiograph_region.box]
            entry["radiograph_centre_px"] = [float(v) for v in hip.radiograph_region.centre]
        if hip.ct_region is not None:
            entry["ct_centre_mm"] = [float(v) for v in hip.ct_region.centre_mm]
            entry["ct_crop_affine"] = np.asarray(hip.ct_region.affine).tolist()
        hips.append(entry)
    inputs: dict[str, Any] = {}
    if result.radiograph is not None and result.radiograph.instance is not None:
        inputs["radiograph_sop_instance_uid"] = result.radiograph.instance.sop_instance_uid
    if result.ct is not None:
        inputs["ct_series_instance_uid"] = result.ct.identity.series_instance_uid
        inputs["ct_slices"] = int(result.ct.voxels.shape[0])
    inputs["clinical_text"] = result.text is not None
    study_uid = ""
    for source in (result.radiograph, result.ct):
        if source is not None and source.identity.study_instance_uid:
            study_uid = source.identity.study_instance_uid
            break
    return {
        "format_version": RESULT_FORMAT_VERSION,
        "study_instance_uid": study_uid,
        "model": {
            "name": config.name,
            "version": config.version,
            "intended_use": config.intended_use.value,
            "weights_sha256": config.weights_sha256,
        },
        "not_for_clinical_use": config.intended_use.value != "clinical",
        "inputs": inputs,
        "hips": hips,
        "warnings": [{"code": w.code, "message": w.message} for w in result.warnings],
        "timings_s": {k: round(float(v), 4) for k, v in result.timings_s.items()},
    }


def hip_caption(hip: HipResult, bundle: Bundle, view: str) -> Caption:
    """Caption burned into an overlay: AI output label, side, class and probability."""
    prediction = hip.prediction
    side = "RIGHT" if hip.laterality is Laterality.RIGHT else "LEFT"
    probability = prediction.probabilities[prediction.predicted]
    use = bundle.config.intended_use.value
    class_name = prediction.predicted.value.replace("_", " ")
    lines = [f"{side} hip: {class_name} p={probability:.2f}", view]
    if use != "clinical":
        lines.append(f"{use.upper()} MODEL - NOT FOR CLINICAL USE")
    return Caption(
        title=f"AI OUTPUT hipfuse {bundle.config.name} {bundle.config.version}", lines=tuple(lines)
    )


def radiograph_overlay(result: StudyResult, hip: HipResult, bundle: Bundle) -> np.ndarray:
    """Render one hip's radiograph heat map over the whole source image, box drawn."""
    rgb = blend_heat_map(result.radiograph.pixels, hip.radiograph_cam)
    rgb = draw_box(rgb, hip.radiograph_region.box)
    return burn_in_caption(rgb, hip_caption(hip, bundle, "radiograph Grad-CAM"))


def ct_overlays(result: StudyResult, hip: HipResult, bundle: Bundle) -> dict[str, np.ndarray]:
    """Render one hip's CT heat map on the three planes through its maximum.

    Slices are shown in radiological convention: axial and coronal with the
    patient's left at image right, superior up in coronal and sagittal.
    """
    volume = result.ct.voxels
    cam = hip.ct_cam
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape) if cam.max() > 0 else None
    if peak is None:
        # A flat map has no maximum: show the planes through the located head.
        inverse = np.linalg.inv(result.ct.affine)
        index = inverse @ np.array([*hip.ct_region.centre_mm, 1.0])
        peak = tuple(
            int(np.clip(round(v), 0, n - 1)) for v, n in zip(index[:3], cam.shape, strict=True)
        )
    images = {}
    for plane, axis in CT_PLANES:
        grey = window_ct(np.take(volume, peak[axis], axis=axis))
        heat = np.take(cam, peak[axis], axis=axis)
        if axis != 0:
            # Coronal and sagittal slices have axis 0 (superior) as rows: flip so superior is up.
            grey, heat = grey[::-1], heat[::-1]
        row_axis, column_axis = (a for a in range(3) if a != axis)
        grey, heat = _square_pixels(
            grey, heat, (result.ct.spacing_mm[row_axis], result.ct.spacing_mm[column_axis])
        )
        rgb = blend_heat_map(grey, heat)
        images[plane] = burn_in_caption(rgb, hip_caption(hip, bundle, f"CT {plane} Grad-CAM"))
    return images


def _square_pixels(
    grey: np.ndarray, heat: np.ndarray, spacing_mm: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Resample a plane so its pixels are square, as a viewer would display it.

    Coronal and sagittal planes of a series with thick slices are otherwise
    squashed along the rows.
    """
    finest = min(spacing_mm)
    shape = tuple(
        max(1, round(n * spacing / finest))
        for n, spacing in zip(grey.shape, spacing_mm, strict=True)
    )
    if shape == grey.shape:
        return grey, heat
    size = (shape[1], shape[0])  # PIL sizes are (width, height)
    resized = [
        np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize(size, Image.BILINEAR))
        for plane in (grey, heat)
    ]
    return resized[0], resized[1]


def write_result(result: StudyResult, bundle: Bundle, out_dir: Path) -> dict[str, Any]:
    """Write ``result.json`` and the PNG overlays into ``out_dir``.

    Returns the result document with an ``overlays`` list of written file names.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    document = result_to_dict(result, bundle)
    written = []
    for hip in result.hips:
        side = hip.laterality.value
        if hip.radiograph_cam is not None:
            name = f"radiograph_{side}.png"
            Image.fromarray(radiograph_overlay(result, hip, bundle)).save(out_dir / name)
            written.append(name)
        if hip.ct_cam is not None:
            for plane, rgb in ct_overlays(result, hip, bundle).items():
                name = f"ct_{side}_{plane}.png"
                Image.fromarray(rgb).save(out_dir / name)
                written.append(name)
    document["overlays"] = written
    (out_dir / "result.json").write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return document
