"""Inline the function calls of a frozen graph, so that every op is a node of the graph itself.

Freezing with ``convert_variables_to_constants_v2`` inlines what Grappler
will, but not a function marked for XLA: Keras runs a grouped convolution
(``Conv2D(groups=...)``, ConvNeXt's 7x7 depthwise convolutions) in one, so
the frozen ConvNeXtTiny still holds 18 ``StatefulPartitionedCall`` ops. An op
inside a call is invisible to the layer table, to the backward rules (which
are attached to the graph's nodes) and to the receptive-field walk. Here
each call (``PartitionedCall``, ``StatefulPartitionedCall``, or an op named
after a function of the graph's library) is replaced by a copy of the
function's body under the call's name, as deep as calls nest.

Only control edges change: the body's ``NoOp`` nodes, which only gather
control outputs, are left out, and a control input on a call becomes one on
the ops that computed its outputs. Values are the same, and a
``tf.custom_gradient`` op inside a function (an ``IdentityN`` with its
``_gradient_op_type``) stays what it was. A call that cannot be inlined (its
function is missing, generic or recursive, or holds an op TensorFlow does not
know) raises a :class:`~tf_cnnvis.errors.ModelLoadError` that names it.
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.python.framework import op_def_registry

from tf_cnnvis.errors import ModelLoadError
from tf_cnnvis.graph import input_op_name

__all__ = ["CALL_OPS", "function_calls", "inline_function_calls"]

CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
_MAX_DEPTH = 64  # calls nested deeper than this are taken for recursion


def _called_function(node, library) -> str | None:
    """The name of the function ``node`` calls, or None when it is no call."""
    if node.op in CALL_OPS:
        return node.attr["f"].func.name if "f" in node.attr else ""
    return node.op if node.op in library else None


def function_calls(graph_def) -> list[str]:
    """Names of the nodes of ``graph_def`` that call a function."""
    library = {function.signature.name for function in graph_def.library.function}
    return [node.name for node in graph_def.node if _called_function(node, library) is not None]


def inline_function_calls(graph_def, description: str):
    """``graph_def`` with every function call replaced by the function's body (``graph_def`` itself if none)."""
    library = {function.signature.name: function for function in graph_def.library.function}
    if not any(_called_function(node, library) is not None for node in graph_def.node):
        return graph_def
    current = graph_def
    for _ in range(_MAX_DEPTH):
        calls = [node for node in current.node if _called_function(node, library) is not None]
        if not calls:
            return _without_unused_functions(current)
        current = _inline_once(current, library, description)
    raise ModelLoadError(
        f"cannot inline the function calls of {description}: op {calls[0].name!r} ({calls[0].op}) still calls "
        f"a function after {_MAX_DEPTH} levels of nested calls (a recursive function?); tf_cnnvis needs every "
        "op of the model in the graph itself")


def _inline_once(graph_def, library, description: str):
    inlined = tf.compat.v1.GraphDef()
    inlined.versions.CopyFrom(graph_def.versions)
    inlined.library.CopyFrom(graph_def.library)
    names = {node.name for node in graph_def.node}
    outputs: dict[str, list[str]] = {}  # call name -> its outputs as NodeDef inputs
    for node in graph_def.node:
        function = _called_function(node, library)
        if function is None:
            inlined.node.add().CopyFrom(node)
            continue
        if function not in library:
            raise ModelLoadError(
                f"cannot inline op {node.name!r} ({node.op}) of {description}: it calls function {function!r}, "
                "which the graph's library does not define; tf_cnnvis needs every op of the model in the graph "
                "itself")
        body, outputs[node.name] = _Body(node, library[function], names, library, description).build()
        inlined.node.extend(body)

    def resolve(source: str) -> list[str]:
        name = input_op_name(source)
        if name not in outputs:
            return [source]
        if source.startswith("^"):
            return sorted({"^" + input_op_name(target) for output in outputs[name] for target in resolve(output)})
        port = int(source.partition(":")[2] or 0)
        return resolve(outputs[name][port])

    for node in inlined.node:
        if any(input_op_name(source) in outputs for source in node.input):
            rewritten = [target for source in node.input for target in resolve(source)]
            data = [source for source in rewritten if not source.startswith("^")]
            controls = sorted({source for source in rewritten if source.startswith("^")}
                              - {"^" + input_op_name(source) for source in data})
            node.input[:] = data + controls
    return inlined


