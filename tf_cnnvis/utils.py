"""Render: turn arrays into uint8 pictures and grids.

``image_normalization`` and ``convert_into_grid`` keep the names and
signatures of the original tf_cnnvis helpers, and are safe on constant
images, NaN and infinities (which become the lowest value).
"""

from __future__ import annotations

import math

import numpy as np


# How many values normalize_each scales at once: bounds its float64
# temporaries (a few copies of one block, ~80 MB) whatever the batch size.
_BLOCK_VALUES = 1 << 21


def image_normalization(image, s=0.1, ubound=255.0):
    """Min-max scale ``image`` to ``[0, ubound]`` as uint8.

    ``s`` is kept for compatibility with the original signature and unused.
    A constant image maps to 0; non-finite values are treated as the minimum
    of the finite ones. The maximum maps to exactly ``ubound`` (a truncated
    254 would leave no pixel white).
    """
    image = np.asarray(image)
    if image.size == 0:
        return np.zeros(image.shape, np.uint8)
    return _normalize_rows(image.reshape(1, -1), ubound).reshape(image.shape)


def normalize_each(images, ubound=255.0):
    """``image_normalization`` applied to each item of a batch on its own.

    Works through the batch in blocks, so thousands of reconstructions do
    not need several float copies of the whole batch at once.
    """
    images = np.asarray(images)
    result = np.zeros(images.shape, np.uint8)
    if images.shape[0] == 0 or images.size == 0:
        return result
    per_item = images.size // images.shape[0]
    block = max(1, _BLOCK_VALUES // per_item)
    for begin in range(0, images.shape[0], block):
        part = images[begin:begin + block]
        result[begin:begin + block] = _normalize_rows(part.reshape(part.shape[0], -1),
                                                      ubound).reshape(part.shape)
    return result


def _normalize_rows(rows, ubound):
    """Each row of a 2-D array min-max scaled on its own to uint8 ``[0, ubound]``.

    Rows of finite float32 values (every reconstruction) are scaled in
    float32, in place; the rest (NaN, infinities, spans beyond float32,
    other dtypes) take the float64 path that handles them.
    """
    if rows.dtype != np.float32 or not 0 < ubound <= 255:
        return _normalize_rows_general(rows, ubound)
    low, high = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        span = high - low
    plain = np.isfinite(span[:, 0])  # False for NaN, infinities and overflowing spans
    if not plain.all():
        result = np.empty(rows.shape, np.uint8)
        if plain.any():
            result[plain] = _normalize_rows(rows[plain], ubound)
        result[~plain] = _normalize_rows_general(rows[~plain], ubound)
        return result
    scaled = np.subtract(rows, low)
    # (x - low) / span is exactly 1 at the maximum, so it maps to ubound itself.
    scaled /= np.where(span > 0, span, np.float32(1))
    scaled *= np.float32(ubound)
    scaled[(span <= 0)[:, 0]] = 0
    np.clip(scaled, 0, min(ubound, 255), out=scaled)
    return scaled.astype(np.uint8)


def _normalize_rows_general(rows, ubound):
    rows = rows.astype(np.float64)
    finite = np.isfinite(rows)
    low = np.where(finite, rows, np.inf).min(axis=1, keepdims=True)
    high = np.where(finite, rows, -np.inf).max(axis=1, keepdims=True)
    nothing_finite = ~np.isfinite(low)
    low, high = np.where(nothing_finite, 0.0, low), np.where(nothing_finite, 0.0, high)
    with np.errstate(over="ignore"):
        overflow = ~np.isfinite(high - low)  # e.g. -1e308..1e308: halving is exact and fits
    if overflow.any():
        factor = np.where(overflow, 0.5, 1.0)
        rows, low, high = rows * factor, low * factor, high * factor
    span = high - low
    with np.errstate(invalid="ignore", over="ignore"):
        # (x - low) / span is exactly 1 at the maximum, so it maps to ubound itself.
        scaled = (rows - low) / np.where(span > 0, span, 1.0) * ubound
    scaled = np.where(finite & (span > 0), scaled, 0.0)
    return np.clip(scaled, 0, min(ubound, 255)).astype(np.uint8)


def grid_layout(count: int) -> tuple[int, int]:
    """(columns, rows) of the near-square grid that holds ``count`` cells."""
    columns = max(1, math.ceil(math.sqrt(count)))
    return columns, max(1, math.ceil(count / columns))


def convert_into_grid(Xs, padding=1, ubound=255.0):  # noqa: N803 - original name
    """Tile ``Xs`` of shape (N, H, W, C) into a near-square grid, uint8.

    Cells are separated by ``padding`` pixels of value ``ubound``; empty
    cells at the end stay ``ubound`` too.
    """
    Xs = np.asarray(Xs)
    if Xs.ndim == 3:
        Xs = Xs[..., None]
    if Xs.ndim != 4:
        raise ValueError(f"convert_into_grid takes an array of shape (N, H, W, C); got shape {Xs.shape}")
    n, height, width, channels = Xs.shape
    if padding < 0:
        raise ValueError(f"padding={padding!r} must be >= 0")
    columns, rows = grid_layout(n)
    if Xs.dtype != np.uint8:
        with np.errstate(over="ignore"):  # beyond float32 is beyond 255 anyway
            cells = np.clip(np.nan_to_num(Xs.astype(np.float32, copy=False), nan=0.0, posinf=ubound,
                                          neginf=0.0), 0, 255).astype(np.uint8)
    else:
        cells = Xs
    grid = np.full((rows * height + padding * (rows - 1), columns * width + padding * (columns - 1),
                    channels), min(ubound, 255), dtype=np.uint8)
    for index in range(n):
        row, column = divmod(index, columns)
        y, x = row * (height + padding), column * (width + padding)
        grid[y:y + height, x:x + width] = cells[index]
    return grid
