"""Femoral head localisation on a CT volume, in LPS millimetres.

The femoral head is the largest ball of bone lateral to the midline in the
lower pelvis. The search averages the volume onto a grid of about 3 mm and
thresholds bone. It fills enclosed cavities, so marrow spaces and cysts count
as bone, and takes the Euclidean distance transform, whose value at a voxel is
the radius of the largest sphere of bone centred there.
A candidate must also be enclosed by a shell of denser bone (its own
subchondral plate and the acetabulum), which contrast-enhanced organs of
similar density are not. Both heads are chosen together as the mirror-image
pair with the largest radii. Where the joint space is thinner than the grid,
head and acetabulum merge into one larger ball whose centre lies toward the
acetabulum, so each centre is then fitted to the head's surface by
:func:`~hipfuse.inference.regions.ct_sphere.fit_sphere_centre`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from hipfuse.inference.regions import ct_grid
from hipfuse.inference.regions.ct_sphere import fit_sphere_centre
from hipfuse.inference.types import Laterality

BONE_HU = 120.0
"""Threshold for cancellous bone in HU, on volumes averaged to the search grid.
Fat, muscle and unenhanced organs lie below it (under about 80 HU). It is lower
than the usual 200 HU because the femoral head's cancellous bone measured 170 to
350 HU on the real 3 mm sample and falls lower in osteoporosis. The shell test
rejects the enhanced organs that pass it."""

SHELL_HU = 250.0
"""Density that a ray from a candidate centre must reach near the candidate's
surface to count as meeting a bone shell."""

SHELL_FRACTION = 0.6
"""Fraction of rays that must meet a bone shell. Femoral heads of the real 3 mm
sample scored 0.7 to 0.9; the femoral neck direction and partial volume account
for the rest."""

SHELL_DIRECTIONS = 64
"""Rays cast from a candidate centre for the shell test."""

BODY_HU = -500.0
"""Threshold between air (-1000 HU) and soft tissue (about 0 HU) for the body outline."""

SEARCH_SPACING_MM = 3.0
"""Voxel size of the search grid, reached by averaging blocks of voxels."""

HEAD_RADIUS_MM = (15.0, 35.0)
"""Plausible femoral head radius, wide around adult values. The simulated cohort
draws 21.5 to 26 mm, and the real sample's heads fit spheres of about 20 mm."""

MIN_LATERAL_OFFSET_MM = 40.0
"""Minimum distance of a head centre from the body midline. Adult hip centres lie
about 80 to 100 mm from it, so the limit only excludes the spine, sacrum and
symphysis."""

HEAD_DISTANCE_MM = (100.0, 280.0)
"""Plausible distance between the two head centres along LPS x, wide around adult
values (the simulated cohort draws 168 to 192 mm)."""

MAX_PAIR_OFFSET_MM = 30.0
"""Largest difference in LPS y or z between the two heads of a pair."""

CUT_OFF_LEVEL_MM = 60.0
"""Height above and below the largest ball within which a body touching the
left or right edge of the volume counts as cut off."""

CUT_OFF_FRACTION = 0.5
"""Body cross-section at the volume's left or right edge, as a fraction of its
largest, from which the body counts as cut off."""

PAIR_MIN_RADIUS_RATIO = 0.8
"""Both balls of a pair must reach this fraction of the largest lateral ball. On
the real 3 mm sample the heads measured 18 and 19 mm on the search grid, the
next balls (posterior ilia, greater trochanters) 13 to 15 mm."""

MAX_CANDIDATES = 64
"""Most balls of bone kept from the search grid, largest first."""


@dataclass(frozen=True)
class HeadCandidate:
    """A ball of bone found in the search.

    Attributes
    ----------
    centre_mm
        Centre in LPS millimetres.
    radius_mm
        Radius: of the largest sphere of bone centred there on the search grid,
        of the fitted sphere after the fit.
    """

    centre_mm: tuple[float, float, float]
    radius_mm: float


