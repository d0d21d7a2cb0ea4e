"""The entry functions: load -> rebuild -> compute -> render -> write.

``activation_visualization`` and ``deconv_visualization`` keep the original
tf_cnnvis signatures (``sess_graph_path`` is still accepted by keyword);
every new option is a keyword argument with a default.
"""

from __future__ import annotations

import logging

import numpy as np

from tf_cnnvis import compute
from tf_cnnvis.errors import OptionError
from tf_cnnvis.feeds import resolve_feed
from tf_cnnvis.layers import LayerInfo, layer_table, select_layers
from tf_cnnvis.load import load_model
from tf_cnnvis.options import (DEFAULT_MEMORY_BUDGET_MB, check_channels, check_layer_selection,
                               check_memory_budget, check_methods, check_model_source, check_scaling,
                               check_target, check_unit_view)
from tf_cnnvis.progress import progress_bar
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.receptive_field import receptive_field
from tf_cnnvis.render import (FieldView, ReconstructionGrids, VisualizationResult, Writer, display_image,
                              feature_grid, grid_text, image_normalization, image_parts, image_tag)

logger = logging.getLogger("tf_cnnvis")


def list_layers(graph_or_path=None, *, sess_graph_path=None, trust_model_code=False) -> list[LayerInfo]:
    """Every selectable layer: name, kind, op type, output shape, channels."""
    model = load_model(check_model_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
    return layer_table(rebuild(model, "gradient").graph, model)


def activation_visualization(graph_or_path=None, value_feed_dict=None, input_tensor=None, layers="r",
                             path_logdir="./Log", path_outdir="./Output", *, sess_graph_path=None,
                             step=0, save_channels=False, progress=False,
                             trust_model_code=False, deprocess=None) -> VisualizationResult:
    """Grids of every selected layer's feature maps, on disk and in TensorBoard.

    Args:
        graph_or_path: a Keras model, ``tf.Graph``, ``GraphDef``, TF1
            session, or a path to a .keras/.h5 file, SavedModel folder,
            frozen .pb or checkpoint .meta.
        value_feed_dict: ``{input: images}`` (keys: placeholder tensors,
            names, Keras input names), or an image batch for one-input models.
        input_tensor: which fed input holds the images, when several do.
        layers: ``'r'``, ``'p'``, ``'c'``, combinations, and/or layer names.
        path_logdir / path_outdir: TensorBoard and PNG folders (None skips).
        step: TensorBoard step (e.g. the epoch) for a slider over training.
        save_channels: also write one PNG per channel.
        progress: ``True`` shows a progress bar on standard error when it is
            a terminal; a callable receives the number of layers finished.
        trust_model_code: allow a model file that holds code (a Keras
            ``Lambda``, file or Python ops); refused by default.
        deprocess: maps model inputs ``(N, H, W, C)`` back to RGB in
            [0, 255] for the copies of the input images written as
            ``input_NNN.png`` (the gallery shows them first); without it
            each image's range is stretched.
    """
    check_layer_selection(layers)
    model = load_model(check_model_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
    rebuilt = rebuild(model, "gradient")
    chosen = select_layers(rebuilt.graph, model, layers)
    feed = resolve_feed(model, rebuilt.graph, value_feed_dict, input_tensor)
    result = VisualizationResult("activations", layers=chosen)
    writer = Writer(path_outdir, path_logdir, step, result, chosen,  # bad folders fail before the work
                     [info.name for info in layer_table(rebuilt.graph, model)])
    values = compute.activations(rebuilt, feed, chosen)
    count = feed.images.shape[0]
    bar = progress_bar(progress, len(chosen), "activations")
    for layer in chosen:
        layer_values = values[layer.tensor]
        result.arrays[layer.name] = layer_values
        for index in range(count) if writer.enabled else ():
            parts = ("activations",) + image_parts(index, count)
            text = grid_text(range(layer_values.shape[-1]), layer_values.shape[1:3]) if layer_values.ndim == 4 else None
            writer.image(layer, parts, "grid_activation.png", feature_grid(layer_values[index]),
                         image_tag(layer, "activations", index, count), text=text)
            if save_channels and layer_values.ndim == 4:
                for channel in range(layer_values.shape[-1]):
                    writer.image(layer, parts + ("channels",), f"channel_{channel:04d}.png",
                                 image_normalization(layer_values[index, ..., channel]), None)
        logger.info("activations of %s: %s", layer.name, layer_values.shape)
        bar.update(1)
    writer.inputs(feed.images, deprocess)
    writer.flush()
    bar.close()
    return result


def deconv_visualization(graph_or_path=None, value_feed_dict=None, input_tensor=None, layers="r",
                         path_logdir="./Log", path_outdir="./Output", *, sess_graph_path=None,
                         method="deconvnet", target="map", channels=None, step=0,
                         save_channels=False,
                         memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB, keep_arrays=True,
                         progress=False, trust_model_code=False, scaling="robust", unit_view="field",
                         deprocess=None) -> VisualizationResult:
    """Reconstruct each channel of each selected layer back into image space.

    Args (beyond those of :func:`activation_visualization`):
        method: ``'deconvnet'`` (Zeiler & Fergus, default), ``'guided'``
            (guided backprop, what the original tf_cnnvis computed) or
            ``'gradient'``; a list of them computes each.
        target: ``'map'`` reconstructs the whole channel map (summed, as the
            original did); ``'unit'`` its single strongest unit (the paper).
        channels: a subset of channel indices (default: all).
        memory_budget_mb: bounds the batch of reconstructions run at once.
        keep_arrays: ``False`` renders each batch of reconstructions as it
            is computed and keeps none of them (``result.arrays[layer]`` is
            empty), instead of holding ``N x C x H x W x 3`` floats: what
            remains is the budget's working memory and the encoded pictures.
        progress: ``True`` shows a progress bar on standard error when it is
            a terminal; a callable receives the number of reconstructions
            finished.
        trust_model_code: as in :func:`activation_visualization`.
        scaling: ``'robust'`` (default) shows zero as mid-grey and scales
            each picture by the 99.5th percentile of its magnitudes, so a
            few extreme pixels saturate instead of greying out the rest;
            ``'minmax'`` stretches each picture's range to black..white.
        unit_view: with ``target='unit'``, ``'field'`` (default) draws each
            unit's reconstruction cut to its receptive field beside the
            input patch under it, as Zeiler & Fergus did; ``'image'`` draws
            it on the whole image. Units whose field is the whole image (after
            a global pooling or a squeeze-and-excitation gate) are drawn whole.
        deprocess: maps model inputs ``(N, H, W, C)`` back to RGB in
            [0, 255] for the input patches and ``input_NNN.png`` (e.g.
            undoing a mean subtraction); without it each image's range is
            stretched.
    """
    methods = check_methods(method)
    check_scaling(scaling)
    check_unit_view(unit_view)
    check_layer_selection(layers)
    check_target(target)
    check_channels(channels)
    check_memory_budget(memory_budget_mb)
    if not isinstance(keep_arrays, bool):
        raise OptionError(f"keep_arrays={keep_arrays!r} must be True or False")
    if not keep_arrays and path_outdir is None and path_logdir is None:
        raise OptionError("keep_arrays=False with path_outdir=None and path_logdir=None would compute "
                          "reconstructions and discard them; give a folder or keep the arrays")
    model = load_model(check_model_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
    # The first method's graph also selects layers and computes activations:
    # the forward pass is the same whatever the backward rules, and another
    # imported graph would hold another copy of the weights.
    plain = rebuild(model, methods[0])
    chosen = select_layers(plain.graph, model, layers)
    feed = resolve_feed(model, plain.graph, value_feed_dict, input_tensor)
    for layer in chosen:
        if layer.channels is None:
            raise OptionError(f"layer {layer.name!r} has output shape {layer.shape}: reconstructions "
                              "need a layer of shape (N, H, W, C) or (N, C)")
        check_channels(channels, layer.channels, layer.name)
    values = compute.activations(plain, feed, chosen) if target == "unit" else {}
    result = VisualizationResult("deconvolution", layers=chosen)
    writer = Writer(path_outdir, path_logdir, step, result, chosen,
                     [info.name for info in layer_table(plain.graph, model)])
    count = feed.images.shape[0]
    folder_of = {name: name if target == "map" else f"{name}_unit" for name in methods}
    per_layer = [layer.channels if channels is None else len(np.atleast_1d(channels)) for layer in chosen]
    if target == "map":  # the sizes every layer's chunk is chosen from, in one run per graph
        for name in methods:
            compute.tensor_sizes(rebuild(model, name), feed, chosen, feed.images.shape[1:])
    bar = progress_bar(progress, count * len(methods) * sum(per_layer), "reconstructions")
    for layer in chosen:
        result.arrays[layer.name] = {}
        numbers = np.arange(layer.channels) if channels is None else np.atleast_1d(channels)
        fields = None
        if target == "unit" and unit_view == "field" and writer.enabled:
            fields = _field_view(plain, feed, layer, values[layer.tensor], numbers, deprocess)
        for name in methods:
            render = ReconstructionGrids(writer, layer, ("deconvolution", folder_of[name]), numbers, count,
                                         feed.images.shape[1:], keep_arrays, save_channels, scaling, fields)
            try:
                compute.reconstruct(rebuild(model, name), feed, layer, target=target, channels=channels,
                                    layer_values=values.get(layer.tensor), memory_budget_mb=memory_budget_mb,
                                    progress=bar.update, sink=render)
                render.finish()
            except BaseException:
                render.discard()  # no temporary file of a grid that will not be finished
                raise
            writer.flush()  # one event per layer and method: one grid's bytes in memory at a time
            if keep_arrays:
                result.arrays[layer.name][name] = render.arrays
            logger.info("%s reconstructions of %s: %d images x %d channels", name, layer.name, count,
                        len(numbers))
    writer.inputs(feed.images, deprocess)
    bar.close()
    return result


def _field_view(rebuilt, feed, layer: LayerInfo, layer_values: np.ndarray, numbers, deprocess) -> FieldView | None:
    """Where each drawn unit's receptive field lies, or None where a unit sees the whole image."""
    if layer_values.ndim != 4:
        return None
    image_size = feed.images.shape[1:3]
    try:
        field = receptive_field(rebuilt.graph, feed.input_name, layer.tensor, tuple(image_size))
    except ValueError as error:
        logger.info("no receptive field for %s (%s): units are drawn on the whole image", layer.name, error)
        return None
    if field is None:
        logger.info("units of %s see the whole image: they are drawn on it", layer.name)
        return None
    units = compute.strongest_units(layer_values)[:, numbers]  # (N, K, 2)
    boxes = np.array([[field.box(int(i), int(j), clip_to=tuple(image_size)) for i, j in image_units]
                      for image_units in units])
    pictures = np.stack([display_image(image, deprocess) for image in feed.images])
    return FieldView(boxes, pictures, field.size)
