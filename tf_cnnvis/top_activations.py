"""Each channel's top images in a dataset, Zeiler-Fergus style, at dataset scale.

The scan streams a ``tf.data.Dataset``, a NumPy array or a generator in
batches through the frozen model and keeps, for every channel of the chosen
layers, the ``k`` images whose strongest unit of that channel is highest.
Only ``channels x k`` scores, positions and images are ever held, so memory
does not grow with the dataset. The scan is a TF2 function run with
``strategy.run`` under the given (or the active) ``tf.distribute`` strategy,
so it spreads over several devices, and over a GPU when one is present.

For each kept (channel, image) pair the strongest unit's receptive field is
read off the graph (:mod:`tf_cnnvis.receptive_field`), and its deconvnet
reconstruction is computed on a crop around that field (exact, see
:mod:`tf_cnnvis.compute`). Written per channel: the top-k field crops, their
reconstructions, and the full images with the field boxed; an HTML page per
layer; and an HDF5 file from which :func:`render_top_activations` redraws
everything without recomputing.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import math
import os
import time

import numpy as np
import tensorflow as tf

from tf_cnnvis import compute
from tf_cnnvis.errors import FeedError, OptionError
from tf_cnnvis.feeds import Feed
from tf_cnnvis.layers import LayerInfo, select_layers
from tf_cnnvis.load import load_model
from tf_cnnvis.options import DEFAULT_MEMORY_BUDGET_MB, check_channels, check_memory_budget, check_method
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.utils import convert_into_grid, image_normalization
from tf_cnnvis.write import encode_png, ensure_folder, inside, safe_names, write_atomic

logger = logging.getLogger("tf_cnnvis")

H5_NAME = "top_activations.h5"
_BOX_COLOR = (255, 40, 40)
_OUTSIDE = 128  # gray for the part of a receptive field that lies outside the image
_MIN_TILE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels


# --------------------------------------------------------------------------- results

@dataclasses.dataclass
class LayerTops:
    """The top-k images of each channel of one layer.

    Rows follow ``channels``; column ``r`` is the r-th strongest image.
    Missing entries (a dataset smaller than ``k``) have score ``-inf`` and
    image index ``-1``.

    Attributes:
        scores: ``(C, k)`` the strongest unit's value in each image.
        image_index: ``(C, k)`` position of the image in the dataset.
        units: ``(C, k, 2)`` ``(y, x)`` of that unit in the layer's map.
        boxes: ``(C, k, 4)`` its receptive field ``(y0, x0, y1, x1)`` in
            input pixels, not clipped to the image (None for dense layers).
        reconstructions: ``(C, k, fh, fw, c)`` the unit's reconstruction
            inside its box, or None when not computed.
        field_size / field_jump / field_start: the layer's receptive field.
    """

    name: str
    tensor: str
    channels: np.ndarray
    scores: np.ndarray
    image_index: np.ndarray
    units: np.ndarray
    boxes: np.ndarray | None = None
    reconstructions: np.ndarray | None = None
    field_size: tuple | None = None
    field_jump: tuple | None = None
    field_start: tuple | None = None


@dataclasses.dataclass
class TopActivations:
    """What :func:`top_activations` found and wrote. Always truthy.

    ``images`` holds every image that is in some channel's top-k, as shown
    (uint8), and ``image_index`` their positions in the dataset.
    """

    layers: dict = dataclasses.field(default_factory=dict)
    images: np.ndarray | None = None
    image_index: np.ndarray | None = None
    count: int = 0
    k: int = 9
    method: str = "deconvnet"
    replicas: int = 1
    paths: list = dataclasses.field(default_factory=list)
    h5_path: str | None = None

    def __bool__(self):
        return True

    def __getitem__(self, layer_name) -> LayerTops:
        return self.layers[layer_name]

    def image(self, dataset_index: int) -> np.ndarray:
        """The shown (uint8) version of the dataset's image ``dataset_index``."""
        slot = np.flatnonzero(self.image_index == dataset_index)
        if slot.size == 0:
            raise OptionError(f"image {dataset_index} is in no channel's top-k; kept images are "
                              f"{self.image_index.tolist()[:20]}...")
        return self.images[slot[0]]


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

