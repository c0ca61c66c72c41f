"""Femoral shafts on an AP pelvis radiograph, and hip centres of unossified heads.

Until the femoral head ossifies, the head is cartilage and as dark as soft
tissue on a radiograph. Its position is then read from the femur. Each shaft
is a long, straight bright band in the lower part of the image, followed
upward to the metaphysis where it ends; the hip centre lies above and medial
of that end (see ``radiograph_acetabula``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from scipy import ndimage as ndi

SHAFT_WIDTHS = (0.05, 0.07, 0.09, 0.12)
"""Widths of the bright band that models a femoral shaft, as fractions of the width."""

SHAFT_ROWS = (0.72, 0.97)
"""Rows, as fractions of the height, where both femoral shafts must be visible."""

SHAFT_OFFSET = (0.12, 0.45)
"""Distance of a femoral shaft from the midline, as fractions of the width."""

SHAFT_MIN_LENGTH = 0.35
"""Shortest tracked femoral shaft, as a fraction of the height. The shafts on the
paediatric samples spanned 0.4 to 0.53 of it; adult films cut below the lesser
trochanters show much less."""

SHAFT_MAX_BEND = 0.05
"""Largest deviation of a tracked shaft from a straight line, as a fraction of the
width. A track that follows the curved soft tissue outline of the thigh exceeds it."""

SHAFT_MIN_CONTRAST = 0.05
"""Smallest median band response along a shaft, as a fraction of the image's
grey-level range (1st to 99th percentile). Femoral shafts on the paediatric
samples reached 0.1 to 0.25; tracks along soft tissue on simulated films 0.01."""

SHAFT_END_STRENGTH = 0.35
"""A shaft ends where its band response falls below this fraction of its median."""

SOFT_TISSUE_FRACTION = 0.05
"""Grey level, as a fraction of the image's range above its 1st percentile, that
the thigh beside a shaft must exceed. Air beside a track means it follows the
body outline, not a femur."""

CARTILAGE_GAP_RATIO = 0.75
"""Largest mean ratio of the grey level just above the shaft ends to that just
below them for unossified heads. The paediatric samples measured 0.46 to 0.70,
simulated adult films with the shafts in view 0.95 to 1.0."""

SHAFT_TOP_ROW = 0.2
"""Highest row, as a fraction of the height, that a shaft may reach. A track
that runs on above it follows something else, such as the body outline."""

SHAFT_END_ROW_TOLERANCE = 0.1
"""Largest row difference of the two shaft ends, as a fraction of the height."""


class ImageSide(StrEnum):
    """Half of the image a hip appears in, before any patient orientation is applied."""

    LEFT = "image_left"
    RIGHT = "image_right"


@dataclass(frozen=True)
class FemoralShaft:
    """A femoral shaft tracked from the bottom of the working image up to its end.

    Attributes
    ----------
    end_row, end_column
        Top end of the tracked band, in working-image pixels.
    axis_column
        Column of the straight line fitted to the track, at ``end_row``.
    length_rows
        Rows tracked.
    band_width_px
        Median width of the band model that fitted best along the track.
    """

    end_row: int
    end_column: int
    axis_column: float
    length_rows: int
    band_width_px: int


def _band_response(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the strongest bright-band response per pixel and the band width that gave it.

    A band of width ``w`` responds with its mean minus the mean of the darker
    of its two flanks of the same width, so an edge (one dark flank only) gives
    no response.
    """
    columns = image.shape[1]
    responses, widths = [], []
    for fraction in SHAFT_WIDTHS:
        width = max(3, round(fraction * columns))
        smoothed = ndi.uniform_filter(ndi.uniform_filter1d(image, width, axis=0), (1, width))
        left = ndi.shift(smoothed, (0, width), order=1, mode="nearest")
        right = ndi.shift(smoothed, (0, -width), order=1, mode="nearest")
        responses.append(np.minimum(smoothed - left, smoothed - right))
        widths.append(width)
    stacked = np.stack(responses)
    return stacked.max(axis=0), np.asarray(widths)[stacked.argmax(axis=0)]


def femoral_shafts(image: np.ndarray, midline: float) -> dict[ImageSide, FemoralShaft] | None:
    """Find and track both femoral shafts, or return ``None`` when they are not both usable."""
    rows, columns = image.shape
    response, band_widths = _band_response(image)
    image_range = float(np.percentile(image, 99) - np.percentile(image, 1))
    lower = slice(round(SHAFT_ROWS[0] * rows), round(SHAFT_ROWS[1] * rows))
    profile = np.clip(response[lower], 0, None).mean(axis=0)

    best: tuple[float, int, int] | None = None
    for offset in range(round(SHAFT_OFFSET[0] * columns), round(SHAFT_OFFSET[1] * columns)):
        left, right = round(midline - offset), round(midline + offset)
        if left < 0 or right >= columns:
            break
        score = float(profile[left] + profile[right])
        if best is None or score > best[0]:
            best = (score, left, right)
    if best is None or best[0] <= 0:
        return None

    shafts = {}
    for side, start_column in ((ImageSide.LEFT, best[1]), (ImageSide.RIGHT, best[2])):
        shaft = _track_shaft(response, band_widths, start_column, image_range)
        if shaft is None:
            return None
        shafts[side] = shaft
    ends = [shaft.end_row for shaft in shafts.values()]
    if abs(ends[0] - ends[1]) > SHAFT_END_ROW_TOLERANCE * rows:
        return None
    return shafts


