"""The layers whose weights a sanity check randomizes, and randomized copies of a model.

A frozen model holds its weights as constants. A *weight layer* is a
convolution, depthwise convolution, transposed convolution or matrix
product whose kernel is such a constant, together with the bias added
right after it; a Keras layer with several of them (a separable
convolution) is one weight layer. Normalization layers (batch norm's
scale, offset and statistics) keep their values: they rescale channels and
hold nothing a map could copy.

A randomized copy is a new :class:`~tf_cnnvis.load.FrozenModel` whose
graph holds other values in those constants and is otherwise the same
graph, so :func:`tf_cnnvis.rebuild.rebuild` finds the graph it imported
for the original and only assigns the new values into it. The user's
model, graph and session are never touched.

Randomization (``how``), per weight tensor of a layer:

- ``"normal"`` (default): draws from a normal distribution with the
  tensor's own mean and standard deviation (a kernel keeps its scale; a
  constant bias stays constant);
- ``"shuffle"``: the tensor's own values in a random order (the exact
  distribution of the weights, their arrangement destroyed).

The draws for a layer depend only on ``seed`` and the layer's name, so
the cascade and the independent randomization give a layer the same
random weights.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import re

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import LayerNotFoundError, OptionError
from tf_cnnvis.graph import input_op_name, op_name
from tf_cnnvis.load import FrozenModel
from tf_cnnvis.options import RANDOMIZATIONS
from tf_cnnvis.rebuild import weight_values

__all__ = ["RANDOMIZATIONS", "WeightLayer", "randomized_model", "select_weight_layers", "weight_layers"]

# Ops that multiply their input by a kernel, and which of their inputs holds it.
_KERNEL_OPS = {"Conv2D": (1,), "Conv3D": (1,), "DepthwiseConv2dNative": (1,), "Conv2DBackpropInput": (1,),
               "Conv3DBackpropInputV2": (1,), "MatMul": (0, 1), "BatchMatMul": (0, 1), "BatchMatMulV2": (0, 1),
               "BatchMatMulV3": (0, 1), "Einsum": (0, 1)}
# Ops a weight passes through between its constant and the op that uses it.
_PASS_THROUGH = frozenset({"Identity", "ReadVariableOp", "Cast", "Reshape", "Squeeze", "ExpandDims", "Transpose",
                           "Snapshot"})
_BIAS_OPS = frozenset({"BiasAdd", "Add", "AddV2"})
_FLOAT_TYPES = frozenset({tf.float16.as_datatype_enum, tf.bfloat16.as_datatype_enum, tf.float32.as_datatype_enum,
                          tf.float64.as_datatype_enum})


@dataclasses.dataclass(frozen=True)
class WeightLayer:
    """One layer a sanity check can randomize.

    Attributes:
        name: the Keras layer name where the model has one, else the op name.
        weights: the names of the weight constants it randomizes (kernels first).
        ops: the ops that apply its kernels.
        depth: the longest path in ops from the input to its last kernel op;
            the cascade goes from the deepest layer to the shallowest.
    """

    name: str
    weights: tuple[str, ...]
    ops: tuple[str, ...]
    depth: int


def _is_float_constant(node) -> bool:
    return node.op == "Const" and "dtype" in node.attr and node.attr["dtype"].type in _FLOAT_TYPES


def _constant_behind(nodes: dict, name: str):
    """The float constant a tensor passes unchanged (up to reshapes and casts) from, or None."""
    node = nodes.get(input_op_name(name))
    seen = 0
    while node is not None and node.op in _PASS_THROUGH and node.input and seen < 16:
        node = nodes.get(input_op_name(node.input[0]))
        seen += 1
    return node if node is not None and _is_float_constant(node) else None


def _depths(graph_def, inputs) -> dict[str, int]:
    """The longest path (in ops) from ``inputs`` to each node that depends on them."""
    nodes = {node.name: node for node in graph_def.node}
    readers: dict[str, list[str]] = {name: [] for name in nodes}
    missing = {}
    for node in graph_def.node:
        sources = {input_op_name(item) for item in node.input} & nodes.keys()
        missing[node.name] = len(sources)
        for source in sources:
            readers[source].append(node.name)
    ready = [name for name, count in missing.items() if count == 0]
    depth = {op_name(name): 0 for name in inputs}
    while ready:  # topological order
        name = ready.pop()
        if name not in depth:
            sources = [depth[input_op_name(item)] for item in nodes[name].input
                       if not item.startswith("^") and input_op_name(item) in depth]
            if sources:
                depth[name] = max(sources) + 1
        for reader in readers[name]:
            missing[reader] -= 1
            if missing[reader] == 0:
                ready.append(reader)
    return depth


def _keras_scopes(model: FrozenModel) -> dict[str, str]:
    """The name scope of each Keras layer's ops: its output op's path up to the layer's own name (``_1``...)."""
    scopes = {}
    for name, tensor in model.keras_layers.items():
        leaf = re.escape(name.rsplit("/", 1)[-1]) + r"(_\d+)*"
        parts = op_name(tensor).split("/")[:-1]
        for end in range(len(parts), 0, -1):
            if re.fullmatch(leaf, parts[end - 1]):
                scopes.setdefault("/".join(parts[:end]), name)
                break
    return scopes


