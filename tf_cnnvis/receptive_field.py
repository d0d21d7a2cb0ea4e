"""Analytic receptive fields of graph tensors with respect to the image input.

Single-unit reconstructions are exactly zero outside a unit's receptive field,
so knowing that field lets callers crop work around a unit and lets tests
check reconstructions. Probing with gradients would cost a backward pass per
layer and miss pixels whose gradient happens to be zero; reading the field off
the graph is exact and cheap.

The walk goes forward from the input through every op on a path to the
output, tracking per spatial axis the classic triple (Araujo et al., 2019):

* ``size``: extent of one unit's field in input pixels,
* ``jump``: input pixels between adjacent units (product of strides),
* ``start``: input coordinate of the first pixel of unit 0's field,

plus the tensor's spatial length, which TF's 'SAME' padding needs, and for
every unit the exact extent of the pixels it depends on. The triple describes
interior units; near the border the exact extent can be smaller than the
clipped triple box, because a tap that lands on a padded (zero) position of an
intermediate layer reads no pixels even where its nominal field overlaps the
image.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import ReceptiveFieldError, UnsupportedOpError
from tf_cnnvis.graph import as_tensor_name

__all__ = [
    "ReceptiveField",
    "ReceptiveFieldError",
    "UnsupportedOpError",
    "receptive_field",
    "receptive_fields",
]

logger = logging.getLogger("tf_cnnvis")

# Spatial axes are tracked as negative positions so that broadcasting (which
# aligns shapes from the right) and dropping a leading batch axis leave them
# unchanged. NHWC puts height at -3 and width at -2.
_NHWC_AXES = (-3, -2)

Extents = tuple[tuple[int, int], ...]


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of every unit of a tensor, per spatial axis (y, x).

    Unit ``(i, j)`` nominally sees input rows ``start[0] + i * jump[0]`` up
    to (not including) that plus ``size[0]``, and likewise for columns;
    ``start`` is negative where padding reaches outside the image.
    ``output_size`` is the tensor's spatial size for ``input_size``, the
    image size the field was computed for. ``extents`` holds, per axis and
    unit, the exact half-open range of image pixels the unit depends on
    (``(0, 0)`` for a unit that reads only padding); ``box`` uses it when
    clipping to ``input_size``.
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]
    output_size: tuple[int, int] | None = None
    input_size: tuple[int, int] | None = None
    extents: tuple[Extents, Extents] | None = dataclasses.field(default=None, compare=False, repr=False)

    def box(
        self, i: int, j: int, clip_to: tuple[int, int] | None = None
    ) -> tuple[int, int, int, int]:
        """Half-open ``(y0, x0, y1, x1)`` input box of unit ``(i, j)``.

        Without ``clip_to`` this is the nominal box, which may reach outside
        the image. ``clip_to=(height, width)`` gives the pixels a
        reconstruction of the unit can touch: for the image size the field
        was computed for, the exact bounding box of the unit's dependence;
        otherwise the nominal box clipped.
        """
        if self.output_size is not None:
            for name, index, length in (("i", i, self.output_size[0]), ("j", j, self.output_size[1])):
                if not 0 <= index < length:
                    raise ValueError(
                        f"unit index {name}={index} is outside the tensor's spatial "
                        f"size {self.output_size}; expected 0 <= {name} < {length}"
                    )
        if clip_to is not None and self.extents is not None and tuple(clip_to) == self.input_size:
            (y0, y1), (x0, x1) = self.extents[0][i], self.extents[1][j]
            if y0 == y1 or x0 == x1:
                return 0, 0, 0, 0
            return y0, x0, y1, x1
        y0 = self.start[0] + i * self.jump[0]
        x0 = self.start[1] + j * self.jump[1]
        y1, x1 = y0 + self.size[0], x0 + self.size[1]
        if clip_to is not None:
            height, width = clip_to
            y0, y1 = _clip(y0, y1, height)
            x0, x1 = _clip(x0, x1, width)
        return y0, x0, y1, x1


def _clip(lo: int, hi: int, length: int) -> tuple[int, int]:
    """Clip a half-open interval to ``[0, length)``, keeping it well formed when empty."""
    lo = min(max(lo, 0), length)
    return lo, max(min(hi, length), lo)


# ---------------------------------------------------------------------------
# Per-tensor states of the walk.

# Exact extents of an empty dependence, chosen so that min/max merge them away.
_EMPTY_LO = np.iinfo(np.int64).max
_EMPTY_HI = np.iinfo(np.int64).min


@dataclasses.dataclass(frozen=True, eq=False)
class _Axis:
    """One spatial axis of a tensor on the path.

    ``lo``/``hi`` have shape ``(phases, length)``: the exact pixel range each
    position depends on. There is one phase except between SpaceToBatchND and
    BatchToSpaceND, where each phase of the block sits in the batch.
    """

    size: int
    jump: int
    start: int
    lo: np.ndarray
    hi: np.ndarray

    @property
    def length(self) -> int:
        return self.lo.shape[1]

    @property
    def phases(self) -> int:
        return self.lo.shape[0]


@dataclasses.dataclass(frozen=True, eq=False)
class _Spatial:
    """A tensor whose units each depend on a translated window of the input."""

    axes: tuple[int, int]  # negative positions of the (y, x) axes
    fields: tuple[_Axis, _Axis]  # (y, x)


@dataclasses.dataclass(frozen=True)
class _NonLocal:
    """A tensor some of whose units depend on all input positions."""

    reason: str


class _Independent:
    """A tensor whose values do not depend on the input (weights, shapes)."""


_INDEPENDENT = _Independent()

@dataclasses.dataclass(frozen=True, eq=False)
class _Rows:
    """A matrix whose rows are the positions of a spatial tensor, flattened.

    Keras applies a Dense layer to each position of an (N, H, W, C) tensor
    as a Tensordot: Reshape to (N*H*W, C), MatMul, Reshape back. Row r
    reads what position r of ``spatial`` reads, so a Reshape back to the
    ``leading`` lengths restores the field. Any other use of the rows is
    taken to mix all positions, which never understates a field.
    """

    spatial: _Spatial
    leading: tuple[int, ...]  # lengths of the flattened axes, batch first


_State = _Spatial | _Rows | _NonLocal | _Independent


# ---------------------------------------------------------------------------
# Op tables.

# Ops whose output at a position depends only on the inputs at that position
# (channels may mix). Operands that do not depend on the input are broadcast
# weights and are ignored.
_POSITIONWISE = frozenset(
    {
        # activations and unary math
        "Relu", "Relu6", "LeakyRelu", "Elu", "Selu", "Sigmoid", "Tanh",
        "Softplus", "Softsign", "Exp", "Expm1", "Log", "Log1p", "Sqrt", "Rsqrt",
        "Square", "Abs", "Neg", "Reciprocal", "Inv", "Sign", "Floor", "Ceil",
        "Round", "Rint", "Sin", "Cos", "Erf", "Erfc", "IsNan", "IsFinite",
        "LogicalNot", "ClipByValue",
        # plumbing
        "Identity", "StopGradient", "PreventGradient", "Snapshot",
        "CheckNumerics", "EnsureShape", "Cast",
        "FakeQuantWithMinMaxArgs", "FakeQuantWithMinMaxVars",
        # binary / n-ary math with broadcasting
        "Add", "AddV2", "AddN", "Sub", "Mul", "MulNoNan", "RealDiv", "Div",
        "DivNoNan", "FloorDiv", "FloorMod", "TruncateDiv", "Maximum", "Minimum",
        "SquaredDifference", "Pow", "Less", "LessEqual", "Greater",
        "GreaterEqual", "Equal", "NotEqual", "LogicalAnd", "LogicalOr",
        "Select", "SelectV2",
        # normalisation across channels only
        "LRN",
    }
)

# Ops that only mix along the last axis (channels in NHWC).
_LAST_AXIS = frozenset({"Softmax", "LogSoftmax"})

# Ops with a data_format attribute and positionwise behaviour in NHWC.
_POSITIONWISE_NHWC = frozenset({"BiasAdd", "FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3"})

# Ops whose outputs depend on the input's shape only, never on its values.
_SHAPE_ONLY = frozenset({"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"})

# Ops that rearrange or contract positions, so a unit sees the whole input.
# A Reshape keeps the field when it leaves the axes up to the spatial ones
# alone, or flattens the positions into rows for a Dense applied at each
# position (see _Rows); any other Reshape mixes.
_MIXING = frozenset(
    {
        "MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3", "Einsum",
        "Tile", "Cumsum", "Cumprod", "GatherV2", "Gather",
    }
)

_REDUCTIONS = frozenset(
    {"Mean", "Sum", "Max", "Min", "Prod", "All", "Any", "EuclideanNorm", "ArgMax", "ArgMin"}
)

_WINDOWED = frozenset({"Conv2D", "DepthwiseConv2dNative", "MaxPool", "MaxPoolV2", "AvgPool"})

_REFUSED = {
    "Conv2DBackpropInput": "transposed convolutions (Conv2DTranspose) are not supported",
    "Conv3D": "3-D convolutions are not supported",
    "ResizeBilinear": "resizing is not supported",
    "ResizeNearestNeighbor": "resizing is not supported",
    "ResizeBicubic": "resizing is not supported",
    "DepthToSpace": "depth-to-space rearranges positions and is not supported",
    "SpaceToDepth": "space-to-depth rearranges positions and is not supported",
}


# ---------------------------------------------------------------------------
# Public entry point.


def receptive_field(
    graph: tf.Graph, input_name: str, output_name: str, input_size: tuple[int, int]
) -> ReceptiveField | None:
    """Receptive field of the units of ``output_name`` on the image ``input_name``.

    ``input_size`` is the image's ``(height, width)``: TF 'SAME' padding puts
    its extra pixel where the layer's input size says, so the field's start
    depends on it. Returns ``None`` when some path to the output mixes all
    positions (a Dense, Flatten or global pooling), so no finite field
    exists. Raises ``ReceptiveFieldError`` (a ``ValueError``) when the output
    does not depend on the input or the image is too small for the network,
    and its subclass ``UnsupportedOpError`` for an op whose spatial effect is
    not modelled.
    """
    return receptive_fields(graph, input_name, [output_name], input_size)[output_name]


def receptive_fields(
    graph: tf.Graph, input_name: str, output_names: list[str], input_size: tuple[int, int]
) -> dict[str, ReceptiveField | None]:
    """``receptive_field`` for several outputs, sharing one walk of the graph.

    Layer tables ask for every layer at once; the walk visits each op once
    instead of once per layer. Raises as ``receptive_field`` does, for the
    first output that has no answer.
    """
    height, width = _check_input_size(input_size)
    source = _tensor(graph, input_name, "input")
    _check_input_shape(source, (height, width))
    walk = _Walk(source, _Spatial(_NHWC_AXES, (_identity_axis(height), _identity_axis(width))))
    fields = {}
    for name in output_names:
        target = _tensor(graph, name, "output")
        fields[name] = _field(walk.state_of(target), source, target, (height, width))
    return fields


def _field(
    state: _State, source: tf.Tensor, target: tf.Tensor, input_size: tuple[int, int]
) -> ReceptiveField | None:
    if isinstance(state, _Independent):
        raise ReceptiveFieldError(
            f"'{target.name}' (op {target.op.type} '{target.op.name}') does not depend on "
            f"the input '{source.name}', so it has no receptive field on it"
        )
    if isinstance(state, _NonLocal):
        logger.debug("'%s' has no finite receptive field: %s", target.name, state.reason)
        return None
    if state.axes[0] > state.axes[1]:
        raise UnsupportedOpError(
            target.op, "the tensor's spatial axes are transposed (x before y); transpose it back first"
        )
    y, x = state.fields
    if y.phases != 1 or x.phases != 1:
        raise UnsupportedOpError(
            target.op,
            "the tensor lies between SpaceToBatchND and BatchToSpaceND (inside a dilated "
            "convolution); ask for the BatchToSpaceND output instead",
        )
    return ReceptiveField(
        size=(y.size, x.size),
        jump=(y.jump, x.jump),
        start=(y.start, x.start),
        output_size=(y.length, x.length),
        input_size=input_size,
        extents=(_extents(y), _extents(x)),
    )


def _identity_axis(length: int) -> _Axis:
    positions = np.arange(length, dtype=np.int64)[None, :]
    return _Axis(size=1, jump=1, start=0, lo=positions, hi=positions + 1)


def _extents(field: _Axis) -> Extents:
    return tuple(
        (int(lo), int(hi)) if lo < hi else (0, 0) for lo, hi in zip(field.lo[0], field.hi[0])
    )


def _check_input_size(input_size) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in input_size)
    except (TypeError, ValueError):
        raise ReceptiveFieldError(f"input_size must be (height, width), got {input_size!r}") from None
    if height < 1 or width < 1:
        raise ReceptiveFieldError(f"input_size must be positive, got {input_size!r}")
    return height, width


def _tensor(graph: tf.Graph, name: str, role: str) -> tf.Tensor:
    """Look a tensor up by name, suggesting close names when it is missing."""
    full_name = as_tensor_name(name)
    try:
        return graph.get_tensor_by_name(full_name)
    except (KeyError, ValueError):
        candidates = [t.name for op in graph.get_operations() for t in op.outputs]
        close = difflib.get_close_matches(full_name, candidates, n=5)
        hint = f"; closest tensor names: {', '.join(close)}" if close else ""
        raise ReceptiveFieldError(f"{role} tensor '{name}' is not in the graph{hint}") from None


def _check_input_shape(source: tf.Tensor, input_size: tuple[int, int]) -> None:
    shape = source.shape
    if shape.rank is None:
        return
    if shape.rank != 4:
        raise ReceptiveFieldError(
            f"input '{source.name}' has shape {shape}; an NHWC image batch of rank 4 is expected"
        )
    for axis, expected in zip((1, 2), input_size):
        static = shape[axis]
        if static is not None and static != expected:
            raise ReceptiveFieldError(
                f"input_size {input_size} does not match the static shape {shape} of '{source.name}'"
            )


# ---------------------------------------------------------------------------
# The walk.


class _NotStaticError(Exception):
    """A parameter that cannot be computed without running the network."""


_SHAPE_ARITHMETIC = {
    "Add": np.add, "AddV2": np.add, "Sub": np.subtract, "Mul": np.multiply,
    "FloorDiv": np.floor_divide, "FloorMod": np.mod, "Maximum": np.maximum,
    "Minimum": np.minimum, "Neg": np.negative,
}


class _Walk:
    """Bottom-up evaluation of tensor states, plus the parameter values it needs."""

    def __init__(self, source: tf.Tensor, start_state: _Spatial):
        self.states: dict[str, _State] = {source.name: start_state}
        self._values: dict[str, np.ndarray] = {}

    def state_of(self, target: tf.Tensor) -> _State:
        """Iterative post-order traversal, so deep networks do not hit recursion limits."""
        states = self.states
        in_progress: set[str] = set()
        stack = [target]
        while stack:
            tensor = stack[-1]
            if tensor.name in states:
                stack.pop()
                continue
            pending = [t for t in tensor.op.inputs if t.name not in states]
            if pending:
                if tensor.name in in_progress:
                    raise UnsupportedOpError(tensor.op, "the graph has a cycle (TF1 control flow)")
                in_progress.add(tensor.name)
                stack.extend(pending)
                continue
            stack.pop()
            in_progress.discard(tensor.name)
            inputs = [states[t.name] for t in tensor.op.inputs]
            states[tensor.name] = _propagate(tensor.op, tensor.value_index, inputs, self)
        return states[target.name]

    def value(self, op: tf.Operation, position: int, what: str) -> np.ndarray:
        """Value of a parameter operand (paddings, axes, crops).

        Most are constants. Dilated convolutions from ``tf.nn.convolution``
        (and so from Keras) compute their SpaceToBatchND paddings from the
        runtime shape; those are evaluated here from the shapes the walk has
        inferred for the chosen input size, without running the graph.
        """
        try:
            return self._evaluate(op.inputs[position])
        except _NotStaticError as missing:
            raise UnsupportedOpError(
                op, f"its {what} (input {position}) cannot be computed from shapes: {missing}"
            ) from None

    def _evaluate(self, tensor: tf.Tensor) -> np.ndarray:
        """Shape arithmetic in numpy; parameter subgraphs are short."""
        if tensor.name in self._values:
            return self._values[tensor.name]
        op = tensor.op
        value = tf.get_static_value(tensor)
        if value is None:
            if op.type in ("Identity", "StopGradient", "Snapshot", "Cast"):
                value = self._evaluate(op.inputs[0])
            elif op.type in ("Shape", "ShapeN", "Size"):
                shape = self._inferred_shape(op.inputs[tensor.value_index])
                value = int(np.prod(shape)) if op.type == "Size" else shape
            elif op.type == "Pack":
                value = np.stack([self._evaluate(t) for t in op.inputs], axis=op.get_attr("axis"))
            elif op.type == "ConcatV2":
                parts = [self._evaluate(t) for t in op.inputs]
                value = np.concatenate(parts[:-1], axis=int(parts[-1]))
            elif op.type == "StridedSlice":
                index = _strided_index(op, [self._evaluate(t) for t in op.inputs[1:]])
                value = self._evaluate(op.inputs[0])[tuple(index)]
            elif op.type == "GatherV2":
                params, indices, axis = (self._evaluate(t) for t in op.inputs)
                value = np.take(params, indices, axis=int(axis))
            elif op.type == "Prod":
                data, axes = (self._evaluate(t) for t in op.inputs)
                value = np.prod(data, axis=tuple(int(a) for a in np.ravel(axes)),
                                keepdims=op.get_attr("keep_dims"))
            elif op.type in _SHAPE_ARITHMETIC:
                value = _SHAPE_ARITHMETIC[op.type](*(self._evaluate(t) for t in op.inputs))
            else:
                raise _NotStaticError(f"{op.type} op '{op.name}' is not shape arithmetic")
        value = np.asarray(value, dtype=tensor.dtype.as_numpy_dtype)
        self._values[tensor.name] = value
        return value

    def shape_of(self, tensor: tf.Tensor) -> list[int] | None:
        """The full shape of a tensor on the path, or None where it cannot be inferred."""
        try:
            return self._inferred_shape(tensor)
        except _NotStaticError:
            return None

    def static_value(self, tensor: tf.Tensor) -> np.ndarray | None:
        """A parameter's value computed from shapes, or None where it needs the network."""
        try:
            return self._evaluate(tensor)
        except _NotStaticError:
            return None

    def _inferred_shape(self, tensor: tf.Tensor) -> list[int]:
        """Full shape of a tensor on the path; the batch defaults to 1."""
        shape = tensor.shape.as_list() if tensor.shape.rank is not None else None
        state = self.states.get(tensor.name)
        if shape is None or not isinstance(state, (_Spatial, _Independent)):
            raise _NotStaticError(f"the shape of '{tensor.name}' is unknown")
        if isinstance(state, _Spatial):
            for axis, field in zip(state.axes, state.fields):
                shape[len(shape) + axis] = field.length
            if shape[0] is None:
                shape[0] = 1
        if None in shape:
            raise _NotStaticError(f"the shape of '{tensor.name}' is only partly known: {tensor.shape}")
        return shape


