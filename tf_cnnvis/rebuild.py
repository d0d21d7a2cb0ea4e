"""Rebuild: import a frozen graph with the backward rules of a method.

=============  ==============================  ==============================
method         ReLU backward (g upstream)      source
=============  ==============================  ==============================
``gradient``   g * [x > 0]                     Simonyan et al. 2014 (saliency)
``deconvnet``  relu(g)                         Zeiler & Fergus 2014
``guided``     g * [x > 0] * [g > 0]           Springenberg et al. 2015
=============  ==============================  ==============================

Max-pool backward (routing to the recorded switch) and the transposed
convolutions are the same in all three. The rules are written for a backward
pass vectorized over a chunk of channels: everything taken from the forward
pass (where ``x > 0``, which input won each pooling window, a convolution's
flipped kernel) is built once per graph, outside the vectorized loop, and
only broadcast against the gradient. TensorFlow's own ``ReluGrad`` and
``MaxPoolGrad`` would copy their forward inputs once per channel and rescan
every window; the rectifier and max-pool rules give TensorFlow's results bit
for bit. A stride-1 ``Conv2D`` goes backward as a forward convolution with the
flipped kernel (faster on CPUs than ``Conv2DBackpropInput``, equal up to
rounding); other convolutions keep TensorFlow's op. Rebuilt graphs give
gradients with respect to the input only; weights get none.
The rules are attached to each node of the ``GraphDef`` before it is
imported (the ``_gradient_op_type`` attribute that ``gradient_override_map``
also sets), so they reach every op of the graph, ops inside Keras models
included, and each (model, method) pair is imported once and cached.

Repeated calls from a training loop freeze the same architecture with new
weights. The weights (floating-point constants) are therefore imported as
variables: the cache is keyed on the graph *without* their values, and a
call with new weights only assigns them (one ``session.run``) instead of
importing a new graph, building new targets and warming up a new session.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import logging
import threading
import uuid

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tf_cnnvis.errors import OptionError
from tf_cnnvis.layers import depends_on_inputs, negative_branch_relus
from tf_cnnvis.load import FrozenModel

logger = logging.getLogger("tf_cnnvis")

METHODS = ("deconvnet", "guided", "gradient")
TARGET_KINDS = ("map", "unit", "batched_units")
_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772


def _positive(grad):
    return tf.cast(grad > 0, grad.dtype)


def _where(mask, grad):
    """``grad`` where ``mask`` (computed from the forward pass), else 0."""
    return tf.where(mask, grad, tf.zeros([], grad.dtype))


# What a rule takes from the forward pass (a ReLU's "y > 0", a max-pool's
# switches) does not depend on the item being reconstructed. Built once per
# graph, before any vectorized backward pass, it is shared by every layer's
# target and stays outside the vectorized loop, which then only converts the
# few ops that carry the gradient.
_PARTS_COLLECTION = "tf_cnnvis_forward_parts"  # the graph keeps its own parts


def _output_positive(op):
    return op.outputs[0] > 0


def _forward_part(op, part):
    """``part(op)``: the one prepared for ``op``'s graph if any, else built here."""
    prepared = op.graph.get_collection(_PARTS_COLLECTION)
    if prepared and op.name in prepared[0]:
        return prepared[0][op.name]
    return part(op)


def prepare_forward_parts(graph: tf.Graph):
    """Build the forward parts of every ReLU, max-pool and Conv2D of ``graph`` (call once)."""
    parts = {}
    with graph.as_default(), tf.name_scope("tf_cnnvis_forward"):
        for op in graph.get_operations():
            part = _FORWARD_PARTS.get(op.type)
            if part is not None:
                parts[op.name] = part(op)
    graph.add_to_collection(_PARTS_COLLECTION, parts)


# Each rule: (op, upstream grad) -> grad w.r.t. the op's first input.
def _deconvnet_rectifier(op, grad):
    return tf.nn.relu(grad)


def _deconvnet_leaky(op, grad):
    return tf.nn.leaky_relu(grad, alpha=op.get_attr("alpha"))


