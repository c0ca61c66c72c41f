"""One patient's pelvis as a 3D volume in Hounsfield units, with a lesion mask per hip.

The CT and the radiograph of a simulated study are both rendered from this one
volume, so they show the same anatomy and the same lesions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hipfuse.inference.types import HipClass, Laterality
from hipfuse.training.simulate.anatomy import (
    AcetabulumGeometry,
    PelvisAnatomy,
    acetabulum_geometry,
    lateral_sign,
    sample_pelvis_anatomy,
)
from hipfuse.training.simulate.femur import FemurGeometry, femur_geometry, femur_parts
from hipfuse.training.simulate.lesions import (
    BoneGroup,
    HipLesion,
    LesionEffects,
    acetabular_coverage,
    femur_shift_mm,
    lesion_effects,
    sample_hip_lesion,
)
from hipfuse.training.simulate.pelvis import pelvis_parts, sacral_foramina
from hipfuse.training.simulate.shapes import DistanceField, Grid, occupancy, rasterize

AIR_HU = -1000.0
GAS_HU = -950.0

# Cortical thickness of the pelvis and of the femoral head and neck, and of the
# femoral shaft below the lesser trochanter (mm).
PELVIS_CORTEX_MM = 1.6
FEMUR_HEAD_CORTEX_MM = 1.4
FEMUR_SHAFT_CORTEX_MM = 5.0


@dataclass(frozen=True)
class PatientSpec:
    """Everything random about one patient's images: anatomy and one lesion per hip."""

    anatomy: PelvisAnatomy
    lesions: dict[Laterality, HipLesion]


@dataclass
class Phantom:
    """A patient as a volume.

    Attributes
    ----------
    grid
        Voxel geometry in LPS (array order ``[z, y, x]``).
    hu
        ``float32`` densities in Hounsfield units.
    lesion_masks
        Boolean lesion mask per hip on ``grid`` (all false for a normal hip).
    head_centres_mm
        True femoral head centres in LPS.
    head_radii_mm
        Femoral head radii.
    """

    grid: Grid
    hu: np.ndarray
    lesion_masks: dict[Laterality, np.ndarray]
    head_centres_mm: dict[Laterality, np.ndarray]
    head_radii_mm: dict[Laterality, float]


def simulation_grid(spacing_mm: tuple[float, float, float] = (1.5, 2.0, 1.5)) -> Grid:
    """Return the volume every patient is built on: 450 x 300 x 300 mm around the hips.

    The default is fine along x and z, the axes of the radiograph, and coarser
    along y, the axis the radiograph sums over.
    """
    extent = np.array([450.0, 300.0, 300.0])
    lower = np.array([-225.0, -150.0, -135.0])
    spacing = np.asarray(spacing_mm, dtype=float)
    counts = np.round(extent / spacing).astype(int) + 1
    return Grid(
        origin_mm=tuple(float(v) for v in lower),
        spacing_mm=tuple(float(v) for v in spacing),
        shape=(int(counts[2]), int(counts[1]), int(counts[0])),
    )


def sample_patient_spec(
    rng: np.random.Generator,
    classes: dict[Laterality, HipClass],
    age_years: float,
    sex: str,
) -> PatientSpec:
    """Draw a patient's anatomy and the lesion of each hip."""
    anatomy = sample_pelvis_anatomy(rng, age_years, sex)
    lesions = {
        side: sample_hip_lesion(rng, classes[side]) for side in (Laterality.RIGHT, Laterality.LEFT)
    }
    return PatientSpec(anatomy=anatomy, lesions=lesions)


@dataclass(frozen=True)
class _PlacedHip:
    femur: FemurGeometry
    acetabulum: AcetabulumGeometry
    effects: LesionEffects


def _place_hips(spec: PatientSpec) -> dict[Laterality, _PlacedHip]:
    placed = {}
    for side, lesion in spec.lesions.items():
        hip = spec.anatomy.hips[side]
        lateral = np.array([lateral_sign(side), 0.0, 0.0])
        lcea, version, depth = acetabular_coverage(lesion, hip)
        acetabulum = acetabulum_geometry(spec.anatomy, side, lcea, version, depth)
        normal = acetabulum_geometry(
            spec.anatomy, side, hip.lcea_deg, hip.acetabular_version_deg, 0.0
        )
        femur = femur_geometry(hip, acetabulum.centre_mm + femur_shift_mm(lesion, hip, lateral))
        placed[side] = _PlacedHip(
            femur, acetabulum, lesion_effects(lesion, femur, acetabulum, normal)
        )
    return placed