def _image_spec(model, graph, input_name):
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


def top_activations(model, dataset, layers, k=9, *, batch_size=64, channels=None, input_tensor=None,
                    feed_dict=None, method="deconvnet", reconstruct=True, deprocess=None,
                    path_outdir="./Output", strategy=None, limit=None,
                    memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB, jit_compile=False,
                    log_every_s=10.0, trust_model_code=False) -> TopActivations:
    """Find each channel's ``k`` strongest images in ``dataset`` and draw them.

    Args:
        model: a Keras model, graph, session, or a path (as the entry functions).
        dataset: the model's input images (already preprocessed) as a
            ``tf.data.Dataset`` (of images, ``(images, labels)`` or dicts;
            batched or not), a NumPy array ``(N, H, W, C)``, or a generator
            of images or batches. All images must have one size.
        layers: which layers, as for the entry functions.
        k: images kept per channel.
        batch_size: images per step (the global batch under a strategy).
        channels: a subset of channel indices for every layer (default all).
        input_tensor: which input takes the images, when the model has several.
        feed_dict: values for the model's other inputs, held fixed.
        method: how reconstructions are computed (default ``'deconvnet'``).
        reconstruct: False skips the reconstructions (scan and crops only).
        deprocess: maps a batch of model inputs to RGB or gray in [0, 255]
            for display (e.g. :func:`tf_cnnvis.models.vgg16_deprocess`);
            default: min-max scaling of each image.
        path_outdir: where the PNGs, HTML pages and ``top_activations.h5``
            go; None writes nothing.
        strategy: a ``tf.distribute`` strategy to scan under; default the
            active one (``tf.distribute.get_strategy()``).
        limit: scan only the first ``limit`` images.
        jit_compile: compile the scan with XLA (as Keras does for ``predict``).
        trust_model_code: allow a model file that holds code (a Keras
            ``Lambda``, file or Python ops); refused by default.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise OptionError(f"k={k!r} must be an integer >= 1")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise OptionError(f"batch_size={batch_size!r} must be an integer >= 1")
    check_method(method)
    check_channels(channels)
    check_memory_budget(memory_budget_mb)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1):
        raise OptionError(f"limit={limit!r} must be None or an integer >= 1")
    frozen = load_model(model, trust_model_code=trust_model_code)
    # One imported graph serves the scan and the reconstructions: the forward
    # pass is the same whatever the backward rules, and a second import would
    # hold a second copy of the weights.
    plain = rebuild(frozen, method if reconstruct else "gradient")
    chosen = select_layers(plain.graph, frozen, layers)
    for layer in chosen:
        if layer.channels is None:
            raise OptionError(f"layer {layer.name!r} has output shape {layer.shape}; top activations "
                              "need a layer of shape (N, H, W, C) or (N, C)")
    input_name, fixed = _inputs(frozen, plain.graph, input_tensor, feed_dict)
    rank, dtype = _image_spec(frozen, plain.graph, input_name)
    selected = {layer.name: _channel_selection(layer, channels) for layer in chosen}
    strategy = strategy or tf.distribute.get_strategy()

    began = time.perf_counter()
    with strategy.scope():
        distributed = _distributed_scan(frozen, input_name, chosen, fixed, strategy, jit_compile)
        data = _dataset_of(dataset, rank, dtype, batch_size, input_name, frozen, limit)
        stream = strategy.experimental_distribute_dataset(data)
    tops = {layer.name: StreamingTopK(len(selected[layer.name]), k) for layer in chosen}
    pool: dict[int, np.ndarray] = {}
    count, last_log = 0, began
    for index, images in stream:
        kept_index, outputs = distributed(index, images)
        batch_index = _local(strategy, kept_index)
        for layer, (best, units) in zip(chosen, outputs):
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

    order = sorted(pool)
    raw = np.stack([pool[i] for i in order]) if order else np.zeros((0,), np.float32)
    result = TopActivations(images=_display(raw, deprocess), image_index=np.array(order, np.int64),
                            count=count, k=k, method=method, replicas=strategy.num_replicas_in_sync)
    slot_of = {dataset_index: slot for slot, dataset_index in enumerate(order)}
    rebuilt = plain if reconstruct else None
    for layer in chosen:
        top = tops[layer.name]
        tops_of_layer = LayerTops(name=layer.name, tensor=layer.tensor, channels=selected[layer.name],
                                  scores=top.scores, image_index=top.index, units=top.units)
        _add_fields(tops_of_layer, plain, input_name, layer, raw.shape[1:3] if raw.ndim == 4 else None)
        if rebuilt is not None and raw.ndim == 4:
            tops_of_layer.reconstructions = _reconstruct(rebuilt, input_name, fixed, layer, tops_of_layer,
                                                         raw, slot_of, memory_budget_mb)
        result.layers[layer.name] = tops_of_layer
    if path_outdir is not None:
        ensure_folder(path_outdir, "output folder")
        result.h5_path = save_top_activations(result, os.path.join(path_outdir, H5_NAME))
        result.paths.append(result.h5_path)
        result.paths.extend(render_top_activations(result, path_outdir))
    return result


def _inputs(frozen, graph, input_tensor, feed_dict):
    """The image input's tensor name and the fixed values of the other inputs."""
    from tf_cnnvis.feeds import resolve_key

    fixed = {}
    for key, value in (feed_dict or {}).items():
        name = resolve_key(frozen, graph, key)
        fixed[name] = np.asarray(value, graph.get_tensor_by_name(name).dtype.as_numpy_dtype)
    if input_tensor is not None:
        return resolve_key(frozen, graph, input_tensor), fixed
    free = [name for name in frozen.inputs if name not in fixed
            and graph.get_tensor_by_name(name).op.type == "Placeholder"]
    if len(free) != 1:
        raise FeedError(f"cannot tell which input holds the images among {', '.join(frozen.inputs)}; "
                        "pass input_tensor= (and feed_dict= for the others)")
    return free[0], fixed


