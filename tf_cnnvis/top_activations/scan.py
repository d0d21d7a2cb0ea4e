"""Scan: stream a dataset through the model and keep each channel's exact top-k.

Only ``channels x k`` scores, positions and images are kept, plus what one
compiled call holds (bounded by ``CALL_BYTES``), so memory does not grow
with the dataset. The forward pass runs with ``strategy.run`` under the
given (or the active) ``tf.distribute`` strategy, so it spreads over
several devices, and over a GPU when one is present. One compiled call
consumes many batches and merges them into the running top-k inside the
graph (``tf.math.top_k``); Python runs once per call, to keep the images
that entered some top-k and drop those that left it.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import time

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import FeedError, OptionError
from tf_cnnvis.layers import LayerInfo

logger = logging.getLogger("tf_cnnvis")


# --------------------------------------------------------------------------- streaming top-k

def empty_top_k(channels: int, k: int):
    """A running top-k before any image: ``scores (C, k)`` -inf, ``index (C, k)`` -1, ``units (C, k, 2)`` 0."""
    return (np.full((channels, k), -np.inf, np.float32), np.full((channels, k), -1, np.int64),
            np.zeros((channels, k, 2), np.int32))


def merge_top_k(scores, index, units, batch_scores, batch_index, batch_units):
    """A running top-k merged with a batch, in TensorFlow ops (eager or inside a function).

    The running top-k is ``scores (C, k)``, dataset ``index (C, k)`` and
    ``units (C, k, 2)``, strongest first; the batch brings ``batch_scores
    (B, C)``, ``batch_index (B,)`` and ``batch_units (B, C, 2)``. NaN scores
    count as -inf and infinite ones as the largest finite float32 values,
    as ``np.nan_to_num`` makes them. Ties go to the lower dataset index
    (fillers, index -1, first), in whatever order the batch comes.

    Returns the new ``(scores, index, units)`` and ``picks (C, k)``: where
    each kept entry stood in the running top-k followed by the batch, so
    ``picks - k`` is its position in the batch where ``picks >= k``.
    """
    k = scores.shape[-1]
    lowest, highest = np.finfo(np.float32).min, np.finfo(np.float32).max
    batch_scores = tf.cast(batch_scores, tf.float32)
    batch_scores = tf.where(tf.math.is_nan(batch_scores), -np.inf,
                            tf.clip_by_value(batch_scores, lowest, highest))
    channels = tf.shape(batch_scores)[1]
    all_scores = tf.concat([scores, tf.transpose(batch_scores)], axis=1)  # (C, k + B)
    batch_index = tf.cast(batch_index, tf.int64)
    all_index = tf.concat([index, tf.broadcast_to(batch_index[None], [channels, tf.shape(batch_index)[0]])], 1)
    all_units = tf.concat([units, tf.transpose(tf.cast(batch_units, tf.int32), [1, 0, 2])], axis=1)
    # top_k keeps the lower position first among equal values: by index first, then by score.
    by_index = tf.argsort(all_index, axis=1, stable=True)
    _, best = tf.math.top_k(tf.gather(all_scores, by_index, batch_dims=1), k)
    picks = tf.gather(by_index, best, batch_dims=1)
    return (tf.gather(all_scores, picks, batch_dims=1), tf.gather(all_index, picks, batch_dims=1),
            tf.gather(all_units, picks, batch_dims=1), picks)


class StreamingTopK:
    """Exact top-k per channel of a stream of ``(image, channel)`` scores.

    Ties are broken toward the earlier image, so the result does not depend
    on how the stream was batched or split across devices. The scan keeps
    the same top-k inside its compiled loop (:func:`merge_top_k`); this is
    that merge one batch at a time, on NumPy arrays.
    """

    def __init__(self, channels: int, k: int):
        self.k = k
        self.scores, self.index, self.units = empty_top_k(channels, k)

    def update(self, scores: np.ndarray, index: np.ndarray, units: np.ndarray):
        """Merge a batch: ``scores (B, C)``, dataset ``index (B,)``, ``units (B, C, 2)``."""
        if scores.shape[0] == 0:
            return
        merged = merge_top_k(self.scores, self.index, self.units, scores, index, units)
        self.scores, self.index, self.units = (value.numpy() for value in merged[:3])


# --------------------------------------------------------------------------- input streams

def image_spec(model, graph, input_name):
    placeholder = graph.get_tensor_by_name(input_name)
    if placeholder.shape.rank is None:
        raise FeedError(f"input {input_name!r} has unknown rank; top_activations needs image batches")
    return placeholder.shape.rank, placeholder.dtype


def _first_component(element, input_name, model):
    """The images of a dataset element that may be ``(x, y)`` or a dict of inputs."""
    if isinstance(element, dict):
        for key, value in element.items():
            if model.input_aliases.get(key, key) == input_name or key == input_name:
                return value
        raise FeedError(f"dataset elements are dicts with keys {sorted(element)}; none names the "
                        f"image input {input_name!r}")
    if isinstance(element, (tuple, list)):
        return element[0]
    return element


def _dataset_of(source, rank: int, dtype, batch_size: int, input_name: str, model, limit):
    """``(index, image)`` batches as a ``tf.data.Dataset``, whatever the source."""
    if isinstance(source, tf.data.Dataset):
        images = source.map(lambda *e: _first_component(e if len(e) > 1 else e[0], input_name, model))
        element_rank = images.element_spec.shape.rank
        if element_rank == rank:
            images = images.unbatch()
        elif element_rank != rank - 1:
            raise FeedError(f"dataset elements have shape {images.element_spec.shape}; the input "
                            f"{input_name!r} takes images of rank {rank - 1} (or batches of rank {rank})")
        if limit is not None:
            images = images.take(limit)

        def numbered(first, batch):  # per batch, not per image: the dataset indices and the cast
            size = tf.shape(batch, out_type=tf.int64)[0]
            return first + size, (first + tf.range(size, dtype=tf.int64), tf.cast(batch, dtype))

        indexed = images.batch(batch_size).scan(tf.constant(0, tf.int64), numbered)
        return indexed.prefetch(tf.data.AUTOTUNE)
    if isinstance(source, np.ndarray) or hasattr(source, "__array_interface__"):
        array = np.asarray(source)
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank:
            raise FeedError(f"the image array has shape {array.shape}; the input {input_name!r} "
                            f"takes batches of rank {rank}")
        if limit is not None:
            array = array[:limit]
        return _array_batches(array, batch_size, dtype)
    if hasattr(source, "__iter__"):
        iterator = iter(source)
        try:
            first = np.asarray(_first_component(next(iterator), input_name, model))
        except StopIteration:
            raise FeedError("the image generator yielded nothing; give at least one image") from None
        shape = first.shape[1:] if first.ndim == rank else first.shape
        batches = _rebatched(first, iterator, rank, batch_size, input_name, model, limit)
        return _from_batches(lambda: batches, shape, dtype)
    raise FeedError(f"cannot stream images from {type(source).__name__}; give a tf.data.Dataset, "
                    "a NumPy array of images or a generator of images or batches")


def _rebatched(first, iterator, rank, batch_size, input_name, model, limit):
    """Regroup a generator's images or batches of any size into ``batch_size`` batches."""
    pending, count, start = [], 0, 0
    items = [first]
    while True:
        for item in items:
            item = np.asarray(_first_component(item, input_name, model))
            pending.extend(item if item.ndim == rank else [item])
        items = []
        while len(pending) >= batch_size or (pending and limit is not None and count + len(pending) >= limit):
            take = pending[:batch_size]
            if limit is not None:
                take = take[:limit - count]
            del pending[:len(take)]
            yield np.arange(start, start + len(take)), np.stack(take)
            start += len(take)
            count += len(take)
            if limit is not None and count >= limit:
                return
        try:
            items = [next(iterator)]
        except StopIteration:
            if pending:
                yield np.arange(start, start + len(pending)), np.stack(pending)
            return


