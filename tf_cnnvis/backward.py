"""Backward passes for a batch of items that share one image's forward pass.

A chunk of reconstructions of one image (one per channel or unit) differs
only in the seed at the layer. :func:`batched_gradient` takes the seeds as
one ``(B, ...)`` tensor and walks the ops between the layer and the image
from the top down, applying each op's rule to the whole batch: the forward
values (batch 1) are broadcast against it. Building this costs a few ops
per layer of the network, where a parallel-for conversion of ``tf.gradients``
costs a graph rewrite per layer and target.

The walk covers the ops of the keras.applications families (convolutions,
grouped and depthwise ones included, biases, rectifiers and the smooth
activations of :mod:`tf_cnnvis.activation_functions`, sigmoid, tanh and
softmax, pooling with tiling or overlapping windows, padding, cropping,
concatenation, flattening, transposes, dense layers on vectors and on every
position of a map, LayerNormalization's statistics, sums, products and
scaling by weights); a path with any other op gets None, and the caller
falls back to the parallel-for pass. Rules come from
:mod:`tf_cnnvis.rules`, so both passes compute the same thing. One step is
fused: a max-pool over a ReLU goes back in one select (see
:func:`tf_cnnvis.rules.pool_over_relu`).

Each op type is one entry of the table ``_HANDLERS``: a test of whether
its rule is right for a batch of items, and its backward step. A new op is
one entry and one small function.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tf_cnnvis.activation_functions import FUNCTIONS
from tf_cnnvis.graph import ops_between
from tf_cnnvis.rules import (RULES, Switches, activation_input_index, depthwise_input_gradient, flipped_kernel,
                             forward_part, item_shape, pool_over_relu, sizes_of_batch, transposed_padding)

__all__ = ["backward_path", "batched_gradient", "channelwise_head", "seeds_below_head"]


def batched_gradient(top, seeds, image, method: str, dependent: set[str], kinds=None):
    """The image gradients of ``top`` for a batch of seeds, or None when an op has no batched rule.

    ``seeds``: ``(B, *top.shape[1:])``, item b the upstream gradient of
    item b at ``top``; ``top`` and ``image`` have batch 1. ``dependent``:
    the names of the ops that depend on ``image``; ``kinds``: op name ->
    the rule it gets where that is not its op type
    (:func:`tf_cnnvis.rules.rule_kinds`: activation functions, the
    negative-branch ReLUs of PReLU layers). Returns ``(B, *image.shape[1:])``
    (zeros where ``top`` does not depend on the image).
    """
    kinds = kinds or {}
    path = backward_path(top, image, dependent, kinds)
    if path is None:
        return None
    readers: dict[str, list[str]] = {}
    for op in path:
        for tensor in op.inputs:
            readers.setdefault(tensor.op.name, []).append(op.type)
    items = tf.shape(seeds)[:1]  # B, shared by every step's shapes
    steps = {op.name: _Step(op, kinds.get(op.name, op.type), method, _moving(op, dependent),
                            tuple(readers.get(op.name, ())), items) for op in path}
    if not all(_batchable(step) for step in steps.values()):
        return None
    consumers = {}
    for op in path:
        for tensor in op.inputs:
            consumers.setdefault(tensor.name, []).append(op.name)
    pending = {top.name: [seeds]}
    for op in path:
        arrived = pending.pop(op.outputs[0].name, None)
        if arrived is None:  # nothing to carry (or a ReLU done with the max-pool above it)
            continue
        grad = tf.add_n(arrived) if len(arrived) > 1 else arrived[0]
        relu = _relu_below(op, top, steps, consumers)
        if relu is not None:  # max-pool over ReLU: both in one step
            pending.setdefault(relu.inputs[0].name, []).append(pool_over_relu(method, op, grad))
            continue
        step = steps[op.name]
        for index, value in _HANDLERS[step.kind].backward(step, grad).items():
            pending.setdefault(op.inputs[index].name, []).append(value)
    reached = pending.get(image.name)
    if reached is None:
        return tf.zeros(sizes_of_batch(image, seeds, items), image.dtype)
    return tf.add_n(reached) if len(reached) > 1 else reached[0]


def backward_path(top, image, dependent, kinds=None):
    """The ops the batched pass walks from ``top`` down to ``image``, top first.

    :func:`tf_cnnvis.graph.ops_between` without the ops that only an
    activation function's rule passes over (its inner ops, whose gradient
    the rule replaces; ``kinds`` as for :func:`batched_gradient`), or None
    when an op on the way has a second output that the way reads (the pass
    carries one gradient per op). ``dependent``: the names of the ops that
    depend on ``image``.
    """
    kinds = kinds or {}
    path = ops_between(top, image, dependent)
    reached = {top.op.name}
    for op in path:  # top first: each op's gradient-carrying inputs are reached before they are seen
        if op.name in reached:
            inputs = op.inputs
            if kinds.get(op.name) in FUNCTIONS:
                inputs = [op.inputs[activation_input_index(op)]]
            elif op.type == "IdentityN":
                inputs = op.inputs[:1]
            reached.update(tensor.op.name for tensor in inputs)
    path = [op for op in path if op.name in reached]
    used = {tensor.name for op in path for tensor in op.inputs} | {top.name}
    if any(tensor.name in used for op in path for tensor in op.outputs[1:]):
        return None
    return path


@dataclasses.dataclass(frozen=True, eq=False)
class _Step:
    """One op of the path as its handler sees it."""

    op: tf.Operation
    kind: str  # the op's type, or "PReLUNegative" for the negative branch of a PReLU
    method: str
    moving: list[int]  # indices of the inputs that carry a gradient (see _moving)
    readers: tuple = ()  # the types of the ops of the path that read its outputs
    items: tf.Tensor | None = None  # the batch size B as a one-element vector


class _Handler(NamedTuple):
    """How the batched pass goes through one kind of op."""

    batchable: Callable[[_Step], bool]  # whether its rule here is right for a batch of items
    backward: Callable[[_Step, tf.Tensor], dict[int, tf.Tensor]]  # input index -> gradient


def _batchable(step: _Step) -> bool:
    handler = _HANDLERS.get(step.kind)
    return handler is not None and handler.batchable(step)


def _relu_below(op, top, steps, consumers):
    """The ReLU right below the max-pool ``op`` when both steps can go as one, else None.

    ``op`` is on the path, so a max-pool here has switches (its handler's
    test). Only when the max-pool is the ReLU's one consumer on the path:
    the ReLU then gets no gradient from elsewhere.
    """
    if op.type != "MaxPool" or not Switches.applies(op):
        return None
    relu = op.inputs[0].op
    below = steps.get(relu.name)
    if below is None or below.kind != "Relu" or op.inputs[0] is top or consumers[op.inputs[0].name] != [op.name]:
        return None
    return relu


def _moving(op, dependent):
    """Indices of the inputs that carry a gradient: floats that depend on the image (not shapes)."""
    return [i for i, tensor in enumerate(op.inputs) if tensor.op.name in dependent and tensor.dtype.is_floating]


# Tests: whether an op's rule is right for a batch of items.

def _first_input_moves(step: _Step) -> bool:
    """Only the data input carries a gradient (the others are weights, shapes or sizes)."""
    return step.moving == [0]


def _method_has_rule(step: _Step) -> bool:
    return step.kind in RULES[step.method] and step.moving == [0]


def _activation_input_moves(step: _Step) -> bool:
    """The activation's input carries a gradient (its other inputs, inside the function, get none)."""
    return activation_input_index(step.op) in step.moving


