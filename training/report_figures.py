"""Inline SVG figures for the HTML report: line charts and grouped box plots.

The figures are written as SVG text, so a report needs no plotting library
and opens offline. Every label passes through :func:`html.escape`.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# Colour-blind-safe palette: the Okabe-Ito colours, yellow left out for contrast on white.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
GREY = "#888888"

WIDTH_PX = 380
HEIGHT_PX = 300
MARGIN_PX = {"left": 52, "right": 12, "top": 28, "bottom": 42}

_clip_ids = itertools.count()


@dataclass(frozen=True)
class Series:
    """One line or set of markers of a chart.

    Attributes
    ----------
    name
        Legend text.
    x, y
        Coordinates in data units; ``NaN`` values break the line.
    colour
        CSS colour.
    dashed
        Draw a dashed line.
    markers
        Draw circles at the points instead of a line.
    """

    name: str
    x: Sequence[float]
    y: Sequence[float]
    colour: str = PALETTE[0]
    dashed: bool = False
    markers: bool = False


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    span = high - low
    if span <= 0:
        return [low]
    raw = span / (count - 1)
    magnitude = 10 ** np.floor(np.log10(raw))
    step = min((m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw), default=raw)
    first = np.ceil(low / step) * step
    return [float(v) for v in np.arange(first, high + step * 1e-6, step)]


def _format_tick(value: float) -> str:
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def line_chart(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_range: tuple[float, float] = (0.0, 1.0),
    y_range: tuple[float, float] = (0.0, 1.0),
    diagonal: bool = False,
) -> str:
    """Return an SVG line chart with axes, ticks, a legend and an optional identity line.

    Points outside the ranges are clipped at the plot area's edge.
    """
    plot_width = WIDTH_PX - MARGIN_PX["left"] - MARGIN_PX["right"]
    plot_height = HEIGHT_PX - MARGIN_PX["top"] - MARGIN_PX["bottom"]
    x0, x1 = x_range
    y0, y1 = y_range

    def sx(value: float) -> float:
        return MARGIN_PX["left"] + (value - x0) / (x1 - x0) * plot_width

    def sy(value: float) -> float:
        return MARGIN_PX["top"] + (1.0 - (value - y0) / (y1 - y0)) * plot_height

    clip_id = f"plot-area-{next(_clip_ids)}"
    parts = [
        f'<svg class="chart" width="{WIDTH_PX}" '
        f'height="{HEIGHT_PX}" viewBox="0 0 {WIDTH_PX} {HEIGHT_PX}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<defs><clipPath id="{clip_id}"><rect x="{MARGIN_PX["left"]}" y="{MARGIN_PX["top"]}" '
        f'width="{plot_width}" height="{plot_height}"/></clipPath></defs>',
        f'<text x="{WIDTH_PX / 2:.1f}" y="16" text-anchor="middle" class="chart-title">'
        f"{html.escape(title)}</text>",
        f'<rect x="{MARGIN_PX["left"]}" y="{MARGIN_PX["top"]}" width="{plot_width}" '
        f'height="{plot_height}" fill="none" stroke="#444"/>',
    ]
    for tick in _ticks(x0, x1):
        parts.append(
            f'<line x1="{sx(tick):.1f}" y1="{MARGIN_PX["top"]}" x2="{sx(tick):.1f}" '
            f'y2="{MARGIN_PX["top"] + plot_height}" stroke="#eee"/>'
            f'<text x="{sx(tick):.1f}" y="{MARGIN_PX["top"] + plot_height + 14}" '
            f'text-anchor="middle" class="tick">{_format_tick(tick)}</text>'
        )
    for tick in _ticks(y0, y1):
        parts.append(
            f'<line x1="{MARGIN_PX["left"]}" y1="{sy(tick):.1f}" '
            f'x2="{MARGIN_PX["left"] + plot_width}" y2="{sy(tick):.1f}" stroke="#eee"/>'
            f'<text x="{MARGIN_PX["left"] - 4}" y="{sy(tick) + 4:.1f}" text-anchor="end" '
            f'class="tick">{_format_tick(tick)}</text>'
        )
    parts.append(
        f'<text x="{MARGIN_PX["left"] + plot_width / 2:.1f}" y="{HEIGHT_PX - 6}" '
        f'text-anchor="middle" class="axis-label">{html.escape(x_label)}</text>'
        f'<text transform="translate(14 {MARGIN_PX["top"] + plot_height / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" class="axis-label">{html.escape(y_label)}</text>'
    )
    body = [f'<g clip-path="url(#{clip_id})">']
    if diagonal:
        body.append(
            f'<line x1="{sx(x0):.1f}" y1="{sy(y0):.1f}" x2="{sx(x1):.1f}" y2="{sy(y1):.1f}" '
            f'stroke="{GREY}" stroke-dasharray="3 3"/>'
        )
    for line in series:
        body.append(_series_svg(line, sx, sy))
    body.append("</g>")
    parts.extend(body)
    parts.append(_legend(series, MARGIN_PX["left"] + 6, MARGIN_PX["top"] + 6))
    parts.append("</svg>")
    return "".join(parts)


def _series_svg(line: Series, sx, sy) -> str:
    x = np.asarray(line.x, dtype=np.float64)
    y = np.asarray(line.y, dtype=np.float64)
    if line.markers:
        return "".join(
            f'<circle cx="{sx(a):.1f}" cy="{sy(b):.1f}" r="3" fill="{line.colour}"/>'
            for a, b in zip(x, y, strict=True)
            if np.isfinite(a) and np.isfinite(b)
        )
    dash = ' stroke-dasharray="6 3"' if line.dashed else ""
    paths = []
    points: list[str] = []
    for a, b in zip(x, y, strict=True):
        if not (np.isfinite(a) and np.isfinite(b)):
            if len(points) > 1:
                paths.append(" ".join(points))
            points = []
            continue
        points.append(f"{sx(a):.1f},{sy(b):.1f}")
    if len(points) > 1:
        paths.append(" ".join(points))
    return "".join(
        f'<polyline points="{p}" fill="none" stroke="{line.colour}" stroke-width="1.8"{dash}/>'
        for p in paths
    )


def _legend(series: Sequence[Series], x: float, y: float) -> str:
    parts = []
    for index, line in enumerate(series):
        top = y + index * 14
        dash = ' stroke-dasharray="6 3"' if line.dashed else ""
        if line.markers:
            mark = f'<circle cx="{x + 9}" cy="{top + 5}" r="3" fill="{line.colour}"/>'
        else:
            mark = (
                f'<line x1="{x}" y1="{top + 5}" x2="{x + 18}" y2="{top + 5}" '
                f'stroke="{line.colour}" stroke-width="2"{dash}/>'
            )
        parts.append(
            f'{mark}<text x="{x + 22}" y="{top + 9}" class="legend">{html.escape(line.name)}</text>'
        )
    return f'<g class="legend-box">{"".join(parts)}</g>'


def box_plot(
    groups: Sequence[str],
    members: Sequence[str],
    values: dict[tuple[str, str], Sequence[float]],
    *,
    title: str,
    y_label: str,
    y_range: tuple[float, float] = (0.0, 1.0),
) -> str:
    """Return grouped box plots: one group per entry of ``groups``, one box per member.

    Boxes span the quartiles with a line at the median; whiskers reach the
    minimum and maximum. A group without values shows ``n=0``.
    """
    width = max(WIDTH_PX, 90 * len(groups) + MARGIN_PX["left"] + MARGIN_PX["right"])
    plot_width = width - MARGIN_PX["left"] - MARGIN_PX["right"]
    plot_height = HEIGHT_PX - MARGIN_PX["top"] - MARGIN_PX["bottom"] - 14
    y0, y1 = y_range

    def sy(value: float) -> float:
        return MARGIN_PX["top"] + (1.0 - (value - y0) / (y1 - y0)) * plot_height

    parts = [
        f'<svg class="chart" width="{width}" '
        f'height="{HEIGHT_PX}" viewBox="0 0 {width} {HEIGHT_PX}" role="img" '
        f'aria-label="{html.escape(title)}">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" class="chart-title">'
        f"{html.escape(title)}</text>",
        f'<rect x="{MARGIN_PX["left"]}" y="{MARGIN_PX["top"]}" width="{plot_width}" '
        f'height="{plot_height}" fill="none" stroke="#444"/>',
        f'<text transform="translate(14 {MARGIN_PX["top"] + plot_height / 2:.1f}) rotate(-90)" '
        f'text-anchor="middle" class="axis-label">{html.escape(y_label)}</text>',
    ]
    for tick in _ticks(y0, y1):
        parts.append(
            f'<line x1="{MARGIN_PX["left"]}" y1="{sy(tick):.1f}" '
            f'x2="{MARGIN_PX["left"] + plot_width}" y2="{sy(tick):.1f}" stroke="#eee"/>'
            f'<text x="{MARGIN_PX["left"] - 4}" y="{sy(tick) + 4:.1f}" text-anchor="end" '
            f'class="tick">{_format_tick(tick)}</text>'
        )
    group_width = plot_width / max(len(groups), 1)
    box_width = min(18.0, group_width / (len(members) + 1))
    for g, group in enumerate(groups):
        centre = MARGIN_PX["left"] + (g + 0.5) * group_width
        count = 0
        for m, member in enumerate(members):
            data = np.asarray(values.get((group, member), []), dtype=np.float64)
            data = data[np.isfinite(data)]
            count = max(count, data.size)
            if data.size == 0:
                continue
            x = centre + (m - (len(members) - 1) / 2) * box_width * 1.2
            low, q1, median, q3, high = np.quantile(data, [0.0, 0.25, 0.5, 0.75, 1.0])
            colour = PALETTE[m % len(PALETTE)]
            parts.append(
                f'<line x1="{x:.1f}" y1="{sy(low):.1f}" x2="{x:.1f}" y2="{sy(high):.1f}" '
                f'stroke="{colour}"/>'
                f'<rect x="{x - box_width / 2:.1f}" y="{sy(q3):.1f}" width="{box_width:.1f}" '
                f'height="{max(sy(q1) - sy(q3), 1.0):.1f}" fill="{colour}" fill-opacity="0.35" '
                f'stroke="{colour}"/>'
                f'<line x1="{x - box_width / 2:.1f}" y1="{sy(median):.1f}" '
                f'x2="{x + box_width / 2:.1f}" y2="{sy(median):.1f}" stroke="{colour}" '
                f'stroke-width="2"/>'
            )
        label_y = MARGIN_PX["top"] + plot_height + 14
        parts.append(
            f'<text x="{centre:.1f}" y="{label_y}" text-anchor="middle" class="tick">'
            f"{html.escape(group)}</text>"
            f'<text x="{centre:.1f}" y="{label_y + 12}" text-anchor="middle" class="tick">'
            f"n={count}</text>"
        )
    legend = [Series(member, [], [], PALETTE[m % len(PALETTE)]) for m, member in enumerate(members)]
    parts.append(_legend(legend, MARGIN_PX["left"] + 6, MARGIN_PX["top"] + 6))
    parts.append("</svg>")
    return "".join(parts)


def roc_points(is_positive: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return the empirical ROC curve ``(false positive rate, true positive rate)``.

    One point per distinct score, from the highest threshold down, starting at
    ``(0, 0)``. Joined by straight lines the points draw the exact empirical
    curve: tied scores of both classes move both rates at once (a diagonal).
    """
    is_positive = np.asarray(is_positive, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(is_positive.sum())
    negatives = is_positive.size - positives
    if positives == 0 or negatives == 0:
        return np.array([np.nan]), np.array([np.nan])
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    sorted_positive = is_positive[order]
    # Last index of each run of equal scores: the curve moves once per distinct threshold.
    ends = np.flatnonzero(np.r_[np.diff(sorted_scores) != 0, True])
    true_positives = np.cumsum(sorted_positive)[ends]
    false_positives = (ends + 1) - true_positives
    fpr = np.r_[0.0, false_positives / negatives]
    tpr = np.r_[0.0, true_positives / positives]
    return fpr, tpr
