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
"""

from __future__ import annotations

import collections
import logging
import threading

import tensorflow as tf

from tf_cnnvis.errors import OptionError
from tf_cnnvis.layers import negative_branch_relus
from tf_cnnvis.load import FrozenModel

logger = logging.getLogger("tf_cnnvis")

METHODS = ("deconvnet", "guided", "gradient")
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
    return grad * _positive(grad) * tf.cast(op.outputs[0] > 0, grad.dtype)


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


class RebuiltGraph:
    """A model imported once for one method, with its session and targets.

    Targets (the objective whose input-gradient is a reconstruction) are
    added per layer on first use and then reused for every call and chunk.
    """

    def __init__(self, model: FrozenModel, method: str):
        self.model = model
        self.method = method
        self.graph = tf.Graph()
        with self.graph.as_default():
            tf.import_graph_def(with_gradient_rules(model.graph_def, method), name="")
        self.session = tf.compat.v1.Session(graph=self.graph)
        self._built: dict[tuple, object] = {}
        self._lock = threading.RLock()

    def tensor(self, name: str):
        return self.graph.get_tensor_by_name(name)

    def target(self, layer_tensor: str, input_tensor: str, unit: bool):
        """(index placeholder, input-gradient) for the summed objective.

        ``unit=False``: index is ``[B]`` channel numbers and the objective is
        ``sum_b sum_xy act[b, y, x, c_b]`` (the whole channel map).
        ``unit=True``: index is ``[B, 3]`` rows ``(y, x, c)`` (``[B, 1]`` for
        a dense layer) and the objective ``sum_b act[b, y_b, x_b, c_b]``.
        Every batch item's gradient depends only on its own objective, so
        one backward pass yields B reconstructions.
        """
        return self.cached(("target", layer_tensor, input_tensor, unit),
                           lambda: self._build_target(layer_tensor, input_tensor, unit))

    def cached(self, key, build):
        """Ops built once per graph by ``build()`` and reused afterwards."""
        with self._lock:
            if key not in self._built:
                with self.graph.as_default():
                    self._built[key] = build()
            return self._built[key]

    def _build_target(self, layer_tensor: str, input_tensor: str, unit: bool):
        with self.graph.as_default(), tf.name_scope("tf_cnnvis_target"):
            act = self.tensor(layer_tensor)
            image = self.tensor(input_tensor)
            rank = act.shape.rank
            if unit:
                index = tf.compat.v1.placeholder(tf.int32, [None, rank - 1], name="unit")
                rows = tf.range(tf.shape(index)[0])[:, None]
                objective = tf.reduce_sum(tf.gather_nd(act, tf.concat([rows, index], axis=1)))
            else:
                index = tf.compat.v1.placeholder(tf.int32, [None], name="channel")
                mask = tf.one_hot(index, tf.shape(act)[-1], dtype=act.dtype)
                mask = tf.reshape(mask, tf.concat([tf.shape(mask)[:1], tf.ones([rank - 2], tf.int32),
                                                   tf.shape(mask)[1:]], axis=0))
                objective = tf.reduce_sum(act * mask)
            grad = tf.gradients(objective, image)[0]
        if grad is None:
            raise OptionError(f"layer {layer_tensor!r} does not depend on input {input_tensor!r}")
        return index, grad

    def close(self):
        self.session.close()


_CACHE: collections.OrderedDict[tuple[str, str], RebuiltGraph] = collections.OrderedDict()
_CACHE_SIZE = 3
_cache_lock = threading.Lock()


def rebuild(model: FrozenModel, method: str = "gradient") -> RebuiltGraph:
    """The cached RebuiltGraph of (model, method); imports it on first use."""
    key = (model.fingerprint, check_method(method))
    with _cache_lock:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
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
