"""Activation functions found in a frozen graph by what they compute.

TensorFlow, Keras and graph converters spell one function with different
ops: GELU is ``0.5 * x * erfc(-x / sqrt(2))`` (``tf.nn.gelu``) or ``0.5 * x *
(1 + erf(x / sqrt(2)))``; hard-swish is ``x * relu6(x + 3) / 6`` or ``x *
(relu6(x + 3) * (1 / 6))``; ``tf.nn.silu`` is a ``tf.custom_gradient``
function, frozen as an ``IdentityN`` over ``x * sigmoid(x)``. Instead of one
op pattern per spelling, every small subgraph of elementwise ops and scalar
constants that reads a single tensor ``x`` is evaluated on a grid of ``x``
values and compared with each function of :data:`FUNCTIONS`. A Keras
model, a frozen ``.pb`` and a converted graph are recognized alike, with or
without Keras's names.

Single-op rectifiers of the ReLU family (``Relu``, ``Relu6``, ``LeakyRelu``,
``Elu``, ``Selu``) are not looked for here: their op type says what they are.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from scipy import special
from tensorflow.core.framework import types_pb2

from tf_cnnvis.graph import IdentityMemo, input_op_name

__all__ = ["FUNCTIONS", "Activation", "Function", "custom_gradient_nodes", "find_activations"]

_SQRT_HALF = math.sqrt(0.5)
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
_INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
_GELU_CUBIC = 0.044715


@dataclasses.dataclass(frozen=True)
class Function:
    """One known activation function.

    ``value``: the function in float64 NumPy, for recognizing it.
    ``slope``: its derivative ``f'(x)`` in TensorFlow, for the backward rules.
    ``gate``: a gate, not a rectifier: every method passes its derivative,
    as for ``Sigmoid`` (see :mod:`tf_cnnvis.rules`).
    """

    name: str
    value: Callable[[np.ndarray], np.ndarray]
    slope: Callable[[tf.Tensor], tf.Tensor]
    gate: bool = False


def _silu_slope(x):
    s = tf.sigmoid(x)
    return s * (1 + x * (1 - s))


def _gelu_slope(x):
    return 0.5 * tf.math.erfc(-x * _SQRT_HALF) + x * tf.exp(-0.5 * x * x) * _INV_SQRT_2PI


def _gelu_tanh_slope(x):
    # With s = sigmoid(2u) = (1 + tanh(u)) / 2 and 1 - tanh(u)^2 = 4 s (1 - s), which keeps
    # float32 digits where tanh(u) is near -1.
    s = tf.sigmoid(2 * _SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
    return s + 2 * x * s * (1 - s) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)


def _hard_swish_slope(x):
    # TensorFlow's own gradient of x * relu6(x + 3) / 6, boundaries included
    # (Relu6's gradient is zero at 0 and at 6): 0 up to -3, 1 from 3 on.
    return tf.where(x >= 3, tf.ones_like(x), tf.where(x > -3, (2 * x + 3) / 6, tf.zeros_like(x)))


def _hard_sigmoid_slope(x):
    return tf.where((x > -3) & (x < 3), tf.fill(tf.shape(x), tf.constant(1 / 6, x.dtype)), tf.zeros_like(x))


def _mish_slope(x):
    t = tf.tanh(tf.math.softplus(x))
    return t + x * (1 - t * t) * tf.sigmoid(x)


def _softplus(x):
    return np.logaddexp(0.0, x)


FUNCTIONS = {function.name: function for function in (
    Function("SiLU", lambda x: x * special.expit(x), _silu_slope),
    Function("GELU", lambda x: 0.5 * x * special.erfc(-x * _SQRT_HALF), _gelu_slope),
    Function("GELUTanh", lambda x: 0.5 * x * (1 + np.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x**3))),
             _gelu_tanh_slope),
    Function("HardSwish", lambda x: x * np.clip(x + 3, 0, 6) / 6, _hard_swish_slope),
    Function("HardSigmoid", lambda x: np.clip(x + 3, 0, 6) / 6, _hard_sigmoid_slope, gate=True),
    Function("Mish", lambda x: x * np.tanh(_softplus(x)), _mish_slope),
    Function("Softplus", _softplus, tf.sigmoid),
)}


@dataclasses.dataclass(frozen=True)
class Activation:
    """One activation function applied in a graph: ``output``'s value is ``function(input)``.

    ``output``: the node whose output 0 is the activation's value;
    ``input``: the tensor ``x`` as a ``NodeDef`` input (``"op"`` or
    ``"op:1"``); ``internal``: the other nodes of the subgraph, which are
    no layers of their own.
    """

    function: str
    output: str
    input: str
    internal: frozenset


# Elementwise ops, evaluated in float64 on a grid. Anything else ends a subgraph.
_UNARY = {
    "Identity": lambda x: x, "Snapshot": lambda x: x, "Neg": np.negative, "Sigmoid": special.expit,
    "Tanh": np.tanh, "Erf": special.erf, "Erfc": special.erfc, "Softplus": _softplus,
    "Relu": lambda x: np.maximum(x, 0.0), "Relu6": lambda x: np.clip(x, 0.0, 6.0), "Exp": np.exp,
    "Log": np.log, "Log1p": np.log1p, "Square": np.square, "Sqrt": np.sqrt, "Rsqrt": lambda x: 1 / np.sqrt(x),
    "Reciprocal": np.reciprocal, "Inv": np.reciprocal, "Abs": np.abs,
}
_BINARY = {
    "Mul": np.multiply, "AddV2": np.add, "Add": np.add, "Sub": np.subtract, "RealDiv": np.divide,
    "Div": np.divide, "Pow": np.power, "Maximum": np.maximum, "Minimum": np.minimum,
    "SquaredDifference": lambda a, b: np.square(a - b),
}
# At least one of these must lie between x and the output (else the function is affine).
_NONLINEAR = frozenset(_UNARY) - {"Identity", "Snapshot", "Neg"} | {"Pow", "Maximum", "Minimum",
                                                                     "SquaredDifference"}
# Ops that may end an activation (an Identity after one is no part of it).
_OUTPUT_OPS = frozenset(_UNARY) - {"Identity", "Snapshot"} | frozenset(_BINARY) | {"IdentityN"}
_FLOAT_TYPES = frozenset({types_pb2.DT_FLOAT, types_pb2.DT_HALF, types_pb2.DT_DOUBLE, types_pb2.DT_BFLOAT16})
_GRID = np.concatenate([np.linspace(-8.0, 8.0, 81), [-2.9, -0.3, 0.05, 0.7, 2.95]])
_TOLERANCE = 1e-5  # float32 constants (0.70710677 for sqrt(1/2)) are off by ~1e-7; GELU's two forms by ~5e-4
_MAX_SUBGRAPH = 24  # nodes: activations take a handful; longer elementwise chains are no activation


def _tensor(node_input: str) -> str:
    """A NodeDef input as ``"op:N"`` (``"op"`` is ``"op:0"``)."""
    name, _, port = node_input.partition(":")
    return f"{name}:{port or 0}"


class _Graph:
    """The nodes of a GraphDef, their scalar constants and elementwise ops."""

    def __init__(self, graph_def):
        self.nodes = {node.name: node for node in graph_def.node}
        self._scalars: dict[str, float | None] = {}

    def scalar(self, name: str):
        """The value of a one-element floating-point constant node, else None."""
        if name not in self._scalars:
            node, value = self.nodes.get(name), None
            if node is not None and node.op == "Const" and node.attr["dtype"].type in _FLOAT_TYPES:
                dims = node.attr["value"].tensor.tensor_shape.dim
                if all(dim.size == 1 for dim in dims):
                    value = float(np.asarray(tf.make_ndarray(node.attr["value"].tensor)).reshape(()))
            self._scalars[name] = value
        return self._scalars[name]

    def elementwise_inputs(self, tensor: str):
        """The input tensors that output ``tensor`` of an elementwise op reads, else None.

        ``IdentityN`` output k is its input k.
        """
        name, _, port = tensor.partition(":")
        node = self.nodes.get(name)
        if node is None:
            return None
        inputs = [_tensor(i) for i in node.input if not i.startswith("^")]
        if node.op == "IdentityN":
            return [inputs[int(port)]] if int(port) < len(inputs) else None
        if port != "0" or "T" in node.attr and node.attr["T"].type not in _FLOAT_TYPES:
            return None
        if node.op in _UNARY and len(inputs) == 1 or node.op in _BINARY and len(inputs) == 2:
            return inputs
        return None

    def evaluate(self, output: str, x: str, grid):
        """``output`` as a function of ``x`` on ``grid``, or None when it reads another tensor."""
        values = {x: grid}
        stack = [output]
        while stack:
            tensor = stack[-1]
            if tensor in values:
                stack.pop()
                continue
            scalar = self.scalar(input_op_name(tensor)) if tensor.endswith(":0") else None
            if scalar is not None:
                values[tensor] = np.float64(scalar)
                stack.pop()
                continue
            inputs = self.elementwise_inputs(tensor)
            if inputs is None:
                return None
            missing = [i for i in inputs if i not in values]
            if missing:
                stack.extend(missing)
                continue
            stack.pop()
            op = self.nodes[input_op_name(tensor)].op
            args = [values[i] for i in inputs]
            values[tensor] = args[0] if op == "IdentityN" else (_UNARY.get(op) or _BINARY[op])(*args)
        return values[output]


def _subgraph(graph: _Graph, output: str):
    """The tensors ``output`` reads through elementwise ops, nearest first, or None when too many."""
    order, seen = [], {output}
    frontier = [output]
    while frontier:
        following = []
        for tensor in frontier:
            inputs = graph.elementwise_inputs(tensor)
            if inputs is None:
                continue
            for i in inputs:
                if i not in seen and graph.scalar(input_op_name(i)) is None:
                    seen.add(i)
                    order.append(i)
                    following.append(i)
        if len(order) > _MAX_SUBGRAPH:
            return None
        frontier = following
    return order


def _between(graph: _Graph, output: str, x: str) -> set[str]:
    """The node names on the way from ``output`` down to ``x`` (``output``'s included, ``x``'s not)."""
    names, stack = set(), [output]
    while stack:
        tensor = stack.pop()
        if tensor == x or graph.scalar(input_op_name(tensor)) is not None:
            continue
        name = input_op_name(tensor)
        if name in names:
            continue
        names.add(name)
        stack.extend(graph.elementwise_inputs(tensor) or ())
    return names


def _match(values) -> str | None:
    if values is None:
        return None
    values = np.broadcast_to(values, _GRID.shape)
    if not np.all(np.isfinite(values)):
        return None
    for function in FUNCTIONS.values():
        expected = function.value(_GRID)
        if np.all(np.abs(values - expected) <= _TOLERANCE * (1 + np.abs(expected))):
            return function.name
    return None


def _topological(graph_def) -> list:
    """The nodes of ``graph_def``, each after the nodes it reads (files may list them in any order)."""
    nodes = {node.name: node for node in graph_def.node}
    order, state = [], {}
    for root in graph_def.node:
        if root.name in state:
            continue
        stack = [(root, False)]
        while stack:
            node, done = stack.pop()
            if done:
                state[node.name] = 2
                order.append(node)
                continue
            if node.name in state:
                continue
            state[node.name] = 1
            stack.append((node, True))
            for i in node.input:
                source = nodes.get(input_op_name(i))
                if source is not None and source.name not in state:
                    stack.append((source, False))
    return order


def _find_activations(graph_def) -> dict[str, Activation]:
    graph = _Graph(graph_def)
    found: dict[str, Activation] = {}
    taken: set[str] = set()
    # Consumers first: an activation that contains another (hard-swish holds
    # a hard-sigmoid) is found whole before its parts are looked at.
    for node in reversed(_topological(graph_def)):
        if node.name in taken or node.op not in _OUTPUT_OPS:
            continue
        output = f"{node.name}:0"
        order = _subgraph(graph, output)
        if not order:
            continue
        for x in order:
            if graph.scalar(input_op_name(x)) is not None:
                continue
            inside = _between(graph, output, x)
            if not any(graph.nodes[name].op in _NONLINEAR for name in inside):
                continue
            with np.errstate(all="ignore"):
                function = _match(graph.evaluate(output, x, _GRID))
            if function is not None:
                name, _, port = x.partition(":")
                found[node.name] = Activation(function, node.name, name if port == "0" else x,
                                              frozenset(inside - {node.name}))
                taken |= inside
                break
    return found


_memo = IdentityMemo(_find_activations)


def find_activations(graph_def) -> dict[str, Activation]:
    """The activation functions of :data:`FUNCTIONS` applied in ``graph_def``, by output node name.

    Remembered for the last ``graph_def`` asked about (that very object).
    """
    return _memo(graph_def)


def custom_gradient_nodes(graph_def) -> set[str]:
    """Names of the nodes whose gradient is a ``tf.custom_gradient`` function.

    That function is Python code bound to the graph it was traced in; a
    frozen graph imported elsewhere cannot call it.
    """
    return {node.name for node in graph_def.node
            if "_gradient_op_type" in node.attr and node.attr["_gradient_op_type"].s.startswith(b"CustomGradient")}
