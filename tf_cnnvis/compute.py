"""Compute: activations and reconstructions, batched through the network.

Reconstructions of one image run its forward pass once; the backward pass
is vectorized over a chunk of channels (or units), so one ``session.run``
yields the whole chunk. The chunk size comes from a memory budget.

For the single-unit target a reconstruction is zero outside the unit's
receptive field, so it is computed on a crop around that field instead of
the whole image. The crop is shifted inward at the border and keeps the
layer's pooling grid (its offset is a multiple of the layer's jump and its
size is congruent to the image size modulo the jump), so every padding and
every max-pool switch is the same as on the full image and the result is
identical, not approximate.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import re

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import FeedError, ModelLoadError, OptionError, OutOfMemoryError
from tf_cnnvis.feeds import Feed
from tf_cnnvis.graph import ops_depending_on
from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.options import DEFAULT_MEMORY_BUDGET_MB, check_memory_budget, check_target
from tf_cnnvis.rebuild import RebuiltGraph

logger = logging.getLogger("tf_cnnvis")

# A batch of different images: each item holds its own forward tensors, the
# gradients and the temporaries of the custom rules, about three copies of
# every tensor between the input and the layer.
BACKWARD_FACTOR = 3
# One image's forward pass shared by a batched backward pass: an item
# holds only the gradient in flight and the rules' temporaries, a few
# tensors of the largest size. Measured on VGG16 block5_conv3 at 224 px with
# the deconvnet rules, 512 channels: about 7 (3.24 GB peak at 4, 1.77 GB at 8
# with parallel-for; 1.94 GB at 8 with the batched pass of tf_cnnvis.backward).
GRADIENT_COPIES = 8


def run(rebuilt: RebuiltGraph, fetches, feed_dict):
    """``session.run`` with feed errors turned into a FeedError that names the input."""
    try:
        return rebuilt.session.run(fetches, feed_dict=feed_dict)
    except tf.errors.InvalidArgumentError as error:
        missing = re.search(r"must feed a value for placeholder tensor '([^']+)' with dtype (\w+)",
                            error.message)
        if missing:
            raise FeedError(f"the model needs placeholder {missing.group(1)!r} ({missing.group(2)}) "
                            "but value_feed_dict has no value for it; add it to value_feed_dict") from None
        raise FeedError(f"the model rejected the feed: {_tf_reason(error.message)}") from None
    except ValueError as error:  # raised by the session before running, e.g. a wrong shape
        if not str(error).startswith("Cannot feed value"):
            raise
        raise FeedError(f"{error}; change that value in value_feed_dict") from None
    except tf.errors.ResourceExhaustedError:
        raise  # the callers that chunk their work retry with less
    except tf.errors.OpError as error:  # an op the model holds cannot run here (no kernel, bad attrs)
        raise ModelLoadError(f"the model cannot run: {_tf_reason(error.message)}; the model file is "
                             "damaged or holds ops this TensorFlow cannot run on this device") from None


def _tf_reason(message: str) -> str:
    """The line of a TensorFlow error that says what went wrong (not where)."""
    lines = [line.strip() for line in message.split("Original stack trace")[0].splitlines()]
    reasons = [line for line in lines if line and not line.startswith(
        ("Graph execution error", "Detected at node", "File ", "Node:", "[[", "Traceback"))]
    return reasons[-1] if reasons else lines[0]


def activations(rebuilt: RebuiltGraph, feed: Feed, layers: list[LayerInfo]) -> dict[str, np.ndarray]:
    """The layers' values on the user's images, in one forward pass."""
    try:
        values = run(rebuilt, [layer.tensor for layer in layers], feed.with_images(feed.images))
    except tf.errors.ResourceExhaustedError as error:
        raise OutOfMemoryError(f"out of memory computing the activations ({_tf_reason(error.message)}); "
                               "feed fewer or smaller images") from None
    return {layer.tensor: value for layer, value in zip(layers, values)}


def chunk_size(rebuilt: RebuiltGraph, feed: Feed, layer: LayerInfo, image_shape,
               memory_budget_mb: float, limit: int, shared_forward: bool = False) -> int:
    """How many batch items fit the memory budget for this layer.

    ``shared_forward``: the items are backward passes vectorized over one
    image's forward pass (reconstructions of one image), not images of
    their own.
    """
    check_memory_budget(memory_budget_mb)
    sizes = tensor_sizes(rebuilt, feed, [layer], image_shape)[layer.tensor]
    if shared_forward:
        per_item = (max(sizes, default=0) * GRADIENT_COPIES + math.prod(image_shape)) * 4
    else:
        per_item = sum(sizes) * 4 * BACKWARD_FACTOR
    size = int(memory_budget_mb * 2**20 // max(per_item, 1))
    return int(max(1, min(size, limit)))


def tensor_sizes(rebuilt: RebuiltGraph, feed: Feed, layers: list[LayerInfo], image_shape) -> dict[str, list[int]]:
    """Elements per image of every float tensor between the input and each layer.

    Static shapes are read from the graph. Open ones are measured on one
    zero image of ``image_shape``, every layer in the same run, and
    remembered per image shape, so a repeated call runs nothing.
    """
    known = rebuilt.cached(("tensor sizes",), dict)
    image_shape = tuple(int(d) for d in image_shape)
    result, open_sizes = {}, {}
    for layer in layers:
        key = (feed.input_name, layer.tensor, image_shape)
        if key not in known:
            upstream = _upstream_float_tensors(rebuilt, feed.input_name, layer.tensor)
            static = _static_sizes(upstream)
            if static is None:
                open_sizes[key] = upstream
            else:
                known[key] = static
    if open_sizes:
        tensors = list({tensor.name: tensor for group in open_sizes.values() for tensor in group}.values())
        size_ops = [rebuilt.cached(("size", tensor.name), lambda tensor=tensor: tf.size(tensor))
                    for tensor in tensors]
        zeros = np.zeros((1,) + image_shape, feed.images.dtype)
        measured = dict(zip((t.name for t in tensors), run(rebuilt, size_ops, feed.with_images(zeros))))
        for key, group in open_sizes.items():
            known[key] = [int(measured[tensor.name]) for tensor in group]
    for layer in layers:
        result[layer.tensor] = known[(feed.input_name, layer.tensor, image_shape)]
    return result


def _upstream_float_tensors(rebuilt, input_name, tensor_name):
    """The float outputs of the ops created before the layer that depend on the input, and the layer's.

    Side branches created before the layer count too: a bound, not the path.
    """
    graph = rebuilt.graph
    target = graph.get_tensor_by_name(tensor_name).op
    ops = ops_depending_on(graph, [input_name], stop=target) | {target}
    return sorted((t for op in ops for t in op.outputs if t.dtype.is_floating), key=lambda t: t.name)


def _static_sizes(tensors) -> list[int] | None:
    sizes = []
    for tensor in tensors:
        dims = tensor.shape.as_list() if tensor.shape.rank is not None else None
        if dims is None or any(d is None for d in dims[1:]):
            return None
        sizes.append(math.prod(dims[1:]))
    return sizes


def strongest_units(values: np.ndarray) -> np.ndarray:
    """(y, x) of each channel's maximum per image: shape (N, C, 2)."""
    n, height, width, channels = values.shape
    flat = values.reshape(n, height * width, channels).argmax(axis=1)
    return np.stack(np.unravel_index(flat, (height, width)), axis=-1)


