"""The entry functions: load -> rebuild -> compute -> render -> write.

``activation_visualization`` and ``deconv_visualization`` keep the original
tf_cnnvis signatures (``sess_graph_path`` is still accepted by keyword);
every new option is a keyword argument with a default.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib

import numpy as np

from tf_cnnvis import compute
from tf_cnnvis.errors import OptionError
from tf_cnnvis.feeds import resolve_feed
from tf_cnnvis.layers import LayerInfo, layer_table, select_layers
from tf_cnnvis.load import load_model
from tf_cnnvis.progress import progress_bar
from tf_cnnvis.options import (DEFAULT_MEMORY_BUDGET_MB, check_channels, check_layer_selection,
                                check_memory_budget, check_methods, check_target)
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.utils import convert_into_grid, image_normalization, normalize_each
from tf_cnnvis.write import (AtomicFile, GridPng, PngStream, ShrunkPng, SummaryWriter, encode_png,
                             ensure_folder, grid_shape, inside, safe_names, summary_factor, write_atomic)

logger = logging.getLogger("tf_cnnvis")


@dataclasses.dataclass
class VisualizationResult:
    """What a visualization computed and wrote. Always truthy.

    Attributes:
        kind: ``"activations"``, ``"deconvolution"`` or ``"deepdream"``.
        arrays: layer name -> raw values. Activations: the layer's output
            ``(N, H, W, C)``; reconstructions: ``{method: (N, C, H, W, 3)}``.
        layers: the LayerInfo rows that were visualized.
        paths: every file written, in order.
        logdir: the TensorBoard log folder written to (None if disabled).
    """

    kind: str
    arrays: dict = dataclasses.field(default_factory=dict)
    layers: list = dataclasses.field(default_factory=list)
    paths: list = dataclasses.field(default_factory=list)
    logdir: str | None = None

    def __bool__(self):  # old ``if is_success:`` code keeps working
        return True

    def __getitem__(self, layer_name):
        return self.arrays[layer_name]


def list_layers(graph_or_path=None, *, sess_graph_path=None, trust_model_code=False) -> list[LayerInfo]:
    """Every selectable layer: name, kind, op type, output shape, channels."""
    model = load_model(_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
    return layer_table(rebuild(model, "gradient").graph, model)


def _source(graph_or_path, sess_graph_path):
    if graph_or_path is not None and sess_graph_path is not None:
        raise OptionError("give the model once: graph_or_path or sess_graph_path, not both")
    source = graph_or_path if graph_or_path is not None else sess_graph_path
    if source is None:
        raise OptionError("no model given; pass a Keras model, graph, session or a model path")
    return source


class _Writer:
    """Writes one call's pictures to ``path_outdir`` and ``path_logdir``."""

    def __init__(self, path_outdir, path_logdir, step, result: VisualizationResult, layers,
                 model_names=()):
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
            raise OptionError(f"step={step!r} must be an integer")
        self.outdir = ensure_folder(path_outdir, "output folder") if path_outdir is not None else None
        self.summary = SummaryWriter.for_logdir(path_logdir) if path_logdir is not None else None
        self.step = int(step)
        self.result = result
        result.logdir = self.summary.logdir if self.summary else None
        # Folders are named over every layer of the model, not only this call's:
        # "a/b" drawn today and "a_b" tomorrow must not share the folder "a_b".
        self.folders = safe_names(list(dict.fromkeys([*model_names, *(layer.name for layer in layers)])))
        # With neither folder there is nothing to render: grids of thousands of
        # channels would cost gigabytes for nothing.
        self.enabled = self.outdir is not None or self.summary is not None
        self._pending: dict[str, tuple] = {}

    def image(self, layer: LayerInfo, parts: tuple[str, ...], filename: str, picture: np.ndarray,
              tag: str | None):
        """Encode ``picture`` once; write it to disk and queue it for TensorBoard."""
        shape = picture.shape[:2] + (1 if picture.ndim == 2 else picture.shape[-1],)
        factor = summary_factor(shape)
        self.png(layer, parts, filename, encode_png(picture), shape, tag if factor == 1 else None)
        if factor > 1 and tag is not None and self.summary is not None:
            shrunk = ShrunkPng(*shape, factor)
            shrunk.write(picture)
            self.queue(tag, shrunk.finish(), shrunk.shape,
                       self.reduction_note(shape, factor, layer, parts, filename))

    def png(self, layer: LayerInfo, parts: tuple[str, ...], filename: str, png: bytes, shape, tag: str | None):
        """Write encoded ``png`` of ``shape`` (H, W, C) to disk and queue it for TensorBoard."""
        if self.outdir is not None:
            self.result.paths.append(write_atomic(self.path(layer, parts, filename), png))
        if tag is not None:
            self.queue(tag, png, shape)

    def path(self, layer: LayerInfo, parts: tuple[str, ...], filename: str) -> str:
        return inside(self.outdir, self.folders[layer.name], *parts, filename)

    def queue(self, tag: str, png: bytes, shape, description: str = ""):
        if self.summary is not None:
            self._pending[tag] = (png, *shape, description)

    def grid(self, layer: LayerInfo, parts: tuple[str, ...], filename: str, count: int, cell_shape,
             tag: str) -> "_GridOutput":
        """A grid of ``count`` cells, written as its cells arrive (see :class:`_GridOutput`)."""
        return _GridOutput(self, layer, parts, filename, count, cell_shape, tag)

    def reduction_note(self, shape, factor: int, layer: LayerInfo, parts, filename) -> str:
        """The TensorBoard description of a picture of ``shape`` shown ``factor`` times smaller."""
        where = f"; every pixel is in {self.path(layer, parts, filename)}" if self.outdir is not None else ""
        return f"reduced {factor}x from {shape[1]}x{shape[0]} px{where}"

    def flush(self):
        if self.summary is not None and self._pending:
            self.summary.add_images(self._pending, self.step)
            self._pending = {}