def _first_output_passes(step: _Step) -> bool:
    """An IdentityN whose output 0 is on the way (``backward_path`` refused the others)."""
    return 0 in step.moving


def _nhwc_pool(step: _Step) -> bool:
    return step.moving == [0] and step.op.get_attr("data_format") == b"NHWC"


def _broadcasts_per_item(step: _Step) -> bool:
    """A moving operand has the output's rank; a weight broadcasts over the batch (RealDiv: by a weight)."""
    op, moving = step.op, step.moving
    if step.kind == "RealDiv" and moving != [0]:
        return False
    rank = op.outputs[0].shape.rank
    return rank is not None and all(
        op.inputs[i].shape.rank == rank if i in moving else _weight_broadcasts(op.inputs[i], rank)
        for i in range(2))


def _pads_no_batch(step: _Step) -> bool:
    paddings = tf.get_static_value(step.op.inputs[1])
    return step.moving == [0] and paddings is not None and not np.any(paddings[0])


def _concat_off_batch(step: _Step) -> bool:
    axis = tf.get_static_value(step.op.inputs[-1])
    rank = step.op.outputs[0].shape.rank
    return axis is not None and rank is not None and int(axis) % rank != 0


def _reshape_keeps_items_apart(step: _Step) -> bool:
    """A Reshape that keeps the batch axis, or one of a ``Tensordot``'s around its MatMul.

    Keras's Dense on a map (ConvNeXt's per-position layers) is a Tensordot:
    the map is reshaped to rows ``(N * H * W, C)``, multiplied by the kernel
    and reshaped back. With the forward pass at batch 1, a batch of items
    there is ``B * H * W`` rows, item after item, which only the MatMul
    (row by row) sees; each Reshape's step reshapes the gradient to its
    input's shape with ``-1`` in front.
    """
    op = step.op
    if step.moving != [0]:
        return False
    if _keeps_batch(op):
        return True
    before, after = op.inputs[0].shape.rank, op.outputs[0].shape.rank
    if before is not None and before >= 3 and after == 2:  # into rows: only MatMuls may read them
        return all(reader == "MatMul" for reader in step.readers)
    source = op.inputs[0].op  # out of rows: from a MatMul of rows made by the Reshape above
    rows = source.inputs[0] if source.type == "MatMul" else None
    return (before == 2 and after is not None and after >= 3 and rows is not None and rows.op.type == "Reshape"
            and rows.shape.rank == 2 and rows.op.inputs[0].shape.rank is not None
            and rows.op.inputs[0].shape.rank >= 3)