def _strided_index(op: tf.Operation, params: list[np.ndarray]) -> list[slice | int]:
    """A StridedSlice's begin/end/strides and masks as a Python index."""
    for mask in ("ellipsis_mask", "new_axis_mask"):
        if op.get_attr(mask):
            raise UnsupportedOpError(op, f"{mask} is not supported")
    begin, end, strides = ([int(v) for v in np.ravel(p)] for p in params)
    begin_mask, end_mask = op.get_attr("begin_mask"), op.get_attr("end_mask")
    shrink_mask = op.get_attr("shrink_axis_mask")
    index = []
    for p, (b, e, s) in enumerate(zip(begin, end, strides)):
        if shrink_mask >> p & 1:
            index.append(b)
        else:
            index.append(slice(None if begin_mask >> p & 1 else b, None if end_mask >> p & 1 else e, s))
    return index


def _propagate(op: tf.Operation, index: int, inputs: list[_State], walk: _Walk) -> _State:
    """State of output ``index`` of ``op`` given the states of its inputs."""
    if op.type in _SHAPE_ONLY:
        return _INDEPENDENT
    for state in inputs:
        if isinstance(state, _NonLocal):
            return state
    if all(isinstance(state, _Independent) for state in inputs):
        return _INDEPENDENT
    if any(isinstance(state, _Rows) for state in inputs):
        return _through_rows(op, index, inputs, walk)

    kind = op.type
    if kind in _REFUSED:
        raise UnsupportedOpError(op, _REFUSED[kind])
    if kind in _MIXING:
        return _NonLocal(f"{kind} op '{op.name}' mixes all spatial positions")
    if kind in _POSITIONWISE:
        return _union(op, inputs)
    if kind in _LAST_AXIS:
        state = _union(op, inputs)
        if isinstance(state, _Spatial) and -1 in state.axes:
            return _NonLocal(f"{kind} op '{op.name}' normalises over a spatial axis")
        return state
    if kind in _POSITIONWISE_NHWC:
        _require_nhwc(op)
        if index == 0:
            return _union(op, inputs)
        if kind.startswith("FusedBatchNorm") and not op.get_attr("is_training"):
            return _INDEPENDENT
        return _NonLocal(f"{kind} op '{op.name}' computes batch statistics")
    if kind == "IdentityN":
        return inputs[index]
    handler = _HANDLERS.get(kind)
    if handler is None:
        raise UnsupportedOpError(
            op, "its effect on spatial positions is not known; only convolutions, pooling, "
            "padding, slicing, concatenation and positionwise ops are modelled",
        )
    return handler(op, inputs, walk)


