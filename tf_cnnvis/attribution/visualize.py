"""``attribution_visualization``: where in each image the network saw each class.

The same path as the other entry functions: load -> rebuild -> resolve the
feed, the class scores and the layer -> compute every method's maps in
batched, chunked runs (:mod:`tf_cnnvis.attribution.methods`) -> write
colour-mapped pictures with the shared writer
(:mod:`tf_cnnvis.attribution.pictures`).
"""

from __future__ import annotations

import dataclasses
import difflib
import logging

import numpy as np

from tf_cnnvis.attribution import graph_ops
from tf_cnnvis.attribution.methods import GRADIENT_CAMS, Job, Settings, attribute, patch_positions, variant_name
from tf_cnnvis.attribution.pictures import write_maps
from tf_cnnvis.errors import FeedError, OptionError
from tf_cnnvis.feeds import Feed, resolve_feed
from tf_cnnvis.layers import LayerInfo, layer_table
from tf_cnnvis.load import FrozenModel, load_model
from tf_cnnvis.options import (CAM_METHODS, DEFAULT_MEMORY_BUDGET_MB, check_attribution_methods, check_integer,
                               check_integration, check_labels, check_memory_budget, check_model_source,
                               check_pair, check_smoothing, is_integer)
from tf_cnnvis.progress import progress_bar
from tf_cnnvis.rebuild import RebuiltGraph, rebuild
from tf_cnnvis.render import VisualizationResult, Writer

logger = logging.getLogger("tf_cnnvis")