def _gradient_relu(op, grad):
    # TensorFlow's ReluGrad, g * [y > 0], with the mask shared by every item.
    return _where(_forward_part(op, _output_positive), grad)


def _guided_relu(op, grad):
    return _where(_forward_part(op, _output_positive), tf.nn.relu(grad))


def _guided_relu6(op, grad):
    x = op.inputs[0]
    return grad * _positive(grad) * tf.cast((x > 0) & (x < 6), grad.dtype)


def _guided_leaky(op, grad):
    x = op.inputs[0]
    slope = tf.where(x > 0, tf.ones_like(x), tf.fill(tf.shape(x), tf.cast(op.get_attr("alpha"), x.dtype)))
    return grad * _positive(grad) * slope


def _guided_elu(op, grad):
    x, y = op.inputs[0], op.outputs[0]
    return grad * _positive(grad) * tf.where(x > 0, tf.ones_like(y), y + 1)


def _guided_selu(op, grad):
    x, y = op.inputs[0], op.outputs[0]
    slope = tf.where(x > 0, tf.fill(tf.shape(y), tf.cast(_SELU_SCALE, y.dtype)),
                     y + _SELU_SCALE * _SELU_ALPHA)
    return grad * _positive(grad) * slope


def _guided_negative_branch(op, grad):
    # PReLU = relu(x) - alpha * relu(-x). Upstream of relu(-x) the gradient
    # is -alpha * g, so "g > 0" reads "grad < 0" here (alpha >= 0).
    return _where(_forward_part(op, _output_positive), tf.minimum(grad, 0))


def _lrn_identity(op, grad):
    return grad


class _Switches:
    """A max-pool's winners, laid out so that a select spreads the gradient.

    For windows that tile the input (``ksize == strides``, NHWC) the winners
    are found by TensorFlow's own ``MaxPoolGrad`` on a gradient of ones (so
    ties go where TensorFlow sends them) and reshaped to
    ``(N, rows, window height, columns, window width, C)``. The windows
    cover more than the input for SAME padding (TensorFlow pads half the
    excess before the input and the rest after it) and may fall short of it
    for VALID (the rest gets no gradient).
    """

    def __init__(self, op):
        x, y = op.inputs[0], op.outputs[0]
        ksize, padding = op.get_attr("ksize"), op.get_attr("padding")
        winners = tf.raw_ops.MaxPoolGrad(orig_input=x, orig_output=y, grad=tf.ones_like(y), ksize=ksize,
                                         strides=op.get_attr("strides"), padding=padding) > 0
        window = np.array(ksize[1:3], np.int32)
        if x.shape[1:3].is_fully_defined() and y.shape[1:3].is_fully_defined():
            size, pooled = (np.array(t.shape[1:3].as_list(), np.int32) for t in (x, y))
        else:
            size, pooled = tf.shape(x)[1:3], tf.shape(y)[1:3]
        covered, channels = pooled * window, tf.shape(y)[3]
        if padding == b"SAME":
            before = (covered - size) // 2
            winners = _pad_hw(winners, before, covered - size - before)
            self.finish = functools.partial(_slice_hw, begin=before, size=size)
        else:
            winners = _slice_hw(winners, 0 * size, covered)
            self.finish = functools.partial(_pad_hw, before=0 * size, after=size - covered)
        self.cells = tf.stack([-1, pooled[0], 1, pooled[1], 1, channels])
        self.winners = tf.reshape(winners, tf.stack([-1, pooled[0], window[0], pooled[1], window[1],
                                                     channels]))
        self.covered = tf.stack([-1, covered[0], covered[1], channels])

    @staticmethod
    def applies(op) -> bool:
        ksize, strides = op.get_attr("ksize"), op.get_attr("strides")
        return (list(ksize) == list(strides) and ksize[0] == 1 and ksize[3] == 1
                and op.get_attr("data_format") == b"NHWC" and op.get_attr("padding") in (b"SAME", b"VALID"))

    def spread(self, grad):
        """Each window's gradient at its winner, zero elsewhere: the input's gradient."""
        cells = _where(self.winners, tf.reshape(grad, self.cells))
        return self.finish(tf.reshape(cells, self.covered))


