"""Rebuild: import a frozen graph with the backward rules of a method.

=============  ==============================  ==============================
method         ReLU backward (g upstream)      source
=============  ==============================  ==============================
``gradient``   g * [x > 0]                     Simonyan et al. 2014 (saliency)
``deconvnet``  relu(g)                         Zeiler & Fergus 2014
``guided``     g * [x > 0] * [g > 0]           Springenberg et al. 2015
=============  ==============================  ==============================

Max-pool backward (routing to the recorded switch) and the transposed
convolutions are the same in all three; they are TensorFlow's own gradients.
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
import hashlib
import logging
import threading
import uuid

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from tf_cnnvis.errors import OptionError
from tf_cnnvis.layers import negative_branch_relus
from tf_cnnvis.load import FrozenModel

logger = logging.getLogger("tf_cnnvis")

METHODS = ("deconvnet", "guided", "gradient")
TARGET_KINDS = ("map", "unit", "batched_units")
_SELU_SCALE = 1.0507009873554805
_SELU_ALPHA = 1.6732632423543772


def _positive(grad):
    return tf.cast(grad > 0, grad.dtype)


# Each rule: (op, upstream grad) -> grad w.r.t. the op's first input.
def _deconvnet_rectifier(op, grad):
    return tf.nn.relu(grad)


def _deconvnet_leaky(op, grad):
    return tf.nn.leaky_relu(grad, alpha=op.get_attr("alpha"))


def _guided_relu(op, grad):
    # ReluGrad(g', y) = g' * [y > 0]: one fused kernel instead of five elementwise ops.
    return tf.raw_ops.ReluGrad(gradients=tf.nn.relu(grad), features=op.outputs[0])


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
    return grad * tf.cast(grad < 0, grad.dtype) * tf.cast(op.outputs[0] > 0, grad.dtype)


def _lrn_identity(op, grad):
    return grad


_RULES = {
    "deconvnet": {"Relu": _deconvnet_rectifier, "Relu6": _deconvnet_rectifier,
                  "Elu": _deconvnet_rectifier, "Selu": _deconvnet_rectifier,
                  "LeakyRelu": _deconvnet_leaky, "LRN": _lrn_identity,
                  "PReLUNegative": _deconvnet_rectifier},
    "guided": {"Relu": _guided_relu, "Relu6": _guided_relu6, "Elu": _guided_elu,
               "Selu": _guided_selu, "LeakyRelu": _guided_leaky, "LRN": _lrn_identity,
               "PReLUNegative": _guided_negative_branch},
    "gradient": {},
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

    def cached(self, key, build):
        """Ops built once per graph by ``build()`` and reused afterwards."""
        with self._lock:
            if key not in self._built:
                with self.graph.as_default():
                    self._built[key] = build()
            return self._built[key]

    def _build_target(self, layer_tensor: str, input_tensor: str, kind: str):
        act = self.tensor(layer_tensor)
        image = self.tensor(input_tensor)
        rank = act.shape.rank
        with tf.name_scope("tf_cnnvis_target"):
            if tf.gradients(tf.reduce_sum(act), image)[0] is None:
                raise OptionError(f"layer {layer_tensor!r} does not depend on input {input_tensor!r}")
            if kind == "batched_units":
                index = tf.compat.v1.placeholder(tf.int32, [None, rank - 1], name="unit")
                rows = tf.range(tf.shape(index)[0])[:, None]
                objective = tf.reduce_sum(tf.gather_nd(act, tf.concat([rows, index], axis=1)))
                return index, tf.gradients(objective, image)[0]
            if kind == "map":
                index = tf.compat.v1.placeholder(tf.int32, [None], name="channel")
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
                return tf.gradients(act, image, grad_ys=upstream)[0][0]

            return index, tf.vectorized_map(one_item, index)

    def close(self):
        self.session.close()


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
