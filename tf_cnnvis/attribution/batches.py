"""Batch items through the network in chunks the memory budget allows.

Every attribution is a list of batch items (an image with one class, a
noisy copy, a point on an integration path, a masked or occluded image),
run through the network in as few ``session.run`` calls as the memory
budget allows. A refused allocation halves the chunk and goes on, as the
reconstructions do.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import tensorflow as tf

from tf_cnnvis import compute
from tf_cnnvis.errors import OutOfMemoryError
from tf_cnnvis.feeds import Feed
from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.options import check_memory_budget
from tf_cnnvis.rebuild import RebuiltGraph

logger = logging.getLogger("tf_cnnvis")

# Memory per batch item, from the float tensors between the input and the
# class scores: a few tensors of the largest size are alive at once (an op's
# input and output, a residual branch, the gradient in flight), and a
# backward pass keeps part of the rest (the rules keep rectifier masks and
# pooling switches as booleans; TensorFlow's own gradients may keep floats).
# Measured on ResNet50 at 224 px (largest tensor 3.1 MB, all of them 222 MB
# per image): about 20 MB per item forward and 15-22 MB with a backward pass.
PEAK_COPIES = 8
KEPT = {"forward": 0.0, "backward": 0.5}


def chunk_size(rebuilt: RebuiltGraph, feed: Feed, scores: LayerInfo, pass_kind: str, memory_budget_mb: float,
               limit: int) -> int:
    """How many batch items (``pass_kind``: 'forward' or 'backward') fit the memory budget; at most ``limit``."""
    check_memory_budget(memory_budget_mb)
    sizes = compute.tensor_sizes(rebuilt, feed, [scores], feed.images.shape[1:])[scores.tensor]
    per_item = (max(sizes, default=0) * PEAK_COPIES + sum(sizes) * KEPT[pass_kind]
                + 2 * math.prod(feed.images.shape[1:])) * 4
    return int(max(1, min(memory_budget_mb * 2**20 // max(per_item, 1), limit)))


def in_chunks(total: int, batch: int, what: str, run_chunk) -> int:
    """``run_chunk(begin, end)`` over ``0..total``; out of memory halves the chunk. Returns the size that worked."""
    begin = 0
    while begin < total:
        end = min(begin + batch, total)
        try:
            run_chunk(begin, end)
        except tf.errors.ResourceExhaustedError as error:
            reason = " ".join(str(error.message).split())[:300]
            if end - begin == 1:
                raise OutOfMemoryError(
                    f"out of memory computing one item of {what} ({reason}); lower memory_budget_mb, feed "
                    "smaller images, or run on a device with more memory") from None
            batch = max(1, (end - begin) // 2)
            logger.warning("out of memory at %d items for %s; going on with %d", end - begin, what, batch)
            continue
        begin = end
    return batch


def run(rebuilt: RebuiltGraph, fetches, feed_dict):
    """One ``session.run`` (through :func:`tf_cnnvis.compute.run`: feed errors named)."""
    return compute.run(rebuilt, fetches, feed_dict)


# --------------------------------------------------------------------------- resizing

def resize_matrix(size: int, source: int) -> np.ndarray:
    """``(size, source)`` weights of bilinear resizing with half-pixel centres.

    What ``tf.image.resize(..., 'bilinear')`` computes (no antialiasing),
    as a matrix: ``R_y @ map @ R_x.T`` resizes a map. Positions beyond the
    first or last source centre take that centre's value.
    """
    matrix = np.zeros((size, source), np.float64)
    position = (np.arange(size) + 0.5) * (source / size) - 0.5
    low = np.floor(position)
    fraction = position - low
    below = np.clip(low, 0, source - 1).astype(int)
    above = np.clip(low + 1, 0, source - 1).astype(int)
    rows = np.arange(size)
    np.add.at(matrix, (rows, below), 1 - fraction)
    np.add.at(matrix, (rows, above), fraction)
    return matrix


def upsample(maps: np.ndarray, height: int, width: int) -> np.ndarray:
    """Maps ``(..., h, w)`` resized bilinearly to ``(..., height, width)``, float32."""
    maps = np.asarray(maps)
    rows = resize_matrix(height, maps.shape[-2]).astype(np.float32)
    columns = resize_matrix(width, maps.shape[-1]).astype(np.float32)
    return np.einsum("yh,...hw,xw->...yx", rows, maps.astype(np.float32), columns, optimize=True)