def build_phantom(spec: PatientSpec, grid: Grid) -> Phantom:
    """Build the density volume and lesion masks of one patient on ``grid``."""
    anatomy = spec.anatomy
    placed = _place_hips(spec)
    edge_mm = grid.min_spacing_mm

    pelvis = DistanceField(grid)
    parts, sockets = pelvis_parts(anatomy, {side: p.acetabulum for side, p in placed.items()})
    for hip in placed.values():
        parts.extend(hip.effects.pelvis_parts)
    for part in parts:
        pelvis.union(part.shape, part.smoothing_mm)
    for hole in sacral_foramina(anatomy):
        pelvis.subtract(hole)
    for socket in sockets:
        pelvis.subtract(socket)

    femora = DistanceField(grid)
    for side, hip in placed.items():
        for part in (
            femur_parts(hip.femur, anatomy.hips[side].shaft_radius_mm) + hip.effects.femur_parts
        ):
            femora.union(part.shape, part.smoothing_mm)
        if hip.effects.head_cut is not None:
            femora.intersect_near(*hip.effects.head_cut)

    hu = soft_tissue_hu(anatomy, grid)
    for pocket in anatomy.gas_pockets:
        _blend(hu, grid, pocket, GAS_HU, edge_mm, inside_body=True)

    interiors: dict[BoneGroup, tuple[tuple[slice, slice, slice], np.ndarray]] = {}
    interiors[BoneGroup.PELVIS] = _add_bone(
        hu, pelvis, anatomy.cortical_hu, anatomy.cancellous_hu, PELVIS_CORTEX_MM, edge_mm
    )
    shaft_start_z = float(np.mean([p.femur.neck_base_mm[2] for p in placed.values()])) - 30.0
    box = femora.touched_box()
    z = grid.axis_mm(2)[box[0]][:, None, None]
    # Below the lesser trochanter the cortex thickens and the interior turns to marrow.
    ramp = np.clip((shaft_start_z - z) / 30.0, 0.0, 1.0)
    thickness = FEMUR_HEAD_CORTEX_MM + (FEMUR_SHAFT_CORTEX_MM - FEMUR_HEAD_CORTEX_MM) * ramp
    interior_hu = anatomy.cancellous_hu + (anatomy.marrow_hu - anatomy.cancellous_hu) * ramp
    interiors[BoneGroup.FEMUR] = _add_bone(
        hu, femora, anatomy.cortical_hu, interior_hu, thickness, edge_mm
    )

    for hip in placed.values():
        for change in hip.effects.density_changes:
            _apply_density_change(hu, grid, change, interiors[change.bone], edge_mm)

    masks = {}
    for side, hip in placed.items():
        mask = np.zeros(grid.shape, dtype=bool)
        if spec.lesions[side].hip_class is not HipClass.NORMAL:
            for region in hip.effects.mask_regions:
                rasterize(grid, region, out=mask)
        masks[side] = mask
    return Phantom(
        grid=grid,
        hu=hu,
        lesion_masks=masks,
        head_centres_mm={side: hip.femur.head_centre_mm for side, hip in placed.items()},
        head_radii_mm={side: hip.femur.head_radius_mm for side, hip in placed.items()},
    )


