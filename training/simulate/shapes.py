"""Signed distance shapes on a regular LPS grid, evaluated only inside their bounding boxes.

Every shape returns a signed distance in millimetres (negative inside) at
broadcast coordinate arrays. Bones are unions of shapes, and a cortical shell
of thickness ``t`` is the band ``-t < sdf < 0``, so a lesion that changes a
surface (a cam bump, a collapsed head) gets a cortex for free.

Formulas for the round cone and the ellipsoid bound follow Inigo Quilez,
"distance functions" (iquilezles.org/articles/distfunctions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Distance stored where no shape is near; larger than every smoothing radius and shell.
FAR_MM = 64.0


@dataclass(frozen=True)
class Grid:
    """Regular grid of voxel centres in LPS millimetres, array order ``[z, y, x]``.

    Attributes
    ----------
    origin_mm
        ``(x, y, z)`` of the centre of voxel ``[0, 0, 0]``.
    spacing_mm
        ``(dx, dy, dz)`` voxel size.
    shape
        ``(nz, ny, nx)``.
    """

    origin_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]
    shape: tuple[int, int, int]

    def axis_mm(self, axis: int) -> np.ndarray:
        """Return voxel centre coordinates along LPS axis ``axis`` (0 = x, 1 = y, 2 = z)."""
        count = self.shape[2 - axis]
        return (self.origin_mm[axis] + self.spacing_mm[axis] * np.arange(count)).astype(np.float32)

    def box_slices(self, lo_mm: np.ndarray, hi_mm: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Return ``[z, y, x]`` slices of the voxels inside an LPS box, or ``None`` if empty."""
        slices = []
        for axis in (2, 1, 0):
            start = int(np.floor((lo_mm[axis] - self.origin_mm[axis]) / self.spacing_mm[axis]))
            stop = int(np.ceil((hi_mm[axis] - self.origin_mm[axis]) / self.spacing_mm[axis])) + 1
            start = max(start, 0)
            stop = min(stop, self.shape[2 - axis])
            if stop <= start:
                return None
            slices.append(slice(start, stop))
        return slices[0], slices[1], slices[2]

    def coordinates(
        self, box: tuple[slice, slice, slice]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return broadcastable ``x, y, z`` coordinate arrays of the voxels in ``box``."""
        z = self.axis_mm(2)[box[0]][:, None, None]
        y = self.axis_mm(1)[box[1]][None, :, None]
        x = self.axis_mm(0)[box[2]][None, None, :]
        return x, y, z

    @property
    def min_spacing_mm(self) -> float:
        """Smallest voxel edge, the width of the soft edge of every shape."""
        return float(min(self.spacing_mm))


def _vec(values: np.ndarray | tuple[float, ...] | list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(3)


def _floats(values: np.ndarray | tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    # Python floats keep float32 coordinate arrays in float32 (NumPy 2 promotion rules).
    x, y, z = (float(v) for v in np.asarray(values).reshape(3))
    return x, y, z


class Shape:
    """Base class: a signed distance field with an optional finite bounding box."""

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the ``(lo, hi)`` LPS corners of a box around the shape, ``None`` if unbounded."""
        raise NotImplementedError

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm at the broadcast coordinates."""
        raise NotImplementedError


@dataclass(frozen=True)
class Sphere(Shape):
    """Ball of ``radius_mm`` around ``centre_mm``."""

    centre_mm: np.ndarray
    radius_mm: float

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        c = _vec(self.centre_mm)
        return c - self.radius_mm, c + self.radius_mm

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        c = _floats(self.centre_mm)
        return np.sqrt((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) - self.radius_mm


@dataclass(frozen=True)
class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``radii_mm`` along the rows of ``axes`` (unit LPS vectors).

    The distance is Quilez's bound, exact on the surface and within a few
    percent nearby, which is enough for shells of a few millimetres.
    """

    centre_mm: np.ndarray
    radii_mm: np.ndarray
    axes: np.ndarray = field(default_factory=lambda: np.eye(3))

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        c = _vec(self.centre_mm)
        half = np.sqrt(((np.asarray(self.axes) * np.asarray(self.radii_mm)[:, None]) ** 2).sum(0))
        return c - half, c + half

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        c = _floats(self.centre_mm)
        dx, dy, dz = x - c[0], y - c[1], z - c[2]
        k0 = np.zeros(np.broadcast_shapes(dx.shape, dy.shape, dz.shape), dtype=np.float32)
        k1 = np.zeros_like(k0)
        for axis, radius in zip(np.asarray(self.axes), np.asarray(self.radii_mm), strict=True):
            ax, ay, az = _floats(axis)
            radius = float(radius)
            local = ax * dx + ay * dy + az * dz
            k0 += (local / radius) ** 2
            k1 += (local / radius**2) ** 2
        k0 = np.sqrt(k0)
        k1 = np.sqrt(np.maximum(k1, 1e-12))
        return k0 * (k0 - 1.0) / k1


@dataclass(frozen=True)
class RoundCone(Shape):
    """Two balls (radius ``radius_a_mm`` at ``a_mm``, ``radius_b_mm`` at ``b_mm``) and their hull.

    With equal radii this is a capsule. Used for femoral necks, shafts and pubic rami.
    """

    a_mm: np.ndarray
    b_mm: np.ndarray
    radius_a_mm: float
    radius_b_mm: float

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        a, b = _vec(self.a_mm), _vec(self.b_mm)
        lo = np.minimum(a - self.radius_a_mm, b - self.radius_b_mm)
        hi = np.maximum(a + self.radius_a_mm, b + self.radius_b_mm)
        return lo, hi

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        a, b = _vec(self.a_mm), _vec(self.b_mm)
        r1, r2 = float(self.radius_a_mm), float(self.radius_b_mm)
        ba = _floats(b - a)
        l2 = float(np.dot(ba, ba))
        rr = r1 - r2
        a2 = l2 - rr * rr
        il2 = 1.0 / l2
        ax, ay, az = _floats(a)
        pax, pay, paz = x - ax, y - ay, z - az
        along = pax * ba[0] + pay * ba[1] + paz * ba[2]
        beyond = along - l2
        x2 = (pax * l2 - ba[0] * along) ** 2
        x2 = x2 + (pay * l2 - ba[1] * along) ** 2
        x2 = x2 + (paz * l2 - ba[2] * along) ** 2
        y2 = along * along * l2
        z2 = beyond * beyond * l2
        k = float(np.sign(rr)) * rr * rr * x2
        near_b = np.sign(beyond) * a2 * z2 > k
        near_a = np.sign(along) * a2 * y2 < k
        side = (np.sqrt(x2 * a2 * il2) + along * rr) * il2 - r1
        cap_b = np.sqrt(x2 + z2) * il2 - r2
        cap_a = np.sqrt(x2 + y2) * il2 - r1
        return np.where(near_b, cap_b, np.where(near_a, cap_a, side)).astype(np.float32)


@dataclass(frozen=True)
class HalfSpace(Shape):
    """Points ``p`` with ``(p - point_mm) . normal <= 0``; ``normal`` is a unit vector."""

    point_mm: np.ndarray
    normal: np.ndarray

    def bounds_mm(self) -> None:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        return None

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        p, n = _floats(self.point_mm), _floats(self.normal)
        return (x - p[0]) * n[0] + (y - p[1]) * n[1] + (z - p[2]) * n[2]


@dataclass(frozen=True)
class Intersection(Shape):
    """Points inside every one of ``shapes``."""

    shapes: tuple[Shape, ...]

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        boxes = [box for box in (s.bounds_mm() for s in self.shapes) if box is not None]
        if not boxes:
            return None
        lo = np.max([box[0] for box in boxes], axis=0)
        hi = np.min([box[1] for box in boxes], axis=0)
        return lo, np.maximum(hi, lo)

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        result = self.shapes[0].distance(x, y, z)
        for shape in self.shapes[1:]:
            result = np.maximum(result, shape.distance(x, y, z))
        return result


@dataclass(frozen=True)
class Union(Shape):
    """Points inside any one of ``shapes``, filleted by ``smoothing_mm`` where they meet."""

    shapes: tuple[Shape, ...]
    smoothing_mm: float = 0.0

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        boxes = [s.bounds_mm() for s in self.shapes]
        if any(box is None for box in boxes):
            return None
        lo = np.min([box[0] for box in boxes], axis=0)
        hi = np.max([box[1] for box in boxes], axis=0)
        return lo, hi

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        result = self.shapes[0].distance(x, y, z)
        for shape in self.shapes[1:]:
            result = smooth_min(result, shape.distance(x, y, z), self.smoothing_mm)
        return result


@dataclass(frozen=True)
class Difference(Shape):
    """Points inside ``keep`` and outside ``remove``."""

    keep: Shape
    remove: Shape

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        return self.keep.bounds_mm()

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        return np.maximum(self.keep.distance(x, y, z), -self.remove.distance(x, y, z))


@dataclass(frozen=True)
class Shell(Shape):
    """Band of ``thickness_mm`` just inside the surface of ``shape``."""

    shape: Shape
    thickness_mm: float

    def bounds_mm(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Return the ``(lo, hi)`` box, or ``None`` when unbounded."""
        return self.shape.bounds_mm()

    def distance(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Return the signed distance in mm."""
        inner = self.shape.distance(x, y, z)
        return np.abs(inner + 0.5 * self.thickness_mm) - 0.5 * self.thickness_mm


def smooth_min(a: np.ndarray, b: np.ndarray, smoothing_mm: float) -> np.ndarray:
    """Return the polynomial smooth minimum of two distance fields (a filleted union)."""
    if smoothing_mm <= 0:
        return np.minimum(a, b)
    h = np.clip(0.5 + 0.5 * (b - a) / smoothing_mm, 0.0, 1.0)
    return b + (a - b) * h - smoothing_mm * h * (1.0 - h)


def occupancy(distance_mm: np.ndarray, edge_mm: float) -> np.ndarray:
    """Return the fraction of each voxel inside a shape, with a linear edge ``edge_mm`` wide."""
    return np.clip(0.5 - distance_mm / edge_mm, 0.0, 1.0).astype(np.float32)


class DistanceField:
    """A distance field on a grid built from shapes by union, subtraction and intersection.

    Each operation touches only the bounding box of its shape, widened by
    ``margin_mm``, which keeps a full pelvis at 1.5 mm voxels fast.
    """

    def __init__(self, grid: Grid, margin_mm: float = 8.0) -> None:
        self.grid = grid
        self.margin_mm = margin_mm
        self.values = np.full(grid.shape, FAR_MM, dtype=np.float32)
        self._touched: list[tuple[slice, slice, slice]] = []

    def _box(self, shape: Shape) -> tuple[slice, slice, slice] | None:
        bounds = shape.bounds_mm()
        if bounds is None:
            return (slice(None), slice(None), slice(None))
        lo, hi = bounds
        return self.grid.box_slices(lo - self.margin_mm, hi + self.margin_mm)

    def union(self, shape: Shape, smoothing_mm: float = 0.0) -> None:
        """Add ``shape`` to the field, with a fillet of ``smoothing_mm`` where they meet."""
        box = self._box(shape)
        if box is None:
            return
        x, y, z = self.grid.coordinates(box)
        self.values[box] = smooth_min(self.values[box], shape.distance(x, y, z), smoothing_mm)
        self._touched.append(box)

    def touched_box(self) -> tuple[slice, slice, slice]:
        """Return the smallest box holding every union so far (outside it the field is far)."""
        if not self._touched:
            return (slice(0, 0), slice(0, 0), slice(0, 0))
        starts = [min(box[axis].start for box in self._touched) for axis in range(3)]
        stops = [max(box[axis].stop for box in self._touched) for axis in range(3)]
        return (
            slice(starts[0], stops[0]),
            slice(starts[1], stops[1]),
            slice(starts[2], stops[2]),
        )

    def subtract(self, shape: Shape) -> None:
        """Remove ``shape`` from the field."""
        box = self._box(shape)
        if box is None:
            return
        x, y, z = self.grid.coordinates(box)
        self.values[box] = np.maximum(self.values[box], -shape.distance(x, y, z))

    def intersect_near(self, shape: Shape, region: Shape) -> None:
        """Keep only the part inside ``shape`` within the bounding box of ``region``."""
        box = self._box(region)
        if box is None:
            return
        x, y, z = self.grid.coordinates(box)
        inside_region = region.distance(x, y, z) < 0
        cut = np.maximum(self.values[box], shape.distance(x, y, z))
        self.values[box] = np.where(inside_region, cut, self.values[box])


def rasterize(grid: Grid, shape: Shape, out: np.ndarray | None = None) -> np.ndarray:
    """Return (or OR into ``out``) a ``[z, y, x]`` mask of the voxel centres inside ``shape``."""
    mask = np.zeros(grid.shape, dtype=bool) if out is None else out
    bounds = shape.bounds_mm()
    box = (
        (slice(None), slice(None), slice(None))
        if bounds is None
        else grid.box_slices(bounds[0] - 1.0, bounds[1] + 1.0)
    )
    if box is None:
        return mask
    x, y, z = grid.coordinates(box)
    mask[box] |= shape.distance(x, y, z) < 0
    return mask


def unit(vector: np.ndarray | tuple[float, ...] | list[float]) -> np.ndarray:
    """Return ``vector`` scaled to length 1."""
    v = _vec(vector)
    return v / np.linalg.norm(v)


def rotation_matrix(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """Return the 3 x 3 matrix rotating by ``angle_deg`` about ``axis`` (right-handed)."""
    k = unit(axis)
    angle = np.deg2rad(angle_deg)
    cross = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * (cross @ cross)