def _channel_selection(layer: LayerInfo, channels) -> np.ndarray:
    if channels is None:
        return np.arange(layer.channels)
    return np.asarray(check_channels(channels, layer.channels, layer.name), np.int64)


def _display(raw: np.ndarray, deprocess) -> np.ndarray:
    """uint8 versions of the kept model inputs, as a person should see them."""
    if raw.ndim != 4:
        return np.zeros((0, 1, 1, 1), np.uint8)
    if deprocess is None:
        return np.stack([image_normalization(image) for image in raw])
    shown = np.asarray(deprocess(raw), np.float64)
    if shown.shape[:3] != raw.shape[:3] or shown.ndim != 4 or shown.shape[-1] not in (1, 3):
        raise OptionError(f"deprocess returned shape {shown.shape} for inputs of shape {raw.shape}; "
                          "it must return (N, H, W, 1 or 3) images in [0, 255]")
    return np.clip(np.round(shown), 0, 255).astype(np.uint8)


def _add_fields(tops: LayerTops, plain, input_name, layer, image_size):
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


def _reconstruct(rebuilt, input_name, fixed, layer, tops: LayerTops, raw, slot_of, memory_budget_mb):
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
            out[c, r] = _cut(grads[item], y0, x0, size, fill=0.0)
    return out


