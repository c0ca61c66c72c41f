"""Pelvis shapes: acetabula, ilia, ischia, pubic rami, sacrum and the fifth lumbar vertebra."""

from __future__ import annotations

import itertools

import numpy as np

from hipfuse.inference.types import Laterality
from hipfuse.training.simulate.anatomy import (
    AcetabulumGeometry,
    PelvisAnatomy,
    ShapePart,
    lateral_sign,
)
from hipfuse.training.simulate.shapes import (
    Ellipsoid,
    Intersection,
    RoundCone,
    Shape,
    Sphere,
    Union,
    unit,
)


def pelvis_parts(
    anatomy: PelvisAnatomy, acetabula: dict[Laterality, AcetabulumGeometry]
) -> tuple[list[ShapePart], list[Shape]]:
    """Return the pelvis as shapes to join, and the acetabular sockets to carve out afterwards."""
    parts: list[ShapePart] = []
    sockets: list[Shape] = []
    k = anatomy.scale
    hw = anatomy.half_interhip_mm
    frame = anatomy.pose_rotation

    def at(local: list[float] | np.ndarray) -> np.ndarray:
        return anatomy.to_lps(np.asarray(local, dtype=float))

    def axes(rows: np.ndarray) -> np.ndarray:
        return np.stack([unit(frame @ row) for row in rows])

    for laterality, acetabulum in acetabula.items():
        s = lateral_sign(laterality)
        socket = acetabulum.socket_radius_mm

        def side(
            lateral_mm: float, posterior_mm: float, superior_mm: float, sign: float = s
        ) -> np.ndarray:
            # Offsets from this side's acetabular centre, lateral positive outward.
            return at([sign * (hw + k * lateral_mm), k * posterior_mm, k * superior_mm])

        acetabular_complex = Intersection(
            (
                Union(
                    (
                        acetabulum.wall_region(),
                        Ellipsoid(
                            side(-4.0, 4.0, socket / k + 8.0),
                            np.array([socket * 0.95, socket * 0.85, 14.0 * k]),
                            axes(np.eye(3)),
                        ),
                        Ellipsoid(
                            side(-(socket / k + 4.0), 3.0, -5.0),
                            np.array([7.0, 18.0, 26.0]) * k,
                            axes(np.eye(3)),
                        ),
                    ),
                    smoothing_mm=4.0,
                ),
                acetabulum.rim_plane(),
            )
        )
        parts.append(ShapePart(acetabular_complex, 0.0))
        # Iliac body: the thick column from the acetabular roof to the wing.
        parts.append(
            ShapePart(
                RoundCone(
                    side(-6.0, 8.0, socket / k + 4.0), side(-30.0, 40.0, 62.0), 19 * k, 14 * k
                ),
                6.0,
            )
        )
        # Iliac wing: a thin oblique plate from the sacroiliac joint to the anterior
        # superior iliac spine, flaring outward toward the crest.
        sacroiliac = np.array([s * 42.0, 70.0, 78.0]) * k
        asis = np.array([s * (hw / k + 28.0), -38.0, 62.0]) * k
        along = unit(asis - sacroiliac)
        up = unit(np.array([s * 0.3, 0.0, 1.0]) - (np.array([s * 0.3, 0.0, 1.0]) @ along) * along)
        normal = unit(np.cross(along, up))
        centre = 0.5 * (sacroiliac + asis) + np.array([0.0, 0.0, 22.0 * k])
        half_length = 0.5 * float(np.linalg.norm(asis - sacroiliac)) + 8.0 * k
        parts.append(
            ShapePart(
                Ellipsoid(
                    at(centre),
                    np.array([half_length, 58.0 * k, 6.5 * k]),
                    axes(np.stack([along, up, normal])),
                ),
                8.0,
            )
        )
        # Iliac crest: a thicker rim along the top of the wing.
        crest_points = [
            centre + half_length * 0.92 * np.cos(t) * along + 58.0 * k * np.sin(t) * up
            for t in np.deg2rad([25.0, 60.0, 90.0, 120.0, 155.0])
        ]
        for a, b in itertools.pairwise(crest_points):
            parts.append(ShapePart(RoundCone(at(a), at(b), 7.0 * k, 7.0 * k), 3.0))
        # Anterior (iliopubic) and posterior (ilioischial) columns: the thick bone in
        # front of and behind the socket on axial CT slices.
        parts.append(
            ShapePart(
                RoundCone(side(-22.0, -24.0, -16.0), side(-14.0, -22.0, 34.0), 12 * k, 11 * k), 5.0
            )
        )
        parts.append(
            ShapePart(
                RoundCone(side(-20.0, 28.0, -40.0), side(-26.0, 32.0, 40.0), 15 * k, 16 * k), 5.0
            )
        )
        # Ischium down to the tuberosity.
        tuberosity = side(-8.0, 28.0, -58.0)
        parts.append(
            ShapePart(
                RoundCone(side(-2.0, 14.0, -(socket / k - 2.0)), tuberosity, 16 * k, 12 * k), 6.0
            )
        )
        parts.append(
            ShapePart(Ellipsoid(tuberosity, np.array([12.0, 15.0, 16.0]) * k, axes(np.eye(3))), 6.0)
        )
        # Pubis: superior ramus to the body at the symphysis, inferior ramus back to the
        # ischium; the ring they close is the obturator foramen.
        pubic_body = at([s * 11.0 * k, -45.0 * k, -40.0 * k])
        parts.append(
            ShapePart(
                RoundCone(side(-(socket / k - 2.0), -14.0, -6.0), pubic_body, 12 * k, 9 * k), 5.0
            )
        )
        parts.append(
            ShapePart(Ellipsoid(pubic_body, np.array([8.5, 11.0, 19.0]) * k, axes(np.eye(3))), 5.0)
        )
        parts.append(
            ShapePart(
                RoundCone(
                    at([s * 13.0 * k, -38.0 * k, -56.0 * k]),
                    side(-12.0, 22.0, -62.0),
                    8 * k,
                    9 * k,
                ),
                5.0,
            )
        )
        sockets.append(Sphere(acetabulum.centre_mm, socket))
        # Lumbar transverse process of L5.
        parts.append(
            ShapePart(
                RoundCone(at([0.0, 55.0 * k, 140.0]), at([s * 50.0 * k, 60.0 * k, 142.0]), 7, 6),
                3.0,
            )
        )
    tilt_axes = axes(np.stack([[1.0, 0.0, 0.0], unit([0.0, 1.0, 0.55]), unit([0.0, -0.55, 1.0])]))
    # Sacrum: wide alae on top, narrowing to the tip, tilted with its top forward.
    parts.append(
        ShapePart(
            Ellipsoid(at([0.0, 68.0 * k, 92.0]), np.array([55.0, 18.0, 26.0]) * k, tilt_axes), 8.0
        )
    )
    parts.append(
        ShapePart(
            Ellipsoid(at([0.0, 82.0 * k, 50.0]), np.array([30.0, 13.0, 42.0]) * k, tilt_axes), 8.0
        )
    )
    parts.append(
        ShapePart(RoundCone(at([0.0, 95.0 * k, 10.0]), at([0.0, 84.0 * k, -18.0]), 8, 5), 4.0)
    )
    # L5 vertebral body above the lumbosacral disc, with its posterior arch.
    parts.append(
        ShapePart(RoundCone(at([0.0, 40.0 * k, 128.0]), at([0.0, 38.0 * k, 158.0]), 24, 24), 0.0)
    )
    parts.append(
        ShapePart(RoundCone(at([-14.0, 62.0 * k, 138.0]), at([14.0, 62.0 * k, 138.0]), 7, 7), 3.0)
    )
    parts.append(
        ShapePart(RoundCone(at([0.0, 62.0 * k, 138.0]), at([0.0, 98.0 * k, 128.0]), 7, 5), 3.0)
    )
    return parts, sockets


def sacral_foramina(anatomy: PelvisAnatomy) -> list[Shape]:
    """Return the four pairs of anterior sacral foramina, carved as short channels."""
    holes: list[Shape] = []
    k = anatomy.scale
    for level, (z, x) in enumerate(((100.0, 24.0), (82.0, 22.0), (64.0, 19.0), (47.0, 16.0))):
        radius = 5.0 - 0.6 * level
        for s in (-1.0, 1.0):
            front = anatomy.to_lps(np.array([s * x * k, 50.0 * k, z]))
            back = anatomy.to_lps(np.array([s * x * k, 100.0 * k, z + 20.0]))
            holes.append(RoundCone(front, back, radius, radius))
    return holes
