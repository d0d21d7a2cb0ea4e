"""``deepdream_visualization``: activation maximization and DeepDream.

Shares the core's path: load -> rebuild ('gradient' rules) -> resolve the
feed and the layer -> optimize (:mod:`render`) -> write PNGs and
TensorBoard images with the same writer as the other entry functions.
"""

from __future__ import annotations

import difflib
import logging

import numpy as np

from tf_cnnvis.deepdream import objectives
from tf_cnnvis.deepdream.render import (
    MIN_OCTAVE_SIDE,
    DreamSettings,
    NetworkObjective,
    noise,
    render,
)
from tf_cnnvis.errors import OptionError
from tf_cnnvis.feeds import resolve_feed
from tf_cnnvis.layers import LayerInfo, layer_table, select_layers
from tf_cnnvis.load import load_model
from tf_cnnvis.options import DEFAULT_MEMORY_BUDGET_MB, check_model_source, is_integer
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.render import VisualizationResult, Writer, convert_into_grid, grid_text
from tf_cnnvis.write import safe_names

logger = logging.getLogger("tf_cnnvis")


def deepdream_visualization(graph_or_path=None, value_feed_dict=None, layer=None, classes=None,
                            input_tensor=None, path_logdir="./Log", path_outdir="./Output", *,
                            sess_graph_path=None, labels=None, start=None, value_range=None,
                            deprocess=None, tile_size=None, iterations=50, octaves=3,
                            octave_scale=1.4, step_size=0.01, jitter=16, normalize="laplacian",
                            laplacian_levels=4, l2=1e-3, tv=0.0, bilateral=False, denoise=None,
                            param="pixel", transforms=None, learning_rate=0.05, seed=0, step=0,
                            memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB,
                            progress=None, trust_model_code=False) -> VisualizationResult:
    """Images that maximize classes, channels, or a whole layer, one batch item each.

    Args:
        graph_or_path, value_feed_dict, input_tensor, path_logdir,
            path_outdir, sess_graph_path, step: as in
            :func:`tf_cnnvis.activation_visualization`. The fed images set
            the size of the result and, by default, its value range.
        layer: one layer (Keras layer name, op name or tensor name). A class
            layer ``(N, K)`` maximizes units (a softmax's logits are used);
            a convolutional/ReLU/pool layer maximizes a channel's mean.
        classes: unit or channel indices, or names from ``labels``; None
            amplifies the layer's existing activations (DeepDream proper).
        labels: names of the layer's units, so classes can be given by name
            and files are named after them.
        start: ``'noise'`` (default with classes) or ``'image'`` (default
            with ``classes=None``): start from the fed image (one image for
            every class, or one image per class).
        value_range: ``(low, high)`` of the model's input; default: the
            fed images' minimum and maximum.
        deprocess: maps model input to RGB in [0, 255] for the pictures
            (e.g. ``tf_cnnvis.models.vgg16_deprocess``); default: the value
            range stretched linearly.
        tile_size: ``(height, width)`` of the network's input; larger images
            are processed in blended tiles. Default: the input's fixed size
            (also a Keras model's declared size), else the whole image.
        iterations, octaves, octave_scale: ascent steps per octave; image
            pyramid (3 octaves of 1.4 by default).
        step_size: pixel step per iteration in the unit range ``[-1, 1]``.
        jitter: maximum random roll in pixels before each gradient.
        normalize: ``'laplacian'`` (``laplacian_levels`` levels), ``'std'``,
            ``'mean_abs'`` or ``'none'``.
        l2, tv: weights of the L2 and total-variation penalties.
        bilateral: bilateral filter after each step, spatial sigma falling
            from 0.44 to 0.304 over each octave (pixel parameterization).
        denoise: TV denoising between octaves, split-Bregman weight (2.0 in
            the seed); None switches it off.
        param: ``'pixel'`` or ``'fourier'`` (color-decorrelated Fourier
            parameterization with Adam at ``learning_rate``, which uses the
            robustness transforms pad/jitter/scale/rotate by default).
        transforms: None (default for the parameterization), ``'standard'``,
            ``'none'`` or a list of functions from
            :mod:`tf_cnnvis.deepdream.transforms`.
        seed: makes the start noise and all random transforms repeatable.
        memory_budget_mb: bounds how many items and tiles run at once.
        progress: called with 1 after every iteration (e.g. a progress bar's
            ``update``).
        trust_model_code: allow a model file that holds code (a Keras
            ``Lambda``, file or Python ops); refused by default.

    Returns:
        A :class:`~tf_cnnvis.VisualizationResult` of kind ``"deepdream"``;
        ``result.arrays[layer]`` holds ``images`` (model input space,
        ``(K, H, W, C)``), ``classes``, ``names``, ``objective_start`` and
        ``objective_final``.
    """
    settings = DreamSettings(
        iterations=iterations, octaves=octaves, octave_scale=octave_scale, step_size=step_size,
        jitter=jitter, normalize=normalize, laplacian_levels=laplacian_levels, l2=l2, tv=tv,
        bilateral=bilateral, denoise=denoise, param=param, transforms=transforms,
        learning_rate=learning_rate, seed=seed).check()
    model = load_model(check_model_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
    rebuilt = rebuild(model, "gradient")
    info = _resolve_layer(rebuilt, model, layer)
    feed = resolve_feed(model, rebuilt.graph, value_feed_dict, input_tensor)
    images = feed.images
    if images.ndim != 4 or images.dtype.kind != "f":
        raise OptionError(f"DeepDream needs float images (N, H, W, C) at input {feed.input_name!r}; "
                          f"it is fed {images.dtype} of shape {images.shape}")
    kind = objectives.kind_for(len(info.shape) if info.shape else None, classes)
    indices, names = _resolve_classes(classes, labels, info, kind, images.shape[0])
    start = _resolve_start(start, classes)
    low, high = _resolve_value_range(value_range, images)
    tile = _resolve_tile_size(tile_size, rebuilt, feed, model)

    result = VisualizationResult("deepdream", layers=[info])
    # Folders are named over all the model's layers, as by the other entry
    # functions, so a layer's pictures share one folder; bad folders fail here.
    writer = Writer(path_outdir, path_logdir, step, result, [info],
                    [row.name for row in layer_table(rebuilt.graph, model)])
    ops = objectives.build(rebuilt, feed.input_name, info.tensor, kind)
    objective = NetworkObjective(rebuilt, feed, ops, info, (low, high), tile, memory_budget_mb)
    count = len(indices)
    if start == "image":
        if images.shape[0] not in (1, count):
            raise OptionError(f"start='image' with {images.shape[0]} fed images and {count} classes: "
                              "feed one image for all classes or one per class")
        start_images = np.broadcast_to(objective.to_unit(images), (count,) + images.shape[1:]).copy()
    else:
        start_images = noise((count,) + images.shape[1:], seed)
    # A fixed-size input cannot take an octave smaller than itself.
    min_side = max(tile) if tile is not None and objective.fixed_size else MIN_OCTAVE_SIDE
    logger.info("DeepDream on %s (%s objective): %d item(s) of %dx%d, %s", info.name, kind, count,
                images.shape[1], images.shape[2], settings)
    outcome = render(objective, start_images, indices, settings, start_is_noise=start == "noise",
                     min_side=min_side, progress=progress)
    model_images = objective.to_model(outcome.images)
    for name, before, after in zip(names, outcome.start_values, outcome.final_values):
        logger.info("%s %s: objective %.4g -> %.4g", info.name, name, before, after)

    result.arrays[info.name] = {
        "images": model_images, "classes": np.asarray(indices), "names": list(names),
        "objective_start": outcome.start_values, "objective_final": outcome.final_values,
    }
    if path_outdir is None and path_logdir is None:
        return result
    pictures = _pictures(model_images, outcome.images, deprocess)
    files = safe_names(names)
    for name, picture in zip(names, pictures):
        writer.image(info, ("deepdream",), f"{files[name]}.png", picture,
                     f"{info.name}/deepdream/{files[name]}")
    writer.image(info, ("deepdream",), "grid_deepdream.png", convert_into_grid(pictures),
                 f"{info.name}/deepdream", text=grid_text(names, pictures[0].shape))
    writer.flush()
    return result


def _resolve_layer(rebuilt, model, layer) -> LayerInfo:
    if not isinstance(layer, str) or not layer:
        raise OptionError(f"layer={layer!r} must name one layer: a Keras layer name, an op name "
                          "or a tensor name (see tf_cnnvis.list_layers)")
    chosen = select_layers(rebuilt.graph, model, [layer])
    if len(chosen) != 1:
        raise OptionError(f"layer={layer!r} selects {len(chosen)} layers; DeepDream takes one layer "
                          f"name, e.g. {chosen[-1].name!r}")
    return chosen[0]


def _resolve_classes(classes, labels, info: LayerInfo, kind: str, image_count: int):
    """(indices, display names) of the batch items, checked against the layer."""
    if kind == "amplify":
        names = ["amplified"] if image_count == 1 else [f"amplified_image_{i:03d}" for i in range(image_count)]
        return [0] * image_count, names
    size = info.channels
    what = "units" if kind == "unit" else "channels"
    if size is None:
        raise OptionError(f"layer {info.name!r} has shape {info.shape} with an unknown number of {what}; "
                          "pick a layer whose last dimension is known")
    if labels is not None:
        labels = [str(label) for label in labels]
        if len(labels) != size:
            raise OptionError(f"labels has {len(labels)} names but layer {info.name!r} has {size} {what}")
    items = [classes] if isinstance(classes, (str, int, np.integer)) else list(np.ravel(
        np.asarray(classes, dtype=object)))
    if not items:
        raise OptionError("classes is empty; give unit/channel indices, names from labels, or None "
                          "to amplify the whole layer")
    indices = []
    for item in items:
        if isinstance(item, str):
            if labels is None:
                raise OptionError(f"class {item!r} is a name but no labels were given; pass "
                                  f"labels=[...] or indices 0..{size - 1}")
            if item not in labels:
                close = difflib.get_close_matches(item, labels, n=3, cutoff=0.5)
                hint = f" (closest: {', '.join(close)})" if close else ""
                raise OptionError(f"class {item!r} is not one of the labels {labels}{hint}")
            indices.append(labels.index(item))
            continue
        if not is_integer(item):
            raise OptionError(f"class {item!r} is not an integer index; give {what} of layer "
                              f"{info.name!r} as integers 0..{size - 1}" + (" or label names" if labels else ""))
        if not 0 <= item < size:
            raise OptionError(f"class {item} is out of range for layer {info.name!r}, which has "
                              f"{size} {what} (0..{size - 1})")
        indices.append(int(item))
    names = [f"class_{labels[i]}" if labels is not None else f"class_{i}" for i in indices]
    if len(set(names)) != len(names):
        raise OptionError(f"classes {items!r} repeat a class; give each class once")
    return indices, names


def _resolve_start(start, classes) -> str:
    if start is None:
        return "image" if classes is None else "noise"
    if start not in ("noise", "image"):
        raise OptionError(f"start={start!r} is not 'noise' or 'image'")
    return start


def _resolve_value_range(value_range, images):
    if value_range is None:
        low, high = float(np.min(images)), float(np.max(images))
        if not high > low:
            raise OptionError(f"the fed images are constant ({low}), so the model's value range cannot "
                              "be inferred; pass value_range=(low, high), e.g. (0, 1) or (-1, 1)")
        return low, high
    try:
        low, high = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise OptionError(f"value_range={value_range!r} must be a pair (low, high)") from None
    if not (np.isfinite(low) and np.isfinite(high) and high > low):
        raise OptionError(f"value_range={value_range!r} must be finite with low < high")
    return low, high


def _resolve_tile_size(tile_size, rebuilt, feed, model):
    if tile_size is not None:
        if is_integer(tile_size):
            tile_size = (tile_size, tile_size)
        try:
            tile = tuple(int(v) for v in tile_size)
        except (TypeError, ValueError):
            raise OptionError(f"tile_size={tile_size!r} must be an int or (height, width)") from None
        if len(tile) != 2 or min(tile) < 1:
            raise OptionError(f"tile_size={tile_size!r} must be an int or (height, width), positive")
        return tile
    dims = rebuilt.tensor(feed.input_name).shape.as_list()[1:3]
    if all(d is not None for d in dims):
        return tuple(dims)
    declared = model.declared_shapes.get(feed.input_name, ())[1:3]
    if len(declared) == 2 and all(d is not None for d in declared):
        logger.info("tiling at the model's declared input size %dx%d", *declared)
        return tuple(int(d) for d in declared)
    return None


def _pictures(model_images, unit_images, deprocess):
    """uint8 pictures: ``deprocess`` of the model input, or the unit range stretched."""
    if deprocess is None:
        pictures = (unit_images + 1.0) * 127.5
    else:
        pictures = np.asarray(deprocess(model_images), dtype=np.float32)
        if pictures.shape[:3] != model_images.shape[:3]:
            raise OptionError(f"deprocess turned images of shape {model_images.shape} into "
                              f"{pictures.shape}; it must keep (N, H, W)")
    return np.clip(np.round(pictures), 0, 255).astype(np.uint8)
