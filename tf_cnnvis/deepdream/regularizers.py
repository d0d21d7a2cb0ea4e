"""Priors that keep an optimized image looking like an image.

All functions work on a batch ``(N, H, W, C)`` in the optimizer's unit
range ``[-1, 1]`` (the model's value range mapped linearly), so one weight
means the same thing for every model. Penalty gradients are returned as
ascent directions: adding ``weight * direction`` to the step lowers the
penalty.
"""

from __future__ import annotations

import numpy as np

from tf_cnnvis.errors import OptionError

# Bilateral filter of the Magenta DeepDream demo: its spatial sigma (pixels)
# falls linearly over each octave, so early steps are smoothed more.
BILATERAL_SIGMA_START = 0.44
BILATERAL_SIGMA_END = 0.304
BILATERAL_RANGE_SIGMA = 0.2  # in unit range: a tenth of the value range
# TV denoising between octaves: split-Bregman weight 2.0 on a 0..255 image.
DENOISE_WEIGHT = 2.0
_TV_EPSILON = 1e-3


def l2_direction(images: np.ndarray) -> np.ndarray:
    """Pulls pixels toward the middle of the value range (``-d/du |u|^2 / 2``)."""
    return -images


def _forward_differences(images):
    dy = np.zeros_like(images)
    dx = np.zeros_like(images)
    dy[:, :-1] = images[:, 1:] - images[:, :-1]
    dx[:, :, :-1] = images[:, :, 1:] - images[:, :, :-1]
    return dy, dx


def _divergence(py, px):
    """Negative adjoint of :func:`_forward_differences` (zero flux at the border)."""
    div = np.zeros_like(py)
    div[:, :-1] += py[:, :-1]
    div[:, 1:] -= py[:, :-1]
    div[:, :, :-1] += px[:, :, :-1]
    div[:, :, 1:] -= px[:, :, :-1]
    return div


def tv_direction(images: np.ndarray) -> np.ndarray:
    """Descent direction of the (smoothed, isotropic) total variation."""
    dy, dx = _forward_differences(images)
    magnitude = np.sqrt(dy * dy + dx * dx + _TV_EPSILON ** 2)
    return _divergence(dy / magnitude, dx / magnitude)


def total_variation(images: np.ndarray) -> np.ndarray:
    """The smoothed isotropic total variation of each batch item."""
    dy, dx = _forward_differences(images)
    return np.sqrt(dy * dy + dx * dx + _TV_EPSILON ** 2).sum(axis=(1, 2, 3))


def falling_sigma(iteration: int, iterations: int, start: float = BILATERAL_SIGMA_START,
                  end: float = BILATERAL_SIGMA_END) -> float:
    """Spatial sigma for ``iteration`` of an octave, linear from ``start`` to ``end``."""
    if iterations <= 1:
        return start
    return start + (end - start) * iteration / (iterations - 1)


def bilateral(images: np.ndarray, spatial_sigma: float,
              range_sigma: float = BILATERAL_RANGE_SIGMA) -> np.ndarray:
    """Edge-preserving smoothing: neighbours weighted by distance and by similarity.

    Similarity is measured over all channels together, so colors are
    smoothed consistently and edges between colors survive.
    """
    if spatial_sigma <= 0 or range_sigma <= 0:
        raise OptionError(f"bilateral sigmas must be positive (got spatial {spatial_sigma!r}, "
                          f"range {range_sigma!r})")
    radius = max(1, int(np.ceil(2 * spatial_sigma)))
    padded = np.pad(images, ((0, 0), (radius, radius), (radius, radius), (0, 0)), mode="reflect")
    height, width = images.shape[1:3]
    total = np.zeros_like(images)
    weights = np.zeros(images.shape[:3] + (1,), images.dtype)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            shifted = padded[:, radius + dy:radius + dy + height, radius + dx:radius + dx + width]
            distance = np.sum(np.square(shifted - images), axis=-1, keepdims=True)
            weight = np.exp(-(dy * dy + dx * dx) / (2 * spatial_sigma ** 2)
                            - distance / (2 * range_sigma ** 2))
            total += weight * shifted
            weights += weight
    return total / weights


def tv_denoise(images: np.ndarray, weight: float = DENOISE_WEIGHT, iterations: int = 50) -> np.ndarray:
    """Total-variation denoising (Chambolle's projection), per channel.

    ``weight`` follows the split-Bregman convention on a 0..255 image
    (larger keeps more detail): it solves
    ``min_u weight/2 * |u - f|^2 + TV(u)`` in 0..255 units, which is
    ``min_u |u - f|^2 / 2 + (2 / 255 / weight) * TV(u)`` in the unit range.
    """
    if weight <= 0:
        raise OptionError(f"denoise weight {weight!r} must be positive (larger keeps more detail)")
    lam = 2.0 / 255.0 / weight
    tau = 0.25
    py = np.zeros_like(images)
    px = np.zeros_like(images)
    result = images
    for _ in range(iterations):
        result = images + lam * _divergence(py, px)
        gy, gx = _forward_differences(result)
        norm = 1.0 + (tau / lam) * np.sqrt(gy * gy + gx * gx)
        py = (py + (tau / lam) * gy) / norm
        px = (px + (tau / lam) * gx) / norm
    return images + lam * _divergence(py, px)
