"""Gradient normalization: makes one step size mean the same for every target.

Raw input-gradients differ by orders of magnitude between layers, classes and
models, so each batch item's gradient is rescaled on its own before a step.
The Laplacian pyramid version (Mordvintsev's DeepDream notebook) also
equalizes spatial frequencies: without it high frequencies dominate and the
picture turns into pixel noise.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tf_cnnvis.errors import OptionError

# 5x5 binomial kernel, applied as two separable [1, 4, 6, 4, 1] / 16 passes.
_BINOMIAL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
_EPSILON = 1e-8


def _blur(images: np.ndarray) -> np.ndarray:
    blurred = ndimage.correlate1d(images, _BINOMIAL, axis=1, mode="reflect")
    return ndimage.correlate1d(blurred, _BINOMIAL, axis=2, mode="reflect")


def _downsample(images: np.ndarray) -> np.ndarray:
    return _blur(images)[:, ::2, ::2]


def _upsample(images: np.ndarray, shape) -> np.ndarray:
    """Zero-insertion then blur; the factor 4 restores the mean lost to the zeros."""
    spread = np.zeros(shape, images.dtype)
    spread[:, ::2, ::2] = images
    return _blur(spread) * 4.0


def laplacian_split(images: np.ndarray, levels: int = 4) -> list[np.ndarray]:
    """Band-pass levels of ``(N, H, W, C)`` images, finest first, low-pass last.

    Fewer levels come back when the image is too small to halve again, so
    tiny and odd-sized images work too. :func:`laplacian_merge` inverts it
    exactly.
    """
    if levels < 1:
        raise OptionError(f"laplacian_levels={levels!r} must be at least 1")
    pyramid = []
    current = images
    for _ in range(levels - 1):
        if min(current.shape[1:3]) < 4:
            break
        low = _downsample(current)
        pyramid.append(current - _upsample(low, current.shape))
        current = low
    pyramid.append(current)
    return pyramid


def laplacian_merge(pyramid: list[np.ndarray]) -> np.ndarray:
    current = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        current = _upsample(current, band.shape) + band
    return current


def _rms(images: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.square(images), axis=tuple(range(1, images.ndim)), keepdims=True))


def laplacian(gradient: np.ndarray, levels: int = 4) -> np.ndarray:
    """Each pyramid level divided by its RMS, per batch item, then merged."""
    pyramid = laplacian_split(gradient, levels)
    return laplacian_merge([band / (_rms(band) + _EPSILON) for band in pyramid])


def std(gradient: np.ndarray, levels: int = 4) -> np.ndarray:
    """Divide by the standard deviation (+1e-8), per batch item (the original's rule)."""
    axes = tuple(range(1, gradient.ndim))
    return gradient / (gradient.std(axis=axes, keepdims=True) + _EPSILON)


def mean_abs(gradient: np.ndarray, levels: int = 4) -> np.ndarray:
    """Divide by the mean absolute value (+1e-7), per batch item (TF DeepDream tutorial)."""
    axes = tuple(range(1, gradient.ndim))
    return gradient / (np.mean(np.abs(gradient), axis=axes, keepdims=True) + 1e-7)


def unnormalized(gradient: np.ndarray, levels: int = 4) -> np.ndarray:
    return gradient


NORMALIZERS = {"laplacian": laplacian, "std": std, "mean_abs": mean_abs, "none": unnormalized}


def get(name):
    """The normalizer called ``name`` (None means ``'none'``)."""
    key = "none" if name is None else name
    if key not in NORMALIZERS:
        raise OptionError(f"normalize={name!r} is not one of {', '.join(map(repr, NORMALIZERS))}")
    return NORMALIZERS[key]