def _layer_name(op: str, scopes: dict[str, str]) -> str:
    parts = op.split("/")[:-1]
    for end in range(len(parts), 0, -1):
        layer = scopes.get("/".join(parts[:end]))
        if layer is not None:
            return layer
    return op


def weight_layers(model: FrozenModel) -> list[WeightLayer]:
    """Every layer with weights to randomize, from the output toward the input (the cascade's order)."""
    graph_def = model.graph_def
    nodes = {node.name: node for node in graph_def.node}
    depths = _depths(graph_def, model.inputs)
    readers: dict[str, list] = {}
    for node in graph_def.node:
        for item in node.input:
            if not item.startswith("^"):
                readers.setdefault(input_op_name(item), []).append(node)
    scopes = _keras_scopes(model)
    layers: dict[str, dict] = {}
    taken: set[str] = set()
    for node in graph_def.node:
        if node.op not in _KERNEL_OPS or node.name not in depths:
            continue
        kernels = []
        for index in _KERNEL_OPS[node.op]:
            if index >= len(node.input):
                continue
            constant = _constant_behind(nodes, node.input[index])
            if constant is not None and len(constant.attr["value"].tensor.tensor_shape.dim) >= 1:
                kernels.append(constant.name)
        kernels = [name for name in kernels if name not in taken]
        if not kernels:
            continue
        biases = []
        for reader in readers.get(node.name, ()):
            if reader.op in _BIAS_OPS:
                for item in reader.input:
                    constant = _constant_behind(nodes, item)
                    if constant is not None and constant.name not in taken and constant.name not in kernels:
                        biases.append(constant.name)
        taken.update(kernels + biases)
        name = _layer_name(node.name, scopes)
        entry = layers.setdefault(name, {"kernels": [], "biases": [], "ops": [], "depth": 0})
        entry["kernels"] += kernels
        entry["biases"] += biases
        entry["ops"].append(node.name)
        entry["depth"] = max(entry["depth"], depths[node.name])
    result = [WeightLayer(name=name, weights=tuple(entry["kernels"] + entry["biases"]), ops=tuple(entry["ops"]),
                          depth=entry["depth"]) for name, entry in layers.items()]
    return sorted(result, key=lambda layer: (-layer.depth, layer.name))


def select_weight_layers(model: FrozenModel, layers=None) -> list[WeightLayer]:
    """The layers named in ``layers`` (None: all), from the output toward the input.

    Raises:
        OptionError: the model has no weight layer, or ``layers`` is not a
            name or a non-empty list of names.
        LayerNotFoundError: a name is not one of the model's weight layers
            (the message lists the closest ones).
    """
    table = weight_layers(model)
    if not table:
        raise OptionError(f"{model.source or 'the model'} has no layer with weights to randomize (no "
                          "convolution or dense layer whose kernel is a weight); a sanity check needs one")
    if layers is None:
        return table
    names = [layers] if isinstance(layers, str) else layers
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(item, str) for item in names):
        raise OptionError(f"layers={layers!r} must be a layer name or a non-empty list of names of layers with "
                          f"weights: {', '.join(layer.name for layer in table)}")
    by_name = {layer.name: layer for layer in table}
    for item in names:
        if item not in by_name:
            close = difflib.get_close_matches(item, list(by_name), n=5, cutoff=0.4)
            hint = f"closest: {', '.join(close)}" if close else f"layers with weights: {', '.join(by_name)}"
            raise LayerNotFoundError(f"no layer with weights named {item!r} in this model; give names of layers "
                                     f"with weights to randomize ({hint})")
    if len(set(names)) != len(names):
        repeated = next(item for item in names if names.count(item) > 1)
        raise OptionError(f"layers lists {repeated!r} twice; give each layer once")
    return [layer for layer in table if layer.name in set(names)]


