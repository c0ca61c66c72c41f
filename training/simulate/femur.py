"""Proximal femur: placement from the hip parameters, and its head, neck, trochanters and shaft."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hipfuse.inference.types import Laterality
from hipfuse.training.simulate.anatomy import (
    ANTERIOR,
    POSTERIOR,
    HipAnatomy,
    ShapePart,
    lateral_sign,
)
from hipfuse.training.simulate.shapes import Ellipsoid, RoundCone, Sphere, unit


@dataclass(frozen=True)
class FemurGeometry:
    """Placed proximal femur of one side, in LPS.

    Attributes
    ----------
    laterality
        Side of the patient.
    head_centre_mm
        Femoral head centre (after any lesion shift).
    head_radius_mm
        Femoral head radius.
    neck_axis
        Unit vector from the head centre along the neck toward the shaft.
    neck_radius_mm
        Neck radius at the head-neck junction.
    neck_base_mm
        Point where the neck axis meets the shaft axis.
    shaft_axis
        Unit vector down the shaft.
    lateral, anterior
        Unit vectors toward the patient's side and front, perpendicular to the shaft.
    """

    laterality: Laterality
    head_centre_mm: np.ndarray
    head_radius_mm: float
    neck_axis: np.ndarray
    neck_radius_mm: float
    neck_base_mm: np.ndarray
    shaft_axis: np.ndarray
    lateral: np.ndarray
    anterior: np.ndarray

    def perpendicular_to_neck(self, toward: np.ndarray) -> np.ndarray:
        """Return the unit vector perpendicular to the neck axis closest to ``toward``."""
        v = np.asarray(toward, dtype=float)
        return unit(v - (v @ self.neck_axis) * self.neck_axis)


def femur_geometry(hip: HipAnatomy, head_centre_mm: np.ndarray) -> FemurGeometry:
    """Place the proximal femur of ``hip`` with its head centred at ``head_centre_mm``."""
    s = lateral_sign(hip.laterality)
    adduction = np.deg2rad(hip.shaft_adduction_deg)
    # The shaft runs distally and toward the midline.
    shaft_axis = unit([-s * np.sin(adduction), 0.0, -np.cos(adduction)])
    medial = unit(np.array([-s, 0.0, 0.0]) - (-s * shaft_axis[0]) * shaft_axis)
    version = np.deg2rad(hip.femoral_version_deg)
    toward_head_perp = np.cos(version) * medial + np.sin(version) * ANTERIOR
    angle = np.deg2rad(hip.neck_shaft_angle_deg)
    # Unit vector from the neck base toward the head: angle to the distal shaft axis is the
    # neck-shaft angle.
    toward_head = unit(np.cos(angle) * shaft_axis + np.sin(angle) * toward_head_perp)
    head = np.asarray(head_centre_mm, dtype=float)
    return FemurGeometry(
        laterality=hip.laterality,
        head_centre_mm=head,
        head_radius_mm=hip.head_radius_mm,
        neck_axis=-toward_head,
        neck_radius_mm=hip.neck_radius_ratio * hip.head_radius_mm,
        neck_base_mm=head - hip.neck_length_mm * toward_head,
        shaft_axis=shaft_axis,
        lateral=-medial,
        anterior=ANTERIOR.copy(),
    )


def femur_parts(femur: FemurGeometry, shaft_radius_mm: float) -> list[ShapePart]:
    """Return the head, neck, trochanters and shaft of one proximal femur."""
    head = femur.head_centre_mm
    radius = femur.head_radius_mm
    base = femur.neck_base_mm
    down = femur.shaft_axis
    lateral = femur.lateral
    neck_radius = femur.neck_radius_mm
    return [
        ShapePart(Sphere(head, radius), 0.0),
        # A small fillet keeps the head-neck offset (the concavity a cam lesion fills).
        ShapePart(
            RoundCone(head + 0.3 * radius * femur.neck_axis, base, neck_radius, neck_radius * 1.3),
            1.5,
        ),
        ShapePart(
            Ellipsoid(base + 6.0 * down, np.array([19.0, 17.0, 27.0]), _frame(lateral, down)),
            6.0,
        ),
        ShapePart(
            Ellipsoid(
                base + 18.0 * lateral - 12.0 * down + 6.0 * POSTERIOR,
                np.array([12.0, 16.0, 23.0]),
                _frame(lateral, down),
            ),
            6.0,
        ),
        ShapePart(
            Ellipsoid(
                base + 40.0 * down - 13.0 * lateral + 9.0 * POSTERIOR,
                np.array([8.0, 8.0, 11.0]),
                _frame(lateral, down),
            ),
            4.0,
        ),
        ShapePart(
            RoundCone(
                base - 5.0 * down, base + 240.0 * down, shaft_radius_mm, shaft_radius_mm * 0.9
            ),
            8.0,
        ),
    ]


def _frame(lateral: np.ndarray, down: np.ndarray) -> np.ndarray:
    """Return rows (lateral, posterior, down) as an orthonormal frame for ellipsoid axes."""
    posterior = unit(np.cross(down, lateral))
    if posterior[1] < 0:
        posterior = -posterior
    return np.stack([unit(lateral), posterior, unit(down)])
