"""Hip joint centres of infants, whose femoral heads are still cartilage.

A cartilaginous femoral head is as dark as soft tissue on a radiograph, so
its centre is read from the bones around it: the ossified metaphysis of the
femur below and the acetabular roof of the ilium above. The ilium ends
medially at the triradiate cartilage; the line through both triradiate
cartilages is Hilgenreiner's line, the reference of every infant hip
measurement (acetabular index, Perkins' quadrants). The head fills the space
between the metaphysis and the acetabulum, so its centre is placed between
the top of the metaphysis and the lowest point of the ilium.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from hipfuse.inference.regions.radiograph_shafts import FemoralShaft, ImageSide

ROOF_SEARCH_ROWS = (0.3, 0.02)
"""Rows searched for the acetabular roof, from this far above the top of the
metaphysis down to this far above it, as fractions of the distance between the
two shaft ends. The triradiate cartilages of the paediatric samples lay 0.02 to
0.12 of it above the metaphyses."""

ROOF_SEARCH_COLUMNS = (0.05, 0.3)
"""Columns searched for the acetabular roof, from this far lateral of the shaft
end to this far medial of it, as fractions of the distance between the two
shaft ends. The triradiate cartilages of the paediatric samples lay 0.12 to
0.2 of it medial of the shaft ends."""

ROOF_EDGE_FRACTION = 0.5
"""A column shows the ilium's lower edge when its strongest bright-above,
dark-below edge reaches this fraction of the strongest in the search window."""

HEAD_ROW_FRACTION = 0.45
"""Head centre row, as the fraction of the way down from the lowest point of the
ilium (Hilgenreiner's line) to the top of the metaphysis."""

HEAD_COLUMN_FRACTION = 0.33
"""Head centre column, as the fraction of the way from the shaft end toward the
lowest point of the ilium (the triradiate cartilage)."""

MIN_METAPHYSIS_DROP = 0.07
"""Smallest distance of the metaphysis below Hilgenreiner's line used to place
the head, as a fraction of the distance between the two shaft ends. A shaft
track that runs on into a head's ossification centre ends above the metaphysis;
the paediatric samples otherwise measured 0.07 to 0.12."""

FALLBACK_HEAD_OFFSET = (0.05, 0.065)
"""Offset of the head centre from the shaft end, up and toward the midline, as
fractions of the distance between the two shaft ends, used when no acetabular
roof is found. The mean offset of the roof-based centres on the paediatric
samples."""


def acetabular_roof_points(
    image: np.ndarray, shafts: dict[ImageSide, FemoralShaft]
) -> dict[ImageSide, tuple[float, float]] | None:
    """Return the lowest point of each ilium (the triradiate cartilage), in working pixels.

    The ilium's lower edge is the strongest edge with bright bone above and
    dark cartilage below, in a window above and medial of the shaft end. The
    metaphysis top and the ischium below the triradiate cartilage are edges
    of the opposite sign, so they are not taken. Returns ``None`` when either
    side shows no such edge.
    """
    rows, columns = image.shape
    span = float(shafts[ImageSide.RIGHT].end_column - shafts[ImageSide.LEFT].end_column)
    smoothed = ndi.gaussian_filter(image, 1.5)
    # Positive where the image is brighter above than below.
    lower_edge = np.zeros_like(smoothed)
    lower_edge[1:-1] = smoothed[:-2] - smoothed[2:]
    points = {}
    for side, shaft in shafts.items():
        medial = 1 if side is ImageSide.LEFT else -1
        first_row = max(1, round(shaft.end_row - ROOF_SEARCH_ROWS[0] * span))
        last_row = min(rows - 1, round(shaft.end_row - ROOF_SEARCH_ROWS[1] * span))
        # Columns from lateral to medial, so that a mirrored film gives the mirrored search.
        offsets = np.arange(
            -round(ROOF_SEARCH_COLUMNS[0] * span), round(ROOF_SEARCH_COLUMNS[1] * span) + 1
        )
        search_columns = shaft.end_column + medial * offsets
        search_columns = search_columns[(search_columns >= 0) & (search_columns < columns)]
        window = lower_edge[first_row:last_row][:, search_columns]
        if window.size == 0 or float(window.max()) <= 0:
            return None
        edge_rows = window.argmax(axis=0)
        strengths = window.max(axis=0)
        strong = strengths >= ROOF_EDGE_FRACTION * float(strengths.max())
        lowest_row = int(edge_rows[strong].max())
        # The ilium's lowest point: the middle of the strong columns that reach it.
        lowest = strong & (edge_rows == lowest_row)
        points[side] = (
            float(first_row + lowest_row),
            float(search_columns[lowest].mean()),
        )
    return points


def infant_hip_centres(
    shafts: dict[ImageSide, FemoralShaft],
    roof_points: dict[ImageSide, tuple[float, float]] | None,
) -> dict[ImageSide, tuple[float, float]]:
    """Place each cartilaginous head centre between its metaphysis and its acetabulum.

    With the lowest points of the ilia, the centre lies ``HEAD_ROW_FRACTION``
    of the way down from the ilium to the metaphysis and
    ``HEAD_COLUMN_FRACTION`` of the way from the shaft end toward the
    triradiate cartilage. Without them, ``FALLBACK_HEAD_OFFSET`` from the
    shaft end.
    """
    # NOTE: the fractions are fitted to ten infant hips of five films, placed by
    # eye. A hip dislocated far above its acetabulum is untested.
    span = float(shafts[ImageSide.RIGHT].end_column - shafts[ImageSide.LEFT].end_column)
    centres = {}
    for side, shaft in shafts.items():
        medial = 1 if side is ImageSide.LEFT else -1
        if roof_points is None:
            up, toward_midline = FALLBACK_HEAD_OFFSET
            centres[side] = (
                shaft.end_row - up * span,
                shaft.end_column + medial * toward_midline * span,
            )
            continue
        roof_row, roof_column = roof_points[side]
        drop = max(shaft.end_row - roof_row, MIN_METAPHYSIS_DROP * span)
        centres[side] = (
            roof_row + HEAD_ROW_FRACTION * drop,
            shaft.end_column + HEAD_COLUMN_FRACTION * (roof_column - shaft.end_column),
        )
    return centres
