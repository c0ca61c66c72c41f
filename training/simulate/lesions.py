"""Hip lesions of the four classes: shape changes, density changes and the lesion mask.

A lesion is sampled once per hip as plain numbers (:class:`HipLesion`), so a
seed fixes it, and turned into effects on the bone (:func:`lesion_effects`)
only once the hip's femur and acetabulum are placed.

What each class changes, after the radiographic and CT signs taught in
musculoskeletal radiology:

- osteoarthritis: superolateral migration of the head (superior joint-space
  narrowing), osteophytes at the head-neck junction and the acetabular rim,
  subchondral sclerosis of the head and the acetabular roof, and sometimes
  subchondral cysts;
- osteonecrosis of the femoral head (staged after ARCO 2019): a necrotic
  segment in the anterosuperior head with a lucent core and a sclerotic rim.
  Stage 2 is drawn so the rim balances the core along an AP ray, which makes
  it plain on CT slices but faint on the radiograph. Stage 3 adds the crescent
  sign (subchondral fracture) and slight flattening, and stage 4 collapse and
  secondary joint narrowing;
- femoroacetabular impingement: a cam bump filling the anterosuperior
  head-neck concavity, pincer over-coverage (a larger centre-edge angle, less
  acetabular anteversion and a deeper socket), or both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from hipfuse.inference.types import HipClass
from hipfuse.training.simulate.anatomy import (
    SUPERIOR,
    AcetabulumGeometry,
    HipAnatomy,
    ShapePart,
)
from hipfuse.training.simulate.femur import FemurGeometry
from hipfuse.training.simulate.shapes import (
    Difference,
    Ellipsoid,
    HalfSpace,
    Intersection,
    RoundCone,
    Shape,
    Shell,
    Sphere,
    unit,
)


class FaiType(StrEnum):
    """Morphology of femoroacetabular impingement."""

    CAM = "cam"
    PINCER = "pincer"
    MIXED = "mixed"


class BoneGroup(StrEnum):
    """Bone that a density change is confined to."""

    FEMUR = "femur"
    PELVIS = "pelvis"


@dataclass(frozen=True)
class DensityChange:
    """Change of density inside ``region``, limited to the cancellous part of ``bone``.

    ``set_hu`` replaces the density (a cyst, a fracture line); otherwise
    ``add_hu`` is added (sclerosis is positive, lucency negative).
    """

    region: Shape
    bone: BoneGroup
    add_hu: float = 0.0
    set_hu: float | None = None


@dataclass
class LesionEffects:
    """Everything a lesion does to one hip, in LPS.

    Attributes
    ----------
    femur_parts, pelvis_parts
        Bone to add (osteophytes, a cam bump).
    head_cut
        Half-space the head is cut back to (collapse), with the region it applies in.
    density_changes
        Sclerosis, lucency, cysts and fracture lines, applied in order.
    mask_regions
        Shapes whose union is the lesion mask.
    """

    femur_parts: list[ShapePart] = field(default_factory=list)
    pelvis_parts: list[ShapePart] = field(default_factory=list)
    head_cut: tuple[HalfSpace, Shape] | None = None
    density_changes: list[DensityChange] = field(default_factory=list)
    mask_regions: list[Shape] = field(default_factory=list)


# Number of extra uniform draws a lesion carries; 1.0 switches every optional finding off.
DRAW_COUNT = 12


@dataclass(frozen=True)
class HipLesion:
    """Sampled lesion of one hip: the class and every random number its effects need.

    Attributes
    ----------
    hip_class
        Diagnostic label of the hip.
    severity
        0 for a normal hip, otherwise in ``(0, 1]``.
    onfh_stage
        ARCO stage 2, 3 or 4 for osteonecrosis, else ``None``.
    fai_type
        Cam, pincer or mixed for impingement, else ``None``.
    direction_deg
        ``(azimuth, elevation)`` that steers the lesion around its typical site.
    extent
        Relative size in ``[0, 1]``.
    draws
        ``DRAW_COUNT`` further uniform draws in ``[0, 1)`` used by the effects
        (osteophyte sites, cysts); the default switches optional findings off.
    """

    hip_class: HipClass
    severity: float = 0.0
    onfh_stage: int | None = None
    fai_type: FaiType | None = None
    direction_deg: tuple[float, float] = (0.0, 0.0)
    extent: float = 0.0
    draws: tuple[float, ...] = (1.0,) * DRAW_COUNT

    @property
    def subtype(self) -> str:
        """Short description for the truth table (``cam``, ``arco_2``, ``kl_3``, ``normal``)."""
        if self.hip_class is HipClass.OSTEONECROSIS:
            return f"arco_{self.onfh_stage}"
        if self.hip_class is HipClass.FAI and self.fai_type is not None:
            return self.fai_type.value
        if self.hip_class is HipClass.OSTEOARTHRITIS:
            return f"kl_{kellgren_lawrence_grade(self.severity)}"
        return "normal"


def kellgren_lawrence_grade(severity: float) -> int:
    """Map osteoarthritis severity in ``(0, 1]`` to a Kellgren-Lawrence grade 2-4."""
    if severity < 0.4:
        return 2
    if severity < 0.75:
        return 3
    return 4


def sample_hip_lesion(rng: np.random.Generator, hip_class: HipClass) -> HipLesion:
    """Draw the lesion of one hip of class ``hip_class`` (a normal hip draws nothing visible)."""
    direction = (float(rng.normal(0.0, 12.0)), float(rng.normal(0.0, 10.0)))
    extent = float(rng.uniform(0.0, 1.0))
    draws = tuple(float(v) for v in rng.uniform(0.0, 1.0, size=DRAW_COUNT))
    if hip_class is HipClass.NORMAL:
        return HipLesion(hip_class, draws=draws)
    severity = float(rng.uniform(0.25, 1.0))
    if hip_class is HipClass.OSTEONECROSIS:
        stage = int(rng.choice([2, 3, 4], p=[0.4, 0.35, 0.25]))
        return HipLesion(
            hip_class,
            severity,
            onfh_stage=stage,
            direction_deg=direction,
            extent=extent,
            draws=draws,
        )
    if hip_class is HipClass.FAI:
        fai_type = FaiType(rng.choice([t.value for t in FaiType], p=[0.55, 0.2, 0.25]))
        return HipLesion(
            hip_class,
            severity,
            fai_type=fai_type,
            direction_deg=direction,
            extent=extent,
            draws=draws,
        )
    return HipLesion(hip_class, severity, direction_deg=direction, extent=extent, draws=draws)


def femur_shift_mm(lesion: HipLesion, hip: HipAnatomy, lateral: np.ndarray) -> np.ndarray:
    """Return how far the femoral head moves from the socket centre (superolateral migration)."""
    shift = np.zeros(3)
    if lesion.hip_class is HipClass.OSTEOARTHRITIS:
        # Narrowing reaches bone on bone at the worst grades.
        distance = hip.joint_space_mm * (0.35 + 0.6 * lesion.severity)
        shift = distance * unit(SUPERIOR + 0.35 * lateral)
    elif lesion.hip_class is HipClass.OSTEONECROSIS and lesion.onfh_stage == 4:
        shift = hip.joint_space_mm * 0.35 * unit(SUPERIOR + 0.35 * lateral)
    return shift


def acetabular_coverage(lesion: HipLesion, hip: HipAnatomy) -> tuple[float, float, float]:
    """Return ``(lcea_deg, version_deg, depth_mm)`` of the acetabulum, pincer changes included."""
    if lesion.hip_class is HipClass.FAI and lesion.fai_type in (FaiType.PINCER, FaiType.MIXED):
        s = lesion.severity
        return (
            hip.lcea_deg + 6.0 + 10.0 * s,
            hip.acetabular_version_deg - 6.0 - 10.0 * s,
            1.0 + 3.0 * s,
        )
    return hip.lcea_deg, hip.acetabular_version_deg, 0.0


def lesion_effects(
    lesion: HipLesion,
    femur: FemurGeometry,
    acetabulum: AcetabulumGeometry,
    normal_acetabulum: AcetabulumGeometry,
) -> LesionEffects:
    """Turn a sampled lesion into shapes and density changes on a placed hip.

    ``normal_acetabulum`` is the same acetabulum without pincer changes, so the
    over-coverage can be masked.
    """
    if lesion.hip_class is HipClass.OSTEOARTHRITIS:
        return _osteoarthritis(lesion, femur, acetabulum)
    if lesion.hip_class is HipClass.OSTEONECROSIS:
        return _osteonecrosis(lesion, femur, acetabulum)
    if lesion.hip_class is HipClass.FAI:
        return _impingement(lesion, femur, acetabulum, normal_acetabulum)
    return _normal_variant(lesion, femur)


def _load_direction(femur: FemurGeometry) -> np.ndarray:
    """Return the weight-bearing direction of the hip: superior and a little lateral."""
    return unit(SUPERIOR + 0.3 * femur.lateral)


def _osteoarthritis(
    lesion: HipLesion, femur: FemurGeometry, acetabulum: AcetabulumGeometry
) -> LesionEffects:
    effects = LesionEffects()
    s = lesion.severity
    head = femur.head_centre_mm
    radius = femur.head_radius_mm
    load = _load_direction(femur)
    socket = acetabulum.socket_radius_mm
    draws = lesion.draws

    # Marginal osteophytes around the head-neck junction; the inferomedial one
    # (the "capital drop") is the classic first site.
    junction = head + 0.78 * radius * femur.neck_axis
    inferomedial = femur.perpendicular_to_neck(-SUPERIOR - femur.lateral)
    sites = [inferomedial]
    for draw in draws[:3]:
        if draw < 0.35 + 0.5 * s:
            angle = 2 * np.pi * draw / (0.35 + 0.5 * s)
            around = np.cos(angle) * inferomedial + np.sin(angle) * femur.perpendicular_to_neck(
                femur.anterior
            )
            sites.append(unit(around))
    size_mm = 3.0 + 6.0 * s
    for site in sites:
        centre = junction + (femur.neck_radius_mm + 0.3 * size_mm) * site
        tangent = unit(np.cross(femur.neck_axis, site))
        axes = np.stack([site, tangent, unit(np.cross(site, tangent))])
        osteophyte = Ellipsoid(centre, np.array([size_mm * 0.7, size_mm * 1.5, size_mm]), axes)
        effects.femur_parts.append(ShapePart(osteophyte, 2.0))
        effects.mask_regions.append(osteophyte)

    # Lateral acetabular rim osteophyte, growing outward over the head.
    lcea = np.deg2rad(acetabulum.lcea_deg)
    rim = acetabulum.centre_mm + socket * (np.sin(lcea) * femur.lateral + np.cos(lcea) * SUPERIOR)
    rim_size = 3.0 + 5.0 * s
    rim_osteophyte = Ellipsoid(
        rim + 0.4 * rim_size * femur.lateral - 0.2 * rim_size * SUPERIOR,
        np.array([rim_size, rim_size * 0.9, rim_size * 0.6]),
    )
    effects.pelvis_parts.append(ShapePart(rim_osteophyte, 2.0))
    effects.mask_regions.append(rim_osteophyte)

    # Subchondral sclerosis under the weight-bearing surfaces.
    head_band = Intersection(
        (
            Shell(Sphere(head, radius), 3.5 + 3.0 * s),
            HalfSpace(head + 0.45 * radius * load, -load),
        )
    )
    roof_band = Intersection(
        (
            Difference(
                Sphere(acetabulum.centre_mm, socket + 3.0 + 4.0 * s),
                Sphere(acetabulum.centre_mm, socket),
            ),
            HalfSpace(acetabulum.centre_mm + 0.5 * socket * load, -load),
        )
    )
    effects.density_changes.append(
        DensityChange(head_band, BoneGroup.FEMUR, add_hu=250.0 + 450.0 * s)
    )
    effects.density_changes.append(
        DensityChange(roof_band, BoneGroup.PELVIS, add_hu=300.0 + 500.0 * s)
    )
    effects.mask_regions.extend([head_band, roof_band])

    # Subchondral cysts, more often in severe disease.
    for index, draw in enumerate(draws[3:6]):
        if draw > 0.75 - 0.5 * s:
            continue
        cyst_radius = 2.0 + 3.0 * draws[6 + index]
        azimuth = 2 * np.pi * draws[9 + index]
        tilt = unit(
            load + 0.35 * np.cos(azimuth) * femur.anterior + 0.35 * np.sin(azimuth) * femur.lateral
        )
        if index % 2 == 0:
            centre = head + (radius - cyst_radius - 2.5) * tilt
            bone = BoneGroup.FEMUR
        else:
            centre = acetabulum.centre_mm + (socket + cyst_radius + 2.0) * tilt
            bone = BoneGroup.PELVIS
        cyst = Sphere(centre, cyst_radius)
        effects.density_changes.append(DensityChange(cyst, bone, set_hu=20.0))
        effects.mask_regions.append(cyst)

    # The narrowed superior joint space itself.
    effects.mask_regions.append(
        Intersection(
            (
                Difference(Sphere(acetabulum.centre_mm, socket + 1.5), Sphere(head, radius - 1.5)),
                HalfSpace(acetabulum.centre_mm + 0.55 * socket * load, -load),
            )
        )
    )
    return effects


def _onfh_direction(lesion: HipLesion, femur: FemurGeometry) -> np.ndarray:
    """Return the centre direction of the necrotic segment: anterosuperior, slightly lateral."""
    azimuth, elevation = (np.deg2rad(v) for v in lesion.direction_deg)
    base = unit(0.8 * SUPERIOR + 0.5 * femur.anterior + 0.25 * femur.lateral)
    side = unit(np.cross(base, SUPERIOR))
    up = unit(np.cross(side, base))
    return unit(base + np.tan(azimuth) * side + np.tan(elevation) * up)


def _osteonecrosis(
    lesion: HipLesion, femur: FemurGeometry, acetabulum: AcetabulumGeometry
) -> LesionEffects:
    effects = LesionEffects()
    stage = lesion.onfh_stage or 2
    head = femur.head_centre_mm
    radius = femur.head_radius_mm
    direction = _onfh_direction(lesion, femur)
    zone_radius = radius * (0.42 + 0.2 * lesion.extent)
    zone_sphere = Sphere(head + 0.5 * radius * direction, zone_radius)
    zone = Intersection((zone_sphere, Sphere(head, radius - 0.8)))
    rim_mm = 2.5
    core = Intersection(
        (Sphere(head + 0.5 * radius * direction, zone_radius - rim_mm), Sphere(head, radius - 0.8))
    )
    rim = Difference(zone, core)
    if stage == 2:
        # Core and rim volumes are close, so along an AP ray the lucency and the
        # sclerosis nearly cancel: visible on CT slices, faint on the radiograph.
        core_hu = -(70.0 + 60.0 * lesion.severity)
        rim_hu = 140.0 + 120.0 * lesion.severity
    else:
        core_hu = -(60.0 + 60.0 * lesion.severity)
        rim_hu = 350.0 + 250.0 * lesion.severity + 100.0 * (stage - 3)
    effects.density_changes.append(DensityChange(core, BoneGroup.FEMUR, add_hu=core_hu))
    effects.density_changes.append(DensityChange(rim, BoneGroup.FEMUR, add_hu=rim_hu))
    # Small cystic lucencies inside the necrotic segment.
    for index, draw in enumerate(lesion.draws[:3]):
        if draw > 0.5:
            continue
        offset = unit(
            direction + 0.5 * np.array(lesion.draws[3 + 3 * index : 6 + 3 * index]) - 0.25
        )
        cyst = Sphere(head + 0.55 * radius * offset, 2.0 + 2.0 * lesion.draws[index + 9])
        effects.density_changes.append(
            DensityChange(Intersection((cyst, core)), BoneGroup.FEMUR, set_hu=30.0)
        )
    effects.mask_regions.append(zone)

    if stage >= 3:
        # Crescent sign: a subchondral fracture line just under the articular surface.
        crescent = Intersection(
            (Difference(Sphere(head, radius - 1.4), Sphere(head, radius - 3.2)), zone_sphere)
        )
        effects.density_changes.append(DensityChange(crescent, BoneGroup.FEMUR, set_hu=-120.0))
        collapse_mm = (0.5 + 1.5 * lesion.severity) if stage == 3 else (2.5 + 3.0 * lesion.severity)
        cut = HalfSpace(head + (radius - collapse_mm) * direction, direction)
        cut_region = Intersection(
            (Sphere(head, radius + 2.0), Sphere(zone_sphere.centre_mm, zone_radius + 4.0))
        )
        effects.head_cut = (cut, cut_region)
        effects.mask_regions.append(Intersection((Sphere(head, radius + 0.5), zone_sphere)))

    if stage == 4:
        # Secondary osteoarthritis: roof sclerosis and a small rim osteophyte.
        load = _load_direction(femur)
        socket = acetabulum.socket_radius_mm
        roof_band = Intersection(
            (
                Difference(
                    Sphere(acetabulum.centre_mm, socket + 4.0), Sphere(acetabulum.centre_mm, socket)
                ),
                HalfSpace(acetabulum.centre_mm + 0.5 * socket * load, -load),
            )
        )
        effects.density_changes.append(DensityChange(roof_band, BoneGroup.PELVIS, add_hu=350.0))
        effects.mask_regions.append(roof_band)
    return effects


def _impingement(
    lesion: HipLesion,
    femur: FemurGeometry,
    acetabulum: AcetabulumGeometry,
    normal_acetabulum: AcetabulumGeometry,
) -> LesionEffects:
    effects = LesionEffects()
    s = lesion.severity
    head = femur.head_centre_mm
    radius = femur.head_radius_mm
    if lesion.fai_type in (FaiType.CAM, FaiType.MIXED):
        # Position around the neck from anterior (0 degrees) to superior (90 degrees);
        # anterior cams hide on the AP radiograph and show on CT.
        angle = np.deg2rad(20.0 + 55.0 * lesion.extent + 0.5 * lesion.direction_deg[0])
        toward = np.cos(angle) * femur.perpendicular_to_neck(femur.anterior) + np.sin(
            angle
        ) * femur.perpendicular_to_neck(SUPERIOR)
        toward = femur.perpendicular_to_neck(toward)
        # The bump's outer surface reaches 0.85-1.0 head radii from the neck axis,
        # filling the concavity that a normal head-neck offset leaves.
        bump_radius = radius * (0.3 + 0.15 * s)
        offset = radius * (0.85 + 0.15 * s) - bump_radius
        bump = RoundCone(
            head + 0.55 * radius * femur.neck_axis + offset * toward,
            head + 1.2 * radius * femur.neck_axis + (offset - 1.5) * toward,
            bump_radius,
            bump_radius * 0.8,
        )
        effects.femur_parts.append(ShapePart(bump, 4.0))
        effects.mask_regions.append(Difference(bump, Sphere(head, radius - 1.0)))
        if lesion.draws[0] < 0.3:
            # Herniation pit: a small fibrocystic lesion in the anterosuperior neck.
            pit = Sphere(head + 1.1 * radius * femur.neck_axis + 0.45 * radius * toward, 2.5)
            effects.density_changes.append(DensityChange(pit, BoneGroup.FEMUR, set_hu=25.0))
            effects.mask_regions.append(pit)
    if lesion.fai_type in (FaiType.PINCER, FaiType.MIXED):
        extra = Intersection(
            (
                acetabulum.wall_region(),
                acetabulum.rim_plane(),
                HalfSpace(
                    normal_acetabulum.centre_mm
                    + normal_acetabulum.depth_mm * normal_acetabulum.opening_axis,
                    -normal_acetabulum.opening_axis,
                ),
            )
        )
        effects.mask_regions.append(extra)
    return effects


def _normal_variant(lesion: HipLesion, femur: FemurGeometry) -> LesionEffects:
    """Return the incidental findings of a normal hip: sometimes a bone island, never masked."""
    effects = LesionEffects()
    if lesion.draws[0] < 0.06:
        site = (
            femur.head_centre_mm
            + femur.head_radius_mm * (0.6 + 0.6 * lesion.draws[1]) * femur.neck_axis
        )
        island = Sphere(site, 1.5 + 2.0 * lesion.draws[2])
        effects.density_changes.append(DensityChange(island, BoneGroup.FEMUR, set_hu=900.0))
    return effects
