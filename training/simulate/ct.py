"""Simulated pelvic CT: acquisition parameters and rendering from the phantom.

The series is axial, head first supine (HFS), 128 x 128 pixels in the
standard orientation: the column index increases toward the patient's left
and the row index toward posterior. Slices run from superior to inferior.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hipfuse.training.simulate.phantom import AIR_HU, Phantom
from hipfuse.training.simulate.resample import BOX_TO_SIGMA, resample_separable


@dataclass(frozen=True)
class CtKernel:
    """Reconstruction kernel: its DICOM name, blur and the noise it leaves.

    Attributes
    ----------
    name
        Convolution Kernel (0018,1210) value.
    blur_mm
        Gaussian standard deviation of the in-plane blur.
    noise_hu
        Standard deviation of image noise in soft tissue.
    """

    name: str
    blur_mm: float
    noise_hu: float


# Kernel families per simulated centre: a vendor-neutral set and a Siemens-style set,
# so a model can be checked on a centre whose images look different.
CT_KERNELS: dict[str, tuple[CtKernel, ...]] = {
    "SIM-A": (
        CtKernel("STANDARD", 0.9, 12.0),
        CtKernel("BONE", 0.45, 26.0),
        CtKernel("SOFT", 1.2, 8.0),
    ),
    "SIM-B": (
        CtKernel("Br40f", 0.8, 15.0),
        CtKernel("Br64f", 0.4, 32.0),
        CtKernel("Br36f", 1.0, 11.0),
    ),
}


@dataclass(frozen=True)
class CtAcquisition:
    """Geometry and reconstruction of one simulated CT series.

    Attributes
    ----------
    rows, columns
        Image matrix.
    pixel_spacing_mm
        In-plane pixel size (square pixels).
    slice_spacing_mm
        Distance between slice centres; also the slice thickness.
    slice_count
        Number of slices.
    first_position_mm
        Image Position (Patient) of the first (most superior) slice: LPS centre of
        its first pixel.
    kernel
        Reconstruction kernel.
    kvp, tube_current_ma
        Acquisition values written to the CT Image module.
    table_top_y_mm
        LPS y of the table surface, or ``None`` when the table is outside the field.
    """

    rows: int
    columns: int
    pixel_spacing_mm: float
    slice_spacing_mm: float
    slice_count: int
    first_position_mm: tuple[float, float, float]
    kernel: CtKernel
    kvp: float
    tube_current_ma: int
    table_top_y_mm: float | None

    def slice_positions_mm(self) -> np.ndarray:
        """Return Image Position (Patient) of every slice, ``[slice, (x, y, z)]``."""
        positions = np.tile(np.asarray(self.first_position_mm, dtype=float), (self.slice_count, 1))
        positions[:, 2] -= self.slice_spacing_mm * np.arange(self.slice_count)
        return positions

    def affine(self) -> np.ndarray:
        """Return the ``4 x 4`` map from ``(slice, row, column, 1)`` to LPS mm."""
        affine = np.eye(4)
        affine[:3, 0] = (0.0, 0.0, -self.slice_spacing_mm)
        affine[:3, 1] = (0.0, self.pixel_spacing_mm, 0.0)
        affine[:3, 2] = (self.pixel_spacing_mm, 0.0, 0.0)
        affine[:3, 3] = self.first_position_mm
        return affine

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return LPS z of each slice, y of each row and x of each column."""
        x0, y0, z0 = self.first_position_mm
        z = z0 - self.slice_spacing_mm * np.arange(self.slice_count)
        y = y0 + self.pixel_spacing_mm * np.arange(self.rows)
        x = x0 + self.pixel_spacing_mm * np.arange(self.columns)
        return z, y, x


