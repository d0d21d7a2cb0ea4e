"""Graph walks and node names (tf_cnnvis.graph), and the modules built on them."""

import ast
import pathlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_cnnvis import graph as walks
from tf_cnnvis.backward import backward_path, batched_gradient
from tf_cnnvis.rebuild import structure_key

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name, op", [("conv/Relu:0", "conv/Relu"), ("conv/Relu:12", "conv/Relu"),
                                      ("conv/Relu", "conv/Relu"), ("x", "x")])
def test_op_name_of_a_tensor_or_op_name(name, op):
    assert walks.op_name(name) == op


@pytest.mark.parametrize("node_input, op", [("a/b", "a/b"), ("a/b:1", "a/b"), ("^a/b", "a/b"), ("a:0", "a")])
def test_input_op_name_strips_control_marks_and_output_numbers(node_input, op):
    assert walks.input_op_name(node_input) == op


def test_tensor_names_from_op_names():
    assert walks.tensor_name("pool1/MaxPool") == "pool1/MaxPool:0"
    assert walks.tensor_name("split", 2) == "split:2"
    assert walks.as_tensor_name("pool1/MaxPool") == "pool1/MaxPool:0"
    assert walks.as_tensor_name("split:2") == "split:2"


def small_graph():
    """x -> relu -> * w -> reshape (to a shape read off the relu) -> + 1 = top; a tanh of x on the side;
    an op that runs the tanh first (control input); a constant branch that never sees x."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 2], name="x")  # open: a Shape op, no constant
        relu = tf.nn.relu(x, name="relu")
        scaled = tf.multiply(relu, np.float32(2), name="scaled")
        side = tf.tanh(x, name="side")
        shaped = tf.reshape(scaled, tf.shape(relu, name="shape"), name="shaped")
        with tf.control_dependencies([side]):
            top = tf.add(shaped, np.float32(1), name="top")
        tf.identity(np.ones(3, np.float32), name="unrelated")
        after = tf.sigmoid(top, name="after")
    return graph, x, top, after


def test_ops_that_depend_on_inputs():
    graph, x, top, after = small_graph()
    dependent = walks.depends_on_inputs(graph, ["x:0"])
    assert dependent == {"x", "relu", "scaled", "side", "shape", "shaped", "top", "after"}
    ops = walks.ops_depending_on(graph, ["x:0"])
    assert {op.name for op in ops} == dependent and all(isinstance(op, tf.Operation) for op in ops)
    # Stopped at an op: only the ops created before it.
    assert {op.name for op in walks.ops_depending_on(graph, ["x:0"], stop=top.op)} == \
        {"x", "relu", "scaled", "side", "shape", "shaped"}
    assert walks.depends_on_inputs(graph, ["top:0"]) == {"top", "after"}


def test_ops_upstream_follow_data_and_control_inputs():
    graph, x, top, after = small_graph()
    upstream = walks.upstream_ops([top.op])
    assert {"x", "relu", "scaled", "shape", "shaped", "top", "side"} <= upstream
    assert "after" not in upstream and "unrelated" not in upstream
    assert "side" not in walks.upstream_ops([top.op], control_inputs=False)
    assert walks.upstream_ops([x.op]) == {"x"}


def test_ops_between_follow_floats_top_first():
    graph, x, top, after = small_graph()
    dependent = walks.depends_on_inputs(graph, ["x:0"])
    path = walks.ops_between(top, x, dependent)
    assert [op.name for op in path] == ["top", "shaped", "scaled", "relu"]  # no shape, no side branch, no x
    assert walks.ops_between(x, x, dependent) == []
    unrelated = graph.get_tensor_by_name("unrelated:0")
    assert walks.ops_between(unrelated, x, dependent) == []


def test_walks_go_deeper_than_the_recursion_limit():
    graph = tf.Graph()
    depth = sys.getrecursionlimit() + 500
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 2], name="x")
        y = x
        for _ in range(depth):
            y = tf.identity(y)
    dependent = walks.depends_on_inputs(graph, ["x:0"])
    assert len(dependent) == depth + 1
    assert len(walks.upstream_ops([y.op])) == depth + 1
    path = walks.ops_between(y, x, dependent)
    assert len(path) == depth and path[0] is y.op


def test_identity_memo_answers_only_for_the_same_object():
    computed = []
    memo = walks.IdentityMemo(lambda obj: computed.append(obj) or len(computed))
    first = [1]
    assert memo(first) == 1 and memo(first) == 1
    assert memo([1]) == 2  # equal, but another object
    # Temporaries die as soon as another takes their place, so their ids come back:
    # every one of them is still computed anew.
    answers = [memo([n]) for n in range(200)]
    assert answers == list(range(3, 203))
    memo.clear()
    assert memo(first) == 203


def test_structure_key_of_graph_defs_that_come_and_go():
    def graph_def(units):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, units], name="x")
            tf.nn.relu(x + np.ones(units, np.float32), name="y")
        return graph.as_graph_def()

    keys = {units: structure_key(graph_def(units)) for units in (2, 3)}
    assert keys[2] != keys[3]
    for _ in range(20):  # short-lived GraphDefs whose ids may be reused
        for units in (2, 3):
            assert structure_key(graph_def(units)) == keys[units]
    kept = graph_def(2)
    assert structure_key(kept) == keys[2] == structure_key(kept)


def test_backward_path_refuses_a_second_output_it_would_need():
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 4, 4, 2], name="x")
        first, second = tf.split(tf.nn.relu(x), 2, axis=3)
        both = first + second
        only_first = tf.nn.relu(first)
        dependent = walks.depends_on_inputs(graph, ["x:0"])
        assert backward_path(both, x, dependent) is None
        assert batched_gradient(both, tf.ones((3, 4, 4, 1)), x, "guided", dependent) is None
        assert [op.type for op in backward_path(only_first, x, dependent)] == ["Relu", "Split", "Relu"]


MY_MODULES = ("graph", "backward", "layers", "rebuild")


def imported_names(path):
    """(module, name) for every ``from module import name`` in ``path``."""
    tree = ast.parse(path.read_text(), str(path))
    return [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names]


def test_no_private_name_crosses_a_module_boundary():
    """What more than one module needs is public: the stages import no ``_name`` of each other,
    tests and benchmarks none of these modules', and graph.py stands on nothing of tf_cnnvis."""
    for module in MY_MODULES:
        names = imported_names(ROOT / "tf_cnnvis" / f"{module}.py")
        assert not [(m, n) for m, n in names if m.startswith("tf_cnnvis") and n.startswith("_")], module
    assert not [m for m, _ in imported_names(ROOT / "tf_cnnvis" / "graph.py") if m.startswith("tf_cnnvis")]
    private = ("backward._", "rebuild._", "layers._", "compute._upstream")
    for path in sorted((ROOT / "tests").glob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py")):
        names = imported_names(path)
        assert not [(m, n) for m, n in names
                    if m.split(".")[-1] in MY_MODULES and m.startswith("tf_cnnvis") and n.startswith("_")], path
        text = path.read_text()
        assert path.name == "test_graph.py" or not [p for p in private if p in text], path