def reconstruct(rebuilt: RebuiltGraph, feed: Feed, layer: LayerInfo, target: str = "map",
                channels=None, layer_values: np.ndarray | None = None,
                memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB, crop: bool = True,
                progress=None, sink=None) -> np.ndarray | None:
    """Reconstructions of ``layer`` for every image and channel.

    Returns an array of shape ``(N, len(channels), *image.shape)``. For
    ``target='unit'`` the layer's values on the images (``layer_values``)
    give the strongest unit of each channel. ``crop=False`` computes single
    units on whole images (slower, same result; kept for checks).

    With ``sink``, nothing is kept: ``sink(image, first, values)`` receives
    each chunk as it is computed, in order, on a second thread while the
    next chunk is computed (``values`` holds the reconstructions of channels
    ``first, first + 1, ...`` of that image), and the call returns None: no
    array grows with the number of channels.
    """
    check_target(target)
    if layer.channels is None:
        raise OptionError(f"layer {layer.name!r} has output shape {layer.shape}; reconstructions "
                          "need a layer with channels (shape (N, H, W, C) or (N, C))")
    channels = np.arange(layer.channels) if channels is None else np.asarray(channels)
    images = feed.images
    n_images = images.shape[0]
    result = None
    if sink is None:
        result = np.zeros((n_images, len(channels)) + images.shape[1:], np.float32)

        def sink(n, first, values):
            result[n, first:first + len(values)] = values

    use_units = target == "unit" and len(layer.shape) == 4
    if use_units:
        yx = strongest_units(layer_values)[:, channels]  # (N, K, 2)
        plan = crop_plan(rebuilt, feed, layer) if crop else None
        if plan is not None:
            _units_of_every_image(rebuilt, feed, layer, plan, channels, yx, sink, memory_budget_mb, progress)
            return result
        rows = [np.column_stack([yx[n], channels]) for n in range(n_images)]
    else:
        rows = [channels.reshape(-1, 1) if target == "unit" else channels for _ in range(n_images)]
    kind = "unit" if target == "unit" else "map"
    index, grads = rebuilt.target(layer.tensor, feed.input_name, kind)
    batch = chunk_size(rebuilt, feed, layer, images.shape[1:], memory_budget_mb, limit=len(channels),
                       shared_forward=True)
    # Several chunks: run what they share (the forward pass, the rules' masks)
    # once per image and feed its values to every chunk's backward pass.
    forward = rebuilt.invariant_tensors(grads, index, feed.input_name) if batch < len(channels) else []
    with _Overlapped(sink) as deliver:
        for n in range(n_images):
            inputs = feed.with_images(images[n:n + 1])
            if forward:
                inputs.update(zip(forward, run(rebuilt, forward, inputs)))

            def one_chunk(begin, end, n=n, inputs=inputs):
                chunk = rows[n][begin:end]
                deliver(n, begin, run(rebuilt, grads, {index: chunk.astype(np.int32), **inputs}))
                if progress is not None:
                    progress(len(chunk))

            batch = _in_chunks(len(channels), batch, layer, one_chunk)
    return result