def attribution_visualization(graph_or_path=None, value_feed_dict=None, classes=None, method="gradcam",
                              layer=None, input_tensor=None, path_logdir="./Log", path_outdir="./Output", *,
                              sess_graph_path=None, labels=None, output=None, smooth=None, samples=50,
                              noise=0.15, seed=0, steps=50, rule="trapezoid", baseline=0.0, patch=None,
                              stride=None, max_channels=None, deprocess=None, opacity=0.5, step=0,
                              memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB, progress=False,
                              trust_model_code=False) -> VisualizationResult:
    """Class attribution maps: for each image and class, how much each pixel counts.

    Args:
        graph_or_path, value_feed_dict, input_tensor, path_logdir,
            path_outdir, sess_graph_path, step, trust_model_code: as in
            :func:`tf_cnnvis.activation_visualization`. The images must be
            float ``(N, H, W, C)``.
        classes: None (each image's top class), a class index or name (from
            ``labels``), a list of them (the same classes for every image),
            or one list per image (all of one length).
        method: one of ``'gradcam'``, ``'gradcam++'``, ``'layercam'``,
            ``'scorecam'``, ``'guided_gradcam'``, ``'saliency'``,
            ``'deconvnet'``, ``'guided'``, ``'gradient_x_input'``,
            ``'integrated_gradients'``, ``'occlusion'``, or a list of them.
        layer: the layer CAM methods weigh; default the last layer with
            spatial extent that feeds the class scores (inside nested Keras
            models too).
        labels: the class names, so classes can be given and files named by them.
        output: the layer of class scores ``(N, classes)``; default the
            model's only 2-D output. A softmax's logits are used.
        smooth: ``'smoothgrad'``, ``'vargrad'`` or ``'squaregrad'`` around a
            gradient method, over ``samples`` noisy copies (default 50) with
            noise of standard deviation ``noise`` (0.15) times each image's
            value range; ``seed`` makes the noise repeatable.
        steps, rule: Integrated Gradients' points on the path from
            ``baseline`` (default 50) and quadrature: ``'trapezoid'``
            (default), ``'riemann_right'``, ``'riemann_left'``, ``'riemann_middle'``.
        baseline: Integrated Gradients' start and occlusion's fill: a number,
            or an array broadcastable to the images (e.g. ``(H, W, C)``).
        patch, stride: occlusion's patch and its step, an int or
            ``(height, width)``; default an eighth of the image and half the patch.
        max_channels: Score-CAM with only this many channels of largest
            variance (Faster-Score-CAM); default all.
        deprocess: maps model input to RGB in [0, 255] for the pictures;
            default: each image's range stretched.
        opacity: of the colour map over the image (0.5).
        memory_budget_mb: bounds the batch items run at once.
        progress: ``True`` shows a progress bar; a callable receives the
            number of batch items finished.

    Returns:
        A :class:`~tf_cnnvis.VisualizationResult` of kind ``"attribution"``.
        ``arrays[name]`` holds each method's maps ``(N, K, H, W)`` float32
        before display normalization (``name`` is the method, with
        ``_<smooth>`` appended when smoothed); gradient methods also keep
        their values per input channel in ``arrays[name + "_raw"]``
        ``(N, K, H, W, C)``. ``arrays["classes"]`` ``(N, K)`` are the class
        indices, ``arrays["class_names"]`` their names and
        ``arrays["scores"]`` the class scores ``(N, classes)`` of the images.
    """
    methods = check_attribution_methods(method)
    smooth = check_smoothing(smooth, methods, samples, noise)
    steps, rule = check_integration(steps, rule)
    patch, stride = check_pair("patch", patch, "occlusion's patch"), check_pair("stride", stride, "occlusion's step")
    if max_channels is not None:
        check_integer("max_channels", max_channels, 1, "Score-CAM's channels of largest variance")
    check_integer("seed", seed)
    check_memory_budget(memory_budget_mb)
    if isinstance(opacity, bool) or not isinstance(opacity, (int, float)) or not 0 <= opacity <= 1:
        raise OptionError(f"opacity={opacity!r} must be a number from 0 (the image alone) to 1 (the map alone)")
    targets = class_targets(graph_or_path, value_feed_dict, classes, input_tensor, sess_graph_path, labels, output,
                            trust_model_code, "attribution")
    model, rebuilt, feed, scores, chosen = targets.model, targets.rebuilt, targets.feed, targets.scores, targets.classes
    images = feed.images
    cam = None
    if any(name in CAM_METHODS for name in methods):
        cam = graph_ops.cam_layer(rebuilt, model, feed.input_name, scores, layer)
    elif layer is not None:
        raise OptionError(f"layer={layer!r} is used by the CAM methods ({', '.join(CAM_METHODS)}); "
                          f"{', '.join(methods)} attribute to the input: leave layer out")
    height, width = images.shape[1:3]
    patch = patch or (max(1, height // 8), max(1, width // 8))
    stride = stride or (max(1, patch[0] // 2), max(1, patch[1] // 2))
    if "occlusion" in methods and (patch[0] > height or patch[1] > width):
        raise OptionError(f"patch={patch} is larger than the images ({height}x{width}); give a patch of at most "
                          "the image size")
    settings = Settings(smooth=smooth, samples=int(samples), noise=float(noise), seed=int(seed), steps=steps,
                        rule=rule, baseline=_baseline(baseline, images), patch=patch, stride=stride,
                        max_channels=max_channels)

    source = LayerInfo(name=feed.input_name.partition(":")[0], kind="input", op_type="Placeholder",
                       shape=tuple(rebuilt.tensor(feed.input_name).shape.as_list()), channels=images.shape[-1],
                       tensor=feed.input_name)
    where = {name: cam if name in CAM_METHODS else source for name in methods}
    shown = list(dict.fromkeys(where.values()))
    result = VisualizationResult("attribution", layers=shown)
    # Folders are named over all the model's layers, as by the other entry functions (listed once per graph).
    names = rebuilt.cached(("attribution layer names",),
                           lambda: [info.name for info in layer_table(rebuilt.graph, model)])
    writer = Writer(path_outdir, path_logdir, step, result, shown, names)  # bad folders fail before the work
    bar = progress_bar(progress, _item_count(methods, chosen, settings, cam, (height, width)), "attribution")
    job = Job(model=model, feed=feed, scores=scores, classes=chosen, layer=cam, settings=settings,
              memory_budget_mb=memory_budget_mb, progress=bar.update)
    try:
        arrays = attribute(job, methods)
    finally:
        bar.close()
    names = class_names(job.classes, targets.labels)
    result.arrays.update(arrays)
    result.arrays.update(classes=job.classes.copy(), class_names=names, scores=job.logits)
    if cam is not None:
        result.arrays["layer"] = cam.name
    for name in methods:
        variant = variant_name(name, smooth)
        logger.info("%s on %s: %d image(s) x %d class(es)", variant, where[name].name, *job.classes.shape)
        if writer.enabled:
            write_maps(writer, where[name], variant, arrays[variant], images, job.classes, names, deprocess, opacity)
    return result


@dataclasses.dataclass
class ClassTargets:
    """A model, its feed and class scores, and the classes asked of them: where attribution maps and
    sanity checks both start."""

    model: FrozenModel
    rebuilt: RebuiltGraph  # under the plain gradient
    feed: Feed
    scores: LayerInfo  # the class scores (N, classes)
    labels: list[str] | None
    classes: np.ndarray  # (N, K) class indices; TOP_CLASS: each image's top class


def class_targets(graph_or_path, value_feed_dict, classes, input_tensor, sess_graph_path, labels, output,
                  trust_model_code, what: str) -> ClassTargets:
    """Load the model, match the feed (float images) and find the class scores and the classes.

    ``what`` names the caller in the error for a feed that is not float images.
    """
    labels = check_labels(labels)
    model = load_model(check_model_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
    rebuilt = rebuild(model, "gradient")
    feed = resolve_feed(model, rebuilt.graph, value_feed_dict, input_tensor)
    images = feed.images
    if images.ndim != 4 or images.dtype.kind != "f":
        raise FeedError(f"{what} needs float images (N, H, W, C) at input {feed.input_name!r}; it is fed "
                        f"{images.dtype} of shape {images.shape}")
    scores = graph_ops.class_scores(rebuilt, model, feed.input_name, output)
    if labels is not None and scores.channels is not None and len(labels) != scores.channels:
        raise OptionError(f"labels has {len(labels)} names but the class scores {scores.tensor!r} have "
                          f"{scores.channels} classes")
    chosen = resolve_classes(classes, labels, images.shape[0], scores.channels)
    return ClassTargets(model, rebuilt, feed, scores, labels, chosen)


def class_names(classes: np.ndarray, labels: list[str] | None) -> list[list[str]]:
    """The name of each class of ``classes`` ``(N, K)``: its label, else its index."""
    return [[labels[index] if labels is not None else str(index) for index in row] for row in classes.tolist()]


def resolve_classes(classes, labels, count: int, size: int | None) -> np.ndarray:
    """``classes`` as an ``(N, K)`` array of class indices (TOP_CLASS: each image's top class)."""
    if classes is None:
        return np.full((count, 1), graph_ops.TOP_CLASS, np.int64)
    what = "a class index" + (", a name from labels" if labels is not None else "") + (
        ", a list of them, or one list per image")
    if isinstance(classes, (str, bytes)) or is_integer(classes):
        rows = [[classes]] * count
    elif isinstance(classes, (list, tuple, np.ndarray, range)):
        items = classes.tolist() if isinstance(classes, np.ndarray) else list(classes)
        if not items:
            raise OptionError(f"classes={classes!r} is empty; give {what}, or None for each image's top class")
        nested = [isinstance(item, (list, tuple, np.ndarray, range)) for item in items]
        if all(nested):
            rows = [item.tolist() if isinstance(item, np.ndarray) else list(item) for item in items]
            if len(rows) != count:
                raise OptionError(f"classes gives {len(rows)} lists but {count} image(s) are fed; give one list "
                                  "per image, or one list for all")
            lengths = {len(row) for row in rows}
            if 0 in lengths or len(lengths) > 1:
                raise OptionError(f"classes={classes!r}: the lists per image must be non-empty and of one "
                                  f"length (got lengths {sorted(lengths)})")
        elif any(nested):
            raise OptionError(f"classes={classes!r} mixes lists and single classes; give {what}")
        else:
            rows = [items] * count
    else:
        raise OptionError(f"classes={classes!r} is not accepted; give {what}")
    result = np.empty((count, len(rows[0])), np.int64)
    for n, row in enumerate(rows):
        for k, item in enumerate(row):
            result[n, k] = _class_index(item, labels, size)
        repeated = [item for item in row if row.count(item) > 1]
        if repeated:
            raise OptionError(f"classes lists {repeated[0]!r} twice for image {n}; give each class once")
    return result


def _class_index(item, labels, size) -> int:
    valid = f"0..{size - 1}" if size is not None else "0 or more"
    if isinstance(item, str):
        if labels is None:
            raise OptionError(f"class {item!r} is a name but no labels were given; pass labels=[...] or "
                              f"indices {valid}")
        if item not in labels:
            close = difflib.get_close_matches(item, labels, n=3, cutoff=0.5)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise OptionError(f"class {item!r} is not one of the labels {labels}{hint}")
        return labels.index(item)
    if not is_integer(item):
        raise OptionError(f"class {item!r} is not an integer index; give class indices {valid}"
                          + (" or label names" if labels is not None else ""))
    if item < 0 or (size is not None and item >= size):
        raise OptionError(f"class {item} is out of range: the class scores have {size} classes ({valid})")
    return int(item)


def _baseline(baseline, images: np.ndarray) -> np.ndarray:
    """The baseline broadcast to the images' shape, refused with the accepted shapes when it does not fit."""
    try:
        value = np.asarray(baseline, np.float32)
    except (TypeError, ValueError):
        raise OptionError(f"baseline={baseline!r} is not a number or an array of numbers") from None
    try:
        full = np.broadcast_to(value, images.shape)
    except ValueError:
        n, height, width, channels = images.shape
        raise OptionError(f"baseline of shape {value.shape} does not fit images of shape {images.shape}; give a "
                          f"number, or an array of shape ({height}, {width}, {channels}), ({n}, {height}, "
                          f"{width}, {channels}) or another shape that broadcasts to them") from None
    if not np.all(np.isfinite(value)):
        raise OptionError("baseline holds NaN or infinite values; give finite numbers")
    return full


def _item_count(methods, classes: np.ndarray, settings: Settings, cam: LayerInfo | None, image_size) -> int:
    """The batch items the methods run, for the progress bar."""
    count, pairs = classes.shape[0], classes.size
    samples = settings.samples if settings.smooth else 1
    total = pairs if any(name in GRADIENT_CAMS + ("guided_gradcam",) for name in methods) else 0
    for name in methods:
        if name == "guided_gradcam":
            total += pairs
        elif name == "scorecam":
            channels = cam.channels or 0
            total += count * min(channels, settings.max_channels or channels)
        elif name == "integrated_gradients":
            total += pairs * samples * settings.steps
        elif name == "occlusion":
            total += count * np.prod([len(patch_positions(size, patch, stride)) for size, patch, stride
                                      in zip(image_size, settings.patch, settings.stride)])
        elif name not in GRADIENT_CAMS:
            total += pairs * samples
    return int(total)
