"""Graph: walks over a tf.Graph / GraphDef and node-name helpers shared by every stage.

The ground floor: nothing here imports another module of tf_cnnvis.

Names. A tensor is named ``"op:N"`` (output N of op ``op``); a ``NodeDef``
names its inputs ``"op"`` (output 0), ``"op:N"``, or ``"^op"`` (a control
input). :func:`op_name`, :func:`input_op_name`, :func:`tensor_name` and
:func:`as_tensor_name` convert between these forms; op names cannot hold
``":"`` or start with ``"^"``, so the conversions are exact.

Walks. Each visits every op at most once and keeps its own stack (no
recursion, so no depth limit on ResNet-size graphs):

* :func:`ops_depending_on` (:func:`depends_on_inputs` for their names):
  forward, the ops that read given tensors, directly or not (one pass over
  the graph, which is in topological order);
* :func:`upstream_ops`: backward, the ops that given ops read;
* :func:`ops_between`: backward from a tensor down to an input, through
  floating-point tensors only (the ops a gradient flows through).

:class:`IdentityMemo` remembers a value computed from one object (a
``GraphDef``, which can be neither hashed nor weakly referenced) and
answers for that very object only.
"""

from __future__ import annotations

import tensorflow as tf

__all__ = ["IdentityMemo", "as_tensor_name", "depends_on_inputs", "input_op_name", "op_name", "ops_between",
           "ops_depending_on", "tensor_name", "upstream_ops"]


def op_name(name: str) -> str:
    """The op of a tensor name: ``"conv/Relu:0"`` -> ``"conv/Relu"`` (an op name stays as it is)."""
    return name.partition(":")[0]


def input_op_name(node_input: str) -> str:
    """The op a ``NodeDef`` input comes from: ``"^a"``, ``"a:1"`` and ``"a"`` all give ``"a"``."""
    return node_input.lstrip("^").partition(":")[0]


def tensor_name(name: str, index: int = 0) -> str:
    """The name of output ``index`` of the op ``name``: ``"conv/Relu"`` -> ``"conv/Relu:0"``."""
    return f"{name}:{index}"


def as_tensor_name(name: str) -> str:
    """A name given as a tensor name or as an op name, as a tensor name (an op stands for its output 0)."""
    return name if ":" in name else tensor_name(name)


def ops_depending_on(graph: tf.Graph, inputs, *, stop=None) -> set:
    """The ops of ``graph`` that depend on any of the tensors ``inputs`` (given by name).

    The ops of ``inputs`` themselves are included; control inputs do not
    count. ``stop``: an op of ``graph``; the walk ends there, so only the
    ops created before it are looked at (``stop`` itself is not added).
    One pass in creation order, which is topological.
    """
    reached = {graph.get_tensor_by_name(name).op for name in inputs}
    for op in graph.get_operations():
        if op is stop:
            break
        if any(t.op in reached for t in op.inputs):  # ops hash by identity: cheaper than their names
            reached.add(op)
    return reached


def depends_on_inputs(graph: tf.Graph, inputs) -> set[str]:
    """Names of the ops of ``graph`` that depend on any of the tensors ``inputs`` (:func:`ops_depending_on`)."""
    return {op.name for op in ops_depending_on(graph, inputs)}


def upstream_ops(ops, *, control_inputs: bool = True) -> set[str]:
    """Names of ``ops`` and of every op they read, directly or not.

    Follows data inputs and, with ``control_inputs``, control inputs (what
    running ``ops`` runs).
    """
    names, stack = set(), list(ops)
    while stack:
        op = stack.pop()
        if op.name in names:
            continue
        names.add(op.name)
        stack.extend(tensor.op for tensor in op.inputs)
        if control_inputs:
            stack.extend(op.control_inputs)
    return names


def ops_between(top, bottom, dependent) -> list:
    """The ops between the tensors ``bottom`` and ``top``, top first (in reverse creation order).

    Walks down from ``top``'s op through floating-point inputs only (not
    shapes or indices) and only through ops in ``dependent``, the names of
    the ops that depend on ``bottom`` (:func:`depends_on_inputs`); ``bottom``'s
    op is not included. Empty when ``top`` does not depend on ``bottom``.
    """
    names, stack = set(), [top.op]
    while stack:
        op = stack.pop()
        if op.name in names or op.name not in dependent or op is bottom.op:
            continue
        names.add(op.name)
        stack.extend(tensor.op for tensor in op.inputs if tensor.dtype.is_floating)
    return [op for op in reversed(top.graph.get_operations()) if op.name in names]


class IdentityMemo:
    """``compute(obj)`` for the last object asked about, kept until another object is asked about.

    The answer is given again only for that very object (``is``), never
    for another one that happens to reuse its ``id()``: the object is kept
    with its value, not its id. One entry: the model of the current call.
    The object must not be changed in place while it is remembered.
    """

    def __init__(self, compute):
        self._compute = compute
        self._entry: tuple[object, object] | None = None  # replaced whole: threads see old or new

    def __call__(self, obj):
        entry = self._entry
        if entry is not None and entry[0] is obj:
            return entry[1]
        value = self._compute(obj)
        self._entry = (obj, value)
        return value

    def clear(self):
        """Forget the object and its value (frees the object if nothing else holds it)."""
        self._entry = None