class _GridOutput:
    """One grid of reconstructions, filled cell by cell and written by :meth:`finish`.

    A grid within TensorBoard's size limit is encoded in memory and the
    same bytes go to disk and to the event file. A larger one is encoded
    straight into its (temporary) file, and TensorBoard gets a reduced copy
    made from the same rows: a 4096-cell grid never sits in memory, whole or
    compressed. :meth:`discard` removes the temporary file of a grid that
    will not be finished.
    """

    def __init__(self, writer: _Writer, layer: LayerInfo, parts, filename: str, count: int, cell_shape,
                 tag: str):
        self.writer, self.layer, self.parts, self.filename, self.tag = writer, layer, parts, filename, tag
        self.shape = grid_shape(count, cell_shape)
        self.factor = summary_factor(self.shape)
        self.file = None
        outputs = []
        if self.factor == 1:
            outputs.append(PngStream(*self.shape, strategy=zlib.Z_RLE))
        else:
            if writer.outdir is not None:
                self.file = AtomicFile(writer.path(layer, parts, filename))
                outputs.append(PngStream(*self.shape, out=self.file, strategy=zlib.Z_RLE))
            if writer.summary is not None:
                outputs.append(ShrunkPng(*self.shape, self.factor))
        self.outputs = outputs
        self.grid = GridPng(count, cell_shape, outputs=outputs)

    def add(self, cells: np.ndarray):
        self.grid.add(cells)

    def finish(self):
        results = self.grid.finish()
        writer = self.writer
        if self.factor == 1:
            writer.png(self.layer, self.parts, self.filename, results[0], self.shape, self.tag)
            return
        if self.file is not None:
            writer.result.paths.append(self.file.commit())
        if writer.summary is not None:
            writer.queue(self.tag, results[-1], self.outputs[-1].shape,
                         writer.reduction_note(self.shape, self.factor, self.layer, self.parts, self.filename))

    def discard(self):
        if self.file is not None:
            self.file.discard()


def _image_parts(index: int, count: int) -> tuple[str, ...]:
    return (f"image_{index:03d}",) if count > 1 else ()


def _tag(layer: LayerInfo, what: str, index: int, count: int) -> str:
    return f"{layer.name}/{what}" + (f"/image_{index:03d}" if count > 1 else "")


def _feature_grid(values: np.ndarray) -> np.ndarray:
    """One image's activations ``(H, W, C)`` or ``(C,)`` as a uint8 grid."""
    if values.ndim == 1:  # a dense layer: one pixel per unit, enlarged
        side = int(np.ceil(np.sqrt(values.size)))
        padded = np.full(side * side, np.nan)
        padded[:values.size] = values
        cells = image_normalization(padded.reshape(side, side))
        return np.kron(cells, np.ones((8, 8), np.uint8))
    maps = np.moveaxis(values, -1, 0)[..., None]  # (C, H, W, 1)
    return convert_into_grid(normalize_each(maps))