def _track_shaft(
    response: np.ndarray, band_widths: np.ndarray, column: int, image_range: float
) -> FemoralShaft | None:
    """Follow a bright band upward from the bottom rows to where its response fades.

    ``image_range`` is the grey-level range of the image (1st to 99th
    percentile); the band must stand out by ``SHAFT_MIN_CONTRAST`` of it.
    """
    rows, columns = response.shape
    row = round(SHAFT_ROWS[1] * rows) - 1
    track: list[tuple[int, int]] = []
    strengths: list[float] = []
    reference = None
    while row > SHAFT_TOP_ROW * rows:
        low, high = max(0, column - 2), min(columns, column + 3)
        column = low + int(np.argmax(response[row, low:high]))
        strength = float(response[row, column])
        if reference is None and row < SHAFT_ROWS[0] * rows and strengths:
            reference = float(np.median(strengths))
        if reference is not None and strength < SHAFT_END_STRENGTH * reference:
            break
        track.append((row, column))
        strengths.append(strength)
        row -= 1
    if reference is None or reference <= 0 or row <= SHAFT_TOP_ROW * rows:
        return None
    if len(track) < SHAFT_MIN_LENGTH * rows:
        return None
    track_rows = np.array([r for r, _ in track], dtype=float)
    track_columns = np.array([c for _, c in track], dtype=float)
    # The ends are left out of the straightness test: the bottom rows may start
    # beside the shaft and the metaphysis flares at the top.
    middle = slice(len(track) // 10, len(track) - len(track) // 10)
    slope, intercept = np.polyfit(track_rows[middle], track_columns[middle], 1)
    bend = np.abs(track_columns[middle] - (slope * track_rows[middle] + intercept)).max()
    if bend > SHAFT_MAX_BEND * columns:
        return None
    axis = np.clip(np.rint(slope * track_rows + intercept).astype(int), 0, columns - 1)
    contrast = float(np.median(response[track_rows.astype(int), axis]))
    if contrast < SHAFT_MIN_CONTRAST * image_range:
        return None
    end_row, end_column = track[-1]
    return FemoralShaft(
        end_row=end_row,
        end_column=end_column,
        axis_column=float(slope * end_row + intercept),
        length_rows=len(track),
        band_width_px=int(
            np.median(band_widths[track_rows.astype(int), track_columns.astype(int)])
        ),
    )


def heads_unossified(image: np.ndarray, shafts: dict[ImageSide, FemoralShaft]) -> bool:
    """Tell whether the shafts end in metaphyses below cartilaginous femoral heads.

    Two tests, both required: soft tissue lies lateral to each shaft (a track
    along the thigh's outline has air there), and the image is darker just
    above the shaft ends than just below them, on average by more than
    ``CARTILAGE_GAP_RATIO``. In an adult, bone continues above the end of the
    tracked band (trochanters and neck).
    """
    low, high = np.percentile(image, [1, 99])
    grey_range = max(float(high - low), 1e-6)
    ratios = []
    for side, shaft in shafts.items():
        width = shaft.band_width_px
        lateral = -1 if side is ImageSide.LEFT else 1
        middle_row = shaft.end_row + shaft.length_rows // 2
        flank_column = int(np.clip(shaft.axis_column + lateral * 2 * width, 0, image.shape[1] - 1))
        flank = image[max(0, middle_row - 3) : middle_row + 4, flank_column]
        if (float(flank.mean()) - low) / grey_range < SOFT_TISSUE_FRACTION:
            return False
        half = max(1, round(0.3 * width))
        columns = slice(max(0, shaft.end_column - half), shaft.end_column + half + 1)
        above = image[
            max(0, round(shaft.end_row - 0.8 * width)) : round(shaft.end_row - 0.2 * width), columns
        ]
        below = image[
            round(shaft.end_row + 0.2 * width) : round(shaft.end_row + 0.8 * width), columns
        ]
        if above.size == 0 or below.size == 0 or float(below.mean()) <= 0:
            return False
        ratios.append(float(above.mean()) / float(below.mean()))
    return float(np.mean(ratios)) < CARTILAGE_GAP_RATIO