@dataclass(frozen=True)
class HeadSearch:
    """Femoral heads found on a volume, per patient side, and reasons for any not found."""

    heads: dict[Laterality, HeadCandidate]
    missing: dict[Laterality, str]


def locate_femoral_heads(voxels: np.ndarray, affine: np.ndarray) -> HeadSearch:
    """Locate both femoral head centres on a CT volume.

    Parameters
    ----------
    voxels
        HU array ``[k, j, i]`` in any axis order: all geometry goes through
        ``affine``.
    affine
        ``4 x 4`` index to LPS mm matrix of ``voxels``.

    Returns
    -------
    HeadSearch
        Heads keyed by the patient's side, which comes from LPS x (larger x is
        the patient's left) and never from the array side.
    """
    factors = ct_grid.pool_factors(affine, SEARCH_SPACING_MM)
    pooled = ct_grid.mean_pool(voxels, factors)
    coarse_affine = ct_grid.pooled_affine(affine, factors)

    body = _largest_component(pooled > BODY_HU)
    midline_x_mm = _body_midline_x_mm(body, coarse_affine)
    if midline_x_mm is None:
        reason = "the volume contains no body (no voxel above -500 HU)"
        return HeadSearch({}, {Laterality.RIGHT: reason, Laterality.LEFT: reason})

    candidates = [
        candidate
        for candidate in _sphere_candidates(pooled, coarse_affine)
        if _shell_fraction(voxels, affine, candidate) >= SHELL_FRACTION
    ]
    sides: dict[Laterality, list[HeadCandidate]] = {Laterality.RIGHT: [], Laterality.LEFT: []}
    for candidate in candidates:
        offset_mm = candidate.centre_mm[0] - midline_x_mm
        if offset_mm >= MIN_LATERAL_OFFSET_MM:
            sides[Laterality.LEFT].append(candidate)
        elif offset_mm <= -MIN_LATERAL_OFFSET_MM:
            sides[Laterality.RIGHT].append(candidate)

    chosen = _best_pair(sides[Laterality.RIGHT], sides[Laterality.LEFT], candidates)
    if chosen is None:
        if _lone_ball_side_unknown(candidates, body, coarse_affine):
            reason = (
                "the body is cut off at the left or right edge of the field of view and no "
                "mirror-image pair of femoral heads was found, so the side of a single head "
                "cannot be determined. One-sided volumes are not supported"
            )
            return HeadSearch({}, {Laterality.RIGHT: reason, Laterality.LEFT: reason})
        # No mirror-image pair: keep the largest head-sized ball on each side.
        chosen = {}
        for side, found in sides.items():
            head_sized = [c for c in found if c.radius_mm >= HEAD_RADIUS_MM[0]]
            if head_sized:
                chosen[side] = max(head_sized, key=_radius)

    heads: dict[Laterality, HeadCandidate] = {}
    missing: dict[Laterality, str] = {}
    for side in (Laterality.RIGHT, Laterality.LEFT):
        if side not in chosen:
            missing[side] = (
                f"no ball of bone with a radius of {HEAD_RADIUS_MM[0]:.0f} to "
                f"{HEAD_RADIUS_MM[1]:.0f} mm lies {MIN_LATERAL_OFFSET_MM:.0f} mm or more "
                "to this side of the body midline (not a pelvis, or the hip is outside "
                "the field of view)"
            )
            continue
        centre_mm, radius_mm, _ = fit_sphere_centre(
            voxels, affine, np.asarray(chosen[side].centre_mm), HEAD_RADIUS_MM
        )
        if radius_mm > 0:
            heads[side] = HeadCandidate(tuple(float(v) for v in centre_mm), radius_mm)
        else:
            # No edge voted near the coarse centre: keep the search-grid ball.
            heads[side] = chosen[side]
    return HeadSearch(heads, missing)


def _radius(candidate: HeadCandidate) -> float:
    return candidate.radius_mm