def _transpose_keeps_batch(step: _Step) -> bool:
    perm = tf.get_static_value(step.op.inputs[1])
    return step.moving == [0] and perm is not None and int(perm[0]) == 0


def _slice_keeps_batch(step: _Step) -> bool:
    """A StridedSlice (Keras's Cropping2D) that takes every item whole along the batch axis."""
    op = step.op
    begin, end, strides = (tf.get_static_value(t) for t in op.inputs[1:4])
    if step.moving != [0] or begin is None or end is None or strides is None or len(strides) == 0:
        return False
    if op.get_attr("ellipsis_mask") or op.get_attr("new_axis_mask") or op.get_attr("shrink_axis_mask") & 1:
        return False
    return int(strides[0]) == 1 and (op.get_attr("begin_mask") & 1 or int(begin[0]) == 0) \
        and bool(op.get_attr("end_mask") & 1)


def _softmax_last_axis(step: _Step) -> bool:
    return step.moving == [0]


def _matmul_by_weight(step: _Step) -> bool:
    return step.moving == [0] and not step.op.get_attr("transpose_a")


def _mean_off_batch(step: _Step) -> bool:
    axes = tf.get_static_value(step.op.inputs[1])
    rank = step.op.inputs[0].shape.rank
    return (step.moving == [0] and axes is not None and rank is not None
            and 0 not in {int(a) % rank for a in np.atleast_1d(axes)})


def _keeps_batch(reshape) -> bool:
    """Whether a Reshape keeps the batch axis: item b of its output comes from item b of its input.

    Either both static shapes agree on the elements per item, or the new
    shape starts with the input's own batch size (``Flatten``'s
    ``[tf.shape(x)[0], -1]``).
    """
    before, after = reshape.inputs[0].shape, reshape.outputs[0].shape
    if (before.rank is not None and after.rank is not None and before[1:].is_fully_defined()
            and after[1:].is_fully_defined()):
        return before[1:].num_elements() == after[1:].num_elements()
    pack = reshape.inputs[1].op
    if pack.type != "Pack" or pack.get_attr("axis") != 0:
        return False
    first = pack.inputs[0].op
    return (first.type == "StridedSlice" and first.inputs[0].op.type == "Shape"
            and first.inputs[0].op.inputs[0] is reshape.inputs[0] and first.get_attr("shrink_axis_mask") == 1
            and [_static_list(t) for t in first.inputs[1:]] == [[0], [1], [1]])


def _static_list(tensor):
    value = tf.get_static_value(tensor)
    return None if value is None else np.atleast_1d(value).tolist()


def _weight_broadcasts(tensor, rank: int) -> bool:
    """A weight operand that broadcasts over the batch: rank below the output's or batch size 1."""
    other = tensor.shape.rank
    return other is not None and (other < rank or other == rank and tensor.shape[0] == 1)