def _spatial_inputs(inputs: list[_State]) -> list[_Spatial]:
    """Operands that depend on the input; the others are broadcast parameters."""
    return [state for state in inputs if isinstance(state, _Spatial)]


def _only_data_input(op: tf.Operation, inputs: list[_State], what: str) -> _Spatial:
    """The data operand of an op whose other operands must be static parameters."""
    for position, state in enumerate(inputs[1:], start=1):
        if not isinstance(state, _Independent):
            raise UnsupportedOpError(
                op, f"its {what} (input {position}) is computed from the input image"
            )
    state = inputs[0]
    if not isinstance(state, _Spatial):
        raise UnsupportedOpError(op, "its data input does not depend on the image but its parameters do")
    return state


def _union(op: tf.Operation, inputs: list[_State]) -> _Spatial | _NonLocal:
    """Merge several paths into the bounding field of their union.

    A unit of a residual sum or a channel concatenation reads the same
    position of every operand, so its field spans all of theirs; operands
    with different jumps would make that span vary from unit to unit.
    """
    spatial = _spatial_inputs(inputs)
    first = spatial[0]
    if len(spatial) == 1:
        return first
    if any(s.axes != first.axes for s in spatial):
        raise UnsupportedOpError(op, "its operands place the spatial axes differently")
    merged = []
    for k, axis_name in enumerate(("y", "x")):
        fields = [s.fields[k] for s in spatial]
        if len({(f.phases, f.length) for f in fields}) > 1:
            return _NonLocal(f"{op.type} op '{op.name}' broadcasts a spatial axis of one operand")
        jumps = {f.jump for f in fields}
        if len(jumps) > 1:
            raise UnsupportedOpError(
                op, f"its operands have different {axis_name} strides {sorted(jumps)} in input pixels"
            )
        start = min(f.start for f in fields)
        end = max(f.start + f.size for f in fields)
        merged.append(
            _Axis(
                size=end - start,
                jump=fields[0].jump,
                start=start,
                lo=np.minimum.reduce([f.lo for f in fields]),
                hi=np.maximum.reduce([f.hi for f in fields]),
            )
        )
    return _Spatial(first.axes, (merged[0], merged[1]))