class _Body:
    """The body of one called function, renamed into the graph under the call's name."""

    def __init__(self, call, function, names, library, description):
        self.call, self.function, self.names = call, function, names
        self.library, self.description = library, description
        self.prefix = call.name
        signature = function.signature
        arguments = [source for source in call.input if not source.startswith("^")]
        self.controls = [source for source in call.input if source.startswith("^")]
        if len(arguments) != len(signature.input_arg):
            self.fail(f"it passes {len(arguments)} inputs to a function of {len(signature.input_arg)}")
        self.arguments = {arg.name: source for arg, source in zip(signature.input_arg, arguments)}
        self.noops = {node.name for node in function.node_def if node.op == "NoOp"}
        self.renamed = {}
        for node in function.node_def:
            name = f"{self.prefix}/{node.name}"
            while name in names:
                name += "_inlined"
            self.renamed[node.name] = name
        self.offsets = {node.name: self._output_offsets(node) for node in function.node_def}

    def fail(self, why: str):
        raise ModelLoadError(
            f"cannot inline op {self.call.name!r} ({self.call.op}) of {self.description}, a call of function "
            f"{self.function.signature.name!r}: {why}; tf_cnnvis needs every op of the model in the graph itself")

    def _output_offsets(self, node) -> dict[str, int]:
        """Where each named output of a body node starts among its outputs."""
        if node.op in self.library:
            return {arg.name: index for index, arg in enumerate(self.library[node.op].signature.output_arg)}
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            self.fail(f"its op {node.name!r} has type {node.op!r}, which this TensorFlow does not know")
        offsets, position = {}, 0
        for arg in op_def.output_arg:
            offsets[arg.name] = position
            if arg.number_attr:
                position += node.attr[arg.number_attr].i
            elif arg.type_list_attr:
                position += len(node.attr[arg.type_list_attr].list.type)
            else:
                position += 1
        return offsets

    def tensor(self, source: str) -> str | None:
        """A body input (``"arg"``, ``"node:output:0"``, ``"^node"``) as a graph input (None: a NoOp's control)."""
        if source.startswith("^"):
            name = source[1:]
            if name in self.arguments:
                return "^" + input_op_name(self.arguments[name])
            if name in self.noops:
                return None
            if name not in self.renamed:
                self.fail(f"a control input names {name!r}, which the function does not hold")
            return "^" + self.renamed[name]
        parts = source.split(":")
        if parts[0] in self.arguments and len(parts) <= 2:
            return self.arguments[parts[0]]
        if parts[0] not in self.renamed or len(parts) not in (2, 3) or parts[1] not in self.offsets[parts[0]]:
            self.fail(f"an input names {source!r}, which the function does not hold")
        port = self.offsets[parts[0]][parts[1]] + (int(parts[2]) if len(parts) == 3 else 0)
        return self.renamed[parts[0]] + (f":{port}" if port else "")

    def build(self):
        """(the body's nodes, the call's outputs as graph inputs)."""
        nodes = []
        for original in self.function.node_def:
            if original.op == "NoOp":
                continue
            if any(value.placeholder for value in original.attr.values()):
                self.fail(f"its op {original.name!r} takes an attribute from the call (a generic function)")
            node = tf.compat.v1.NodeDef()
            node.CopyFrom(original)
            node.name = self.renamed[original.name]
            node.device = ""
            sources = [self.tensor(source) for source in original.input]
            node.input[:] = [source for source in sources if source is not None]
            if not any(not source.startswith("^") for source in node.input):
                node.input.extend(self.controls)  # a constant runs after what the call waited for
            nodes.append(node)
        outputs = []
        for arg in self.function.signature.output_arg:
            if arg.name not in self.function.ret:
                self.fail(f"its output {arg.name!r} is not returned")
            outputs.append(self.tensor(self.function.ret[arg.name]))
        return nodes, outputs


def _without_unused_functions(graph_def):
    """``graph_def`` without the library functions no node refers to any more."""
    library = {function.signature.name: function for function in graph_def.library.function}
    used, stack = set(), []

    def refer(nodes):
        for node in nodes:
            names = [node.op] if node.op in library else []
            for value in node.attr.values():
                names += [value.func.name] if value.HasField("func") else [f.name for f in value.list.func]
            stack.extend(name for name in names if name in library and name not in used)

    refer(graph_def.node)
    while stack:
        name = stack.pop()
        if name not in used:
            used.add(name)
            refer(library[name].node_def)
    pruned = tf.compat.v1.GraphDef()
    pruned.versions.CopyFrom(graph_def.versions)
    pruned.node.extend(graph_def.node)
    pruned.library.function.extend(function for function in graph_def.library.function
                                   if function.signature.name in used)
    pruned.library.gradient.extend(gradient for gradient in graph_def.library.gradient
                                   if gradient.function_name in used)
    return pruned
