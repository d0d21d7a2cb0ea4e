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

    All (channel, image) pairs go through one batched backward pass per
    chunk, each on a crop around its unit when the input size is open.
    """
    channels, k = tops.scores.shape
    height, width = raw.shape[1:3]
    size = tuple(tops.field_size) if tops.boxes is not None else (height, width)
    out = np.zeros((channels, k) + size + raw.shape[3:], np.float32)
    pairs = [(c, r) for c in range(channels) for r in range(k) if tops.image_index[c, r] >= 0]
    if not pairs:
        return out
    feed = Feed(input_name=input_name, images=raw[:1], others=fixed)
    plan = compute.crop_plan(rebuilt, feed, layer) if len(layer.shape) == 4 else None
    item_shape = (plan.size if plan is not None else (height, width)) + raw.shape[3:]
    chunk = compute.chunk_size(rebuilt, feed, layer, item_shape, memory_budget_mb, limit=len(pairs))
    index, grad = rebuilt.target(layer.tensor, input_name, "batched_units")
    spatial = len(layer.shape) == 4
    for begin in range(0, len(pairs), chunk):
        part = pairs[begin:begin + chunk]
        images = raw[[slot_of[int(tops.image_index[c, r])] for c, r in part]]
        channel_ids = np.array([tops.channels[c] for c, _ in part])
        yx = np.array([tops.units[c, r] for c, r in part])
        if not spatial:
            inputs, indices = images, channel_ids[:, None]
        elif plan is None:
            inputs, indices, offsets = images, np.column_stack([yx, channel_ids]), np.zeros_like(yx)
        else:
            offsets = plan.offsets(yx)
            inputs = np.stack([image[oy:oy + plan.size[0], ox:ox + plan.size[1]]
                               for image, (oy, ox) in zip(images, offsets)])
            indices = np.column_stack([yx - offsets // np.array(plan.jump), channel_ids])
        grads = compute.run(rebuilt, grad, {index: indices.astype(np.int32), **feed.with_images(inputs)})
        for item, (c, r) in enumerate(part):
            if tops.boxes is None:
                out[c, r] = grads[item]
                continue
            y0, x0 = tops.boxes[c, r, :2] - offsets[item]
            out[c, r] = cut(grads[item], y0, x0, size, fill=0.0)
    return out

