"""Deletion and insertion curves (Petsiuk et al. 2018): does the map point at what the class needs?

Deletion replaces the image's pixels by a baseline in the order of the map,
most important first, in steps of ``1/steps`` of the pixels (all channels
of a pixel at once); insertion starts from the baseline and puts the
image's pixels back in the same order. After each step the class score is
measured: the probability (the softmax of the class scores, also where the
model ends without one) or the logit. A map that finds the evidence makes
the deletion curve fall fast (small area under it) and the insertion curve
rise fast (large area). The area is the trapezoid rule over the fraction
of pixels, from 0 to 1.

The order: methods whose values are contributions that add up to the
score (gradient x input, Integrated Gradients, occlusion, and maps given
by the caller) rank pixels by their signed map (sum over channels), so
evidence against the class comes last; sensitivity methods (gradients,
reconstructions, CAMs) rank by the magnitude (sum of absolute values).
Ties keep the pixels' raster order.

All steps of every (image, class) pair are batched through the network
together, in chunks sized by the memory budget.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import ndimage

from tf_cnnvis import compute
from tf_cnnvis.attribution.batches import in_chunks
from tf_cnnvis.errors import OptionError
from tf_cnnvis.feeds import Feed
from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.options import DELETION_BASELINES, DELETION_SCORES, check_integer
from tf_cnnvis.rebuild import RebuiltGraph
from tf_cnnvis.sanity.maps import per_image_inputs

BASELINES = DELETION_BASELINES
SCORES = DELETION_SCORES
# Methods whose maps are contributions: pixels are ranked by the signed map.
SIGNED_ORDER = ("gradient_x_input", "integrated_gradients", "occlusion")


def blur_sigma(height: int, width: int) -> float:
    """The blurred baseline's Gaussian standard deviation in pixels: max(2, min(H, W) / 20)."""
    return max(2.0, min(height, width) / 20.0)


def check_baseline(baseline):
    """``baseline``: one of BASELINES, or a finite number or array (checked against the images later)."""
    if isinstance(baseline, str):
        if baseline not in BASELINES:
            raise OptionError(f"baseline={baseline!r} is not one of {', '.join(map(repr, BASELINES))}, a number "
                              "or an array broadcastable to the images")
        return baseline
    if isinstance(baseline, bool):
        raise OptionError(f"baseline={baseline!r} is not accepted; give {', '.join(map(repr, BASELINES))}, a "
                          "number or an array")
    try:
        value = np.asarray(baseline, np.float32)
    except (TypeError, ValueError):
        raise OptionError(f"baseline={baseline!r} is not {', '.join(map(repr, BASELINES))}, a number or an "
                          "array of numbers") from None
    if not np.all(np.isfinite(value)):
        raise OptionError("baseline holds NaN or infinite values; give finite numbers")
    return value


def check_score(score) -> str:
    if not isinstance(score, str) or score not in SCORES:
        raise OptionError(f"score={score!r} is not one of {', '.join(map(repr, SCORES))}")
    return score


def check_steps(steps, what: str = "deletion_steps") -> int:
    return check_integer(what, steps, 1, "the curve's steps: each removes or reveals about 1/steps of the pixels")


def baseline_images(baseline, images: np.ndarray) -> np.ndarray:
    """The baseline of every image, ``images.shape``."""
    if isinstance(baseline, str):
        if baseline == "zero":
            return np.zeros_like(images)
        if baseline == "mean":
            return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).astype(images.dtype)
        sigma = blur_sigma(*images.shape[1:3])
        return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="nearest").astype(images.dtype)
    try:
        return np.broadcast_to(np.asarray(baseline, images.dtype), images.shape).copy()
    except ValueError:
        n, height, width, channels = images.shape
        raise OptionError(f"baseline of shape {np.shape(baseline)} does not fit images of shape {images.shape}; "
                          f"give a number, or an array of shape ({height}, {width}, {channels}) or ({n}, {height}, "
                          f"{width}, {channels})") from None


def pixel_counts(pixels: int, steps: int) -> np.ndarray:
    """How many pixels are removed after each step: 0, s, 2s, ..., all (``s = ceil(pixels / steps)``)."""
    per_step = max(1, math.ceil(pixels / steps))
    counts = list(range(0, pixels, per_step)) + [pixels]
    return np.asarray(counts, np.int64)


