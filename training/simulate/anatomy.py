"""Per-patient anatomy of an adult pelvis and hips: parameters, sampling and acetabulum placement.

The shapes are built from these parameters in ``pelvis.py`` and ``femur.py``.
The pelvis is built in a pelvis frame (origin midway between the acetabular
centres, axes as LPS: +x patient left, +y posterior, +z superior) and placed in
LPS by a small rigid pose (tilt, obliquity, rotation). The femora are built
directly in LPS from the femoral head centres, so a lesion that moves a head
(superolateral migration in osteoarthritis) moves its whole femur.

Dimensions are sampled uniformly around commonly quoted adult values: femoral
head radius 22-26 mm, neck-shaft angle 125-140 degrees, lateral centre-edge
angle 25-40 degrees, femoral anteversion 5-20 degrees and a joint space of
about 4 mm. The ranges are estimates, not fitted to a measured population.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hipfuse.inference.types import Laterality
from hipfuse.training.simulate.shapes import (
    Difference,
    Ellipsoid,
    HalfSpace,
    Shape,
    Sphere,
    rotation_matrix,
    unit,
)

SUPERIOR = np.array([0.0, 0.0, 1.0])
ANTERIOR = np.array([0.0, -1.0, 0.0])
POSTERIOR = np.array([0.0, 1.0, 0.0])


def lateral_sign(laterality: Laterality) -> float:
    """Return the sign of LPS x on the side of ``laterality`` (the patient's left is +x)."""
    return 1.0 if laterality is Laterality.LEFT else -1.0


@dataclass(frozen=True)
class HipAnatomy:
    """Shape parameters of one hip joint, before any lesion.

    Attributes
    ----------
    laterality
        Side of the patient.
    head_radius_mm
        Femoral head radius.
    joint_space_mm
        Gap between the head and the acetabular surface.
    neck_shaft_angle_deg
        Angle between the femoral neck axis and the shaft axis.
    femoral_version_deg
        Rotation of the neck toward anterior about the shaft axis: femoral
        anteversion and leg rotation together, as they appear on an AP image.
    neck_length_mm
        Distance from the head centre to the shaft axis along the neck.
    neck_radius_ratio
        Neck radius at the head-neck junction divided by the head radius.
    shaft_radius_mm
        Outer radius of the proximal femoral shaft.
    shaft_adduction_deg
        Tilt of the shaft from vertical toward the midline (distally medial).
    lcea_deg
        Lateral centre-edge angle: acetabular coverage in the coronal plane.
    acetabular_version_deg
        Rotation of the acetabular opening toward anterior.
    acetabular_wall_mm
        Thickness of the acetabular wall behind the joint surface.
    """

    laterality: Laterality
    head_radius_mm: float
    joint_space_mm: float
    neck_shaft_angle_deg: float
    femoral_version_deg: float
    neck_length_mm: float
    neck_radius_ratio: float
    shaft_radius_mm: float
    shaft_adduction_deg: float
    lcea_deg: float
    acetabular_version_deg: float
    acetabular_wall_mm: float


@dataclass(frozen=True)
class PelvisAnatomy:
    """Whole-patient anatomy: both hips, pelvic pose and size, soft tissue and bone densities.

    Attributes
    ----------
    hips
        Right and left hip parameters.
    half_interhip_mm
        Half the distance between the acetabular centres.
    scale
        Size factor applied to pelvic landmark offsets (1 is an average adult).
    pose_rotation
        ``3 x 3`` rotation from the pelvis frame to LPS (tilt, obliquity, rotation).
    pose_origin_mm
        LPS position of the pelvis frame origin.
    body_half_width_mm, body_half_depth_mm
        Semi-axes of the body outline at hip level.
    body_centre_y_mm
        LPS y of the body outline centre.
    waist_ratio
        Body width at the top of the volume relative to hip level.
    fat_thickness_mm
        Subcutaneous fat layer.
    crotch_z_mm
        LPS z below which the trunk splits into the two thighs.
    cortical_hu, cancellous_hu, marrow_hu, muscle_hu, fat_hu
        Tissue densities in Hounsfield units.
    gas_pockets
        Bowel gas, as ellipsoids in LPS.
    """

    hips: dict[Laterality, HipAnatomy]
    half_interhip_mm: float
    scale: float
    pose_rotation: np.ndarray
    pose_origin_mm: np.ndarray
    body_half_width_mm: float
    body_half_depth_mm: float
    body_centre_y_mm: float
    waist_ratio: float
    fat_thickness_mm: float
    crotch_z_mm: float
    cortical_hu: float
    cancellous_hu: float
    marrow_hu: float
    muscle_hu: float
    fat_hu: float
    gas_pockets: tuple[Ellipsoid, ...]

    def to_lps(self, local_mm: np.ndarray) -> np.ndarray:
        """Map a point from the pelvis frame to LPS millimetres."""
        return self.pose_origin_mm + self.pose_rotation @ np.asarray(local_mm, dtype=float)

    def acetabular_centre_mm(self, laterality: Laterality) -> np.ndarray:
        """Return the LPS centre of the acetabular socket on one side."""
        s = lateral_sign(laterality)
        return self.to_lps(np.array([s * self.half_interhip_mm, 0.0, 0.0]))


def sample_pelvis_anatomy(rng: np.random.Generator, age_years: float, sex: str) -> PelvisAnatomy:
    """Draw one adult patient's anatomy.

    Parameters
    ----------
    rng
        Source of randomness; the draw order is fixed, so a seed fixes the patient.
    age_years
        Age, which lowers cancellous density (osteopenia) in older patients.
    sex
        ``"M"`` or ``"F"``; women get a slightly wider pelvis and smaller femoral heads.
    """
    female = sex == "F"
    scale = float(rng.uniform(0.92, 1.08)) * (0.97 if female else 1.0)
    head_radius = float(rng.uniform(21.5, 24.5) if female else rng.uniform(23.0, 26.0))
    neck_shaft = float(rng.uniform(125.0, 138.0))
    lcea = float(rng.uniform(26.0, 38.0))
    hips = {}
    for laterality in (Laterality.RIGHT, Laterality.LEFT):
        # Left and right differ a little: the asymmetry of a healthy adult.
        hips[laterality] = HipAnatomy(
            laterality=laterality,
            head_radius_mm=head_radius + float(rng.normal(0.0, 0.4)),
            joint_space_mm=float(rng.uniform(3.6, 4.6)),
            neck_shaft_angle_deg=neck_shaft + float(rng.normal(0.0, 1.5)),
            femoral_version_deg=float(rng.uniform(-5.0, 25.0)),
            neck_length_mm=float(rng.uniform(2.0, 2.35)) * head_radius,
            neck_radius_ratio=float(rng.uniform(0.64, 0.72)),
            shaft_radius_mm=float(rng.uniform(12.5, 15.0)) * scale,
            shaft_adduction_deg=float(rng.uniform(4.0, 9.0)),
            lcea_deg=lcea + float(rng.normal(0.0, 1.5)),
            acetabular_version_deg=float(rng.uniform(12.0, 22.0)),
            acetabular_wall_mm=float(rng.uniform(7.0, 10.0)),
        )
    tilt_deg = float(rng.normal(0.0, 3.0))
    obliquity_deg = float(rng.normal(0.0, 1.5))
    rotation_deg = float(rng.normal(0.0, 2.0))
    pose = (
        rotation_matrix(SUPERIOR, rotation_deg)
        @ rotation_matrix(POSTERIOR, obliquity_deg)
        @ rotation_matrix(np.array([1.0, 0.0, 0.0]), tilt_deg)
    )
    origin = np.array([rng.normal(0.0, 4.0), rng.uniform(-18.0, -4.0), rng.normal(0.0, 3.0)])
    minimum_half_width = float(rng.uniform(145.0, 172.0))
    half_depth = float(rng.uniform(100.0, 128.0))
    fat = float(rng.uniform(8.0, 38.0))
    half_interhip = float(rng.uniform(84.0, 96.0)) * scale * (1.03 if female else 1.0)
    # The body reaches past the greater trochanters: their lateral tip lies about
    # 30 mm beyond the shaft axis, which is the femoral offset beyond the head centre.
    trochanter_reach = (
        half_interhip
        + 30.0
        + max(h.neck_length_mm * np.sin(np.deg2rad(h.neck_shaft_angle_deg)) for h in hips.values())
    )
    half_width = max(minimum_half_width, trochanter_reach + fat + float(rng.uniform(6.0, 16.0)))
    osteopenia = float(np.clip((age_years - 45.0) / 40.0, 0.0, 1.0))
    gas = _sample_gas_pockets(rng, float(origin[1]))
    return PelvisAnatomy(
        hips=hips,
        half_interhip_mm=half_interhip,
        scale=scale,
        pose_rotation=pose,
        pose_origin_mm=origin,
        body_half_width_mm=half_width,
        body_half_depth_mm=half_depth,
        body_centre_y_mm=float(rng.uniform(0.0, 12.0)),
        waist_ratio=float(rng.uniform(0.78, 0.95)),
        fat_thickness_mm=fat,
        crotch_z_mm=float(rng.uniform(-72.0, -55.0)),
        cortical_hu=float(rng.uniform(1350.0, 1750.0)) - 150.0 * osteopenia,
        cancellous_hu=float(rng.uniform(260.0, 380.0)) - 110.0 * osteopenia,
        marrow_hu=float(rng.uniform(-40.0, 30.0)),
        muscle_hu=float(rng.uniform(38.0, 55.0)),
        fat_hu=float(rng.uniform(-110.0, -85.0)),
        gas_pockets=gas,
    )


def _sample_gas_pockets(rng: np.random.Generator, hip_y_mm: float) -> tuple[Ellipsoid, ...]:
    pockets = []
    for _ in range(int(rng.integers(2, 8))):
        centre = np.array(
            [
                rng.uniform(-70.0, 70.0),
                hip_y_mm + rng.uniform(-70.0, 40.0),
                rng.uniform(30.0, 165.0),
            ]
        )
        radii = rng.uniform(6.0, 22.0, size=3) * np.array([1.2, 0.8, 1.0])
        pockets.append(Ellipsoid(centre, radii))
    # Gas in the rectum sits low and posterior, in front of the sacrum and coccyx.
    if rng.random() < 0.6:
        centre = np.array([rng.normal(0.0, 6.0), hip_y_mm + rng.uniform(55.0, 70.0), 10.0])
        pockets.append(Ellipsoid(centre, np.array([10.0, 8.0, 18.0]) * rng.uniform(0.5, 1.0)))
    return tuple(pockets)


@dataclass(frozen=True)
class AcetabulumGeometry:
    """Placed acetabulum of one side, in LPS.

    Attributes
    ----------
    centre_mm
        Centre of the socket sphere.
    socket_radius_mm
        Radius of the joint surface (head radius plus joint space).
    opening_axis
        Unit vector out of the socket; bone lies on the other side of the
        plane through ``centre_mm + depth_mm * opening_axis``.
    depth_mm
        Offset of the rim plane along the opening axis (positive is deeper).
    wall_mm
        Wall thickness behind the joint surface.
    lcea_deg, version_deg
        Coverage angles the opening axis was built from.
    """

    centre_mm: np.ndarray
    socket_radius_mm: float
    opening_axis: np.ndarray
    depth_mm: float
    wall_mm: float
    lcea_deg: float
    version_deg: float

    def rim_plane(self) -> HalfSpace:
        """Return the half-space on the bone side of the acetabular rim."""
        point = self.centre_mm + self.depth_mm * self.opening_axis
        return HalfSpace(point, self.opening_axis)

    def wall_region(self) -> Shape:
        """Return the spherical wall band behind the joint surface, without the rim cut."""
        return Difference(
            Sphere(self.centre_mm, self.socket_radius_mm + self.wall_mm),
            Sphere(self.centre_mm, self.socket_radius_mm - 0.5),
        )


def acetabulum_geometry(
    anatomy: PelvisAnatomy,
    laterality: Laterality,
    lcea_deg: float,
    version_deg: float,
    depth_mm: float,
) -> AcetabulumGeometry:
    """Place the acetabulum of one side with the given coverage angles."""
    hip = anatomy.hips[laterality]
    s = lateral_sign(laterality)
    # The opening axis leans (90 - LCEA) degrees from straight down toward lateral,
    # so the lateral rim in the coronal plane sits LCEA degrees from vertical.
    tilt = np.deg2rad(90.0 - lcea_deg)
    version = np.deg2rad(version_deg)
    local_axis = np.array(
        [
            s * np.sin(tilt) * np.cos(version),
            -np.sin(tilt) * np.sin(version),
            -np.cos(tilt),
        ]
    )
    return AcetabulumGeometry(
        centre_mm=anatomy.acetabular_centre_mm(laterality),
        socket_radius_mm=hip.head_radius_mm + hip.joint_space_mm,
        opening_axis=unit(anatomy.pose_rotation @ local_axis),
        depth_mm=depth_mm,
        wall_mm=hip.acetabular_wall_mm,
        lcea_deg=lcea_deg,
        version_deg=version_deg,
    )


@dataclass(frozen=True)
class ShapePart:
    """One shape of a bone with the fillet radius used to join it to what came before."""

    shape: Shape
    smoothing_mm: float