def _require_nhwc(op: tf.Operation) -> None:
    try:
        data_format = op.get_attr("data_format")
    except ValueError:
        return
    if isinstance(data_format, bytes):
        data_format = data_format.decode()
    if data_format != "NHWC":
        raise UnsupportedOpError(
            op, f"data_format {data_format} is not supported; the graph must be NHWC"
        )


def _rank(op: tf.Operation, position: int = 0) -> int:
    rank = op.inputs[position].shape.rank
    if rank is None:
        raise UnsupportedOpError(op, f"the rank of input {position} is unknown")
    return rank


def _gather(field: _Axis, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Extents at ``positions`` (any shape); positions outside the axis read nothing."""
    valid = (positions >= 0) & (positions < field.length)
    index = np.clip(positions, 0, field.length - 1)
    lo = np.where(valid, field.lo[:, index], _EMPTY_LO)
    hi = np.where(valid, field.hi[:, index], _EMPTY_HI)
    return lo, hi


# ---------------------------------------------------------------------------
# Handlers of ops that move positions.


def _window_params(op: tf.Operation, walk: _Walk) -> tuple[list[int], list[int], list[int], str]:
    """(kernel, strides, dilations, padding) for the (y, x) axes."""
    if op.type in ("Conv2D", "DepthwiseConv2dNative"):
        kernel_shape = op.inputs[1].shape
        if kernel_shape.rank != 4 or None in kernel_shape[:2]:
            raise UnsupportedOpError(op, f"its filter has no static spatial shape ({kernel_shape})")
        kernel = [int(kernel_shape[0]), int(kernel_shape[1])]
        dilations = list(op.get_attr("dilations"))[1:3]
    elif op.type == "MaxPoolV2":
        kernel = [int(v) for v in walk.value(op, 1, "ksize")][1:3]
        dilations = [1, 1]
    else:
        kernel = list(op.get_attr("ksize"))[1:3]
        dilations = [1, 1]
    if op.type == "MaxPoolV2":
        strides = [int(v) for v in walk.value(op, 2, "strides")][1:3]
    else:
        strides = list(op.get_attr("strides"))[1:3]
    padding = op.get_attr("padding")
    if isinstance(padding, bytes):
        padding = padding.decode()
    return kernel, strides, dilations, padding


def _windowed(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    """Convolution or pooling: grow the field by the kernel, multiply the jump."""
    _require_nhwc(op)
    state = _only_data_input(op, inputs, "filter or window")
    if state.axes != _NHWC_AXES:
        raise UnsupportedOpError(op, "its input's spatial axes are not in NHWC position")
    kernel, strides, dilations, padding = _window_params(op, walk)
    fields = []
    for dim, (field, k, s, d) in enumerate(zip(state.fields, kernel, strides, dilations), start=1):
        extent = (k - 1) * d + 1
        if padding == "VALID":
            before = after = 0
        elif padding == "SAME":
            out = -(-field.length // s)
            total = max((out - 1) * s + extent - field.length, 0)
            before, after = total // 2, total - total // 2
        elif padding == "EXPLICIT":
            explicit = list(op.get_attr("explicit_paddings"))
            before, after = explicit[2 * dim], explicit[2 * dim + 1]
        else:
            raise UnsupportedOpError(op, f"padding {padding!r} is not SAME, VALID or EXPLICIT")
        length = (field.length + before + after - extent) // s + 1
        if length < 1:
            raise ReceptiveFieldError(
                f"{op.type} op '{op.name}' gets a spatial length of {field.length} but needs at least "
                f"{extent - before - after}: the input size is too small for this network"
            )
        taps = np.arange(length)[:, None] * s - before + np.arange(k)[None, :] * d
        lo, hi = _gather(field, taps)
        fields.append(
            _Axis(
                size=field.size + (extent - 1) * field.jump,
                jump=field.jump * s,
                start=field.start - before * field.jump,
                lo=lo.min(axis=-1),
                hi=hi.max(axis=-1),
            )
        )
    return _Spatial(state.axes, (fields[0], fields[1]))


def _pad(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    """Padding moves the field's start and lengthens the tensor.

    Zero-padded positions read no pixels. MirrorPad positions copy interior
    ones, so their exact extents are those of the mirrored positions, which
    can lie outside the nominal box.
    """
    state = _only_data_input(op, inputs, "paddings or constant value")
    paddings = walk.value(op, 1, "paddings")
    rank = len(paddings)
    mode = op.get_attr("mode").decode() if op.type == "MirrorPad" else None
    fields = []
    for axis, field in zip(state.axes, state.fields):
        before, after = (int(v) for v in paddings[rank + axis])
        positions = np.arange(-before, field.length + after)
        if mode is not None:
            shift = 0 if mode == "REFLECT" else 1
            positions = np.where(positions < 0, -positions - shift, positions)
            last = field.length - 1
            positions = np.where(positions > last, 2 * last + shift - positions, positions)
        lo, hi = _gather(field, positions)
        fields.append(_Axis(field.size, field.jump, field.start - before * field.jump, lo, hi))
    return _Spatial(state.axes, (fields[0], fields[1]))


def _slice(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    """Cropping (and strided subsampling) moves the start and multiplies the jump."""
    state = _only_data_input(op, inputs, "slice bounds")
    rank = _rank(op)
    if op.type == "Slice":
        begin, sizes = (walk.value(op, p, what).tolist() for p, what in ((1, "begin"), (2, "size")))
        index = [slice(b, None if n == -1 else b + n) for b, n in zip(begin, sizes)]
    else:
        index = _strided_index(op, [walk.value(op, p, "slice bounds") for p in (1, 2, 3)])
    fields = []
    for axis, field in zip(state.axes, state.fields):
        position = rank + axis
        if position >= len(index):
            fields.append(field)
            continue
        entry = index[position]
        if not isinstance(entry, slice):
            raise UnsupportedOpError(op, "it removes a spatial axis")
        step = entry.step or 1
        if step < 1:
            raise UnsupportedOpError(op, "slices with a negative step (flips) are not supported")
        kept = range(field.length)[entry]
        if not kept:
            raise ReceptiveFieldError(
                f"{op.type} op '{op.name}' leaves nothing of a spatial axis of length "
                f"{field.length}: the input size is too small for this network"
            )
        positions = np.asarray(kept)
        fields.append(
            _Axis(
                size=field.size,
                jump=field.jump * step,
                start=field.start + kept.start * field.jump,
                lo=field.lo[:, positions],
                hi=field.hi[:, positions],
            )
        )
    dropped = {p - rank for p, entry in enumerate(index) if not isinstance(entry, slice)}
    return _Spatial(_drop_axes(state.axes, dropped), (fields[0], fields[1]))


def _block_params(op: tf.Operation, state: _Spatial, walk: _Walk, what: str) -> tuple[list[int], list]:
    if state.axes != _NHWC_AXES or _rank(op) != 4:
        raise UnsupportedOpError(op, "only the two spatial axes of an NHWC tensor may be blocked")
    blocks = [int(b) for b in walk.value(op, 1, "block shape")]
    amounts = walk.value(op, 2, what)
    if len(blocks) != 2 or np.shape(amounts) != (2, 2):
        raise UnsupportedOpError(op, f"block shape {blocks} does not cover exactly the two spatial axes")
    return blocks, amounts.tolist()


def _space_to_batch(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    """First half of a dilated convolution as ``tf.nn.convolution`` builds it.

    Every phase of the block moves into the batch and is then convolved the
    same way, so the nominal field can ignore the phase: padding moves the
    start, and neighbours along an axis are now ``block`` units apart. The
    exact extents keep one row per phase.
    """
    state = _only_data_input(op, inputs, "block shape or paddings")
    blocks, paddings = _block_params(op, state, walk, "paddings")
    fields = []
    for field, block, (before, after) in zip(state.fields, blocks, paddings):
        if field.phases != 1:
            raise UnsupportedOpError(op, "nested SpaceToBatchND blocks are not supported")
        padded = field.length + before + after
        if padded % block:
            raise UnsupportedOpError(
                op, f"padded length {padded} is not a multiple of the block {block}"
            )
        lo, hi = _gather(field, np.arange(-before, field.length + after))
        fields.append(
            _Axis(
                size=field.size,
                jump=field.jump * block,
                start=field.start - before * field.jump,
                lo=lo.reshape(-1, block).T,
                hi=hi.reshape(-1, block).T,
            )
        )
    return _Spatial(state.axes, (fields[0], fields[1]))


def _batch_to_space(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    """Second half of a dilated convolution: interleave the phases, then crop."""
    state = _only_data_input(op, inputs, "block shape or crops")
    blocks, crops = _block_params(op, state, walk, "crops")
    fields = []
    for field, block, (before, after) in zip(state.fields, blocks, crops):
        if field.phases != block or field.jump % block:
            raise UnsupportedOpError(op, "it does not undo a matching SpaceToBatchND")
        jump = field.jump // block
        end = field.length * block - after
        fields.append(
            _Axis(
                size=field.size,
                jump=jump,
                start=field.start + before * jump,
                lo=field.lo.T.reshape(1, -1)[:, before:end],
                hi=field.hi.T.reshape(1, -1)[:, before:end],
            )
        )
    return _Spatial(state.axes, (fields[0], fields[1]))


# ---------------------------------------------------------------------------
# Handlers of ops that only move axes around.


def _normalise_axes(op: tf.Operation, axes, rank: int) -> set[int]:
    """Axes as negative positions, so they compare with tracked spatial axes."""
    values = [int(a) for a in np.ravel(axes)]
    for a in values:
        if not -rank <= a < rank:
            raise UnsupportedOpError(op, f"axis {a} is out of range for rank {rank}")
    return {a - rank if a >= 0 else a for a in values}


def _drop_axes(axes: tuple[int, int], dropped: set[int]) -> tuple[int, int]:
    """Negative positions of ``axes`` after removing the ``dropped`` axes."""
    return tuple(a + sum(1 for d in dropped if d > a) for a in axes)


def _reduction(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _State:
    state = _only_data_input(op, inputs, "reduction axes")
    rank = _rank(op)
    reduced = _normalise_axes(op, walk.value(op, 1, "reduction axes"), rank)
    if reduced & set(state.axes):
        return _NonLocal(f"{op.type} op '{op.name}' reduces over spatial positions")
    keep_dims = op.type not in ("ArgMax", "ArgMin") and op.get_attr("keep_dims")
    if keep_dims:
        return state
    return _Spatial(_drop_axes(state.axes, reduced), state.fields)


def _concat(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _State:
    axis_position = 0 if op.type == "Concat" else len(op.inputs) - 1
    if not isinstance(inputs[axis_position], _Independent):
        raise UnsupportedOpError(op, "its axis is computed from the input image")
    data = [inputs[p] for p in range(len(inputs)) if p != axis_position]
    rank = _rank(op, 1 if op.type == "Concat" else 0)
    (axis,) = _normalise_axes(op, walk.value(op, axis_position, "axis"), rank)
    if axis in _spatial_inputs(data)[0].axes:
        raise UnsupportedOpError(op, "concatenation along a spatial axis is not supported")
    return _union(op, data)


def _reshape(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _State:
    """Keep the field through a Reshape that leaves the axes up to the spatial ones alone,
    or flatten the positions into rows (a Dense at each position); anything else mixes."""
    state = _only_data_input(op, inputs, "shape")
    shape, target = walk.shape_of(op.inputs[0]), walk.static_value(op.inputs[1])
    mixes = _NonLocal(f"Reshape op '{op.name}' rearranges spatial positions")
    if shape is None or target is None:
        return mixes
    target = [int(v) for v in np.ravel(target)]
    if target.count(-1) == 1:
        known = int(np.prod([v for v in target if v != -1]))
        target[target.index(-1)] = int(np.prod(shape)) // max(known, 1)
    rank = len(shape)
    last_spatial = rank + max(state.axes)
    if target[:last_spatial + 1] == shape[:last_spatial + 1]:
        return _Spatial(tuple(rank + a - len(target) for a in state.axes), state.fields)
    if len(target) == 2 and target[1] == shape[-1] and last_spatial < rank - 1:
        return _Rows(state, tuple(shape[:-1]))
    return mixes


def _through_rows(op: tf.Operation, index: int, inputs: list[_State], walk: _Walk) -> _State:
    """Follow rows of positions through a Dense (MatMul, bias, activation) and back."""
    rows = [state for state in inputs if isinstance(state, _Rows)]
    mixes = _NonLocal(f"{op.type} op '{op.name}' mixes the rows of flattened positions")
    if len(rows) > 1 or any(isinstance(state, _Spatial) for state in inputs):
        return mixes
    (flat,) = rows
    kind = op.type
    if kind == "IdentityN":
        return inputs[index]
    if kind == "MatMul" and isinstance(inputs[0], _Rows) and not op.get_attr("transpose_a"):
        return flat
    if kind in _POSITIONWISE or kind == "BiasAdd":
        return flat
    if kind == "Reshape" and isinstance(inputs[0], _Rows):
        target = walk.static_value(op.inputs[1])
        if target is not None and len(np.ravel(target)) == len(flat.leading) + 1:
            leading = [int(v) for v in np.ravel(target)[:-1]]
            if leading == list(flat.leading) or (leading.count(-1) == 1 and all(
                    a in (-1, b) for a, b in zip(leading, flat.leading))):
                return flat.spatial
    return mixes


def _squeeze(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    state = _only_data_input(op, inputs, "parameters")
    rank = _rank(op)
    dims = list(op.get_attr("squeeze_dims"))
    if not dims:
        shape = op.inputs[0].shape
        if any(shape[p] is None for p in range(rank) if p - rank not in state.axes):
            raise UnsupportedOpError(op, "it squeezes all size-1 axes of a tensor of unknown shape")
        dims = [p for p in range(rank) if shape[p] == 1 and p - rank not in state.axes]
    dropped = _normalise_axes(op, dims, rank)
    if dropped & set(state.axes):
        raise UnsupportedOpError(op, "it removes a spatial axis")
    return _Spatial(_drop_axes(state.axes, dropped), state.fields)


def _expand_dims(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    state = _only_data_input(op, inputs, "axis")
    (inserted,) = _normalise_axes(op, walk.value(op, 1, "axis"), _rank(op) + 1)
    # Axes at or after the inserted one keep their negative positions;
    # earlier ones move one further from the end.
    axes = tuple(a - 1 if a < inserted else a for a in state.axes)
    return _Spatial(axes, state.fields)


def _transpose(op: tf.Operation, inputs: list[_State], walk: _Walk) -> _Spatial:
    state = _only_data_input(op, inputs, "permutation")
    perm = [int(p) for p in walk.value(op, 1, "permutation")]
    rank = len(perm)
    axes = tuple(perm.index(rank + a) - rank for a in state.axes)
    return _Spatial(axes, state.fields)


_HANDLERS = {
    **{kind: _windowed for kind in _WINDOWED},
    **{kind: _reduction for kind in _REDUCTIONS},
    "Pad": _pad,
    "PadV2": _pad,
    "MirrorPad": _pad,
    "StridedSlice": _slice,
    "Slice": _slice,
    "SpaceToBatchND": _space_to_batch,
    "BatchToSpaceND": _batch_to_space,
    "ConcatV2": _concat,
    "Concat": _concat,
    "Squeeze": _squeeze,
    "ExpandDims": _expand_dims,
    "Transpose": _transpose,
    "Reshape": _reshape,
}