def _array_batches(array: np.ndarray, batch_size: int, dtype):
    """Batches sliced from an array in memory, one NumPy call per batch (the array is not copied whole)."""
    size, numpy_dtype = len(array), dtype.as_numpy_dtype

    def batch(begin):
        return np.ascontiguousarray(array[begin:begin + batch_size], numpy_dtype)

    def fetch(begin):
        images = tf.numpy_function(batch, [begin], dtype, stateful=False)
        images.set_shape((None,) + array.shape[1:])
        return tf.range(begin, tf.minimum(begin + batch_size, size)), images

    return tf.data.Dataset.range(0, size, batch_size).map(fetch).prefetch(tf.data.AUTOTUNE)


def _from_batches(make, shape, dtype):
    signature = (tf.TensorSpec([None], tf.int64), tf.TensorSpec((None,) + tuple(shape), dtype))
    dataset = tf.data.Dataset.from_generator(
        lambda: ((index.astype(np.int64), np.asarray(batch, dtype.as_numpy_dtype)) for index, batch in make()),
        output_signature=signature)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- the scan

# One compiled call scans batches until it holds about this many bytes of
# images and per-channel maxima, then merges them into the running top-k at
# once: Python and the merge run once per call, not once per batch.
CALL_BYTES = 8 * 2**20
MAX_STEPS_PER_CALL = 1024
# Marks the check that a layer gives one map per image, in the error it raises.
_NOT_PER_IMAGE = "tf_cnnvis: not one map per image, layer"