def _cut(image: np.ndarray, y0: int, x0: int, size, fill) -> np.ndarray:
    """``image[y0:y0+h, x0:x0+w]`` with ``fill`` where the window leaves the image."""
    height, width = size
    out = np.full((height, width) + image.shape[2:], fill, image.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + height, image.shape[0]), min(x0 + width, image.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out


# --------------------------------------------------------------------------- saving and drawing

def save_top_activations(result: TopActivations, path: str) -> str:
    """Write ``result`` to an HDF5 file (atomically) that :func:`load_top_activations` reads."""
    import h5py

    folder = os.path.dirname(os.path.abspath(path))
    temporary = os.path.join(folder, f".tmp-{os.getpid()}-{os.path.basename(path)}")
    with h5py.File(temporary, "w") as store:
        store.attrs.update(count=result.count, k=result.k, method=result.method, replicas=result.replicas)
        store.create_dataset("images", data=result.images)
        store.create_dataset("image_index", data=result.image_index)
        folders = safe_names(list(result.layers))
        for name, tops in result.layers.items():
            group = store.create_group(f"layers/{folders[name]}")
            group.attrs.update(name=name, tensor=tops.tensor)
            for field in ("field_size", "field_jump", "field_start"):
                if getattr(tops, field) is not None:
                    group.attrs[field] = np.array(getattr(tops, field))
            for key in ("channels", "scores", "image_index", "units", "boxes", "reconstructions"):
                value = getattr(tops, key)
                if value is not None:
                    group.create_dataset(key, data=value, chunks=True if value.ndim > 3 else None)
    os.replace(temporary, path)
    return path


def load_top_activations(path: str) -> TopActivations:
    """Read a result saved by :func:`save_top_activations`."""
    import h5py

    if not os.path.isfile(path):
        raise OptionError(f"{path!r} is not a file; give the {H5_NAME} written by top_activations")
    with h5py.File(path, "r") as store:
        result = TopActivations(images=store["images"][()], image_index=store["image_index"][()],
                                count=int(store.attrs["count"]), k=int(store.attrs["k"]),
                                method=str(store.attrs["method"]), replicas=int(store.attrs["replicas"]),
                                h5_path=path)
        for group in store["layers"].values():
            arrays = {key: group[key][()] for key in group}
            fields = {field: tuple(int(v) for v in group.attrs[field]) if field in group.attrs else None
                      for field in ("field_size", "field_jump", "field_start")}
            result.layers[str(group.attrs["name"])] = LayerTops(
                name=str(group.attrs["name"]), tensor=str(group.attrs["tensor"]), **arrays, **fields)
    return result


def render_top_activations(result, path_outdir: str) -> list[str]:
    """Draw PNGs and HTML pages for a result (or the path of its .h5 file)."""
    if isinstance(result, (str, os.PathLike)):
        result = load_top_activations(os.fspath(result))
    ensure_folder(path_outdir, "output folder")
    folders = safe_names(list(result.layers))
    slot_of = {int(index): slot for slot, index in enumerate(result.image_index)}
    paths = []
    for name, tops in result.layers.items():
        layer_dir = (folders[name], "top_activations")
        rows = []
        for row, channel in enumerate(tops.channels):
            pictures = _channel_pictures(result, tops, row, slot_of)
            files = {}
            for what, picture in pictures.items():
                path = inside(path_outdir, *layer_dir, f"channel_{channel:04d}", f"{what}.png")
                paths.append(write_atomic(path, encode_png(picture)))
                files[what] = f"channel_{channel:04d}/{what}.png"
            rows.append((int(channel), files, tops.scores[row], tops.image_index[row]))
        page = inside(path_outdir, *layer_dir, "index.html")
        paths.append(write_atomic(page, _layer_page(name, tops, result, rows).encode("utf-8")))
    index = inside(path_outdir, "top_activations.html")
    links = "".join(f'<li><a href="{html.escape(folders[name])}/top_activations/index.html">'
                    f"{html.escape(name)}</a> ({len(tops.channels)} channels)</li>"
                    for name, tops in result.layers.items())
    paths.append(write_atomic(index, _page("Top activations", f"<p>{result.count} images scanned, top "
                                           f"{result.k} per channel.</p><ul>{links}</ul>").encode("utf-8")))
    return paths


def _zoom_of(size) -> int:
    return max(1, math.ceil(_MIN_TILE / max(size)))


def _enlarge(picture: np.ndarray, zoom: int) -> np.ndarray:
    return picture if zoom == 1 else picture.repeat(zoom, axis=0).repeat(zoom, axis=1)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _channel_pictures(result, tops: LayerTops, row: int, slot_of) -> dict[str, np.ndarray]:
    """uint8 grids: field crops, their reconstructions, full images with the field boxed."""
    filled = [r for r in range(tops.scores.shape[1]) if tops.image_index[row, r] >= 0]
    images = [result.images[slot_of[int(tops.image_index[row, r])]] for r in filled]
    if not images:
        return {}
    height, width = images[0].shape[:2]
    size = tuple(tops.field_size) if tops.boxes is not None else (height, width)
    crop_zoom, full_zoom = _zoom_of(size), _zoom_of((height, width))
    crops, boxed, recons = [], [], []
    for r, image in zip(filled, images):
        if tops.boxes is not None:
            y0, x0, y1, x1 = (int(v) for v in tops.boxes[row, r])
        else:
            y0, x0, y1, x1 = 0, 0, height, width
        crops.append(_enlarge(_cut(image, y0, x0, size, fill=_OUTSIDE), crop_zoom))
        boxed.append(_draw_box(_enlarge(_as_rgb(image), full_zoom), (y0, x0, y1, x1), full_zoom))
        if tops.reconstructions is not None:
            inside_mask = _cut(np.ones((height, width, 1), bool), y0, x0, size, fill=False)
            recons.append(_enlarge(_show_reconstruction(tops.reconstructions[row, r], inside_mask), crop_zoom))
    pictures = {"crops": convert_into_grid(np.stack(crops)), "images": convert_into_grid(np.stack(boxed))}
    if recons:
        pictures["reconstructions"] = convert_into_grid(np.stack(recons))
    return pictures


def _show_reconstruction(values: np.ndarray, inside_mask: np.ndarray) -> np.ndarray:
    """Min-max scale the part of a reconstruction inside the image; gray outside."""
    values = values.astype(np.float64)
    mask = np.broadcast_to(inside_mask, values.shape)
    shown = np.full(values.shape, _OUTSIDE, np.uint8)
    if mask.any():
        shown[mask] = image_normalization(values[mask])
    return shown


def _draw_box(image: np.ndarray, box, zoom: int) -> np.ndarray:
    """The (enlarged) image with the clipped box outlined, 1 or 2 pixels wide."""
    image = image.copy()
    height, width = image.shape[:2]
    y0, x0, y1, x1 = (v * zoom for v in box)
    y0, x0 = max(y0, 0), max(x0, 0)
    y1, x1 = min(y1, height), min(x1, width)
    if y1 <= y0 or x1 <= x0:
        return image
    line = max(1, min(height, width) // 100)
    color = np.array(_BOX_COLOR, np.uint8)
    image[y0:y0 + line, x0:x1] = color
    image[y1 - line:y1, x0:x1] = color
    image[y0:y1, x0:x0 + line] = color
    image[y0:y1, x1 - line:x1] = color
    return image


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px} "
            "img{image-rendering:pixelated;max-width:360px} .s{font-size:small;color:#555}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _layer_page(name: str, tops: LayerTops, result: TopActivations, rows) -> str:
    field = ("" if tops.field_size is None else
             f" Receptive field {tops.field_size[0]}x{tops.field_size[1]} px, stride "
             f"{tops.field_jump[0]}x{tops.field_jump[1]} px.")
    header = ("<tr><th>channel</th><th>receptive-field crops</th><th>reconstructions "
              f"({html.escape(result.method)})</th><th>images</th></tr>")
    lines = []
    for channel, files, scores, indices in rows:
        cells = "".join(f'<td><img src="{html.escape(files[what])}" alt="{what}"></td>' if what in files
                        else "<td></td>" for what in ("crops", "reconstructions", "images"))
        detail = ", ".join(f"#{int(i)}: {s:.3g}" for s, i in zip(scores, indices) if i >= 0)
        lines.append(f"<tr><td>{channel}<div class='s'>{html.escape(detail)}</div></td>{cells}</tr>")
    body = (f"<p>Top {result.k} of {result.count} images per channel, by the strongest unit.{field}</p>"
            f"<p><a href='../../top_activations.html'>all layers</a></p>"
            f"<table>{header}{''.join(lines)}</table>")
    return _page(f"Top activations: {name}", body)
