"""Render: values to uint8 pictures and grids, sent to disk and TensorBoard.

One home for how a visualization looks and where its pictures go: the
normalization and grid helpers (``image_normalization`` and
``convert_into_grid`` keep the names and signatures of the original
tf_cnnvis helpers, and are safe on constant images, NaN and infinities,
which become the lowest value), the per-call :class:`Writer` that names
layer folders and TensorBoard tags, and the grids that reconstructions
fill chunk by chunk. The bytes themselves are written by
:mod:`tf_cnnvis.write`.
"""

from __future__ import annotations

import dataclasses
import zlib

import numpy as np

from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.options import check_integer, check_scaling
from tf_cnnvis.write import (AtomicFile, GridPng, PngStream, ShrunkPng, SummaryWriter, encode_png,
                             ensure_folder, grid_layout, grid_shape, grid_text, inside, safe_names,
                             summary_factor, write_atomic)


@dataclasses.dataclass
class VisualizationResult:
    """What a visualization computed and wrote. Always truthy.

    Attributes:
        kind: ``"activations"``, ``"deconvolution"``, ``"deepdream"`` or ``"attribution"``.
        arrays: layer name -> raw values. Activations: the layer's output
            ``(N, H, W, C)``; reconstructions: ``{method: (N, C, H, W, 3)}``.
            Attribution maps are keyed by method instead (see
            :func:`tf_cnnvis.attribution_visualization`).
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



# --------------------------------------------------------------------------- pictures

# How many values normalize_each scales at once: bounds its float64
# temporaries (a few copies of one block, ~80 MB) whatever the batch size.
_BLOCK_VALUES = 1 << 21


def image_normalization(image, s=0.1, ubound=255.0):
    """Min-max scale ``image`` to ``[0, ubound]`` as uint8.

    ``s`` is kept for compatibility with the original signature and unused.
    A constant image maps to 0; non-finite values are treated as the minimum
    of the finite ones. The maximum maps to exactly ``ubound`` (a truncated
    254 would leave no pixel white).
    """
    image = np.asarray(image)
    if image.size == 0:
        return np.zeros(image.shape, np.uint8)
    return normalize_rows(image.reshape(1, -1), ubound).reshape(image.shape)


def normalize_each(images, ubound=255.0):
    """``image_normalization`` applied to each item of a batch on its own.

    Works through the batch in blocks, so thousands of reconstructions do
    not need several float copies of the whole batch at once.
    """
    images = np.asarray(images)
    result = np.zeros(images.shape, np.uint8)
    if images.shape[0] == 0 or images.size == 0:
        return result
    per_item = images.size // images.shape[0]
    block = max(1, _BLOCK_VALUES // per_item)
    for begin in range(0, images.shape[0], block):
        part = images[begin:begin + block]
        result[begin:begin + block] = normalize_rows(part.reshape(part.shape[0], -1),
                                                      ubound).reshape(part.shape)
    return result


# Reconstructions are signed, and zero is mid-grey. Their scale is a high
# percentile of each picture's magnitudes rather than its largest value, so
# the few brightest pixels saturate instead of pressing everything else into
# grey: with min-max scaling the 1st-99th percentile of VGG16's guided and
# deconvnet grids spanned 44 to 108 of 255 grey levels.
ROBUST_PERCENTILE = 99.5


def normalize_signed(images, percentile: float = ROBUST_PERCENTILE) -> np.ndarray:
    """Each item of a batch as uint8 with zero at mid-grey (128) and +-its scale at 255 / 0.

    The scale is the ``percentile`` of the item's magnitudes (their maximum
    where that percentile is zero, so sparse pictures keep their few
    pixels); values beyond it saturate. An item of zeros is flat grey.
    Non-finite values count as zero.
    """
    images = np.asarray(images)
    result = np.full(images.shape, 128, np.uint8)
    if images.size == 0:
        return result
    per_item = images.size // images.shape[0]
    block = max(1, _BLOCK_VALUES // per_item)
    for begin in range(0, images.shape[0], block):
        part = images[begin:begin + block]
        rows = np.nan_to_num(part.reshape(part.shape[0], -1).astype(np.float32), nan=0.0, posinf=0.0,
                             neginf=0.0)
        magnitude = np.abs(rows)
        kth = min(per_item - 1, int(np.ceil(percentile / 100 * per_item)) - 1)
        scale = np.partition(magnitude, max(kth, 0), axis=1)[:, max(kth, 0)]
        scale = np.where(scale > 0, scale, magnitude.max(axis=1))[:, None]
        scaled = np.clip(rows / np.where(scale > 0, scale, 1), -1, 1) * 127.5 + 127.5
        result[begin:begin + block] = np.rint(scaled).astype(np.uint8).reshape(part.shape)
    return result


def normalize_rows(rows, ubound):
    """Each row of a 2-D array min-max scaled on its own to uint8 ``[0, ubound]``.

    Rows of finite float32 values (every reconstruction) are scaled in
    float32, in place; the rest (NaN, infinities, spans beyond float32,
    other dtypes) take the float64 path that handles them.
    """
    if rows.dtype != np.float32 or not 0 < ubound <= 255:
        return _normalize_rows_float64(rows, ubound)
    low, high = rows.min(axis=1, keepdims=True), rows.max(axis=1, keepdims=True)
    with np.errstate(over="ignore", invalid="ignore"):
        span = high - low
    plain = np.isfinite(span[:, 0])  # False for NaN, infinities and overflowing spans
    if not plain.all():
        result = np.empty(rows.shape, np.uint8)
        if plain.any():
            result[plain] = normalize_rows(rows[plain], ubound)
        result[~plain] = _normalize_rows_float64(rows[~plain], ubound)
        return result
    scaled = np.subtract(rows, low)
    # (x - low) / span is exactly 1 at the maximum, so it maps to ubound itself.
    scaled /= np.where(span > 0, span, np.float32(1))
    scaled *= np.float32(ubound)
    scaled[(span <= 0)[:, 0]] = 0
    np.clip(scaled, 0, min(ubound, 255), out=scaled)
    return scaled.astype(np.uint8)


def _normalize_rows_float64(rows, ubound):
    rows = rows.astype(np.float64)
    finite = np.isfinite(rows)
    low = np.where(finite, rows, np.inf).min(axis=1, keepdims=True)
    high = np.where(finite, rows, -np.inf).max(axis=1, keepdims=True)
    nothing_finite = ~np.isfinite(low)
    low, high = np.where(nothing_finite, 0.0, low), np.where(nothing_finite, 0.0, high)
    with np.errstate(over="ignore"):
        overflow = ~np.isfinite(high - low)  # e.g. -1e308..1e308: halving is exact and fits
    if overflow.any():
        factor = np.where(overflow, 0.5, 1.0)
        rows, low, high = rows * factor, low * factor, high * factor
    span = high - low
    with np.errstate(invalid="ignore", over="ignore"):
        # (x - low) / span is exactly 1 at the maximum, so it maps to ubound itself.
        scaled = (rows - low) / np.where(span > 0, span, 1.0) * ubound
    scaled = np.where(finite & (span > 0), scaled, 0.0)
    return np.clip(scaled, 0, min(ubound, 255)).astype(np.uint8)


def convert_into_grid(Xs, padding=1, ubound=255.0):  # noqa: N803 - original name
    """Tile ``Xs`` of shape (N, H, W, C) into a near-square grid, uint8.

    Cells are separated by ``padding`` pixels of value ``ubound``; empty
    cells at the end stay ``ubound`` too.
    """
    Xs = np.asarray(Xs)  # noqa: N806 - the original's argument name
    if Xs.ndim == 3:
        Xs = Xs[..., None]  # noqa: N806
    if Xs.ndim != 4:
        raise ValueError(f"convert_into_grid takes an array of shape (N, H, W, C); got shape {Xs.shape}")
    n, height, width, channels = Xs.shape
    if padding < 0:
        raise ValueError(f"padding={padding!r} must be >= 0")
    columns, rows = grid_layout(n)
    if Xs.dtype != np.uint8:
        with np.errstate(over="ignore"):  # beyond float32 is beyond 255 anyway
            cells = np.clip(np.nan_to_num(Xs.astype(np.float32, copy=False), nan=0.0, posinf=ubound,
                                          neginf=0.0), 0, 255).astype(np.uint8)
    else:
        cells = Xs
    grid = np.full((rows * height + padding * (rows - 1), columns * width + padding * (columns - 1),
                    channels), min(ubound, 255), dtype=np.uint8)
    for index in range(n):
        row, column = divmod(index, columns)
        y, x = row * (height + padding), column * (width + padding)
        grid[y:y + height, x:x + width] = cells[index]
    return grid


def image_parts(index: int, count: int) -> tuple[str, ...]:
    return (f"image_{index:03d}",) if count > 1 else ()


def image_tag(layer: LayerInfo, what: str, index: int, count: int) -> str:
    return f"{layer.name}/{what}" + (f"/image_{index:03d}" if count > 1 else "")


def feature_grid(values: np.ndarray) -> np.ndarray:
    """One image's activations ``(H, W, C)`` or ``(C,)`` as a uint8 grid."""
    if values.ndim == 1:  # a dense layer: one pixel per unit, enlarged
        side = int(np.ceil(np.sqrt(values.size)))
        padded = np.full(side * side, np.nan)
        padded[:values.size] = values
        cells = image_normalization(padded.reshape(side, side))
        return np.kron(cells, np.ones((8, 8), np.uint8))
    maps = np.moveaxis(values, -1, 0)[..., None]  # (C, H, W, 1)
    return convert_into_grid(normalize_each(maps))


