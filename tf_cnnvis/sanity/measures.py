"""How alike two maps are: rank correlations and SSIM, as Adebayo et al. (2018) measured them.

A method's values for one image and class are reduced to two maps
``(H, W)``: the *signed* map sums the values over the input channels, the
*absolute* map sums their magnitudes (a map without channels is both).
Each pair of maps is compared three ways:

- ``spearman_abs``: Spearman's rank correlation of the absolute maps;
- ``spearman_signed``: the same on the signed maps;
- ``ssim``: the structural similarity (Wang et al. 2004) of the absolute
  maps as they are shown: divided by their 99th percentile and clipped to
  [0, 1] (:func:`display_normalize`, as in Adebayo et al.'s code).

A map that is the same everywhere has no ranks: its correlation with a
map that varies is 0, and with another constant map 1.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["MEASURES", "Reference", "compare", "display_normalize", "reduce_maps", "spearman", "ssim"]

MEASURES = ("spearman_abs", "spearman_signed", "ssim")
DISPLAY_PERCENTILE = 99.0
# Wang et al. (2004): an 11 x 11 Gaussian window of standard deviation 1.5, K1 = 0.01, K2 = 0.03.
SSIM_SIGMA = 1.5
SSIM_RADIUS = 5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def reduce_maps(values: np.ndarray, spatial_rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(signed, absolute) maps of ``values`` ``(..., H, W)`` or ``(..., H, W, C)``.

    ``spatial_rank`` is the number of leading axes before ``H, W``: values
    with one more axis carry input channels, which are summed.
    """
    values = np.asarray(values, np.float64)
    if values.ndim == spatial_rank + 3:
        return values.sum(axis=-1), np.abs(values).sum(axis=-1)
    return values, np.abs(values)


def _centred_ranks(maps: np.ndarray) -> np.ndarray:
    """Each map's ranks ``(P, H * W)`` (ties: their mean rank), minus their mean.

    One sort per map; a run of equal values gets the mean of the places it
    spans (what ``scipy.stats.rankdata`` calls ``'average'``), so the
    sort's order among them does not matter.
    """
    flat = np.asarray(maps, np.float64).reshape(-1, maps.shape[-2] * maps.shape[-1])
    size = flat.shape[1]
    order = np.argsort(flat, axis=1)
    ordered = np.take_along_axis(flat, order, axis=1)
    starts = np.ones(ordered.shape, bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(ordered.shape, bool)
    ends[:, :-1] = starts[:, 1:]
    places = np.broadcast_to(np.arange(size), ordered.shape)
    first = np.maximum.accumulate(np.where(starts, places, 0), axis=1)
    last = np.minimum.accumulate(np.where(ends, places, size - 1)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty(ordered.shape)
    np.put_along_axis(ranks, order, (first + last) / 2 - (size - 1) / 2, axis=1)
    return ranks


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of centred ranks, row by row (0 for a constant row against another, 1 for two)."""
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    result = np.where(norms > 0, (a * b).sum(axis=1) / np.where(norms > 0, norms, 1), 0.0)
    result = np.where((a == 0).all(axis=1) & (b == 0).all(axis=1), 1.0, result)
    return np.clip(result, -1.0, 1.0)


def spearman(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Spearman's rank correlation of each pair of maps ``(..., H, W)`` (ties get their mean rank)."""
    first, second = np.broadcast_arrays(np.asarray(first, np.float64), np.asarray(second, np.float64))
    return _rank_correlation(_centred_ranks(first), _centred_ranks(second)).reshape(first.shape[:-2])


def display_normalize(maps: np.ndarray, percentile: float = DISPLAY_PERCENTILE) -> np.ndarray:
    """Absolute maps ``(..., H, W)`` divided by their own ``percentile`` and clipped to [0, 1].

    Where that percentile is zero the maximum is the scale; a map of zeros stays zero.
    """
    maps = np.nan_to_num(np.abs(np.asarray(maps, np.float64)), nan=0.0, posinf=0.0)
    flat = maps.reshape(-1, maps.shape[-2] * maps.shape[-1])
    scale = np.percentile(flat, percentile, axis=1)
    scale = np.where(scale > 0, scale, flat.max(axis=1))
    scaled = flat / np.where(scale > 0, scale, 1)[:, None]
    return np.clip(scaled, 0.0, 1.0).reshape(maps.shape)


def ssim(first: np.ndarray, second: np.ndarray, data_range: float = 1.0) -> np.ndarray:
    """Mean structural similarity of each pair of images ``(..., H, W)`` (Wang et al. 2004).

    Local means, variances and covariance under a Gaussian window
    (sigma 1.5, 11 x 11), constants ``(0.01 L)^2`` and ``(0.03 L)^2`` for
    the data range ``L``, population (not sample) covariances; the mean is
    taken over the positions whose whole window lies inside the image, as
    scikit-image's ``structural_similarity(..., gaussian_weights=True,
    use_sample_covariance=False)`` and ``tf.image.ssim`` take it. An image
    smaller than the window is averaged over every position (the window
    mirrored at the border).
    """
    first, second = np.broadcast_arrays(np.asarray(first, np.float64), np.asarray(second, np.float64))
    shape = first.shape[:-2]
    height, width = first.shape[-2:]
    x = first.reshape(-1, height, width)
    y = second.reshape(-1, height, width)
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    truncate = (SSIM_RADIUS + 0.25) / SSIM_SIGMA  # the window's radius is exactly SSIM_RADIUS

    def window(values):  # filtered over H and W only, each image on its own
        return ndimage.gaussian_filter(values, sigma=(0, SSIM_SIGMA, SSIM_SIGMA), truncate=truncate, mode="reflect")

    mean_x, mean_y = window(x), window(y)
    var_x = window(x * x) - mean_x * mean_x
    var_y = window(y * y) - mean_y * mean_y
    cov = window(x * y) - mean_x * mean_y
    local = ((2 * mean_x * mean_y + c1) * (2 * cov + c2)) / ((mean_x ** 2 + mean_y ** 2 + c1) * (var_x + var_y + c2))
    r = SSIM_RADIUS
    if height > 2 * r and width > 2 * r:
        local = local[:, r:height - r, r:width - r]
    return local.mean(axis=(1, 2)).reshape(shape)


class Reference:
    """The original maps of one method, prepared once for every comparison: ranks and displayed maps."""

    def __init__(self, signed: np.ndarray, absolute: np.ndarray):
        self.shape = signed.shape[:-2]
        self.signed_ranks = _centred_ranks(signed)
        self.abs_ranks = _centred_ranks(absolute)
        self.shown = display_normalize(absolute)

    def compare(self, signed: np.ndarray, absolute: np.ndarray) -> dict[str, np.ndarray]:
        """Each measure of :data:`MEASURES` between the original maps and these, per map ``(...)``."""
        return {"spearman_abs": _rank_correlation(self.abs_ranks, _centred_ranks(absolute)).reshape(self.shape),
                "spearman_signed": _rank_correlation(self.signed_ranks, _centred_ranks(signed)).reshape(self.shape),
                "ssim": ssim(self.shown, display_normalize(absolute))}


def compare(original: tuple[np.ndarray, np.ndarray], other: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
    """Each measure of :data:`MEASURES` between (signed, absolute) map pairs ``(..., H, W)``, per pair."""
    return Reference(*original).compare(*other)
