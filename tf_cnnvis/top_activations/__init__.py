"""Top activations: each channel's top images in a dataset, Zeiler-Fergus style, at dataset scale.

The scan (:mod:`.scan`) streams a ``tf.data.Dataset``, a NumPy array or a
generator in batches through the frozen model and keeps, for every channel
of the chosen layers, the ``k`` images whose strongest unit of that channel
is highest, in memory that does not grow with the dataset, under the given
(or the active) ``tf.distribute`` strategy.

For each kept (channel, image) pair the strongest unit's receptive field is
read off the graph and its reconstruction computed on a crop around that
field (:mod:`.fields`). Written per channel: the top-k field crops, their
reconstructions, and the full images with the field boxed, plus an HTML page
per layer (:mod:`.pictures`); and an HDF5 file (:mod:`.storage`) from which
:func:`render_top_activations` redraws everything without recomputing.
"""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import FeedError, OptionError
from tf_cnnvis.layers import LayerInfo, select_layers
from tf_cnnvis.load import load_model
from tf_cnnvis.options import DEFAULT_MEMORY_BUDGET_MB, check_channels, check_memory_budget, check_method
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.top_activations.fields import add_fields, reconstruct as reconstruct_tops
from tf_cnnvis.top_activations.pictures import render_top_activations
from tf_cnnvis.top_activations.results import LayerTops, TopActivations
from tf_cnnvis.top_activations.scan import StreamingTopK, image_spec, scan_dataset
from tf_cnnvis.top_activations.storage import H5_NAME, load_top_activations, save_top_activations
from tf_cnnvis.utils import image_normalization
from tf_cnnvis.write import ensure_folder

__all__ = ["H5_NAME", "LayerTops", "StreamingTopK", "TopActivations", "load_top_activations",
           "render_top_activations", "save_top_activations", "top_activations"]


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
    rank, dtype = image_spec(frozen, plain.graph, input_name)
    selected = {layer.name: _channel_selection(layer, channels) for layer in chosen}
    strategy = strategy or tf.distribute.get_strategy()
    scanned = scan_dataset(frozen, input_name, chosen, selected, fixed, dataset, rank=rank, dtype=dtype, k=k,
                           batch_size=batch_size, strategy=strategy, limit=limit, jit_compile=jit_compile,
                           log_every_s=log_every_s)
    pool = scanned.images

    order = sorted(pool)
    raw = np.stack([pool[i] for i in order]) if order else np.zeros((0,), np.float32)
    result = TopActivations(images=_display(raw, deprocess), image_index=np.array(order, np.int64),
                            count=scanned.count, k=k, method=method, replicas=strategy.num_replicas_in_sync)
    slot_of = {dataset_index: slot for slot, dataset_index in enumerate(order)}
    rebuilt = plain if reconstruct else None
    for layer in chosen:
        top = scanned.tops[layer.name]
        tops_of_layer = LayerTops(name=layer.name, tensor=layer.tensor, channels=selected[layer.name],
                                  scores=top.scores, image_index=top.index, units=top.units)
        add_fields(tops_of_layer, plain, input_name, layer, raw.shape[1:3] if raw.ndim == 4 else None)
        if rebuilt is not None and raw.ndim == 4:
            tops_of_layer.reconstructions = reconstruct_tops(rebuilt, input_name, fixed, layer, tops_of_layer,
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


class _CallableModule(types.ModuleType):
    """This package, callable as :func:`top_activations`.

    Importing ``tf_cnnvis.top_activations`` binds the package, not the
    function, to that name in ``tf_cnnvis``, so ``from tf_cnnvis import
    top_activations`` gives the package; calling it runs the scan, as the
    README shows.
    """

    def __call__(self, *args, **kwargs) -> TopActivations:
        return top_activations(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