def _pool_switches(op):
    return _Switches(op) if _Switches.applies(op) else None


def _switch_unpool(op, grad):
    """Max-pool backward: each window's gradient goes to the input that won it.

    Where the windows tile the input this is one broadcast select per item
    (see ``_Switches``) instead of a rescan of every window; overlapping
    windows keep TensorFlow's ``MaxPoolGrad``.
    """
    switches = _forward_part(op, _pool_switches)
    if switches is not None:
        return switches.spread(grad)
    return tf.raw_ops.MaxPoolGrad(orig_input=op.inputs[0], orig_output=op.outputs[0], grad=grad,
                                  ksize=op.get_attr("ksize"), strides=op.get_attr("strides"),
                                  padding=op.get_attr("padding"), data_format=op.get_attr("data_format"))


def _pad_hw(tensor, before, after):
    """Pad height and width of an NHWC tensor with zeros (False)."""
    if isinstance(before, np.ndarray) and not before.any() and not after.any():
        return tensor
    zero = tf.zeros([2], tf.int32)
    paddings = tf.stack([zero, tf.stack([before[0], after[0]]), tf.stack([before[1], after[1]]), zero])
    return tf.pad(tensor, paddings)


def _slice_hw(tensor, begin, size):
    """``tensor[:, begin:begin + size]`` over height and width of an NHWC tensor."""
    if isinstance(begin, np.ndarray) and not begin.any() and tensor.shape[1:3].as_list() == list(size):
        return tensor
    return tf.slice(tensor, tf.concat([[0], begin, [0]], 0), tf.concat([[-1], size, [-1]], 0))


def _flipped_kernel(op):
    """A Conv2D's kernel turned around: ``(kh, kw, out, in)``, each window reversed."""
    return tf.transpose(tf.reverse(op.inputs[1], [0, 1]), [0, 1, 3, 2])


def _transposed_padding(op):
    """Padding that makes a stride-1 Conv2D's input gradient a plain convolution, or None.

    The gradient of a stride-1 convolution with respect to its input is the
    convolution of the upstream gradient with the flipped kernel, padded by
    ``k - 1 - p`` where the forward pass padded by ``p``. TensorFlow's CPU
    kernels run it as a forward convolution up to 2.7x faster than its
    ``Conv2DBackpropInput``. Grouped, strided and dilated convolutions and
    other layouts keep ``Conv2DBackpropInput`` (None).
    """
    kernel, x = op.inputs[1].shape, op.inputs[0].shape
    if (op.get_attr("data_format") != b"NHWC" or list(op.get_attr("strides")) != [1, 1, 1, 1]
            or list(op.get_attr("dilations")) != [1, 1, 1, 1] or not kernel[:2].is_fully_defined()
            or x[-1] is None or kernel[2] is None or x[-1] != kernel[2]):
        return None
    padding = op.get_attr("padding")
    pads = []
    for axis, size in enumerate(kernel[:2]):
        if padding == b"SAME":
            before = (size - 1) // 2
            after = size - 1 - before
        elif padding == b"VALID":
            before = after = 0
        else:  # EXPLICIT: (before, after) per dimension of NHWC
            before, after = op.get_attr("explicit_paddings")[2 + 2 * axis:4 + 2 * axis]
        if before > size - 1 or after > size - 1:
            return None
        pads.append([size - 1 - before, size - 1 - after])
    return [[0, 0], *pads, [0, 0]]