# Backward steps: input index -> gradient, for the inputs of the op that depend on the image.

def _pass_through(step: _Step, grad):
    return {0: grad}


def _method_rule(step: _Step, grad):
    """The method's rule from :data:`tf_cnnvis.rules.RULES` (rectifiers, max-pool, Conv2D)."""
    result = RULES[step.method][step.kind](step.op, grad)
    return {0: result[0] if isinstance(result, tuple) else result}


def _activation_rule(step: _Step, grad):
    """An activation function's rule, straight to its input x (see :mod:`tf_cnnvis.rules`)."""
    return {activation_input_index(step.op): RULES[step.method][step.kind](step.op, grad)}


def _sigmoid(step: _Step, grad):
    """No method changes it: the derivative, from the forward output."""
    y = step.op.outputs[0]
    return {0: grad * (y * (1 - y))}


def _tanh(step: _Step, grad):
    """No method changes it: the derivative, from the forward output."""
    y = step.op.outputs[0]
    return {0: grad * (1 - y * y)}


def _max_pool(step: _Step, grad):
    """Max-pool backward: the switches' select where windows tile the input, else TensorFlow's
    MaxPoolGrad on the forward values repeated for each item (overlapping windows)."""
    op = step.op
    if Switches.applies(op):
        return _method_rule(step, grad)
    x, y = op.inputs[0], op.outputs[0]
    items = tf.concat([step.items, tf.ones([x.shape.rank - 1], tf.int32)], 0)
    return {0: tf.raw_ops.MaxPoolGrad(orig_input=tf.tile(x, items), orig_output=tf.tile(y, items), grad=grad,
                                      ksize=op.get_attr("ksize"), strides=op.get_attr("strides"),
                                      padding=op.get_attr("padding"), data_format=op.get_attr("data_format"))}


def _negate(step: _Step, grad):
    return {0: -grad}


def _rsqrt(step: _Step, grad):
    """No method changes it: the derivative, from the forward output (LayerNormalization's scale)."""
    y = step.op.outputs[0]
    return {0: grad * (-0.5 * y * y * y)}


def _squared_difference(step: _Step, grad):
    op = step.op
    difference = 2 * (op.inputs[0] - op.inputs[1])
    return {i: _to_shape_of(grad * difference if i == 0 else -grad * difference, op.inputs[i], op.inputs[1 - i],
                            op.outputs[0]) for i in step.moving}


def _no_gradient(step: _Step, grad):
    return {}


def _transpose_back(step: _Step, grad):
    return {0: tf.transpose(grad, tf.math.invert_permutation(step.op.inputs[1]))}


def _unslice(step: _Step, grad):
    op = step.op
    masks = {name: op.get_attr(name) for name in
             ("begin_mask", "end_mask", "ellipsis_mask", "new_axis_mask", "shrink_axis_mask")}
    return {0: tf.raw_ops.StridedSliceGrad(shape=sizes_of_batch(op.inputs[0], grad, step.items), begin=op.inputs[1],
                                           end=op.inputs[2], strides=op.inputs[3], dy=grad, **masks)}


def _softmax(step: _Step, grad):
    """No method changes it: ``y * (g - sum(g * y))`` over the last axis, from the forward output."""
    y = step.op.outputs[0]
    return {0: y * (grad - tf.reduce_sum(grad * y, axis=-1, keepdims=True))}


def _avg_pool(step: _Step, grad):
    op = step.op
    return {0: tf.raw_ops.AvgPoolGrad(orig_input_shape=sizes_of_batch(op.inputs[0], grad, step.items), grad=grad,
                                      ksize=op.get_attr("ksize"), strides=op.get_attr("strides"),
                                      padding=op.get_attr("padding"), data_format=op.get_attr("data_format"))}


def _depthwise_conv(step: _Step, grad):
    return {0: depthwise_input_gradient(step.op, grad, step.op.inputs[1], step.items)}


def _unpad(step: _Step, grad):
    op = step.op
    before = tf.get_static_value(op.inputs[1])[:, 0]
    return {0: tf.slice(grad, before.astype(np.int32), sizes_of_batch(op.inputs[0], grad, step.items))}