def _seed_of(seed: int, name: str) -> list[int]:
    digest = hashlib.sha1(name.encode("utf-8")).digest()
    return [int(seed), int.from_bytes(digest[:8], "little")]


def random_values(values: dict[str, np.ndarray], layer: WeightLayer, seed: int = 0,
                  how: str = "normal") -> dict[str, np.ndarray]:
    """New values for the weights of ``layer`` (see the module's docstring for ``how``)."""
    if how not in RANDOMIZATIONS:
        raise OptionError(f"randomization={how!r} is not one of {', '.join(map(repr, RANDOMIZATIONS))}")
    rng = np.random.default_rng(_seed_of(seed, layer.name))
    result = {}
    for name in layer.weights:
        value = values[name]
        if how == "shuffle":
            result[name] = rng.permutation(value.ravel()).reshape(value.shape).astype(value.dtype)
        else:
            wide = value.astype(np.float64)
            result[name] = rng.normal(wide.mean(), wide.std(), value.shape).astype(value.dtype)
    return result


class Randomizer:
    """Randomized copies of one model: the original values read once, each copy's values drawn once."""

    def __init__(self, model: FrozenModel, seed: int = 0, how: str = "normal"):
        if how not in RANDOMIZATIONS:
            raise OptionError(f"randomization={how!r} is not one of {', '.join(map(repr, RANDOMIZATIONS))}")
        self.model = model
        self.seed = int(seed)
        self.how = how
        self.values = weight_values(model.graph_def)
        self._drawn: dict[str, dict[str, np.ndarray]] = {}
        self._protos: dict[str, dict] = {}
        self._index = {node.name: index for index, node in enumerate(model.graph_def.node)}

    def layer_values(self, layer: WeightLayer) -> dict[str, np.ndarray]:
        """The random values of ``layer``'s weights (the same at every call)."""
        if layer.name not in self._drawn:
            self._drawn[layer.name] = random_values(self.values, layer, self.seed, self.how)
        return self._drawn[layer.name]

    def _layer_protos(self, layer: WeightLayer) -> dict:
        """The random values of ``layer`` as tensor protos, made once."""
        if layer.name not in self._protos:
            self._protos[layer.name] = {name: tf.make_tensor_proto(value)
                                        for name, value in self.layer_values(layer).items()}
        return self._protos[layer.name]

    def changes(self, before, after) -> dict[str, np.ndarray]:
        """The weights that differ between the copies with ``before`` and ``after`` randomized (``after``'s)."""
        before, after = {layer.name: layer for layer in before}, {layer.name: layer for layer in after}
        changed = {}
        for name, layer in before.items():
            if name not in after:
                changed.update({weight: self.values[weight] for weight in layer.weights})
        for name, layer in after.items():
            if name not in before:
                changed.update(self.layer_values(layer))
        return changed

    def model_with(self, layers) -> FrozenModel:
        """A copy of the model with the weights of ``layers`` randomized."""
        graph_def = tf.compat.v1.GraphDef()
        graph_def.CopyFrom(self.model.graph_def)
        for layer in layers:
            for name, proto in self._layer_protos(layer).items():
                graph_def.node[self._index[name]].attr["value"].tensor.CopyFrom(proto)
        names = ", ".join(layer.name for layer in layers)
        return dataclasses.replace(self.model, graph_def=graph_def,
                                   source=f"{self.model.source} with {names} randomized ({self.how})")


def randomized_model(model: FrozenModel, layers, seed: int = 0, how: str = "normal") -> FrozenModel:
    """A copy of ``model`` with the weights of ``layers`` (names or WeightLayer rows) randomized."""
    chosen = [layer if isinstance(layer, WeightLayer) else None for layer in layers]
    if any(layer is None for layer in chosen):
        chosen = select_weight_layers(model, [layer.name if isinstance(layer, WeightLayer) else layer
                                              for layer in layers])
    return Randomizer(model, seed, how).model_with(chosen)