class FieldView:
    """Single units as Zeiler & Fergus drew them: each reconstruction cut to its unit's
    receptive field, beside the input patch under the same field.

    ``boxes`` holds ``(y0, x0, y1, x1)`` per image and drawn channel (the
    field clipped to the image); ``pictures`` the input images as RGB uint8.
    Both halves of a cell are scaled to the field's nominal size, and small
    fields are enlarged to at least ``MIN_SIDE`` pixels with whole pixels.
    """

    MIN_SIDE = 64
    GAP = 2

    def __init__(self, boxes: np.ndarray, pictures: np.ndarray, field_size):
        self.boxes, self.pictures = np.asarray(boxes), pictures
        height, width = (min(int(side), limit) for side, limit in zip(field_size, pictures.shape[1:3]))
        factor = max(1, -(-self.MIN_SIDE // max(height, width)))
        self.size = (height * factor, width * factor)
        self.cell_shape = (self.size[0], 2 * self.size[1] + self.GAP, 3)

    def cells(self, image: int, first: int, values: np.ndarray, normalize) -> np.ndarray:
        """Cells of the reconstructions ``values`` of drawn channels ``first...`` on ``image``."""
        cells = np.full((len(values),) + self.cell_shape, 255, np.uint8)
        width = self.size[1]
        for offset, value in enumerate(values):
            y0, x0, y1, x1 = (int(v) for v in self.boxes[image, first + offset])
            if y1 <= y0 or x1 <= x0:  # a unit that reads only padding
                y0, x0, y1, x1 = 0, 0, *self.pictures.shape[1:3]
            reconstruction = normalize(_displayable(value[None, y0:y1, x0:x1]))[0]
            cells[offset, :, :width] = self._fit(_as_rgb(reconstruction))
            cells[offset, :, width + self.GAP:] = self._fit(self.pictures[image, y0:y1, x0:x1])
        return cells

    def _fit(self, picture: np.ndarray) -> np.ndarray:
        """``picture`` (h, w, 3) scaled to the cell's half: whole pixels when enlarging."""
        from PIL import Image

        if picture.shape[:2] == self.size:
            return picture
        smaller = picture.shape[0] > self.size[0] or picture.shape[1] > self.size[1]
        resample = Image.BILINEAR if smaller else Image.NEAREST
        return np.asarray(Image.fromarray(picture).resize(self.size[::-1], resample))


def _as_rgb(picture: np.ndarray) -> np.ndarray:
    """A grey, RGB or RGBA uint8 picture ``(h, w, c)`` as RGB."""
    return np.repeat(picture, 3, axis=-1) if picture.shape[-1] == 1 else picture[..., :3]


class ReconstructionGrids:
    """Receives one layer's reconstructions chunk by chunk: keeps and/or renders them.

    Each chunk is scaled and placed into its image's grid (encoded as it
    fills) and, with ``save_channels``, written one PNG per channel, so
    rendering never holds more than a chunk and a row of grid cells.
    """

    def __init__(self, writer: Writer, layer: LayerInfo, parts: tuple[str, ...], numbers, count: int,
                 image_shape, keep: bool, save_channels: bool, scaling: str = "robust",
                 fields: FieldView | None = None):
        self.writer, self.layer, self.parts, self.numbers = writer, layer, parts, numbers
        self.count, self.save_channels, self.fields = count, save_channels, fields
        self.normalize = normalize_signed if check_scaling(scaling) == "robust" else normalize_each
        self.arrays = np.zeros((count, len(numbers)) + tuple(image_shape), np.float32) if keep else None
        cell = fields.cell_shape if fields is not None else (
            tuple(image_shape[:2]) + (_display_channels(image_shape[-1]),))
        what = "/".join(parts)
        self.grids = []
        try:
            for image in range(count if writer.enabled else 0):
                self.grids.append(writer.grid(layer, parts + image_parts(image, count), "grid_image.png",
                                              [int(n) for n in numbers], cell, image_tag(layer, what, image, count)))
        except BaseException:
            self.discard()
            raise

    def __call__(self, image: int, first: int, values: np.ndarray):
        if self.arrays is not None:
            self.arrays[image, first:first + len(values)] = values
        if not self.grids:
            return
        if self.fields is not None:
            pictures = self.fields.cells(image, first, values, self.normalize)
        else:
            pictures = self.normalize(_displayable(values))
        self.grids[image].add(pictures)
        if self.save_channels:
            parts = self.parts + image_parts(image, self.count) + ("channels",)
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


# --------------------------------------------------------------------------- colour maps

# Viridis (van der Walt and Smith, matplotlib's default map): perceptually
# uniform, so equal steps of a value look like equal steps of colour, and it
# reads in grey and by colour-blind readers. Ten stops at 0, 1/9, ..., 1;
# interpolating linearly between them stays within 2 levels of the full table.
VIRIDIS = np.array([[68, 1, 84], [72, 40, 120], [62, 73, 137], [49, 104, 142], [38, 130, 142],
                    [31, 158, 137], [53, 183, 121], [110, 206, 88], [181, 222, 43], [253, 231, 37]],
                   np.float32)


def colour_map(values, table: np.ndarray = VIRIDIS) -> np.ndarray:
    """Values in [0, 1] (clipped; NaN as 0) as RGB uint8 ``(..., 3)`` through ``table``'s stops."""
    values = np.nan_to_num(np.clip(np.asarray(values, np.float32), 0, 1))
    position = values * (len(table) - 1)
    low = np.minimum(position.astype(np.int64), len(table) - 2)
    fraction = (position - low)[..., None]
    return np.rint(table[low] * (1 - fraction) + table[low + 1] * fraction).astype(np.uint8)


def positive_scale(values) -> tuple[np.ndarray, float]:
    """(``max(values, 0)`` divided by its maximum, that maximum). All zero (or nothing finite): zeros and 0.

    A map with no positive value is shown as zero, never stretched: the
    scale is its own maximum, not its range.
    """
    values = np.nan_to_num(np.asarray(values, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    positive = np.maximum(values, 0)
    top = float(positive.max()) if positive.size else 0.0
    if top <= 0:
        return np.zeros(positive.shape, np.float32), 0.0
    return (positive / top).astype(np.float32), top


def display_image(image, deprocess=None) -> np.ndarray:
    """A model input ``(H, W, C)`` as an RGB uint8 picture.

    ``deprocess`` maps it to RGB in [0, 255] (e.g. undoing a mean
    subtraction); without it its own range is stretched to [0, 255]. One
    channel is grey; channel counts other than 3 are shown as their mean.
    """
    image = np.asarray(image)
    if deprocess is not None:
        picture = np.clip(np.rint(np.asarray(deprocess(image[None]), np.float32)[0]), 0, 255).astype(np.uint8)
    else:
        picture = image_normalization(image if image.shape[-1] in (1, 3) else image.mean(axis=-1, keepdims=True))
    if picture.ndim == 2:
        picture = picture[..., None]
    if picture.shape[-1] != 3:
        picture = np.repeat(picture.mean(axis=-1, keepdims=True).astype(np.uint8), 3, axis=-1)
    return picture


def colour_overlay(picture: np.ndarray, values, opacity: float = 0.5) -> np.ndarray:
    """``values`` in [0, 1] colour-mapped over an RGB ``picture`` of the same size."""
    coloured = colour_map(values).astype(np.float32)
    mixed = (1 - opacity) * picture.astype(np.float32) + opacity * coloured
    return np.clip(np.rint(mixed), 0, 255).astype(np.uint8)


def with_colour_bar(picture: np.ndarray, table: np.ndarray = VIRIDIS) -> np.ndarray:
    """``picture`` with its scale beside it: a white gap and a strip running from 1 (top) to 0."""
    height, width = picture.shape[:2]
    gap, bar = 2, max(4, min(16, width // 12))
    strip = colour_map(np.linspace(1, 0, height, dtype=np.float32)[:, None].repeat(bar, axis=1), table)
    white = np.full((height, gap, 3), 255, np.uint8)
    return np.concatenate([picture, white, strip], axis=1)


# --------------------------------------------------------------------------- the writer

# The input images, at the top of the output folder, where the gallery shows them first.
INPUT_FILE = "input_{:03d}.png"


class Writer:
    """Writes one call's pictures to ``path_outdir`` and ``path_logdir``."""

    def __init__(self, path_outdir, path_logdir, step, result: VisualizationResult, layers,
                 model_names=()):
        self.step = check_integer("step", step)
        self.outdir = ensure_folder(path_outdir, "output folder") if path_outdir is not None else None
        self.summary = SummaryWriter.for_logdir(path_logdir) if path_logdir is not None else None
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
              tag: str | None, description: str = "", text: dict[str, str] | None = None):
        """Encode ``picture`` once; write it to disk and queue it for TensorBoard (with ``description``).

        ``text``: PNG text chunks, e.g. :func:`grid_text` for a grid.
        """
        shape = picture.shape[:2] + (1 if picture.ndim == 2 else picture.shape[-1],)
        factor = summary_factor(shape)
        self.png(layer, parts, filename, encode_png(picture, text), shape, tag if factor == 1 else None,
                 description)
        if factor > 1 and tag is not None and self.summary is not None:
            shrunk = ShrunkPng(*shape, factor)
            shrunk.write(picture)
            note = self.reduction_note(shape, factor, layer, parts, filename)
            self.queue(tag, shrunk.finish(), shrunk.shape, f"{description}; {note}" if description else note)

    def png(self, layer: LayerInfo, parts: tuple[str, ...], filename: str, png: bytes, shape, tag: str | None,
            description: str = ""):
        """Write encoded ``png`` of ``shape`` (H, W, C) to disk and queue it for TensorBoard."""
        if self.outdir is not None:
            self.result.paths.append(write_atomic(self.path(layer, parts, filename), png))
        if tag is not None:
            self.queue(tag, png, shape, description)

    def inputs(self, images: np.ndarray, deprocess=None):
        """Write the input images as a person sees them (see :func:`display_image`) as INPUT_FILE."""
        if self.outdir is None:
            return
        for index, image in enumerate(images):
            self.result.paths.append(write_atomic(inside(self.outdir, INPUT_FILE.format(index)),
                                                  encode_png(display_image(image, deprocess))))

    def path(self, layer: LayerInfo, parts: tuple[str, ...], filename: str) -> str:
        return inside(self.outdir, self.folders[layer.name], *parts, filename)

    def queue(self, tag: str, png: bytes, shape, description: str = ""):
        if self.summary is not None:
            self._pending[tag] = (png, *shape, description)

    def grid(self, layer: LayerInfo, parts: tuple[str, ...], filename: str, labels, cell_shape,
             tag: str) -> GridOutput:
        """A grid of one cell per label, written as its cells arrive (see :class:`GridOutput`)."""
        return GridOutput(self, layer, parts, filename, len(labels), cell_shape, tag,
                          grid_text(labels, cell_shape))

    def reduction_note(self, shape, factor: int, layer: LayerInfo, parts, filename) -> str:
        """The TensorBoard description of a picture of ``shape`` shown ``factor`` times smaller."""
        where = f"; every pixel is in {self.path(layer, parts, filename)}" if self.outdir is not None else ""
        return f"reduced {factor}x from {shape[1]}x{shape[0]} px{where}"

    def flush(self):
        if self.summary is not None and self._pending:
            self.summary.add_images(self._pending, self.step)
            self._pending = {}


class GridOutput:
    """One grid of reconstructions, filled cell by cell and written by :meth:`finish`.

    A grid within TensorBoard's size limit is encoded in memory and the
    same bytes go to disk and to the event file. A larger one is encoded
    straight into its (temporary) file, and TensorBoard gets a reduced copy
    made from the same rows: a 4096-cell grid never sits in memory, whole or
    compressed. :meth:`discard` removes the temporary file of a grid that
    will not be finished.
    """

    def __init__(self, writer: Writer, layer: LayerInfo, parts, filename: str, count: int, cell_shape,
                 tag: str, text: dict[str, str] | None = None):
        self.writer, self.layer, self.parts, self.filename, self.tag = writer, layer, parts, filename, tag
        self.shape = grid_shape(count, cell_shape)
        self.factor = summary_factor(self.shape)
        self.file = None
        outputs = []
        if self.factor == 1:
            outputs.append(PngStream(*self.shape, strategy=zlib.Z_RLE, text=text))
        else:
            if writer.outdir is not None:
                self.file = AtomicFile(writer.path(layer, parts, filename))
                outputs.append(PngStream(*self.shape, out=self.file, strategy=zlib.Z_RLE, text=text))
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