def _body_midline_x_mm(body: np.ndarray, affine: np.ndarray) -> float | None:
    """Return the LPS x of the body's centroid, or ``None`` for an empty mask."""
    index = np.argwhere(body)
    if len(index) == 0:
        return None
    return float(ct_grid.index_to_mm(affine, index.mean(axis=0, keepdims=True))[0, 0])


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """Return the largest 6-connected component of ``mask`` (the body, without the table)."""
    labels, count = ndi.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


def _lone_ball_side_unknown(
    candidates: list[HeadCandidate], body: np.ndarray, affine: np.ndarray
) -> bool:
    """Tell whether the largest ball is head-sized but the body is cut off beside it.

    The body centroid of a volume cut through the body is not the midline, so
    the side of a lone ball cannot be determined from it.
    """
    if not candidates:
        return False
    largest = max(candidates, key=_radius)
    if largest.radius_mm < HEAD_RADIUS_MM[0]:
        return False
    return _body_cut_off_in_x(body, affine, largest.centre_mm[2])


def _body_cut_off_in_x(body: np.ndarray, affine: np.ndarray, level_mm: float) -> bool:
    """Tell whether the field of view cuts through the body at the left or right near a height.

    Within ``CUT_OFF_LEVEL_MM`` of LPS z ``level_mm``, the body's cross-section
    in the first or last plane of the array axis closest to LPS x is compared
    with its largest cross-section in any such plane. Skin touching the edge
    (a wide patient) gives a small fraction; a volume cut near the midline
    gives one near 1.
    """
    axis = int(np.argmax(np.abs(affine[0, :3])))
    z_mm = ct_grid.index_to_mm(affine, np.indices(body.shape).reshape(3, -1).T)[:, 2]
    near_level = (np.abs(z_mm - level_mm) <= CUT_OFF_LEVEL_MM).reshape(body.shape)
    other_axes = tuple(n for n in range(3) if n != axis)
    areas = np.sum(body & near_level, axis=other_axes)
    if areas.max() == 0:
        return False
    return bool(max(areas[0], areas[-1]) >= CUT_OFF_FRACTION * areas.max())


def _bone_distance_mm(voxels: np.ndarray, spacing_mm: np.ndarray, close_gaps: bool) -> np.ndarray:
    """Return each voxel's distance in mm to the nearest non-bone voxel or the volume edge.

    Bone is thresholded, gaps of one voxel are closed when ``close_gaps``
    (on the search grid, where partial volume breaks a thin cortex) and enclosed cavities
    (marrow below the threshold, cysts) are filled in 3D. Filling each axial
    cross-section instead would also fill the joint space between head and
    acetabulum and merge them. The padding makes the volume edge count as
    non-bone, so a head cut by the edge of the field of view looks as small as
    what is left of it.
    """
    bone = np.pad(voxels > BONE_HU, 2)
    if close_gaps:
        bone = ndi.binary_closing(bone, iterations=1)
    filled = ndi.binary_fill_holes(bone)[1:-1, 1:-1, 1:-1]
    distance_mm = ndi.distance_transform_edt(filled, sampling=spacing_mm)
    return distance_mm[1:-1, 1:-1, 1:-1]


def _sphere_candidates(pooled: np.ndarray, affine: np.ndarray) -> list[HeadCandidate]:
    """Return local maxima of the bone distance transform within the head radius range."""
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    distance_mm = _bone_distance_mm(pooled, spacing, close_gaps=True)
    # The coarse grid shrinks a ball by up to one step, hence the lower limit.
    low_mm = HEAD_RADIUS_MM[0] - float(spacing.max())
    # Heads merged with an acetabulum on the coarse grid may look larger.
    high_mm = HEAD_RADIUS_MM[1] + float(spacing.max())
    peaks = (distance_mm == ndi.maximum_filter(distance_mm, size=3)) & (distance_mm >= low_mm)
    peaks &= distance_mm <= high_mm
    index = np.argwhere(peaks)
    radii = distance_mm[peaks]
    candidates: list[HeadCandidate] = []
    # Plateaus give many equal maxima: keep the largest ball per neighbourhood.
    for n in np.argsort(-radii, kind="stable"):
        low = np.maximum(index[n] - 2, 0)
        neighbourhood = distance_mm[
            low[0] : index[n][0] + 3, low[1] : index[n][1] + 3, low[2] : index[n][2] + 3
        ]
        plateau = _plateau_centre(neighbourhood, float(radii[n]), spacing)[0] + low
        centre = ct_grid.index_to_mm(affine, plateau[None, :])[0]
        if any(
            np.linalg.norm(centre - np.asarray(kept.centre_mm)) < HEAD_RADIUS_MM[0]
            for kept in candidates
        ):
            continue
        candidates.append(HeadCandidate(tuple(float(v) for v in centre), float(radii[n])))
        if len(candidates) == MAX_CANDIDATES:
            break
    return candidates


