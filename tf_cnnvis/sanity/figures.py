"""The sanity check's figures, drawn with NumPy and Pillow: line plots and the cascade picture.

:func:`line_plot` draws curves with axes, ticks, grid lines and a legend;
:func:`cascade_picture` lays out maps in rows (methods) and columns
(randomization steps), each labelled. Both return RGB uint8 arrays, which
the writer saves as PNG and sends to TensorBoard.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from tf_cnnvis.render import colour_map

# Matplotlib's "tab10" colours: distinct, and readable by most colour-blind readers.
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
DASHES = [None, (6, 3)]  # a second round of the palette is dashed
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
GRID = (225, 225, 225)
CELL_MIN, CELL_MAX = 64, 128


@functools.cache
def font(size: int = 12):
    return ImageFont.load_default(size=size)


def text_size(text: str, size: int = 12) -> tuple[int, int]:
    left, top, right, bottom = font(size).getbbox(text)
    return right - left, bottom - top


def _text_image(text: str, size: int, rotate: bool) -> Image.Image:
    """``text`` on a transparent image, turned to read from bottom to top when ``rotate``."""
    width, height = text_size(text, size)
    picture = Image.new("RGBA", (width + 2, height + 6), (255, 255, 255, 0))
    ImageDraw.Draw(picture).text((1, -font(size).getbbox(text)[1] + 2), text, fill=INK + (255,), font=font(size))
    return picture.rotate(90, expand=True) if rotate else picture


def nice_ticks(low: float, high: float, count: int = 5) -> np.ndarray:
    """About ``count`` round tick values covering [low, high] (steps of 1, 2 or 5 times a power of ten)."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return np.array([low])
    raw = (high - low) / count
    power = 10 ** math.floor(math.log10(raw))
    step = next(factor * power for factor in (1, 2, 2.5, 5, 10) if factor * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = np.arange(first, high + step * 1e-6, step)
    return np.round(ticks, 10)


def _label(value: float) -> str:
    return f"{value:.6g}" if abs(value) >= 1e-9 else "0"


def line_plot(series, title: str = "", x_label: str = "", y_label: str = "", x_ticks=None, y_range=None,
              size=(560, 360), legend: bool = True) -> np.ndarray:
    """A line plot of ``series``, a list of ``(label, xs, ys)``, as an RGB uint8 array.

    ``x_ticks``: ``(positions, labels)`` (labels longer than a few characters
    are written upwards); default round numbers. ``y_range``: ``(low, high)``;
    default the data's range. NaN points are left out.
    """
    series = [(label, np.asarray(xs, np.float64), np.asarray(ys, np.float64)) for label, xs, ys in series]
    every_x = np.concatenate([xs for _, xs, _ in series]) if series else np.zeros(1)
    every_y = np.concatenate([ys[np.isfinite(ys)] for _, _, ys in series]) if series else np.zeros(1)
    x_low, x_high = float(every_x.min()), float(every_x.max())
    if x_high == x_low:
        x_low, x_high = x_low - 0.5, x_high + 0.5
    if y_range is None:
        y_low, y_high = (float(every_y.min()), float(every_y.max())) if every_y.size else (0.0, 1.0)
        pad = (y_high - y_low) * 0.05 or 0.5
        y_low, y_high = y_low - pad, y_high + pad
    else:
        y_low, y_high = map(float, y_range)
    if x_ticks is None:
        positions = nice_ticks(x_low, x_high, 6)
        labels = [_label(value) for value in positions]
    else:
        positions, labels = np.asarray(x_ticks[0], np.float64), [str(label) for label in x_ticks[1]]
    rotate = any(len(label) > 4 for label in labels)
    tick_pictures = [_text_image(label, 11, rotate) for label in labels]
    tick_height = max((picture.height for picture in tick_pictures), default=0)
    y_ticks = nice_ticks(y_low, y_high, 5)
    y_tick_labels = [_label(value) for value in y_ticks]
    y_label_width = max((text_size(label, 11)[0] for label in y_tick_labels), default=0)
    legend_width = 0
    if legend and series:
        legend_width = max(text_size(label, 11)[0] for label, _, _ in series) + 36
    width, height = size
    left = y_label_width + 30
    right = width - legend_width - 12
    top = 30 if title else 12
    bottom = height - tick_height - (26 if x_label else 10)
    if right - left < 40 or bottom - top < 40:  # long labels: make room
        width = max(width, left + legend_width + 200)
        height = max(height, top + tick_height + 200)
        right, bottom = width - legend_width - 12, height - tick_height - (26 if x_label else 10)
    picture = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(picture)

    def x_pixel(value):
        return left + (value - x_low) / (x_high - x_low) * (right - left)

    def y_pixel(value):
        return bottom - (value - y_low) / (y_high - y_low) * (bottom - top)

    for value, label in zip(y_ticks, y_tick_labels):
        y = y_pixel(value)
        draw.line([(left, y), (right, y)], fill=GRID)
        draw.line([(left - 4, y), (left, y)], fill=INK)
        label_width, label_height = text_size(label, 11)
        draw.text((left - 6 - label_width, y - label_height / 2 - 2), label, fill=INK, font=font(11))
    for value, tick in zip(positions, tick_pictures):
        x = x_pixel(value)
        draw.line([(x, top), (x, bottom)], fill=GRID)
        draw.line([(x, bottom), (x, bottom + 4)], fill=INK)
        picture.paste(tick, (int(round(x - tick.width / 2)), bottom + 6), tick)
    draw.rectangle([left, top, right, bottom], outline=INK)
    for index, (_, xs, ys) in enumerate(series):
        colour = PALETTE[index % len(PALETTE)]
        dashed = DASHES[(index // len(PALETTE)) % len(DASHES)]
        points = [(x_pixel(x), y_pixel(y)) for x, y in zip(xs, ys) if math.isfinite(y)]
        if len(points) > 1:
            _polyline(draw, points, colour, dashed)
        if len(points) <= 40:
            for x, y in points:
                draw.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=colour)
    if title:
        title_width, _ = text_size(title, 13)
        draw.text(((left + right - title_width) / 2, 8), title, fill=INK, font=font(13))
    if x_label:
        label_width, _ = text_size(x_label, 12)
        draw.text(((left + right - label_width) / 2, height - 20), x_label, fill=INK, font=font(12))
    if y_label:
        label = _text_image(y_label, 12, True)
        picture.paste(label, (2, int((top + bottom - label.height) / 2)), label)
    if legend and series:
        x0 = right + 12
        for index, (label, _, _) in enumerate(series):
            y = top + 4 + index * 16
            colour = PALETTE[index % len(PALETTE)]
            _polyline(draw, [(x0, y + 7), (x0 + 20, y + 7)], colour, DASHES[(index // len(PALETTE)) % len(DASHES)])
            draw.text((x0 + 26, y), label, fill=INK, font=font(11))
    return np.asarray(picture)


def _polyline(draw: ImageDraw.ImageDraw, points, colour, dashed):
    if dashed is None:
        draw.line(points, fill=colour, width=2, joint="curve")
        return
    on, off = dashed
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        position = 0.0
        while position < length:
            end = min(position + on, length)
            draw.line([(x0 + (x1 - x0) * position / length, y0 + (y1 - y0) * position / length),
                       (x0 + (x1 - x0) * end / length, y0 + (y1 - y0) * end / length)], fill=colour, width=2)
            position += on + off


def side_by_side(pictures, gap: int = 8) -> np.ndarray:
    """RGB pictures in one row, top-aligned, on white."""
    height = max(picture.shape[0] for picture in pictures)
    width = sum(picture.shape[1] for picture in pictures) + gap * (len(pictures) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    x = 0
    for picture in pictures:
        canvas[:picture.shape[0], x:x + picture.shape[1]] = picture
        x += picture.shape[1] + gap
    return canvas


def stacked(pictures, gap: int = 8) -> np.ndarray:
    """RGB pictures in one column, left-aligned, on white."""
    width = max(picture.shape[1] for picture in pictures)
    height = sum(picture.shape[0] for picture in pictures) + gap * (len(pictures) - 1)
    canvas = np.full((height, width, 3), 255, np.uint8)
    y = 0
    for picture in pictures:
        canvas[y:y + picture.shape[0], :picture.shape[1]] = picture
        y += picture.shape[0] + gap
    return canvas


def cell(picture: np.ndarray) -> np.ndarray:
    """``picture`` (RGB uint8) sized for a grid: small ones enlarged by whole pixels, large ones reduced."""
    height, width = picture.shape[:2]
    side = max(height, width)
    if side < CELL_MIN:
        factor = math.ceil(CELL_MIN / side)
        return picture.repeat(factor, axis=0).repeat(factor, axis=1)
    if side > CELL_MAX:
        scale = CELL_MAX / side
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return np.asarray(Image.fromarray(picture).resize(size, Image.Resampling.BOX))
    return picture


def map_picture(values: np.ndarray) -> np.ndarray:
    """A map already scaled to [0, 1] as a viridis picture."""
    return colour_map(values)


def labelled_grid(rows, column_labels, gap: int = 2) -> np.ndarray:
    """A grid of pictures with a label before each row and above each column.

    ``rows``: a list of ``(label, [picture, ...])``, every picture of one size.
    """
    cells = [[cell(picture) for picture in pictures] for _, pictures in rows]
    height, width = cells[0][0].shape[:2]
    row_label_width = max(text_size(label, 12)[0] for label, _ in rows) + 10
    headers = [_text_image(label, 11, text_size(label, 11)[0] > width - 4) for label in column_labels]
    header_height = max(picture.height for picture in headers) + 6
    columns = max(len(row) for row in cells)
    canvas = Image.new("RGB", (row_label_width + columns * (width + gap), header_height + len(cells) * (height + gap)),
                       BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for column, header in enumerate(headers):
        x = row_label_width + column * (width + gap) + (width - header.width) // 2
        canvas.paste(header, (x, header_height - header.height - 3), header)
    for row, ((label, _), pictures) in enumerate(zip(rows, cells)):
        y = header_height + row * (height + gap)
        label_height = text_size(label, 12)[1]
        draw.text((4, y + (height - label_height) / 2 - 2), label, fill=INK, font=font(12))
        for column, picture in enumerate(pictures):
            canvas.paste(Image.fromarray(picture), (row_label_width + column * (width + gap), y))
    return np.asarray(canvas)
