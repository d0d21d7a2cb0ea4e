"""Fields: each kept unit's receptive-field box, and its reconstruction inside that box.

Boxes come analytically from the graph (:mod:`tf_cnnvis.receptive_field`);
reconstructions are computed on a crop around each unit's field (exact, see
:mod:`tf_cnnvis.compute`).
"""

from __future__ import annotations

import logging

import numpy as np

from tf_cnnvis import compute
from tf_cnnvis.feeds import Feed
from tf_cnnvis.top_activations.pictures import cut
from tf_cnnvis.top_activations.results import LayerTops

logger = logging.getLogger("tf_cnnvis")


def add_fields(tops: LayerTops, plain, input_name, layer, image_size):
    """Receptive-field boxes of the kept units, from the graph's kernels and strides."""
    from tf_cnnvis.receptive_field import receptive_field

    if image_size is None or len(layer.shape) != 4:
        return
    try:
        field = receptive_field(plain.graph, input_name, layer.tensor, tuple(image_size))
    except ValueError as error:
        logger.warning("no receptive field for %s (%s): showing whole images", layer.name, error)
        field = None
    if field is None:
        return
    tops.field_size, tops.field_jump, tops.field_start = field.size, field.jump, field.start
    start = tops.units * np.array(field.jump) + np.array(field.start)
    tops.boxes = np.concatenate([start, start + np.array(field.size)], axis=-1).astype(np.int32)


def reconstruct(rebuilt, input_name, fixed, layer, tops: LayerTops, raw, slot_of, memory_budget_mb):
    """Each kept unit's reconstruction inside its box: ``(C, k, fh, fw, c)``.

    Every (channel, image) pair goes through the same code as
    ``deconv_visualization(target="unit")``
    (:func:`tf_cnnvis.compute.reconstruct_units`): one batched backward pass
    per chunk, each item on a crop around its unit when the input size is
    open, and smaller chunks when the backend runs out of memory.
    """
    channels, k = tops.scores.shape
    height, width = raw.shape[1:3]
    size = tuple(tops.field_size) if tops.boxes is not None else (height, width)
    out = np.zeros((channels, k) + size + raw.shape[3:], np.float32)
    pairs = np.argwhere(tops.image_index >= 0)  # (channel row, rank), row by row
    if not len(pairs):
        return out
    rows, ranks = pairs[:, 0], pairs[:, 1]
    feed = Feed(input_name=input_name, images=raw, others=fixed)
    plan = compute.crop_plan(rebuilt, feed, layer) if len(layer.shape) == 4 else None
    image_ids = np.array([slot_of[int(index)] for index in tops.image_index[rows, ranks]], np.int64)

    def keep(first, values, offsets):
        for item, (c, r) in enumerate(pairs[first:first + len(values)]):
            if tops.boxes is None:  # whole images
                crop_height, crop_width = values[item].shape[:2]
                oy, ox = offsets[item]
                out[c, r, oy:oy + crop_height, ox:ox + crop_width] = values[item]
                continue
            y0, x0 = tops.boxes[c, r, :2] - offsets[item]
            out[c, r] = cut(values[item], y0, x0, size, fill=0.0)

    compute.reconstruct_units(rebuilt, feed, layer, image_ids, tops.units[rows, ranks], tops.channels[rows], keep,
                              plan=plan, memory_budget_mb=memory_budget_mb)
    return out