class _Overlapped:
    """Hands chunks to ``sink`` on a second thread while the caller computes the next one.

    TensorFlow releases the GIL while it runs, and so do numpy and zlib on
    large arrays: rendering one chunk (scaling, PNG compression) overlaps
    the backward pass of the next. At most one chunk is handed over and not
    yet done: the next hand-over waits for it, so memory holds one chunk
    more than without the thread. The sink's exceptions come back on the
    caller's thread; leaving early (an error, Ctrl-C) waits for the chunk in
    hand, so nothing touches the outputs once the caller cleans them up.
    """

    def __init__(self, sink):
        self.sink = sink
        self.pending = None
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tf_cnnvis_render")

    def __call__(self, *args):
        self.wait()
        self.pending = self.executor.submit(self.sink, *args)

    def wait(self):
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        try:
            if kind is None:
                self.wait()
        finally:
            self.executor.shutdown(wait=True, cancel_futures=True)


def _in_chunks(total: int, batch: int, layer: LayerInfo, run_chunk) -> int:
    """``run_chunk(begin, end)`` over ``0..total``; out of memory halves the chunk.

    The memory estimate cannot see every allocation (a GPU's, another
    process's), so a refused allocation is retried with half the items
    instead of failing the run. Returns the chunk size that worked.
    """
    begin = 0
    while begin < total:
        end = min(begin + batch, total)
        try:
            run_chunk(begin, end)
        except tf.errors.ResourceExhaustedError as error:
            reason = _tf_reason(error.message)
            if batch == 1:
                raise OutOfMemoryError(
                    f"out of memory computing one item of layer {layer.name!r} ({reason}); feed smaller "
                    "images, or run on a device with more memory") from None
            batch = max(1, (end - begin) // 2)
            logger.warning("out of memory at %d items for %s (%s); going on with %d", end - begin,
                           layer.name, reason, batch)
            continue
        begin = end
    return batch


def reconstruct_units(rebuilt: RebuiltGraph, feed: Feed, layer: LayerInfo, image_ids, units, channels, sink,
                      plan: CropPlan | None = None, memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                      progress=None) -> None:
    """Single-unit reconstructions from several images, a batch of different crops per backward pass.

    Item ``i`` is the reconstruction of the unit at ``units[i]`` ``(y, x)``
    of channel ``channels[i]`` in image ``feed.images[image_ids[i]]``,
    computed on ``plan``'s crop around the unit's receptive field (on the
    whole image when ``plan`` is None; ``units`` is unused for a dense
    layer). ``sink(first, values, offsets)`` receives items ``first,
    first + 1, ...`` in order, on a second thread while the next chunk is
    computed: their reconstructions on their crops, and each crop's corner
    ``(y, x)`` in its image. A chunk the backend has no memory for is
    halved and run again.
    """
    images = feed.images
    image_ids = np.asarray(image_ids, np.int64).reshape(-1)
    units = np.asarray(units, np.int64).reshape(-1, 2)
    channels = np.asarray(channels, np.int64).reshape(-1)
    spatial = len(layer.shape) == 4
    size = plan.size if plan is not None else images.shape[1:3]
    index, grads = rebuilt.target(layer.tensor, feed.input_name, "batched_units")
    batch = chunk_size(rebuilt, feed, layer, tuple(size) + images.shape[3:], memory_budget_mb,
                       limit=len(image_ids))

    def one_chunk(begin, end, deliver):
        ids, yx = image_ids[begin:end], units[begin:end]
        if plan is None:
            offsets = np.zeros_like(yx)
            crops, local = images[ids], yx
        else:
            offsets = plan.offsets(yx)
            crops = np.stack([images[n, oy:oy + size[0], ox:ox + size[1]] for n, (oy, ox) in zip(ids, offsets)])
            local = yx - offsets // np.array(plan.jump)
        rows = np.column_stack([local, channels[begin:end]]) if spatial else channels[begin:end, None]
        deliver(begin, run(rebuilt, grads, {index: rows.astype(np.int32), **feed.with_images(crops)}), offsets)
        if progress is not None:
            progress(end - begin)

    with _Overlapped(sink) as deliver:
        _in_chunks(len(image_ids), batch, layer, lambda begin, end: one_chunk(begin, end, deliver))


def _units_of_every_image(rebuilt, feed, layer, plan, channels, yx, sink, memory_budget_mb, progress):
    """The strongest unit ``yx[n, k]`` of ``channels[k]`` for every image ``n``, on crops.

    ``sink(n, first, values)`` gets whole images, zero outside each crop:
    one delivery per image a chunk touches.
    """
    images = feed.images
    n_images, count = yx.shape[:2]
    image_ids = np.repeat(np.arange(n_images), count)
    positions = np.tile(np.arange(count), n_images)
    height, width = plan.size

    def paste(first, values, offsets):
        ids = image_ids[first:first + len(values)]
        for n in np.unique(ids):
            mine = np.flatnonzero(ids == n)
            whole = np.zeros((len(mine),) + images.shape[1:], np.float32)
            for slot, item in enumerate(mine):
                oy, ox = offsets[item]
                whole[slot, oy:oy + height, ox:ox + width] = values[item]
            sink(int(n), int(positions[first + mine[0]]), whole)

    reconstruct_units(rebuilt, feed, layer, image_ids, yx.reshape(-1, 2), channels[positions], paste, plan=plan,
                      memory_budget_mb=memory_budget_mb, progress=progress)


class CropPlan:
    """Where to cut the crop that holds a unit's whole receptive field."""

    def __init__(self, size, jump, start, image_size):
        self.size = tuple(size)
        self.jump = tuple(jump)
        self.start = tuple(start)
        self.image_size = tuple(image_size)

    def offsets(self, yx: np.ndarray) -> np.ndarray:
        """Crop corner per unit: aligned to the jump, shifted inside the image."""
        jump = np.array(self.jump)
        field_start = yx * jump + np.array(self.start)
        aligned = np.floor_divide(field_start, jump) * jump
        return np.clip(aligned, 0, np.array(self.image_size) - np.array(self.size)).astype(int)


def crop_plan(rebuilt: RebuiltGraph, feed: Feed, layer: LayerInfo) -> CropPlan | None:
    """A crop plan, or None when the whole image must be used."""
    from tf_cnnvis.receptive_field import receptive_field

    placeholder = rebuilt.tensor(feed.input_name)
    if placeholder.shape.rank != 4 or any(d is not None for d in placeholder.shape.as_list()[1:3]):
        return None  # a fixed-size input cannot take crops
    image_size = feed.images.shape[1:3]
    try:
        field = receptive_field(rebuilt.graph, feed.input_name, layer.tensor, tuple(image_size))
    except (ValueError, NotImplementedError) as error:
        logger.debug("no receptive field for %s (%s): reconstructing on whole images", layer.name, error)
        return None
    if field is None:
        return None
    size = []
    for extent, jump, full in zip(field.size, field.jump, image_size):
        # Big enough for the field at any alignment, congruent to the image size.
        need = extent + jump - 1
        crop = need + (full - need) % jump
        size.append(min(crop, full))
    if tuple(size) == tuple(image_size):
        return None
    return CropPlan(size, field.jump, field.start, image_size)
