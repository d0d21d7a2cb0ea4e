"""Render: turn arrays into uint8 pictures and grids.

``image_normalization`` and ``convert_into_grid`` keep the names and
signatures of the original tf_cnnvis helpers, and are safe on constant
images, NaN and infinities (which become the lowest value).
"""

from __future__ import annotations

import math

import numpy as np


def image_normalization(image, s=0.1, ubound=255.0):
    """Min-max scale ``image`` to ``[0, ubound]`` as uint8.

    ``s`` is kept for compatibility with the original signature and unused.
    A constant image maps to 0; non-finite values are treated as the minimum
    of the finite ones.
    """
    image = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(image)
    if not finite.any():
        return np.zeros(image.shape, np.uint8)
    low, high = image[finite].min(), image[finite].max()
    image = np.where(finite, image, low)
    scale = ubound / (high - low) if high > low else 0.0
    return np.clip((image - low) * scale, 0, ubound).astype(np.uint8)


def normalize_each(images, ubound=255.0):
    """``image_normalization`` applied to each item of a batch on its own."""
    images = np.asarray(images, dtype=np.float32)
    if images.shape[0] == 0:
        return np.zeros(images.shape, np.uint8)
    flat = images.reshape(images.shape[0], -1)
    finite = np.isfinite(flat)
    low = np.where(finite, flat, np.inf).min(axis=1, keepdims=True)
    high = np.where(finite, flat, -np.inf).max(axis=1, keepdims=True)
    low = np.where(np.isfinite(low), low, 0.0)
    span = high - low
    scale = np.where(span > 0, ubound / np.where(span > 0, span, 1.0), 0.0)
    scaled = np.where(finite, (flat - low) * scale, 0.0)
    return np.clip(scaled, 0, ubound).astype(np.uint8).reshape(images.shape)


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
    columns = max(1, math.ceil(math.sqrt(n)))
    rows = max(1, math.ceil(n / columns))
    cells = np.clip(np.nan_to_num(Xs.astype(np.float32, copy=False), nan=0.0, posinf=ubound, neginf=0.0),
                    0, 255).astype(np.uint8) if Xs.dtype != np.uint8 else Xs
    grid = np.full((rows * height + padding * (rows - 1), columns * width + padding * (columns - 1),
                    channels), min(ubound, 255), dtype=np.uint8)
    for index in range(n):
        row, column = divmod(index, columns)
        y, x = row * (height + padding), column * (width + padding)
        grid[y:y + height, x:x + width] = cells[index]
    return grid