def _split(step: _Step, grad):
    """ConcatV2 backward: each moving input's slice of the gradient."""
    op = step.op
    axis = int(tf.get_static_value(op.inputs[-1])) % op.outputs[0].shape.rank
    values = op.inputs[:-1]
    sizes = forward_part(op, lambda op: tf.stack([tf.shape(t)[axis] for t in values]), key=(op.name, "split"))
    parts = tf.split(grad, sizes, axis=axis, num=len(values))
    return {i: parts[i] for i in step.moving}


def _reshape_back(step: _Step, grad):
    x = step.op.inputs[0]
    return {0: tf.reshape(grad, tf.concat([[-1], item_shape(x)], 0))}


def _matmul(step: _Step, grad):
    op = step.op
    return {0: tf.linalg.matmul(grad, op.inputs[1], transpose_b=not op.get_attr("transpose_b"))}


def _mean(step: _Step, grad):
    op = step.op
    x = op.inputs[0]
    axes = sorted({int(a) % x.shape.rank for a in np.atleast_1d(tf.get_static_value(op.inputs[1]))})
    if not op.get_attr("keep_dims"):
        for axis in axes:  # ascending: each lands where the reduction removed it
            grad = tf.expand_dims(grad, axis)
    count = forward_part(op, lambda op: tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), x.dtype),
                         key=(op.name, "count"))
    return {0: tf.broadcast_to(grad, sizes_of_batch(x, grad, step.items)) / count}


def _arithmetic(step: _Step, grad):
    """Add, Sub, Mul (either operand may move) and RealDiv by a weight."""
    op = step.op
    out = op.outputs[0]
    result = {}
    for i in step.moving:
        other = op.inputs[1 - i]
        if op.type == "Mul":
            value = grad * other
        elif op.type == "RealDiv":
            value = grad / other
        elif op.type == "Sub" and i == 1:
            value = -grad
        else:
            value = grad
        result[i] = _to_shape_of(value, op.inputs[i], other, out)
    return result


def _to_shape_of(grad, tensor, other, out):
    """``grad`` (the batch, shaped like ``out``) summed down to ``tensor``'s shape per item.

    ``out`` is ``tensor`` broadcast against ``other``; ``tensor`` has the
    output's rank (see ``_broadcasts_per_item``). Where ``tensor`` has the
    output's shape (a map plus a bias) that is ``grad`` itself; a moving
    operand that the op broadcast (a statistic of shape ``(1, 1, 1, C)``
    scaling a map, say) gets the sum over the axes it was broadcast along.
    The batch axis is kept. Decided from static shapes: an axis of size 1
    against one that is not is summed; two unknown sizes are taken to be
    equal (a map against a map: a size that is 1 only at run time would
    have made the graph's own shapes mismatch); only an unknown size
    against a known one above 1 is left to run time.
    """
    rank = out.shape.rank
    missing = rank - other.shape.rank
    summed, at_run_time = [], False
    for axis in range(1, rank):
        mine, theirs = tensor.shape[axis], 1 if axis < missing else other.shape[axis - missing]
        if mine == 1 and out.shape[axis] != 1:
            summed.append(axis)
        elif mine is None and theirs not in (None, 1):
            at_run_time = True
    if at_run_time:
        def axes(op):  # the axes ``tensor`` was broadcast along, batch axis left out
            return tf.raw_ops.BroadcastGradientArgs(s0=tf.shape(tensor)[1:], s1=tf.shape(out)[1:])[0] + 1

        grad = tf.reduce_sum(grad, forward_part(out.op, axes, key=(out.op.name, tensor.name, "broadcast axes")))
        return tf.reshape(grad, tf.concat([[-1], item_shape(tensor)], 0))
    return tf.reduce_sum(grad, summed, keepdims=True) if summed else grad