def sample_ct_acquisition(
    rng: np.random.Generator,
    phantom: Phantom,
    body_half_width_mm: float,
    body_back_y_mm: float,
    centre: str,
) -> CtAcquisition:
    """Draw a CT acquisition that covers both hips of ``phantom``."""
    kernels = CT_KERNELS.get(centre, CT_KERNELS["SIM-A"])
    kernel = kernels[int(rng.choice(len(kernels), p=[0.6, 0.25, 0.15]))]
    spacing = float(rng.choice([2.0, 2.5, 3.0]))
    count = int(rng.integers(40, 61))
    matrix = 128

    # 2.5-3.2 mm pixels: a wide patient's skin may fall outside the field, as on real
    # scanners, but the trochanters stay inside.
    field_mm = float(np.clip(2.0 * body_half_width_mm + rng.uniform(10.0, 40.0), 320.0, 410.0))
    pixel = field_mm / matrix

    hips_z = float(np.mean([c[2] for c in phantom.head_centres_mm.values()]))
    # The hips sit 35-50 % of the way up the scanned range, so the range reaches the
    # iliac wings above and the lesser trochanters below.
    bottom = hips_z - rng.uniform(0.35, 0.5) * spacing * (count - 1)
    top = bottom + spacing * (count - 1)
    top = min(
        top, phantom.grid.origin_mm[2] + phantom.grid.spacing_mm[2] * (phantom.grid.shape[0] - 1)
    )

    centre_x = float(rng.normal(0.0, 6.0))
    centre_y = float(rng.normal(10.0, 8.0))
    first = (
        centre_x - 0.5 * pixel * (matrix - 1),
        centre_y - 0.5 * pixel * (matrix - 1),
        float(top),
    )

    table_y = body_back_y_mm + 2.0
    last_row_y = first[1] + pixel * (matrix - 1)
    return CtAcquisition(
        rows=matrix,
        columns=matrix,
        pixel_spacing_mm=round(pixel, 4),
        slice_spacing_mm=spacing,
        slice_count=count,
        first_position_mm=(round(first[0], 3), round(first[1], 3), round(first[2], 3)),
        kernel=kernel,
        kvp=float(rng.choice([100.0, 120.0, 120.0, 140.0])),
        tube_current_ma=int(rng.integers(120, 400)),
        table_top_y_mm=table_y if table_y + 12.0 < last_row_y else None,
    )


def render_ct(
    phantom: Phantom, acquisition: CtAcquisition, rng: np.random.Generator, noise: bool = True
) -> np.ndarray:
    """Return the CT series as ``float32`` HU, ``[slice, row, column]``.

    The slice profile, the pixel size and the kernel blur act as one Gaussian
    per axis. Noise is white noise smoothed by the kernel and scaled to the
    kernel's level.
    """
    grid = phantom.grid
    z_out, y_out, x_out = acquisition.axes_mm()
    in_plane = float(
        np.hypot(BOX_TO_SIGMA * acquisition.pixel_spacing_mm, acquisition.kernel.blur_mm)
    )
    volume = resample_separable(
        phantom.hu,
        (grid.axis_mm(2), grid.axis_mm(1), grid.axis_mm(0)),
        (z_out, y_out, x_out),
        (BOX_TO_SIGMA * acquisition.slice_spacing_mm, in_plane, in_plane),
        fill=AIR_HU,
    )
    if acquisition.table_top_y_mm is not None:
        volume = volume + _table_hu(acquisition, y_out, x_out)[None, :, :]
    if noise:
        white = rng.standard_normal(volume.shape, dtype=np.float32)
        correlation_px = max(acquisition.kernel.blur_mm / acquisition.pixel_spacing_mm, 0.3)
        textured = ndimage.gaussian_filter(
            white, (0.0, correlation_px, correlation_px), truncate=3.0
        )
        textured *= np.float32(acquisition.kernel.noise_hu / max(float(textured.std()), 1e-6))
        volume = volume + textured
    return volume.astype(np.float32)


def _table_hu(acquisition: CtAcquisition, y_mm: np.ndarray, x_mm: np.ndarray) -> np.ndarray:
    """Return the HU added by a curved carbon-fibre table with a foam core below the patient."""
    top = acquisition.table_top_y_mm
    curve = top + 0.0006 * x_mm[None, :] ** 2
    depth = (y_mm[:, None] - curve).astype(np.float32)
    # Two 3 mm carbon-fibre skins around an 8 mm foam core, with edges one pixel
    # wide so the thin curved layers do not alias into dashes.
    edge = acquisition.pixel_spacing_mm

    def inside_from(start_mm: float) -> np.ndarray:
        return np.clip((depth - start_mm) / edge + 0.5, 0.0, 1.0)

    slab = inside_from(0.0) - inside_from(14.0)
    core = inside_from(3.0) - inside_from(11.0)
    # Values are added to air (-1000 HU): skins end near 200 HU, the foam near -850 HU.
    return (1200.0 * slab - 1050.0 * core).astype(np.float32)


def hu_to_stored(volume_hu: np.ndarray) -> np.ndarray:
    """Return int16 stored values for Rescale Intercept -1024 and Rescale Slope 1."""
    return np.clip(np.rint(volume_hu + 1024.0), -1024, 4095).astype(np.int16)