def _shell_fraction(voxels: np.ndarray, affine: np.ndarray, candidate: HeadCandidate) -> float:
    """Return the fraction of rays from the centre that meet bone near the candidate's surface.

    Each ray is sampled from 0.6 to 1 radius plus 6 mm, through the original
    voxels (partial volume on the search grid would dilute a thin cortex).
    """
    directions_mm = ct_grid.sphere_directions(SHELL_DIRECTIONS)
    distances_mm = np.arange(0.6 * candidate.radius_mm, candidate.radius_mm + 6.0, 1.5)
    points_mm = (
        np.asarray(candidate.centre_mm)[None, None, :]
        + directions_mm[:, None, :] * distances_mm[None, :, None]
    ).reshape(-1, 3)
    index = ct_grid.mm_to_index(affine, points_mm).T
    values = ndi.map_coordinates(voxels, index, order=1, mode="constant", cval=-1024.0)
    ray_max = values.reshape(SHELL_DIRECTIONS, len(distances_mm)).max(axis=1)
    return float(np.mean(ray_max >= SHELL_HU))


def _best_pair(
    right: list[HeadCandidate], left: list[HeadCandidate], candidates: list[HeadCandidate]
) -> dict[Laterality, HeadCandidate] | None:
    """Choose the mirror-image pair with the largest combined radius, or ``None``.

    Both balls of a pair must reach ``PAIR_MIN_RADIUS_RATIO`` of the largest
    of all ``candidates``, so two small balls (the posterior ilia) never
    outrank a single femoral head.
    """
    largest_mm = max((candidate.radius_mm for candidate in candidates), default=0.0)
    min_radius_mm = PAIR_MIN_RADIUS_RATIO * largest_mm
    right = [candidate for candidate in right if candidate.radius_mm >= min_radius_mm]
    left = [candidate for candidate in left if candidate.radius_mm >= min_radius_mm]
    best: tuple[float, HeadCandidate, HeadCandidate] | None = None
    for right_head in right:
        for left_head in left:
            distance_x = left_head.centre_mm[0] - right_head.centre_mm[0]
            if not HEAD_DISTANCE_MM[0] <= distance_x <= HEAD_DISTANCE_MM[1]:
                continue
            if abs(left_head.centre_mm[1] - right_head.centre_mm[1]) > MAX_PAIR_OFFSET_MM:
                continue
            if abs(left_head.centre_mm[2] - right_head.centre_mm[2]) > MAX_PAIR_OFFSET_MM:
                continue
            score = right_head.radius_mm + left_head.radius_mm
            if best is None or score > best[0]:
                best = (score, right_head, left_head)
    if best is None:
        return None
    return {Laterality.RIGHT: best[1], Laterality.LEFT: best[2]}


def _plateau_centre(distance_mm: np.ndarray, peak_mm: float, spacing_mm: np.ndarray) -> np.ndarray:
    """Return the mean index of voxels within half a voxel of the peak distance.

    The distance transform of a ball sampled on a grid has a plateau of
    near-equal maxima; their mean is a sub-voxel estimate of the centre.
    """
    top = np.argwhere(distance_mm >= peak_mm - 0.5 * float(spacing_mm.max()))
    return top.mean(axis=0, keepdims=True)
