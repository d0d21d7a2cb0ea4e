"""Which tensors of a frozen graph are "layers", and how users pick them.

A selection is a letter or a list of letters (``'r'`` rectifier-like
activations, ``'p'`` pooling, ``'c'`` convolutions), explicit names (a Keras
layer name, a TF op name or a tensor name), or a mix of both, exactly as the
original tf_cnnvis accepted them.

``'r'`` takes the ReLU family by op type and the activation functions of
several ops (SiLU, GELU, hard-swish, hard-sigmoid gates, Mish, softplus) by
what their ops compute (:mod:`tf_cnnvis.activation_functions`), so a graph
without Keras's names selects the same layers. Each layer is named after
its Keras layer where it has one: the layer's own name where the tensor is
the layer's output, else ``<keras layer>/<part>`` for a convolution (``conv``,
``depthwise``, ``transposed``), pooling (``pool``) or activation (its
function, lower case) inside it, such as the pre-activation convolution
``block5_conv3/conv``; other tensors keep their op name. Op and tensor
names keep working as explicit selections.
"""

from __future__ import annotations

import dataclasses
import difflib
import re

import tensorflow as tf

from tf_cnnvis.activation_functions import find_activations
from tf_cnnvis.errors import LayerNotFoundError
from tf_cnnvis.graph import as_tensor_name, depends_on_inputs, input_op_name, op_name
from tf_cnnvis.load import FrozenModel
from tf_cnnvis.options import LETTERS, check_layer_selection

RELU_OPS = frozenset({"Relu", "Relu6", "LeakyRelu", "Elu", "Selu"})
POOL_OPS = frozenset({"MaxPool", "MaxPoolV2", "AvgPool", "MaxPoolWithArgmax"})
CONV_OPS = frozenset({"Conv2D", "DepthwiseConv2dNative", "Conv2DBackpropInput"})

_KIND_OF_OP = {**{op: "relu" for op in RELU_OPS}, **{op: "pool" for op in POOL_OPS},
               **{op: "conv" for op in CONV_OPS}}


@dataclasses.dataclass(frozen=True)
class LayerInfo:
    """One selectable layer: what ``list_layers`` returns, one per row."""

    name: str
    kind: str
    op_type: str
    shape: tuple
    channels: int | None
    tensor: str

    def __str__(self):
        shape = "x".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name:40s} {self.kind:6s} {self.op_type:22s} {shape:18s} {self.channels}"


def prelu_nodes(graph_def) -> tuple[set[str], set[str]]:
    """Find PReLU layers built from plain ops: relu(x) + (-alpha) * relu(-x).

    Keras builds PReLU that way. Returns (names of the ``Add`` ops that output
    a PReLU, names of their internal ``Relu`` ops). The internal Relus are not
    layers of their own, and a blind gradient rule on the negative-branch one
    is wrong.
    """
    nodes = {node.name: node for node in graph_def.node}

    def source(name):
        return nodes.get(input_op_name(name))

    outputs, internal = set(), set()
    for node in graph_def.node:
        if node.op not in ("Add", "AddV2") or len(node.input) != 2:
            continue
        first, second = source(node.input[0]), source(node.input[1])
        for positive, product in ((first, second), (second, first)):
            if positive is None or product is None or positive.op != "Relu" or product.op != "Mul":
                continue
            for factor in map(source, product.input):
                negate = factor is not None and factor.op == "Relu" and source(factor.input[0])
                if (negate and negate.op == "Neg"
                        and source(negate.input[0]) is source(positive.input[0])):
                    outputs.add(node.name)
                    internal.update((positive.name, factor.name))
    return outputs, internal


def negative_branch_relus(graph_def) -> set[str]:
    """The ``Relu(Neg(x))`` ops of PReLU layers (see :func:`prelu_nodes`)."""
    nodes = {node.name: node for node in graph_def.node}
    _, internal = prelu_nodes(graph_def)
    return {name for name in internal
            if nodes[input_op_name(nodes[name].input[0])].op == "Neg"}


def layer_table(graph: tf.Graph, model: FrozenModel) -> list[LayerInfo]:
    """Every selectable layer of ``graph`` in graph order."""
    prelu_outputs, prelu_internal = prelu_nodes(model.graph_def)
    activations = find_activations(model.graph_def)
    internal = prelu_internal.union(*(activation.internal for activation in activations.values()))
    names = _Names(model)
    reached = depends_on_inputs(graph, model.inputs)
    # Only the model's own ops: an imported graph also holds the backward
    # passes built on it, whose convolutions and rectifiers are no layers.
    own = {node.name for node in model.graph_def.node}
    table = []
    for op in graph.get_operations():
        if op.name not in reached or op.name not in own or op.name in internal:
            continue
        if op.name in prelu_outputs:
            kind, op_type = "relu", "PReLU"
        elif op.name in activations:
            kind, op_type = "relu", activations[op.name].function
        else:
            kind, op_type = _KIND_OF_OP.get(op.type), op.type
        if kind is None:
            continue
        tensor = op.outputs[0]
        parts = activations[op.name].internal if op.name in activations else ()
        table.append(_info(names.name(tensor.name, op_type, parts), kind, op_type, tensor))
    return table