def _conv_input_gradient(op, grad):
    """Conv2D backward to the image. Rebuilt graphs give weights no gradient."""
    padding = _transposed_padding(op)
    if padding is None:
        data = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(op.inputs[0]), filter=op.inputs[1], out_backprop=grad,
            strides=op.get_attr("strides"), padding=op.get_attr("padding"),
            explicit_paddings=op.get_attr("explicit_paddings"), data_format=op.get_attr("data_format"),
            dilations=op.get_attr("dilations"))
    else:
        same = [[0, 0]] + [[(k - 1) // 2, k - 1 - (k - 1) // 2] for k in op.inputs[1].shape[:2]] + [[0, 0]]
        data = tf.nn.conv2d(grad, _forward_part(op, _flipped_kernel), 1,
                            "SAME" if padding == same else padding)
    return data, None


_FORWARD_PARTS = {"Relu": _output_positive, "MaxPool": _pool_switches, "Conv2D": _flipped_kernel}


_RULES = {
    "deconvnet": {"Relu": _deconvnet_rectifier, "Relu6": _deconvnet_rectifier,
                  "Elu": _deconvnet_rectifier, "Selu": _deconvnet_rectifier,
                  "LeakyRelu": _deconvnet_leaky, "LRN": _lrn_identity,
                  "PReLUNegative": _deconvnet_rectifier, "MaxPool": _switch_unpool,
                  "Conv2D": _conv_input_gradient},
    "guided": {"Relu": _guided_relu, "Relu6": _guided_relu6, "Elu": _guided_elu,
               "Selu": _guided_selu, "LeakyRelu": _guided_leaky, "LRN": _lrn_identity,
               "PReLUNegative": _guided_negative_branch, "MaxPool": _switch_unpool,
               "Conv2D": _conv_input_gradient},
    "gradient": {"Relu": _gradient_relu, "MaxPool": _switch_unpool, "Conv2D": _conv_input_gradient},
}


def _registered_name(method: str, op_type: str) -> str:
    return f"TfCnnvis_{method}_{op_type}"


for _method, _rules in _RULES.items():
    for _op_type, _rule in _rules.items():
        try:
            tf.RegisterGradient(_registered_name(_method, _op_type))(_rule)
        except KeyError:  # already registered by an earlier import of this module
            pass


def check_method(method: str) -> str:
    if method not in METHODS:
        raise OptionError(f"method {method!r} is not one of {', '.join(map(repr, METHODS))}")
    return method


def with_gradient_rules(graph_def, method: str):
    """A copy of ``graph_def`` whose rectifiers carry the method's rules."""
    rules = _RULES[check_method(method)]
    copy = tf.compat.v1.GraphDef()
    copy.CopyFrom(graph_def)
    if not rules:
        return copy
    negative = negative_branch_relus(graph_def)
    for node in copy.node:
        op_type = "PReLUNegative" if node.name in negative else node.op
        if op_type in rules:
            node.attr["_gradient_op_type"].s = _registered_name(method, op_type).encode()
    return copy


# Constants of these types are weights: imported as variables, so that new
# values can be assigned to an imported graph (integer constants are shapes,
# axes and sizes, which belong to the structure).
_WEIGHT_TYPES = frozenset({types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_BFLOAT16,
                           types_pb2.DT_DOUBLE})
_VARIABLE_SUFFIX = "/tf_cnnvis_weight"


def _is_weight(node) -> bool:
    return node.op == "Const" and "dtype" in node.attr and node.attr["dtype"].type in _WEIGHT_TYPES


_structure_cache: dict[int, tuple[object, str]] = {}


def structure_key(graph_def) -> str:
    """A digest of the graph with the values of its weights left out.

    Two freezes of one architecture with different weights share it.
    """
    cached = _structure_cache.get(id(graph_def))
    if cached is not None and cached[0] is graph_def:
        return cached[1]
    digest = hashlib.sha1()
    digest.update(graph_def.versions.SerializeToString(deterministic=True))
    digest.update(graph_def.library.SerializeToString(deterministic=True))
    for node in graph_def.node:
        if _is_weight(node):
            shape = node.attr["value"].tensor.tensor_shape.SerializeToString(deterministic=True)
            digest.update(b"W" + node.name.encode() + bytes([node.attr["dtype"].type]) + shape)
        else:
            digest.update(b"N" + node.SerializeToString(deterministic=True))
    key = digest.hexdigest()
    _structure_cache.clear()  # one entry is enough: the model of the current call
    _structure_cache[id(graph_def)] = (graph_def, key)
    return key


def weight_values(graph_def) -> dict[str, np.ndarray]:
    """The value of every weight constant of ``graph_def``, by node name."""
    return {node.name: tf.make_ndarray(node.attr["value"].tensor)
            for node in graph_def.node if _is_weight(node)}


def _weights_as_variables(graph_def, shared_prefix: str):
    """A copy of ``graph_def`` where each weight ``w`` is ``ReadVariableOp(VarHandleOp)``.

    The read keeps the constant's name, so every consumer, tensor name and
    static shape is unchanged; the values are assigned after import.
    """
    copy = tf.compat.v1.GraphDef()
    copy.versions.CopyFrom(graph_def.versions)
    copy.library.CopyFrom(graph_def.library)
    names = {node.name for node in graph_def.node}
    for node in graph_def.node:
        if not _is_weight(node):
            copy.node.add().CopyFrom(node)
            continue
        handle_name = node.name + _VARIABLE_SUFFIX
        if handle_name in names:
            raise OptionError(f"the graph already has an op named {handle_name!r}, which tf_cnnvis "
                              "needs for the weight it reads; rename that op")
        handle = copy.node.add(name=handle_name, op="VarHandleOp")
        handle.attr["dtype"].type = node.attr["dtype"].type
        handle.attr["shape"].shape.CopyFrom(node.attr["value"].tensor.tensor_shape)
        handle.attr["shared_name"].s = f"{shared_prefix}/{node.name}".encode()
        read = copy.node.add(name=node.name, op="ReadVariableOp", input=[handle_name])
        read.attr["dtype"].type = node.attr["dtype"].type
    return copy


class RebuiltGraph:
    """A model imported once for one method, with its session and targets.

    Targets (the objective whose input-gradient is a reconstruction) are
    added per layer on first use and then reused for every call and chunk.
    The weights live in variables; :meth:`load_weights` swaps in those of
    another freeze of the same architecture.
    """

    def __init__(self, model: FrozenModel, method: str):
        self.model = model
        self.method = method
        self.graph = tf.Graph()
        rules = with_gradient_rules(model.graph_def, method)
        with self.graph.as_default():
            tf.import_graph_def(_weights_as_variables(rules, f"tf_cnnvis_{uuid.uuid4().hex}"), name="")
        self.session = tf.compat.v1.Session(graph=self.graph)
        self._built: dict[tuple, object] = {}
        self._lock = threading.RLock()
        self._assign_weights(weight_values(model.graph_def))

    def load_weights(self, model: FrozenModel):
        """Use the weights of ``model``, a freeze of the same architecture."""
        with self._lock:
            if model is self.model:
                return
            self._assign_weights(weight_values(model.graph_def))
            self.model = model

    def _assign_weights(self, values: dict[str, np.ndarray]):
        if not values:
            return
        placeholders, assign = self.cached(("assign weights",), lambda: self._build_assign(values))
        self.session.run(assign, {placeholders[name]: value for name, value in values.items()})

    def _build_assign(self, values):
        placeholders, ops = {}, []
        with tf.name_scope("tf_cnnvis_assign"):
            for name, value in values.items():
                handle = self.tensor(name + _VARIABLE_SUFFIX + ":0")
                placeholders[name] = tf.compat.v1.placeholder(handle.op.get_attr("dtype"), value.shape)
                ops.append(tf.raw_ops.AssignVariableOp(resource=handle, value=placeholders[name]))
        return placeholders, tf.group(*ops)

    def tensor(self, name: str):
        return self.graph.get_tensor_by_name(name)

    def target(self, layer_tensor: str, input_tensor: str, kind: str):
        """(index placeholder, input-gradients) for a chunk of reconstructions.

        ``kind='map'``: one image is fed; index is ``[B]`` channel numbers and
        item b is the gradient of ``sum_yx act[0, y, x, c_b]``.
        ``kind='unit'``: one image is fed; index is ``[B, 3]`` rows
        ``(y, x, c)`` (``[B, 1]`` for a dense layer), item b the gradient of
        that single unit.
        For both, the forward pass runs once and the backward pass is
        vectorized over the B items (parallel-for), which is cheaper than
        repeating the image B times.
        ``kind='batched_units'``: B different images (crops) are fed with
        index ``[B, 3]``; the objective ``sum_b act[b, y_b, x_b, c_b]`` gives
        each item its own gradient in one backward pass.
        """
        if kind not in TARGET_KINDS:
            raise OptionError(f"target kind {kind!r} is not one of {', '.join(TARGET_KINDS)}")
        return self.cached(("target", layer_tensor, input_tensor, kind),
                           lambda: self._build_target(layer_tensor, input_tensor, kind))

    def forward_tensors(self, fetch, input_tensor: str) -> list[str]:
        """The forward tensors that the backward pass ``fetch`` reads.

        Feeding their values (computed once per image) keeps a run of
        ``fetch`` from repeating the forward pass for every chunk. These are
        the model's tensors that depend on ``input_tensor`` and are read by
        an op of the backward pass; weights are left to the graph. Empty if
        one of them cannot be fed.
        """
        def build():
            own = {node.name for node in self.model.graph_def.node}
            dependent = self.dependent_ops(input_tensor)
            needed, seen, stack = set(), set(), [fetch.op]
            while stack:
                op = stack.pop()
                if op.name in seen:
                    continue
                seen.add(op.name)
                for tensor in op.inputs:
                    if tensor.op.name not in own:
                        stack.append(tensor.op)
                    elif tensor.op.name in dependent and tensor.name != input_tensor:
                        needed.add(tensor.name)
                stack.extend(c for c in op.control_inputs if c.name not in own)
            if not all(self.graph.is_feedable(self.tensor(name)) for name in needed):
                return []
            return sorted(needed)

        return self.cached(("forward tensors", fetch.name, input_tensor), build)

    def dependent_ops(self, input_tensor: str) -> set[str]:
        """Names of the model's ops that depend on ``input_tensor`` (computed once per input).

        Ops added later (backward passes) are not in it; it answers for the
        model's own ops.
        """
        return self.cached(("dependent ops", input_tensor),
                           lambda: depends_on_inputs(self.graph, [input_tensor]))

    def cached(self, key, build):
        """Ops built once per graph by ``build()`` and reused afterwards."""
        with self._lock:
            if key not in self._built:
                with self.graph.as_default():
                    self._built[key] = build()
            return self._built[key]

    def _build_target(self, layer_tensor: str, input_tensor: str, kind: str):
        self.cached(("forward parts",), lambda: prepare_forward_parts(self.graph))
        act = self.tensor(layer_tensor)
        image = self.tensor(input_tensor)
        rank = act.shape.rank
        def gradient(objective, **options):
            result = tf.gradients(objective, image, **options)[0]
            if result is None:
                raise OptionError(f"layer {layer_tensor!r} does not depend on input {input_tensor!r}")
            return result

        with tf.name_scope("tf_cnnvis_target"):
            if kind == "batched_units":
                index = tf.compat.v1.placeholder(tf.int32, [None, rank - 1], name="unit")
                rows = tf.range(tf.shape(index)[0])[:, None]
                return index, gradient(tf.reduce_sum(tf.gather_nd(act, tf.concat([rows, index], axis=1))))
            if kind == "map":
                index = tf.compat.v1.placeholder(tf.int32, [None], name="channel")
                head = _channelwise_head(act.op, self.dependent_ops(input_tensor))
                if head is not None:
                    return index, self._map_through_head(act, head, image, index, gradient)
            else:
                index = tf.compat.v1.placeholder(tf.int32, [None, rank - 1], name="unit")

            def one_item(item):
                if kind == "map":
                    mask = tf.reshape(tf.one_hot(item, tf.shape(act)[-1], dtype=act.dtype),
                                      [1] * (rank - 1) + [-1])
                    upstream = mask * tf.ones_like(act)
                else:
                    # A one-hot at (y, x, c) as an outer product of one-hots: every op
                    # here has a parallel-for converter (scatter_nd would fall back
                    # to a sequential while_loop).
                    dims = tf.unstack(tf.shape(act)[1:], num=rank - 1)
                    upstream = tf.ones([1], act.dtype)
                    for axis in range(rank - 1):
                        hot = tf.one_hot(item[axis], dims[axis], dtype=act.dtype)
                        upstream = upstream[..., None] * hot
                    upstream = upstream * tf.ones_like(act)
                return gradient(act, grad_ys=upstream)[0]

            return index, tf.vectorized_map(one_item, index)

    def _map_through_head(self, act, conv, image, index, gradient):
        """Whole-map reconstructions that start below the convolution ``conv``.

        Between ``conv`` and the layer every op is channel-wise, so channel
        c's seed (ones on map c) is still zero off channel c when it reaches
        ``conv``'s output: all seeds get there in one backward pass of an
        all-ones seed (``head``, one map per channel). Through ``conv`` the
        item of channel c is then the convolution of its one map with the
        flipped kernel's slice c: a depthwise convolution for the whole
        chunk, ``C_out`` times less work than a full backward convolution
        per item. Only the rest of the network runs vectorized per item.
        """
        if act is conv.outputs[0]:
            head = tf.ones_like(act)
        else:
            head = tf.gradients(act, conv.outputs[0], grad_ys=tf.ones_like(act))[0]
        # The convolution's batch is the image's, or a rearrangement of it
        # (space-to-batch around a dilated convolution): M below.
        maps = tf.gather(head, index, axis=3)  # (M, H, W, B)
        kernels = tf.gather(_forward_part(conv, _flipped_kernel), index, axis=2)  # (kh, kw, B, C_in)
        maps = tf.pad(maps, _transposed_padding(conv))
        seeds = tf.nn.depthwise_conv2d(maps, kernels, [1, 1, 1, 1], "VALID")  # (M, H', W', B * C_in)
        size = tf.shape(seeds)
        seeds = tf.reshape(seeds, tf.stack([size[0], size[1], size[2], tf.shape(index)[0],
                                            tf.shape(kernels)[3]]))
        seeds = tf.transpose(seeds, [3, 0, 1, 2, 4])  # (B, M, H', W', C_in)
        below = conv.inputs[0]
        if below is image:
            return seeds[:, 0]
        return tf.vectorized_map(lambda seed: gradient(below, grad_ys=seed)[0], seeds)

    def close(self):
        self.session.close()


# Ops that keep a gradient on channel c on channel c (given their rules).
_CHANNELWISE = frozenset({"Identity", "BiasAdd", "Relu", "Relu6", "Elu", "Selu", "LeakyRelu", "MaxPool",
                          "AvgPool", "Add", "AddV2"})


def _channelwise_head(op, dependent: set[str]):
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
    if _transposed_padding(op) is None or op.inputs[0].op.name not in dependent:
        return None
    return op


_CACHE: collections.OrderedDict[tuple[str, str], RebuiltGraph] = collections.OrderedDict()
_CACHE_SIZE = 3
_cache_lock = threading.Lock()


def rebuild(model: FrozenModel, method: str = "gradient") -> RebuiltGraph:
    """The cached RebuiltGraph of (model, method); imports it on first use.

    A graph imported for the same architecture is reused with ``model``'s
    weights assigned, so the result always reflects the weights given.
    """
    key = (structure_key(model.graph_def), check_method(method))
    with _cache_lock:
        cached = _CACHE.get(key)
        if cached is not None:
            _CACHE.move_to_end(key)
    if cached is not None:
        cached.load_weights(model)
        return cached
    rebuilt = RebuiltGraph(model, method)
    with _cache_lock:
        _CACHE[key] = rebuilt
        while len(_CACHE) > _CACHE_SIZE:
            _, evicted = _CACHE.popitem(last=False)
            evicted.close()
    return rebuilt


def clear_cache():
    """Close every cached session (frees the memory of imported models)."""
    with _cache_lock:
        while _CACHE:
            _CACHE.popitem()[1].close()