# Every op type the batched pass goes through: (test, backward step).
_HANDLERS = {
    **dict.fromkeys(("Identity", "BiasAdd"), _Handler(_first_input_moves, _pass_through)),
    **dict.fromkeys(("Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "LRN", "PReLUNegative"),
                    _Handler(_method_has_rule, _method_rule)),
    # Activation functions of several ops, one entry each: SiLU, GELU, GELUTanh, HardSwish, HardSigmoid,
    # Mish, Softplus (tf_cnnvis.activation_functions.FUNCTIONS).
    **{function: _Handler(_activation_input_moves, _activation_rule) for function in FUNCTIONS},
    "IdentityN": _Handler(_first_output_passes, _pass_through),
    "MaxPool": _Handler(_nhwc_pool, _max_pool),
    "Conv2D": _Handler(_first_input_moves, _method_rule),
    "DepthwiseConv2dNative": _Handler(_first_input_moves, _depthwise_conv),
    "AvgPool": _Handler(_first_input_moves, _avg_pool),
    "Sigmoid": _Handler(_first_input_moves, _sigmoid),
    "Tanh": _Handler(_first_input_moves, _tanh),
    **dict.fromkeys(("Add", "AddV2", "Sub", "Mul", "RealDiv"), _Handler(_broadcasts_per_item, _arithmetic)),
    **dict.fromkeys(("Pad", "PadV2"), _Handler(_pads_no_batch, _unpad)),
    "ConcatV2": _Handler(_concat_off_batch, _split),
    "Reshape": _Handler(_reshape_keeps_items_apart, _reshape_back),
    "Transpose": _Handler(_transpose_keeps_batch, _transpose_back),
    "StridedSlice": _Handler(_slice_keeps_batch, _unslice),
    "Neg": _Handler(_first_input_moves, _negate),
    "Rsqrt": _Handler(_first_input_moves, _rsqrt),
    "SquaredDifference": _Handler(_broadcasts_per_item, _squared_difference),
    "StopGradient": _Handler(_first_input_moves, _no_gradient),
    "Softmax": _Handler(_softmax_last_axis, _softmax),
    "MatMul": _Handler(_matmul_by_weight, _matmul),
    "Mean": _Handler(_mean_off_batch, _mean),
}


# Ops that keep a gradient on channel c on channel c (given their rules).
_CHANNELWISE = frozenset({"Identity", "BiasAdd", "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "MaxPool",
                          "AvgPool", "Add", "AddV2"})


def channelwise_head(op, dependent: set[str]):
    """The stride-1 Conv2D below ``op`` when only channel-wise ops lie between them, else None."""
    while op.type != "Conv2D":
        moving = [tensor for tensor in op.inputs if tensor.op.name in dependent]
        if op.type not in _CHANNELWISE or len(moving) != 1:
            return None
        if op.type in ("MaxPool", "AvgPool") and (op.get_attr("ksize")[3] != 1
                                                  or op.get_attr("data_format") != b"NHWC"):
            return None
        if op.type == "BiasAdd" and op.get_attr("data_format") != b"NHWC":
            return None
        if op.type in ("Add", "AddV2"):  # a bias: the other operand is (1, ..., 1, C) or (C,)
            other = next(tensor for tensor in op.inputs if tensor is not moving[0])
            dims = other.shape.as_list() if other.shape.rank is not None else None
            if dims is None or None in dims or any(d != 1 for d in dims[:-1]) or \
                    not moving[0].shape.is_compatible_with(op.outputs[0].shape):
                return None
        op = moving[0].op
    if transposed_padding(op) is None or op.inputs[0].op.name not in dependent:
        return None
    return op


def seeds_below_head(head, conv, index):
    """Each channel's seed below the convolution ``conv``, one depthwise convolution for all.

    ``head``: the gradient at ``conv``'s output of an all-ones seed at the
    layer (one map per channel, ``(M, H, W, C_out)``); ``index``: ``[B]``
    channel numbers. Between ``conv`` and the layer every op is
    channel-wise, so channel c's seed is still zero off channel c when it
    reaches ``conv``'s output. Through ``conv`` item c is then the
    convolution of its one map with the flipped kernel's slice c: a
    depthwise convolution for the whole chunk, ``C_out`` times less work
    than a full backward convolution per item. Returns ``(B, M, H', W',
    C_in)``; ``M`` is the image's batch or a rearrangement of it
    (space-to-batch around a dilated convolution).
    """
    maps = tf.gather(head, index, axis=3)  # (M, H, W, B)
    kernels = tf.gather(forward_part(conv, flipped_kernel), index, axis=2)  # (kh, kw, B, C_in)
    maps = tf.pad(maps, transposed_padding(conv))
    seeds = tf.nn.depthwise_conv2d(maps, kernels, [1, 1, 1, 1], "VALID")  # (M, H', W', B * C_in)
    size = tf.shape(seeds)
    seeds = tf.reshape(seeds, tf.stack([size[0], size[1], size[2], tf.shape(index)[0], tf.shape(kernels)[3]]))
    return tf.transpose(seeds, [3, 0, 1, 2, 4])