def _forward_step(model, input_name: str, layers: list[LayerInfo], fixed: dict, columns: list, jit_compile=False):
    """A TF2 function: images -> per layer ``(max over positions (B, C), argmax (B, C, 2))``.

    ``columns`` holds each layer's selected channels (None: all of them).
    """
    def imported():
        input_map = {name: tf.constant(value) for name, value in fixed.items()}
        tf.compat.v1.import_graph_def(model.graph_def, input_map=input_map or None, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    graph = wrapped.graph
    forward = wrapped.prune(feeds=[graph.get_tensor_by_name(input_name)],
                            fetches=[graph.get_tensor_by_name(layer.tensor) for layer in layers])

    def step(images):
        results = []
        for value, selection in zip(forward(images), columns):
            if value.shape.rank == 4:
                shape = tf.shape(value)
                flat = tf.reshape(value, [shape[0], shape[1] * shape[2], shape[3]])
                if selection is not None:
                    flat = tf.gather(flat, selection, axis=2)
                best = tf.reduce_max(flat, axis=1)
                where = tf.argmax(flat, axis=1, output_type=tf.int32)
                units = tf.stack([where // shape[2], where % shape[2]], axis=-1)
            else:
                best = value if selection is None else tf.gather(value, selection, axis=1)
                units = tf.zeros(tf.concat([tf.shape(best), [2]], 0), tf.int32)
            results.append((tf.cast(best, tf.float32), units))
        return results

    return tf.function(step, jit_compile=True) if jit_compile else step


def _scan_calls(step, strategy, image_dtype, image_shape):
    """A TF2 function that scans up to ``steps`` batches of an iterator in one call.

    ``scan_many(iterator, steps, state) -> (state, images scanned, exhausted,
    entrant index, entrant images)``. ``state`` holds each layer's running
    top-k. The forward step runs under ``strategy.run``; its per-channel
    maxima and the batch's images are gathered from the replicas and held
    until the call ends, when one merge per layer updates the top-k.
    Entrants are the images that entered some top-k in that merge, with
    their dataset indices; nothing else goes back to Python.
    """
    def local(value):
        parts = strategy.experimental_local_results(value)
        return parts[0] if len(parts) == 1 else tf.concat(parts, axis=0)

    def growing(dtype, shape):
        return tf.TensorArray(dtype, size=0, dynamic_size=True, infer_shape=False, element_shape=shape)

    def merge(arrays, state):
        """Every batch of the call merged into the running top-k, and the images that entered it."""
        indices, images, *maxima = (array.concat() for array in arrays)
        size = tf.shape(indices)[0]
        merged, hits = [], tf.zeros([size], tf.int32)
        for number, (scores, top_index, units) in enumerate(state):
            best, where = maxima[2 * number], maxima[2 * number + 1]
            check = tf.debugging.Assert(tf.equal(tf.shape(best)[0], size),
                                        [f"{_NOT_PER_IMAGE} {number}:", tf.shape(best)[0], size])
            with tf.control_dependencies([check]):
                *top, picks = merge_top_k(scores, top_index, units, best, indices, where)
            merged.append(tuple(top))
            k = scores.shape[-1]
            entered = tf.boolean_mask(picks, picks >= k) - k
            hits += tf.scatter_nd(entered[:, None], tf.ones_like(entered), [size])
        entered = hits > 0
        return (tuple(merged), tf.cast(size, tf.int64), tf.boolean_mask(indices, entered),
                tf.boolean_mask(images, entered))

    @tf.function
    def scan_many(iterator, steps, state):
        arrays = [growing(tf.int64, [None]), growing(image_dtype, [None, *image_shape])]
        for scores, _, _ in state:
            arrays += [growing(tf.float32, [None, scores.shape[0]]), growing(tf.int32, [None, scores.shape[0], 2])]

        def more(written, exhausted, arrays):
            return tf.logical_and(written < steps, tf.logical_not(exhausted))

        def one_batch(written, exhausted, arrays):
            optional = iterator.get_next_as_optional()
            found = optional.has_value()

            def keep():
                index, images = optional.get_value()
                outputs = strategy.run(step, args=(images,))
                values = [local(index), local(images)] + [local(part) for pair in outputs for part in pair]
                return [array.write(written, value) for array, value in zip(arrays, values)]

            arrays = tf.cond(found, keep, lambda: arrays)
            return written + tf.cast(found, tf.int32), tf.logical_not(found), arrays

        written, exhausted, arrays = tf.while_loop(more, one_batch, [tf.constant(0), tf.constant(False), arrays])
        nothing = (state, tf.constant(0, tf.int64), tf.zeros([0], tf.int64),
                   tf.zeros([0, *(1 if d is None else d for d in image_shape)], image_dtype))
        state, count, kept_index, kept_images = tf.cond(written > 0, lambda: merge(arrays, state), lambda: nothing)
        return state, count, exhausted, kept_index, kept_images

    return scan_many


_scans: dict[tuple, object] = {}


def _distributed_scan(frozen, input_name, layers, fixed, columns, strategy, jit_compile, images):
    """The compiled scan, traced once per model, layers, channels, strategy and image shape.

    ``images`` is the dataset's ``TensorSpec`` of an image batch. Kept (one
    entry) so that repeated scans of one model do not trace and compile
    again.
    """
    shape = tuple(images.shape[1:])
    key = (frozen.fingerprint, input_name, tuple(layer.tensor for layer in layers),
           tuple((name, value.tobytes()) for name, value in sorted(fixed.items())),
           tuple(None if c is None else c.tobytes() for c in columns), id(strategy), bool(jit_compile),
           images.dtype, shape)
    if key not in _scans:
        step = _forward_step(frozen, input_name, layers, fixed, columns, jit_compile)
        _scans.clear()
        _scans[key] = (strategy, _scan_calls(step, strategy, images.dtype, shape))
    return _scans[key][1]


def _steps_per_call(batch_size: int, image_spec, channels: int) -> int:
    """Batches per compiled call: as many as keep what a call holds within ``CALL_BYTES``.

    Per image a call holds the image, its dataset index, and a score and a
    unit for each of ``channels`` selected channels.
    """
    shape = image_spec.shape[1:]
    if not shape.is_fully_defined():
        return 1
    per_image = max(1, shape.num_elements()) * image_spec.dtype.size + 8 + channels * 12
    return int(max(1, min(MAX_STEPS_PER_CALL, CALL_BYTES // (batch_size * per_image))))


@dataclasses.dataclass
class Scanned:
    """What a scan kept: per layer the running top-k, and the images they need (dataset index -> image)."""

    tops: dict
    images: dict
    count: int


def scan_dataset(frozen, input_name: str, layers: list[LayerInfo], selected: dict, fixed: dict, dataset, *,
                 rank: int, dtype, k: int, batch_size: int, strategy, limit, jit_compile,
                 log_every_s) -> Scanned:
    """Stream ``dataset`` through the model; keep the top-k of each selected channel and their images.

    ``selected`` maps each layer's name to its channels; ``fixed`` holds the
    values of the model's other inputs; ``rank`` and ``dtype`` are the
    image input's (:func:`image_spec`). One compiled call scans many
    batches, so Python runs once per call, not once per batch; between
    calls only the images some top-k still needs are kept.
    """
    columns = [None if np.array_equal(selected[layer.name], np.arange(layer.channels))
               else np.asarray(selected[layer.name], np.int32) for layer in layers]
    began = time.perf_counter()
    with strategy.scope():
        data = _dataset_of(dataset, rank, dtype, batch_size, input_name, frozen, limit)
        images_spec = data.element_spec[1]
        scan_many = _distributed_scan(frozen, input_name, layers, fixed, columns, strategy, jit_compile,
                                      images_spec)
        iterator = iter(strategy.experimental_distribute_dataset(data))
    channels = sum(len(selected[layer.name]) for layer in layers)
    steps = _steps_per_call(batch_size, images_spec, channels)
    state = tuple(tuple(tf.constant(part) for part in empty_top_k(len(selected[layer.name]), k)) for layer in layers)
    pool: dict[int, np.ndarray] = {}
    count, last_log, exhausted = 0, began, False
    while not exhausted:
        try:
            state, scanned, exhausted, new_index, new_images = scan_many(iterator, tf.constant(steps), state)
        except tf.errors.InvalidArgumentError as error:
            _raise_if_not_per_image(error, layers)
            raise
        count += int(scanned)
        exhausted = bool(exhausted)
        needed = set(np.concatenate([top[1].numpy().ravel() for top in state]).tolist())
        new_index = new_index.numpy()
        if new_index.size:
            new_images = new_images.numpy()
            for slot, dataset_index in enumerate(new_index.tolist()):
                if dataset_index in needed:
                    pool[dataset_index] = new_images[slot].copy()
            if not images_spec.shape[1:].is_fully_defined():
                steps = _steps_per_call(batch_size, tf.TensorSpec((None,) + new_images.shape[1:], dtype), channels)
            del new_images
        for stale in set(pool) - needed:
            del pool[stale]
        if time.perf_counter() - last_log > log_every_s:
            last_log = time.perf_counter()
            logger.info("top activations: %d images scanned (%.0f images/s)", count,
                        count / (last_log - began))
    if count == 0:
        raise FeedError("the dataset holds no images; give at least one")
    logger.info("top activations: scanned %d images in %.2f s", count, time.perf_counter() - began)
    tops = {}
    for layer, (scores, index, units) in zip(layers, state):
        top = StreamingTopK(len(selected[layer.name]), k)
        top.scores, top.index, top.units = scores.numpy(), index.numpy(), units.numpy()
        tops[layer.name] = top
    return Scanned(tops=tops, images=pool, count=count)


def _raise_if_not_per_image(error, layers):
    """The scan's check that a layer gives one map per image failed: say which layer and what to do."""
    found = re.search(re.escape(_NOT_PER_IMAGE) + r" (\d+):\] \[(\d+)\] \[(\d+)\]", error.message)
    if found is None:
        return
    layer, items, images = layers[int(found.group(1))], found.group(2), found.group(3)
    raise OptionError(
        f"layer {layer.name!r} ({layer.op_type} {layer.tensor}) gives {items} items "
        f"for {images} images, so it is not one map per image (an op "
        "inside a dilated convolution?); choose the layer's output by its name") from None