def ranking(signed: np.ndarray, absolute: np.ndarray, name: str, given: bool = False) -> np.ndarray:
    """Each pixel's place in the removal order, ``(..., H * W)`` from maps ``(..., H, W)`` (0: first).

    ``given``: the maps come from the caller and are ranked by their signed values.
    """
    values = signed if given or name in SIGNED_ORDER else absolute
    flat = np.nan_to_num(np.asarray(values, np.float64), nan=-np.inf).reshape(values.shape[:-2] + (-1,))
    order = np.argsort(-flat, axis=-1, kind="stable")
    return np.argsort(order, axis=-1, kind="stable")  # the inverse permutation: place of each pixel


@dataclasses.dataclass
class Curves:
    """One method's curves. ``fractions`` ``(S + 1,)``; the curves ``(N, K, S + 1)``; the areas ``(N, K)``."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        return np.trapezoid(self.deletion, self.fractions, axis=-1)

    @property
    def insertion_auc(self) -> np.ndarray:
        return np.trapezoid(self.insertion, self.fractions, axis=-1)

    def mean(self) -> dict:
        """The curves and areas averaged over images and classes."""
        return {"fractions": self.fractions, "deletion": self.deletion.mean(axis=(0, 1)),
                "insertion": self.insertion.mean(axis=(0, 1)), "deletion_auc": float(self.deletion_auc.mean()),
                "insertion_auc": float(self.insertion_auc.mean())}


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def score_curves(rebuilt: RebuiltGraph, feed: Feed, scores: LayerInfo, classes: np.ndarray,
                 ranks: dict[str, np.ndarray], baselines: np.ndarray, steps: int, score: str,
                 memory_budget_mb: float, progress=None) -> dict[str, Curves]:
    """Deletion and insertion curves of every method's pixel ranks ``(N, K, H * W)``."""
    images = feed.images
    count, height, width = images.shape[:3]
    per_image = classes.shape[1]
    counts = pixel_counts(height * width, steps)
    points = len(counts)
    names = list(ranks)
    # Items: (method, image, class slot, deletion or insertion, step), method-major, steps innermost.
    shape = (len(names), count, per_image, 2, points)
    total = math.prod(shape)
    logits_of = np.zeros((total,), np.float64)
    tensor = rebuilt.tensor(scores.tensor)
    follow = per_image_inputs(rebuilt, feed)
    one = Feed(feed.input_name, images[:1], {key: value[:1] if key in follow else value
                                             for key, value in feed.others.items()})
    chunk = compute.chunk_size(rebuilt, one, scores, images.shape[1:], memory_budget_mb, limit=total)
    stacked = np.stack([ranks[name] for name in names])  # (M, N, K, HW)
    # All items' pixels at once would be M N K 2 S H W C floats: batches are built per chunk.

    def one_chunk(begin, end):
        index = np.arange(begin, end)
        m, n, k, kind, step = np.unravel_index(index, shape)
        first = (stacked[m, n, k] < counts[step][:, None]).reshape(-1, height, width, 1)
        # Deletion: the first pixels of the order come from the baseline; insertion: only they from the image.
        from_baseline = np.where((kind == 0)[:, None, None, None], first, ~first)
        batch = np.where(from_baseline, baselines[n], images[n])
        fed = {feed.input_name: batch}
        for key, value in feed.others.items():
            fed[key] = value[n] if key in follow else value
        logits = np.asarray(compute.run(rebuilt, tensor, fed), np.float64)
        chosen = classes[n, k]
        values = _softmax(logits) if score == "probability" else logits
        logits_of[begin:end] = values[np.arange(len(index)), chosen]
        if progress is not None:
            progress(end - begin)

    in_chunks(total, chunk, "deletion and insertion steps", one_chunk)
    table = logits_of.reshape(shape)
    fractions = counts / float(height * width)
    return {name: Curves(fractions=fractions, deletion=table[i, :, :, 0], insertion=table[i, :, :, 1])
            for i, name in enumerate(names)}
