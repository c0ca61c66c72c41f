"""Render Grad-CAM heat maps over the source images as RGB arrays.

The same renderings become PNG files for researchers and, in the node,
Secondary Capture pixel data, so they carry their labels burned in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Bone window (level 300 HU, width 1500 HU) for CT renderings: the femoral head
# and acetabulum are what the reader looks at.
CT_BONE_WINDOW_HU = (300.0 - 750.0, 300.0 + 750.0)

# Caption glyph height in pixels, legible on a 384-pixel-wide image.
CAPTION_FONT_PX = 12

# Heat maps below this value are left transparent, so anatomy stays visible
# where the model paid no attention.
HEAT_MAP_FLOOR = 0.2

# Five-stop colour ramp (dark blue, blue, green, yellow, red) for values in [0, 1].
_RAMP_POSITIONS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_RAMP_COLOURS = np.array(
    [[0, 0, 128], [0, 96, 255], [0, 200, 80], [255, 220, 0], [220, 0, 0]], dtype=np.float64
)


def colour_map(values: np.ndarray) -> np.ndarray:
    """Map values in ``[0, 1]`` to ``uint8`` RGB with a blue-to-red ramp."""
    clipped = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0)
    channels = [np.interp(clipped, _RAMP_POSITIONS, _RAMP_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1).astype(np.uint8)


def blend_heat_map(grey: np.ndarray, heat_map: np.ndarray, max_alpha: float = 0.55) -> np.ndarray:
    """Blend a heat map over a grey image.

    Parameters
    ----------
    grey
        Image ``[row, column]`` scaled to ``[0, 1]``.
    heat_map
        Same shape, values in ``[0, 1]``.
    max_alpha
        Opacity of the heat map at its maximum.

    Returns
    -------
    numpy.ndarray
        ``uint8`` RGB image ``[row, column, 3]``.
    """
    if grey.shape != heat_map.shape:
        raise ValueError(f"heat map shape {heat_map.shape} differs from image shape {grey.shape}")
    base = np.repeat((np.clip(grey, 0.0, 1.0) * 255.0)[..., None], 3, axis=-1)
    heat = np.clip(np.nan_to_num(heat_map, nan=0.0), 0.0, 1.0)
    alpha = np.where(heat > HEAT_MAP_FLOOR, heat * max_alpha, 0.0)[..., None]
    blended = base * (1.0 - alpha) + colour_map(heat).astype(np.float64) * alpha
    return np.clip(blended, 0, 255).astype(np.uint8)


def window_ct(hu: np.ndarray, window_hu: tuple[float, float] = CT_BONE_WINDOW_HU) -> np.ndarray:
    """Scale HU to ``[0, 1]`` with a display window ``(lower, upper)``."""
    lower, upper = window_hu
    return np.clip((hu - lower) / (upper - lower), 0.0, 1.0)


@dataclass(frozen=True)
class Caption:
    """Text burned into an overlay: a title line and detail lines."""

    title: str
    lines: tuple[str, ...] = ()


def burn_in_caption(rgb: np.ndarray, caption: Caption, min_width_px: int = 384) -> np.ndarray:
    """Upscale small images for legibility and burn a caption into the top-left corner.

    The caption sits on an opaque band so it stays readable over any anatomy.
    Returns a new ``uint8`` RGB array.
    """
    image = Image.fromarray(rgb, mode="RGB")
    if image.width < min_width_px:
        scale = int(np.ceil(min_width_px / image.width))
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(image)
    # Pillow's built-in FreeType font; at its default 10 px spaces vanish.
    font = ImageFont.load_default(size=CAPTION_FONT_PX)
    lines = (caption.title, *caption.lines)
    line_height = CAPTION_FONT_PX + 3
    band_height = line_height * len(lines) + 6
    draw.rectangle([0, 0, image.width, band_height], fill=(0, 0, 0))
    for index, line in enumerate(lines):
        draw.text((4, 3 + index * line_height), line, fill=(255, 255, 255), font=font)
    return np.asarray(image, dtype=np.uint8).copy()


def draw_box(
    rgb: np.ndarray, box: tuple[float, float, float, float], colour=(255, 255, 0)
) -> np.ndarray:
    """Draw a rectangle ``(row_start, column_start, row_stop, column_stop)`` on an RGB image."""
    image = Image.fromarray(rgb, mode="RGB")
    row_start, column_start, row_stop, column_stop = box
    ImageDraw.Draw(image).rectangle(
        [column_start, row_start, column_stop - 1, row_stop - 1], outline=colour, width=1
    )
    return np.asarray(image, dtype=np.uint8).copy()