def _add_bone(
    hu: np.ndarray,
    field: DistanceField,
    cortical_hu: float,
    interior_hu: float | np.ndarray,
    cortex_mm: float | np.ndarray,
    edge_mm: float,
) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Paint a bone (cortex band plus interior) over ``hu``; return its interior occupancy."""
    box = field.touched_box()
    distance = field.values[box]
    outer = occupancy(distance, edge_mm)
    inner = occupancy(distance + cortex_mm, edge_mm)
    region = hu[box]
    hu[box] = region + outer * (cortical_hu - region) + inner * (interior_hu - cortical_hu)
    return box, inner


def _apply_density_change(
    hu: np.ndarray,
    grid: Grid,
    change,
    interior: tuple[tuple[slice, slice, slice], np.ndarray],
    edge_mm: float,
) -> None:
    bone_box, bone_inner = interior
    bounds = change.region.bounds_mm()
    lo, hi = bounds if bounds is not None else (np.full(3, -1e9), np.full(3, 1e9))
    box = grid.box_slices(lo - edge_mm, hi + edge_mm)
    if box is None:
        return
    # Clip the change's box to the bone's box and index the bone occupancy relative to it.
    clipped = []
    for region_slice, bone_slice in zip(box, bone_box, strict=True):
        start = max(region_slice.start, bone_slice.start)
        stop = min(region_slice.stop, bone_slice.stop)
        if stop <= start:
            return
        clipped.append(slice(start, stop))
    box = (clipped[0], clipped[1], clipped[2])
    local = tuple(
        slice(s.start - b.start, s.stop - b.start) for s, b in zip(box, bone_box, strict=True)
    )
    x, y, z = grid.coordinates(box)
    weight = occupancy(change.region.distance(x, y, z), edge_mm) * bone_inner[local]
    if change.set_hu is not None:
        hu[box] += weight * (change.set_hu - hu[box])
    else:
        hu[box] += weight * change.add_hu


def _blend(
    hu: np.ndarray, grid: Grid, shape, value_hu: float, edge_mm: float, inside_body: bool
) -> None:
    bounds = shape.bounds_mm()
    box = grid.box_slices(bounds[0] - edge_mm, bounds[1] + edge_mm)
    if box is None:
        return
    x, y, z = grid.coordinates(box)
    weight = occupancy(shape.distance(x, y, z), edge_mm)
    if inside_body:
        # Gas stays inside the body: only voxels that are soft tissue take it.
        weight = weight * (hu[box] > -500.0)
    hu[box] += weight * (value_hu - hu[box])


def soft_tissue_hu(anatomy: PelvisAnatomy, grid: Grid) -> np.ndarray:
    """Return air, subcutaneous fat and muscle of the trunk and upper thighs on ``grid``.

    NOTE: there are no organs, vessels or fat planes between muscles, so the
    soft tissue of the simulated CT is far plainer than a real pelvis.
    """
    z = grid.axis_mm(2)
    y = grid.axis_mm(1)[None, :, None]
    x = grid.axis_mm(0)[None, None, :]
    width = anatomy.body_half_width_mm
    depth = anatomy.body_half_depth_mm
    taper = np.clip((z - 20.0) / 145.0, 0.0, 1.0)
    trunk_ax = width * (1.0 - (1.0 - anatomy.waist_ratio) * taper)
    trunk_ay = depth * (1.0 - 0.5 * (1.0 - anatomy.waist_ratio) * taper)
    # Below the crotch the trunk closes off and only the thighs remain.
    below = np.clip((anatomy.crotch_z_mm - z) / 55.0, 0.0, 1.0)
    closing = np.sqrt(np.clip(1.0 - below**2, 0.0, 1.0))
    trunk_ax = trunk_ax * closing
    trunk_ay = trunk_ay * closing
    fat = anatomy.fat_thickness_mm
    edge = grid.min_spacing_mm

    outer = np.zeros(grid.shape, dtype=np.float32)
    inner = np.zeros(grid.shape, dtype=np.float32)
    present = np.nonzero(trunk_ax > 1.0)[0]
    if present.size:
        zs = slice(int(present[0]), int(present[-1]) + 1)
        distance = _ellipse_distance(x, y - anatomy.body_centre_y_mm, trunk_ax[zs], trunk_ay[zs])
        outer[zs] = occupancy(distance, edge)
        inner[zs] = occupancy(distance + fat, edge)
    thigh_rows = np.nonzero(z < anatomy.crotch_z_mm + 45.0)[0]
    if thigh_rows.size:
        zs = slice(int(thigh_rows[0]), int(thigh_rows[-1]) + 1)
        # The thighs emerge from inside the trunk, growing from a point 45 mm above the crotch.
        grow = np.sqrt(np.clip((anatomy.crotch_z_mm + 45.0 - z[zs]) / 45.0, 0.0, 1.0))
        ax = (0.46 * width * grow).astype(np.float32)
        ay = (0.8 * depth * grow).astype(np.float32)
        for sign in (-1.0, 1.0):
            distance = _ellipse_distance(
                x - sign * 0.53 * width, y - anatomy.body_centre_y_mm + 0.1 * depth, ax, ay
            )
            outer[zs] = np.maximum(outer[zs], occupancy(distance, edge))
            inner[zs] = np.maximum(inner[zs], occupancy(distance + fat, edge))
    hu = np.float32(AIR_HU) + outer * np.float32(anatomy.fat_hu - AIR_HU)
    hu += inner * np.float32(anatomy.muscle_hu - anatomy.fat_hu)
    return hu


def _ellipse_distance(x: np.ndarray, y: np.ndarray, ax: np.ndarray, ay: np.ndarray) -> np.ndarray:
    """Return an approximate signed distance to ellipses whose semi-axes vary along z."""
    ax = np.maximum(ax, 1e-3).astype(np.float32)[:, None, None]
    ay = np.maximum(ay, 1e-3).astype(np.float32)[:, None, None]
    q = np.sqrt((x / ax) ** 2 + (y / ay) ** 2)
    return (q - 1.0) * np.minimum(ax, ay)