_PART_OF_OP = {"Conv2D": "conv", "DepthwiseConv2dNative": "depthwise", "Conv2DBackpropInput": "transposed",
               **{op: "pool" for op in POOL_OPS}}


class _Names:
    """Readable names of a model's layers, derived from its Keras layers (see the module's docstring)."""

    def __init__(self, model: FrozenModel):
        self.keras = model.keras_layers
        self.keras_name_of = {tensor: name for name, tensor in model.keras_layers.items()}
        # The name scope of each Keras layer's call: the last component of
        # its output op's name that is the layer's name (plus "_1"...).
        self.scopes = {}
        for name, tensor in model.keras_layers.items():
            leaf = re.escape(name.rsplit("/", 1)[-1]) + r"(_\d+)*"
            parts = op_name(tensor).split("/")[:-1]
            for end in range(len(parts), 0, -1):
                if re.fullmatch(leaf, parts[end - 1]):
                    self.scopes.setdefault("/".join(parts[:end]), name)
                    break
        self.used: set[str] = set()

    def _layer_of(self, op: str):
        parts = op.split("/")[:-1]
        for end in range(len(parts), 0, -1):
            layer = self.scopes.get("/".join(parts[:end]))
            if layer is not None:
                return layer
        return None

    def name(self, tensor: str, op_type: str, parts=()) -> str:
        """The row's name: ``tensor`` is the output of an op of ``op_type`` (``parts``: an activation's inner ops)."""
        candidates = [self.keras_name_of[tensor]] if tensor in self.keras_name_of else []
        # An activation whose Keras layer is one of its parts (MobileNetV3's hard-sigmoid,
        # relu6(x + 3) * (1/6) around a ReLU layer) takes that layer's name.
        candidates += [self.keras_name_of[f"{part}:0"] for part in sorted(parts) if f"{part}:0" in self.keras_name_of]
        layer = self._layer_of(op_name(tensor))
        if layer is not None:
            scoped = f"{layer}/{_PART_OF_OP.get(op_type, op_type.lower())}"
            if scoped not in self.keras:  # a nested Keras layer of that name is another tensor
                candidates.append(scoped)
        for candidate in candidates:
            if candidate not in self.used:
                self.used.add(candidate)
                return candidate
        return op_name(tensor)


def _info(name: str, kind: str, op_type: str, tensor) -> LayerInfo:
    shape = tuple(tensor.shape.as_list()) if tensor.shape.rank is not None else ()
    channels = shape[-1] if len(shape) in (2, 4) else None
    return LayerInfo(name=name, kind=kind, op_type=op_type, shape=shape, channels=channels,
                     tensor=tensor.name)


def select_layers(graph: tf.Graph, model: FrozenModel, layers) -> list[LayerInfo]:
    """Resolve a user's ``layers`` argument to LayerInfo rows (no duplicates)."""
    items = check_layer_selection(layers)
    table = layer_table(graph, model)
    chosen: dict[str, LayerInfo] = {}
    for item in items:
        if set(item) <= set(LETTERS) and len(item) <= len(LETTERS):
            kinds = {LETTERS[letter] for letter in item}
            for info in table:
                if info.kind in kinds:
                    chosen.setdefault(info.tensor, info)
            continue
        info = _resolve_name(graph, model, table, item)
        chosen.setdefault(info.tensor, info)
    if not chosen:
        raise LayerNotFoundError(
            f"the selection {layers!r} matches no layer in this model; its layers are: "
            f"{_summary(table)}")
    order = {op.name: index for index, op in enumerate(graph.get_operations())}
    return sorted(chosen.values(), key=lambda info: order[op_name(info.tensor)])


def _resolve_name(graph, model, table, name: str) -> LayerInfo:
    by_name = {info.name: info for info in table}
    if name in by_name:
        return by_name[name]
    tensor_name = model.keras_layers.get(name)
    if tensor_name is None:
        tensor_name = as_tensor_name(name)
    try:
        tensor = graph.get_tensor_by_name(tensor_name)
    except (KeyError, ValueError):
        candidates = sorted(set(by_name) | set(model.keras_layers)
                            | {op.name for op in graph.get_operations() if op.type != "Const"})
        close = difflib.get_close_matches(name, candidates, n=5, cutoff=0.5)
        hint = f"closest names: {', '.join(close)}" if close else f"layers: {_summary(table)}"
        raise LayerNotFoundError(
            f"no layer named {name!r} in this model; give a letter 'r', 'p', 'c', a Keras layer "
            f"name, an op name or a tensor name ({hint})") from None
    for info in table:
        if info.tensor == tensor.name:
            return info
    kind = _KIND_OF_OP.get(tensor.op.type, "other")
    return _info(name, kind, tensor.op.type, tensor)


def _summary(table, limit: int = 12) -> str:
    names = [info.name for info in table]
    if not names:
        return "(none of kinds relu, pool, conv)"
    more = f" ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
