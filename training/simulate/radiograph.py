"""Simulated AP pelvis radiograph: a parallel projection of the phantom through the body.

The detected intensity is ``I = I0 exp(-integral of mu)`` along each
anterior-to-posterior ray (Beer-Lambert). The image is then processed the way a "for presentation"
radiograph is: log transform, scatter, quantum noise, detector blur, dynamic
range compression, unsharp masking and a gamma, with parameters drawn per
study so contrast varies. The parallel beam has no magnification, so the
pixel spacing at the detector is also the true spacing in the patient.

NOTE: a real AP pelvis is a cone-beam projection that magnifies the hips by
roughly 1.1-1.2 (an estimate that depends on the source distance), so real
ImagerPixelSpacing overstates the spacing at the hips while these files do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from hipfuse.training.simulate.phantom import Phantom
from hipfuse.training.simulate.resample import resample_separable
from hipfuse.training.simulate.shapes import Grid

# Linear attenuation of water near 60 keV, taken as the effective energy of a pelvis
# exposure at 75-85 kVp (an estimate that ignores beam hardening).
WATER_MU_PER_MM = 0.0206


@dataclass(frozen=True)
class RadiographAcquisition:
    """Geometry, exposure and processing of one simulated radiograph.

    Attributes
    ----------
    pixel_spacing_mm
        Square pixel size at the detector and in the patient (no magnification).
    rows, columns
        Image size.
    top_z_mm
        LPS z of the centre of row 0 (rows run toward the feet).
    left_x_mm
        LPS x of the centre of the column that shows the patient's rightmost
        side before any flip (columns run toward the patient's left).
    flipped
        Whether the image is mirrored left-right, with Patient Orientation ``['R', 'F']``.
    monochrome1
        Whether pixels are stored inverted (MONOCHROME1).
    bits_stored
        Bits Stored (0028,0101).
    photons_soft_tissue
        Detected photons per pixel behind 250 mm of water; sets the noise.
    scatter_fraction
        Scatter added, relative to a wide blur of the primary beam.
    detector_blur_mm
        Gaussian standard deviation of the detector blur.
    range_compression
        Fraction of the large-scale density removed (equalisation).
    unsharp_amount
        Gain of edge enhancement.
    gamma
        Exponent of the final tone curve.
    kvp, exposure_mas
        Technique values written to the DX modules.
    """

    pixel_spacing_mm: float
    rows: int
    columns: int
    top_z_mm: float
    left_x_mm: float
    flipped: bool
    monochrome1: bool
    bits_stored: int
    photons_soft_tissue: float
    scatter_fraction: float
    detector_blur_mm: float
    range_compression: float
    unsharp_amount: float
    gamma: float
    kvp: float
    exposure_mas: float

    @property
    def patient_orientation(self) -> tuple[str, str]:
        """Return Patient Orientation (0020,0020): row direction, then column direction."""
        return ("R", "F") if self.flipped else ("L", "F")

    def axes_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Return LPS z of each row and x of each column, before any flip."""
        z = self.top_z_mm - self.pixel_spacing_mm * np.arange(self.rows)
        x = self.left_x_mm + self.pixel_spacing_mm * np.arange(self.columns)
        return z, x

    def pixel_of(self, point_mm: np.ndarray) -> tuple[float, float]:
        """Return the ``(row, column)`` where an LPS point projects, flip included."""
        row = (self.top_z_mm - float(point_mm[2])) / self.pixel_spacing_mm
        column = (float(point_mm[0]) - self.left_x_mm) / self.pixel_spacing_mm
        if self.flipped:
            column = (self.columns - 1) - column
        return row, column


def sample_radiograph_acquisition(
    rng: np.random.Generator, grid: Grid, centre: str, flip_fraction: float = 0.1
) -> RadiographAcquisition:
    """Draw the geometry and processing of one AP pelvis radiograph on ``grid``."""
    spacing = float(rng.choice([0.5, 0.6, 0.7, 0.8]))
    x_lo = grid.origin_mm[0]
    x_hi = x_lo + grid.spacing_mm[0] * (grid.shape[2] - 1)
    z_lo = grid.origin_mm[2]
    z_hi = z_lo + grid.spacing_mm[2] * (grid.shape[0] - 1)

    # Collimation varies a little around the phantom's extent.
    left = x_lo + rng.uniform(0.0, 20.0)
    right = x_hi - rng.uniform(0.0, 20.0)
    top = z_hi - rng.uniform(0.0, 20.0)
    bottom = z_lo + rng.uniform(0.0, 15.0)

    centre_b = centre == "SIM-B"
    return RadiographAcquisition(
        pixel_spacing_mm=spacing,
        rows=int((top - bottom) // spacing) + 1,
        columns=int((right - left) // spacing) + 1,
        top_z_mm=round(float(top), 3),
        left_x_mm=round(float(left), 3),
        flipped=bool(rng.random() < flip_fraction),
        monochrome1=bool(rng.random() < (0.3 if centre_b else 0.12)),
        bits_stored=int(rng.choice([12, 14])),
        photons_soft_tissue=float(
            rng.uniform(300.0, 700.0) if centre_b else rng.uniform(500.0, 1500.0)
        ),
        scatter_fraction=float(rng.uniform(0.2, 0.6)),
        detector_blur_mm=float(rng.uniform(0.3, 0.6)),
        range_compression=float(rng.uniform(0.7, 0.85) if centre_b else rng.uniform(0.8, 0.92)),
        unsharp_amount=float(rng.uniform(0.3, 1.2)),
        gamma=float(rng.uniform(0.8, 1.25)),
        kvp=float(rng.choice([75.0, 80.0, 85.0])),
        exposure_mas=float(rng.choice([16.0, 20.0, 25.0, 32.0])),
    )


@dataclass(frozen=True)
class RenderedRadiograph:
    """Stored pixel values and the display window of one radiograph.

    Attributes
    ----------
    pixels
        ``uint16`` stored values ``[row, column]``, MONOCHROME1 inversion and
        flip already applied.
    window_centre, window_width
        VOI LUT window (0028,1050)/(0028,1051) that shows the whole range.
    """

    pixels: np.ndarray
    window_centre: float
    window_width: float


def line_integrals(phantom: Phantom) -> np.ndarray:
    """Return ``integral of mu dy`` along each AP ray, ``[z, x]`` on the phantom grid."""
    grid = phantom.grid
    # mu = mu_water (1 + HU / 1000); summing HU first needs one pass over the volume.
    hu_sum = phantom.hu.sum(axis=1, dtype=np.float64)
    path = grid.spacing_mm[1] * (grid.shape[1] + hu_sum / 1000.0)
    return (WATER_MU_PER_MM * path).astype(np.float32)


def render_radiograph(
    phantom: Phantom,
    acquisition: RadiographAcquisition,
    rng: np.random.Generator,
    noise: bool = True,
) -> RenderedRadiograph:
    """Return the processed radiograph of ``phantom``."""
    grid = phantom.grid
    coarse = line_integrals(phantom)
    step = grid.spacing_mm[0]
    intensity = np.exp(-coarse)
    scatter = ndimage.gaussian_filter(intensity, 30.0 / step, mode="nearest")
    detected = -np.log(intensity + acquisition.scatter_fraction * scatter)
    large_scale = ndimage.gaussian_filter(detected, 20.0 / step, mode="nearest")

    z_out, x_out = acquisition.axes_mm()
    in_axes = (grid.axis_mm(2), grid.axis_mm(0))
    blur = acquisition.detector_blur_mm
    fine = resample_separable(detected, in_axes, (z_out, x_out), (blur, blur), fill=0.0)
    background = resample_separable(large_scale, in_axes, (z_out, x_out), (blur, blur), fill=0.0)
    if noise:
        # Quantum noise: the log signal of N detected photons has a standard deviation of 1/sqrt(N).
        photons = acquisition.photons_soft_tissue * np.exp(250.0 * WATER_MU_PER_MM - fine)
        fine = fine + rng.standard_normal(fine.shape, dtype=np.float32) / np.sqrt(
            np.maximum(photons, 1.0)
        ).astype(np.float32)
    processed = fine - acquisition.range_compression * background
    detail_sigma_px = 1.5 / acquisition.pixel_spacing_mm
    processed = processed + acquisition.unsharp_amount * (
        processed - ndimage.gaussian_filter(processed, detail_sigma_px, mode="nearest")
    )
    body = fine > 0.5
    low = float(np.percentile(processed[body], 1.0)) if body.any() else float(processed.min())
    high = float(np.percentile(processed, 99.8))
    scaled = np.clip((processed - low) / max(high - low, 1e-6), 0.0, 1.0) ** acquisition.gamma
    top_value = (1 << acquisition.bits_stored) - 1
    pixels = np.rint(scaled * top_value).astype(np.uint16)
    if acquisition.monochrome1:
        pixels = (top_value - pixels).astype(np.uint16)
    if acquisition.flipped:
        pixels = np.ascontiguousarray(pixels[:, ::-1])
    return RenderedRadiograph(
        pixels=pixels, window_centre=(top_value + 1) / 2.0, window_width=float(top_value + 1)
    )


def project_mask(mask: np.ndarray, grid: Grid, acquisition: RadiographAcquisition) -> np.ndarray:
    """Return the AP shadow of a 3D mask in the radiograph's pixel grid (flip included)."""
    shadow = mask.any(axis=1).astype(np.float32)
    z_out, x_out = acquisition.axes_mm()
    # A narrow kernel: nearest-neighbour-like, so the shadow keeps its true outline.
    sigma = 0.25 * grid.spacing_mm[0]
    resampled = resample_separable(
        shadow, (grid.axis_mm(2), grid.axis_mm(0)), (z_out, x_out), (sigma, sigma), fill=0.0
    )
    peak = float(resampled.max()) if resampled.size else 0.0
    if peak <= 1e-3:
        return np.zeros((acquisition.rows, acquisition.columns), dtype=bool)
    # A shadow narrower than a few pixels keeps its most covered pixels.
    projected = resampled >= min(0.5, 0.5 * peak)
    if acquisition.flipped:
        projected = np.ascontiguousarray(projected[:, ::-1])
    return projected
