"""Scan: stream a dataset through the model and keep each channel's exact top-k.

Only ``channels x k`` scores, positions and images are ever held, so memory
does not grow with the dataset. The scan is a TF2 function run with
``strategy.run`` under the given (or the active) ``tf.distribute`` strategy,
so it spreads over several devices, and over a GPU when one is present.
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import FeedError, OptionError
from tf_cnnvis.layers import LayerInfo

logger = logging.getLogger("tf_cnnvis")


# --------------------------------------------------------------------------- streaming top-k

class StreamingTopK:
    """Exact top-k per channel of a stream of ``(image, channel)`` scores.

    Ties are broken toward the earlier image, so the result does not depend
    on how the stream was batched or split across devices.
    """

    def __init__(self, channels: int, k: int):
        self.k = k
        self.scores = np.full((channels, k), -np.inf, np.float32)
        self.index = np.full((channels, k), -1, np.int64)
        self.units = np.zeros((channels, k, 2), np.int32)

    def update(self, scores: np.ndarray, index: np.ndarray, units: np.ndarray):
        """Merge a batch: ``scores (B, C)``, dataset ``index (B,)``, ``units (B, C, 2)``."""
        if scores.shape[0] == 0:
            return
        scores = np.nan_to_num(scores.astype(np.float32).T, nan=-np.inf)  # (C, B)
        all_scores = np.concatenate([self.scores, scores], axis=1)
        all_index = np.concatenate([self.index, np.broadcast_to(index, scores.shape)], axis=1)
        all_units = np.concatenate([self.units, np.swapaxes(units, 0, 1)], axis=1)
        order = np.lexsort((all_index, -all_scores), axis=-1)[:, :self.k]
        self.scores = np.take_along_axis(all_scores, order, axis=1)
        self.index = np.take_along_axis(all_index, order, axis=1)
        self.units = np.take_along_axis(all_units, order[..., None], axis=1)


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
        indexed = images.enumerate().map(lambda i, x: (i, tf.cast(x, dtype)))
        return indexed.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    if isinstance(source, np.ndarray) or hasattr(source, "__array_interface__"):
        array = np.asarray(source)
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank:
            raise FeedError(f"the image array has shape {array.shape}; the input {input_name!r} "
                            f"takes batches of rank {rank}")
        if limit is not None:
            array = array[:limit]

        def batches():
            for begin in range(0, len(array), batch_size):
                yield np.arange(begin, min(begin + batch_size, len(array))), array[begin:begin + batch_size]

        return _from_batches(batches, array.shape[1:], dtype)
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


def _from_batches(make, shape, dtype):
    signature = (tf.TensorSpec([None], tf.int64), tf.TensorSpec((None,) + tuple(shape), dtype))
    dataset = tf.data.Dataset.from_generator(
        lambda: ((index.astype(np.int64), np.asarray(batch, dtype.as_numpy_dtype)) for index, batch in make()),
        output_signature=signature)
    return dataset.prefetch(tf.data.AUTOTUNE)


# --------------------------------------------------------------------------- the scan

def _scan_function(model, input_name: str, layers: list[LayerInfo], fixed: dict, jit_compile=False):
    """A TF2 function: images -> per layer ``(max over positions (B, C), argmax (B, C, 2))``."""
    def imported():
        input_map = {name: tf.constant(value) for name, value in fixed.items()}
        tf.compat.v1.import_graph_def(model.graph_def, input_map=input_map or None, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    graph = wrapped.graph
    forward = wrapped.prune(feeds=[graph.get_tensor_by_name(input_name)],
                            fetches=[graph.get_tensor_by_name(layer.tensor) for layer in layers])

    def step(index, images):
        outputs = forward(images)
        results = []
        for value in outputs:
            if value.shape.rank == 4:
                shape = tf.shape(value)
                flat = tf.reshape(value, [shape[0], shape[1] * shape[2], shape[3]])
                best = tf.reduce_max(flat, axis=1)
                where = tf.argmax(flat, axis=1, output_type=tf.int32)
                units = tf.stack([where // shape[2], where % shape[2]], axis=-1)
            else:
                best = value
                units = tf.zeros(tf.concat([tf.shape(value), [2]], 0), tf.int32)
            results.append((best, units))
        return index, results

    return tf.function(step, jit_compile=jit_compile) if jit_compile else step


_scans: dict[tuple, object] = {}


def _distributed_scan(frozen, input_name, layers, fixed, strategy, jit_compile):
    """The scan step run by ``strategy.run``, traced once per model, layers and strategy.

    Kept (one entry) so that repeated scans of one model do not trace and
    compile again.
    """
    key = (frozen.fingerprint, input_name, tuple(layer.tensor for layer in layers),
           tuple((name, value.tobytes()) for name, value in sorted(fixed.items())), id(strategy),
           bool(jit_compile))
    if key not in _scans:
        step = _scan_function(frozen, input_name, layers, fixed, jit_compile)
        _scans.clear()
        _scans[key] = (strategy, tf.function(lambda index, images: strategy.run(step, args=(index, images))))
    return _scans[key][1]


def _local(strategy, value) -> np.ndarray:
    parts = [np.asarray(part) for part in strategy.experimental_local_results(value)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


@dataclasses.dataclass
class Scanned:
    """What a scan kept: per layer the running top-k, and the images they need (dataset index -> image)."""

    tops: dict
    images: dict
    count: int


def scan(frozen, input_name: str, layers: list[LayerInfo], selected: dict, fixed: dict, dataset, *,
         rank: int, dtype, k: int, batch_size: int, strategy, limit, jit_compile, log_every_s) -> Scanned:
    """Stream ``dataset`` through the model; keep the top-k of each selected channel and their images.

    ``selected`` maps each layer's name to its channels; ``fixed`` holds the
    values of the model's other inputs; ``rank`` and ``dtype`` are the
    image input's (:func:`image_spec`).
    """
    began = time.perf_counter()
    with strategy.scope():
        distributed = _distributed_scan(frozen, input_name, layers, fixed, strategy, jit_compile)
        data = _dataset_of(dataset, rank, dtype, batch_size, input_name, frozen, limit)
        stream = strategy.experimental_distribute_dataset(data)
    tops = {layer.name: StreamingTopK(len(selected[layer.name]), k) for layer in layers}
    pool: dict[int, np.ndarray] = {}
    count, last_log = 0, began
    for index, images in stream:
        kept_index, outputs = distributed(index, images)
        batch_index = _local(strategy, kept_index)
        for layer, (best, units) in zip(layers, outputs):
            columns = selected[layer.name]
            best = _local(strategy, best)
            if best.shape[0] != len(batch_index):
                raise OptionError(
                    f"layer {layer.name!r} ({layer.op_type} {layer.tensor}) gives {best.shape[0]} items "
                    f"for a batch of {len(batch_index)} images, so it is not one map per image (an op "
                    "inside a dilated convolution?); choose the layer's output by its name")
            tops[layer.name].update(best[:, columns], batch_index, _local(strategy, units)[:, columns])
        needed = set(np.concatenate([top.index.ravel() for top in tops.values()]).tolist())
        new = [i for i, dataset_index in enumerate(batch_index.tolist())
               if dataset_index in needed and dataset_index not in pool]
        if new:
            batch_images = _local(strategy, images)
            for i in new:
                pool[int(batch_index[i])] = batch_images[i].copy()
        for stale in set(pool) - needed:
            del pool[stale]
        count += len(batch_index)
        if time.perf_counter() - last_log > log_every_s:
            last_log = time.perf_counter()
            logger.info("top activations: %d images scanned (%.0f images/s)", count,
                        count / (last_log - began))
    if count == 0:
        raise FeedError("the dataset holds no images; give at least one")
    logger.info("top activations: scanned %d images in %.2f s", count, time.perf_counter() - began)
    return Scanned(tops=tops, images=pool, count=count)