def activation_visualization(graph_or_path=None, value_feed_dict=None, input_tensor=None, layers="r",
                             path_logdir="./Log", path_outdir="./Output", *, sess_graph_path=None,
                             step=0, save_channels=False, progress=False,
                             trust_model_code=False) -> VisualizationResult:
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
    """
    check_layer_selection(layers)
    model = load_model(_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
    rebuilt = rebuild(model, "gradient")
    chosen = select_layers(rebuilt.graph, model, layers)
    feed = resolve_feed(model, rebuilt.graph, value_feed_dict, input_tensor)
    result = VisualizationResult("activations", layers=chosen)
    writer = _Writer(path_outdir, path_logdir, step, result, chosen,  # bad folders fail before the work
                     [info.name for info in layer_table(rebuilt.graph, model)])
    values = compute.activations(rebuilt, feed, chosen)
    count = feed.images.shape[0]
    bar = progress_bar(progress, len(chosen), "activations")
    for layer in chosen:
        layer_values = values[layer.tensor]
        result.arrays[layer.name] = layer_values
        for index in range(count) if writer.enabled else ():
            parts = ("activations",) + _image_parts(index, count)
            writer.image(layer, parts, "grid_activation.png", _feature_grid(layer_values[index]),
                         _tag(layer, "activations", index, count))
            if save_channels and layer_values.ndim == 4:
                for channel in range(layer_values.shape[-1]):
                    writer.image(layer, parts + ("channels",), f"channel_{channel:04d}.png",
                                 image_normalization(layer_values[index, ..., channel]), None)
        logger.info("activations of %s: %s", layer.name, layer_values.shape)
        bar.update(1)
    writer.flush()
    bar.close()
    return result


def deconv_visualization(graph_or_path=None, value_feed_dict=None, input_tensor=None, layers="r",
                         path_logdir="./Log", path_outdir="./Output", *, sess_graph_path=None,
                         method="deconvnet", target="map", channels=None, step=0,
                         save_channels=False,
                         memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB, keep_arrays=True,
                         progress=False, trust_model_code=False) -> VisualizationResult:
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
    """
    methods = check_methods(method)
    check_layer_selection(layers)
    check_target(target)
    check_channels(channels)
    check_memory_budget(memory_budget_mb)
    if not isinstance(keep_arrays, bool):
        raise OptionError(f"keep_arrays={keep_arrays!r} must be True or False")
    if not keep_arrays and path_outdir is None and path_logdir is None:
        raise OptionError("keep_arrays=False with path_outdir=None and path_logdir=None would compute "
                          "reconstructions and discard them; give a folder or keep the arrays")
    model = load_model(_source(graph_or_path, sess_graph_path), trust_model_code=trust_model_code)
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
    writer = _Writer(path_outdir, path_logdir, step, result, chosen,
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
        for name in methods:
            render = _Reconstructions(writer, layer, ("deconvolution", folder_of[name]), numbers, count,
                                      feed.images.shape[1:], keep_arrays, save_channels)
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
    bar.close()
    return result


class _Reconstructions:
    """Receives one layer's reconstructions chunk by chunk: keeps and/or renders them.

    Each chunk is scaled and placed into its image's grid (encoded as it
    fills) and, with ``save_channels``, written one PNG per channel, so
    rendering never holds more than a chunk and a row of grid cells.
    """

    def __init__(self, writer: _Writer, layer: LayerInfo, parts: tuple[str, ...], numbers, count: int,
                 image_shape, keep: bool, save_channels: bool):
        self.writer, self.layer, self.parts, self.numbers = writer, layer, parts, numbers
        self.count, self.save_channels = count, save_channels
        self.arrays = np.zeros((count, len(numbers)) + tuple(image_shape), np.float32) if keep else None
        cell = tuple(image_shape[:2]) + (_display_channels(image_shape[-1]),)
        what = "/".join(parts)
        self.grids = []
        try:
            for image in range(count if writer.enabled else 0):
                self.grids.append(writer.grid(layer, parts + _image_parts(image, count), "grid_image.png",
                                              len(numbers), cell, _tag(layer, what, image, count)))
        except BaseException:
            self.discard()
            raise

    def __call__(self, image: int, first: int, values: np.ndarray):
        if self.arrays is not None:
            self.arrays[image, first:first + len(values)] = values
        if not self.grids:
            return
        pictures = normalize_each(_displayable(values))
        self.grids[image].add(pictures)
        if self.save_channels:
            parts = self.parts + _image_parts(image, self.count) + ("channels",)
            for offset, picture in enumerate(pictures):
                self.writer.image(self.layer, parts, f"channel_{self.numbers[first + offset]:04d}.png",
                                  picture, None)

    def finish(self):
        for grid in self.grids:
            grid.finish()

    def discard(self):
        for grid in self.grids:
            grid.discard()


_SHOWN_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA; any other count is shown as its mean


def _display_channels(channels: int) -> int:
    return channels if channels in _SHOWN_CHANNELS else 1


def _displayable(values: np.ndarray) -> np.ndarray:
    """Pictures of ``(k, H, W, C)`` values: C kept for 1, 3 or 4 channels, else their mean."""
    if values.shape[-1] in _SHOWN_CHANNELS:
        return values
    return values.mean(axis=-1, keepdims=True)
