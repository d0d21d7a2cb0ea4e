"""Fuzz harness for model files: seeds, mutators and a crash-proof case runner.

The library promises that a broken model file never crashes the caller's
process: ``tf_cnnvis.load_model(path)`` and, when that succeeds, the entry
functions either work or raise a ``TfCnnvisError`` with a message, in
bounded time, writing nothing outside the given folders and leaving no
partial file there.

This module checks that promise. It

* builds small valid seed models of every kind the library reads (frozen
  ``.pb`` and ``.pbtxt``, a TF1 checkpoint ``.meta`` with its data and index
  files, a SavedModel folder, ``.keras``, Keras 3 ``.h5`` and a Keras 2 style
  ``.h5``), a few KB each, in a folder (:func:`build_seeds`, run in its own
  process by :func:`build_seeds_in_subprocess`);
* derives mutated cases from them, deterministically from ``(seed, index)``
  (:func:`generate_case`): truncation, bit flips, swapped, repeated and
  overwritten chunks, absurd integers written into the bytes, and structured
  edits of the GraphDef, MetaGraphDef, SavedModel, HDF5 and Keras config
  contents (cycles, missing inputs, unknown ops, wrong attr types and
  dtypes, absurd or negative shapes, recursive functions, ...);
* runs cases in long-lived worker processes (:class:`Worker`) that import
  TensorFlow once and answer one case at a time over a pipe; a worker that
  dies from a signal or passes the time bound is recorded as ``crash`` or
  ``hang``, replaced, and the run goes on (:func:`run_cases`).

Outcomes: ``ok`` (loaded and visualized), ``error:<Class>`` (a library
error), and the bugs ``other:<Type>`` (any other exception), ``crash``,
``hang``, ``outside`` (a file written outside the case's out/log folders),
``partial`` (a temporary or truncated file left in them) and ``unclear`` (a
library error without a message).

Not a test file: ``tests/test_model_fuzz.py`` and
``benchmarks/fuzz_models.py`` use it. One case can be replayed with::

    python tests/model_fuzz.py --replay INDEX --seed SEED [--keep FOLDER]
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import queue
import random
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

KINDS = ("pb", "pbtxt", "meta", "savedmodel", "keras", "h5", "h5_keras2")
BUG_PREFIXES = ("other", "crash", "hang", "outside", "partial", "unclear")
DEFAULT_TIMEOUT = 30.0
IMAGE_SIDE = 8
# Every worker runs single-threaded under this much address space: an
# absurd allocation fails at once instead of swapping the machine.
WORKER_MEMORY_LIMIT = 8 << 30
# A worker is replaced after this many cases, so that what TensorFlow and
# Keras keep per loaded model does not pile up over a long run.
WORKER_RECYCLE = 400


def is_bug(outcome: str) -> bool:
    return outcome.split(":")[0] in BUG_PREFIXES


# --------------------------------------------------------------------------- seeds

def build_seeds(folder: str) -> dict:
    """Write one small valid model of every kind under ``folder``; return the index.

    The index maps kind -> list of ``{"dir": seed folder, "entry": path of
    the model inside it}``; it is also written to ``folder/seeds.json``.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import h5py
    import keras
    import numpy as np
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    rng = np.random.default_rng(0)
    index: dict[str, list] = {kind: [] for kind in KINDS}

    def seed_dir(name):
        path = os.path.join(folder, name)
        os.makedirs(path, exist_ok=True)
        return path

    def tf1_graph(with_variables):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, IMAGE_SIDE, IMAGE_SIDE, 3], name="x")
            values = {"w1": rng.normal(0, 0.5, (3, 3, 3, 4)), "b1": rng.normal(0, 0.1, (4,)),
                      "w2": rng.normal(0, 0.5, (3, 3, 4, 4)), "w3": rng.normal(0, 0.5, (4, 2))}
            weights = {}
            for name, value in values.items():
                value = value.astype(np.float32)
                weights[name] = (tf.compat.v1.get_variable(name, initializer=value) if with_variables
                                 else tf.constant(value, name=name))
            h = tf.nn.bias_add(tf.nn.conv2d(x, weights["w1"], 1, "SAME", name="conv1"), weights["b1"])
            h = tf.nn.relu(h, name="relu1")
            h = tf.nn.max_pool2d(h, 2, 2, "SAME", name="pool1")
            h = tf.nn.relu(tf.nn.conv2d(h, weights["w2"], 1, "SAME", name="conv2"), name="relu2")
            h = tf.reduce_mean(h, axis=[1, 2], name="gap")
            tf.nn.softmax(tf.matmul(h, weights["w3"], name="logits"), name="probs")
        return graph

    graph = tf1_graph(False)
    path = seed_dir("pb_tf1")
    tf.io.write_graph(graph.as_graph_def(), path, "model.pb", as_text=False)
    index["pb"].append({"dir": path, "entry": "model.pb"})
    path = seed_dir("pbtxt_tf1")
    tf.io.write_graph(graph.as_graph_def(), path, "model.pbtxt", as_text=True)
    index["pbtxt"].append({"dir": path, "entry": "model.pbtxt"})

    graph = tf1_graph(True)
    path = seed_dir("meta_tf1")
    with graph.as_default():
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, os.path.join(path, "model.ckpt"))
    index["meta"].append({"dir": path, "entry": "model.ckpt.meta"})

    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE_SIDE, IMAGE_SIDE, 3), name="image")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, outputs, name="tiny")

    path = seed_dir("keras")
    model.save(os.path.join(path, "model.keras"))
    index["keras"].append({"dir": path, "entry": "model.keras"})
    path = seed_dir("h5")
    model.save(os.path.join(path, "model.h5"))
    index["h5"].append({"dir": path, "entry": "model.h5"})
    path = seed_dir("h5_keras2")
    shutil.copy(os.path.join(folder, "h5", "model.h5"), os.path.join(path, "model.h5"))
    with h5py.File(os.path.join(path, "model.h5"), "r+") as h5:
        h5.attrs["keras_version"] = "2.15.0"
    index["h5_keras2"].append({"dir": path, "entry": "model.h5"})

    path = seed_dir("savedmodel")
    model.export(os.path.join(path, "saved"), verbose=False)
    index["savedmodel"].append({"dir": path, "entry": "saved"})

    function = tf.function(lambda image: model(image, training=False))
    concrete = function.get_concrete_function(
        tf.TensorSpec([None, None, None, 3], tf.float32, name="image"))
    frozen = convert_variables_to_constants_v2(concrete)
    path = seed_dir("pb_keras")
    tf.io.write_graph(frozen.graph.as_graph_def(), path, "model.pb", as_text=False)
    index["pb"].append({"dir": path, "entry": "model.pb"})

    with open(os.path.join(folder, "seeds.json"), "w") as stream:
        json.dump(index, stream)
    return index


def build_seeds_in_subprocess(folder: str) -> subprocess.Popen:
    """Start building the seeds in a fresh process (wait for it with :func:`wait_seeds`)."""
    os.makedirs(folder, exist_ok=True)
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--build-seeds", folder],
                            env=_child_env(), cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def wait_seeds(process: subprocess.Popen, folder: str) -> dict:
    _, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"building the seed models failed:\n{stderr.decode(errors='replace')[-3000:]}")
    return load_seeds(folder)


def load_seeds(folder: str) -> dict | None:
    try:
        with open(os.path.join(folder, "seeds.json")) as stream:
            return json.load(stream)
    except (OSError, ValueError):
        return None


# --------------------------------------------------------------------------- byte mutators

def _chunk(rng, size, longest=64):
    length = rng.randint(1, max(1, min(longest, size // 2 or 1)))
    start = rng.randrange(max(1, size - length))
    return start, length


def truncate(data: bytes, rng) -> tuple[bytes, str]:
    cut = rng.choice([0, 1, rng.randrange(len(data) or 1), len(data) // 2, len(data) - 1,
                      max(0, len(data) - rng.randint(1, 64))])
    return data[:cut], f"truncated to {cut} of {len(data)} bytes"


def flip_bits(data: bytes, rng) -> tuple[bytes, str]:
    if not data:
        return b"\x01", "one byte"
    array = bytearray(data)
    where = []
    for _ in range(rng.choice([1, 1, 2, 3, 8])):
        position = rng.randrange(len(array))
        bit = rng.randrange(8)
        array[position] ^= 1 << bit
        where.append(f"{position}.{bit}")
    return bytes(array), "bits flipped at " + ",".join(where)


def swap_chunks(data: bytes, rng) -> tuple[bytes, str]:
    if len(data) < 4:
        return flip_bits(data, rng)
    a, length = _chunk(rng, len(data))
    b = rng.randrange(max(1, len(data) - length))
    array = bytearray(data)
    first, second = bytes(array[a:a + length]), bytes(array[b:b + length])
    array[b:b + length] = first
    array[a:a + length] = second
    return bytes(array), f"chunks of {length} bytes at {a} and {b} swapped"


def repeat_chunk(data: bytes, rng) -> tuple[bytes, str]:
    if len(data) < 2:
        return data * 2, "doubled"
    start, length = _chunk(rng, len(data), 256)
    times = rng.choice([1, 2, 16])
    at = rng.randrange(len(data))
    piece = data[start:start + length] * times
    return data[:at] + piece + data[at:], f"{length} bytes at {start} repeated {times}x at {at}"


def overwrite_random(data: bytes, rng) -> tuple[bytes, str]:
    if not data:
        return bytes(rng.randrange(256) for _ in range(16)), "random bytes"
    start, length = _chunk(rng, len(data))
    fill = rng.choice(["random", "zero", "ff"])
    piece = {"random": bytes(rng.randrange(256) for _ in range(length)),
             "zero": bytes(length), "ff": b"\xff" * length}[fill]
    return data[:start] + piece + data[start + length:], f"{length} {fill} bytes at {start}"


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


_ABSURD = [2**31 - 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63 - 1, 2**64 - 1, -1, -2**31]


def absurd_integer(data: bytes, rng) -> tuple[bytes, str]:
    """Write a huge or negative integer over bytes (a declared size, count or dim)."""
    if not data:
        return _varint(2**40), "absurd varint"
    value = rng.choice(_ABSURD)
    encoding = rng.choice(["le32", "le64", "be32", "varint"])
    piece = {"le32": struct.pack("<I", value & 0xFFFFFFFF), "le64": struct.pack("<Q", value & (2**64 - 1)),
             "be32": struct.pack(">I", value & 0xFFFFFFFF), "varint": _varint(value)}[encoding]
    at = rng.randrange(len(data))
    return data[:at] + piece + data[at + len(piece):], f"{encoding} {value} written at {at}"


def append_garbage(data: bytes, rng) -> tuple[bytes, str]:
    extra = bytes(rng.randrange(256) for _ in range(rng.choice([1, 7, 100])))
    return data + extra, f"{len(extra)} garbage bytes appended"


BYTE_MUTATORS = (truncate, flip_bits, flip_bits, swap_chunks, repeat_chunk, overwrite_random,
                 absurd_integer, append_garbage)


def mutate_bytes(data: bytes, rng) -> tuple[bytes, str]:
    mutator = rng.choice(BYTE_MUTATORS)
    return mutator(data, rng)


# --------------------------------------------------------------------------- GraphDef mutators

_DTYPES = [0, 1, 2, 3, 7, 9, 10, 14, 19, 20, 21, 101, 119, 999, -1]  # incl. invalid, ref, resource
_SWAP_OPS = ["MatMul", "Conv2D", "Relu", "Identity", "AddV2", "Const", "Placeholder", "Reshape",
             "Fill", "Range", "Tile", "BroadcastTo", "Where", "Unique", "ScatterNd", "Transpose",
             "ConcatV2", "Pack", "Split", "Squeeze", "ExpandDims", "Cast", "Bitcast", "Softmax",
             "MaxPool", "AvgPool", "BiasAdd", "Mean", "Sum", "Shape", "Size", "ZerosLike",
             "RandomUniform", "Assert", "StridedSlice", "Pad", "MirrorPad", "ResizeBilinear",
             "DepthwiseConv2dNative", "Conv2DBackpropInput", "FusedBatchNormV3", "LRN", "Einsum",
             "ReadFile", "PyFunc", "StatelessWhile", "PartitionedCall", "NoSuchOp", "", "Relu\x00"]


def _graph_nodes(graph_def, rng):
    """The node list to mutate: the graph's own or one function body's."""
    functions = list(graph_def.library.function)
    if functions and (not graph_def.node or rng.random() < 0.6):
        function = rng.choice(functions)
        return function.node_def, f"function {function.signature.name!r} "
    return graph_def.node, ""


def _pick(nodes, rng, want=None):
    candidates = [node for node in nodes if want is None or want(node)]
    return rng.choice(candidates) if candidates else None


def mutate_graph_def(graph_def, rng) -> str:
    """Edit ``graph_def`` in place; return a description."""
    nodes, where = _graph_nodes(graph_def, rng)
    if not len(nodes):
        return "nothing to edit"
    choice = rng.choice([
        "self_cycle", "two_cycle", "long_cycle", "missing_input", "missing_control", "bad_port",
        "odd_input", "unknown_op", "swap_op", "drop_attr", "attr_type", "dtype", "dtype",
        "const_shape", "const_shape", "const_content", "placeholder_shape", "int_attr",
        "string_attr", "duplicate", "remove", "rename", "many_inputs", "drop_inputs", "versions",
        "recursive_function", "untrusted_op", "shape_attr", "reverse_tail",
    ])
    with_inputs = lambda node: len(node.input) > 0  # noqa: E731
    if choice == "self_cycle":
        node = _pick(nodes, rng, with_inputs)
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        slot = rng.randrange(len(node.input))
        node.input[slot] = node.name
        return f"{where}node {node.name!r} input {slot} is itself"
    if choice == "two_cycle":
        names = {node.name: node for node in nodes}
        for node in rng.sample(list(nodes), len(nodes)):
            sources = [inp.lstrip("^").split(":")[0] for inp in node.input]
            sources = [name for name in sources if name in names]
            if sources:
                source = names[rng.choice(sources)]
                source.input.append(node.name)
                return f"{where}2-cycle: {source.name!r} <-> {node.name!r}"
        return mutate_graph_def_fallback(nodes, rng, where)
    if choice == "long_cycle":
        node = _pick(nodes, rng, with_inputs)
        last = nodes[len(nodes) - 1]
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        node.input[0] = last.name
        return f"{where}node {node.name!r} reads the last node {last.name!r} (a longer cycle)"
    if choice == "missing_input":
        node = _pick(nodes, rng, with_inputs)
        if node is None:
            node = rng.choice(nodes)
            node.input.append("ghost_node")
        else:
            node.input[rng.randrange(len(node.input))] = rng.choice(["ghost_node", "ghost:0", "ghost:1"])
        return f"{where}node {node.name!r} reads a node that does not exist"
    if choice == "missing_control":
        node = rng.choice(nodes)
        node.input.append("^ghost_control")
        return f"{where}node {node.name!r} has a control input from a missing node"
    if choice == "bad_port":
        node = _pick(nodes, rng, with_inputs)
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        slot = rng.randrange(len(node.input))
        base = node.input[slot].lstrip("^").split(":")[0]
        port = rng.choice([1, 7, 99, 2**31, 2**40])
        node.input[slot] = f"{base}:{port}"
        return f"{where}node {node.name!r} input {slot} reads output {port} of {base!r}"
    if choice == "odd_input":
        node = rng.choice(nodes)
        odd = rng.choice(["", ":0", "^", "x:-1", "x:abc", "x::0", "^^x", "a" * 5000, "x:0:0", "\x00"])
        if node.input and rng.random() < 0.5:
            node.input[0] = odd
        else:
            node.input.append(odd)
        return f"{where}node {node.name!r} has input {odd[:20]!r}"
    if choice == "unknown_op":
        node = rng.choice(nodes)
        node.op = rng.choice(["NoSuchOp", "", "conv2d", "Relu ", "A" * 300])
        return f"{where}node {node.name!r} has unknown op {node.op[:20]!r}"
    if choice == "swap_op":
        node = rng.choice(nodes)
        old, node.op = node.op, rng.choice(_SWAP_OPS)
        return f"{where}node {node.name!r} op {old} -> {node.op!r}"
    if choice == "drop_attr":
        node = _pick(nodes, rng, lambda n: len(n.attr) > 0)
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        key = rng.choice(sorted(node.attr))
        del node.attr[key]
        return f"{where}node {node.name!r} lost attr {key!r}"
    if choice == "attr_type":
        node = _pick(nodes, rng, lambda n: len(n.attr) > 0)
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        key = rng.choice(sorted(node.attr))
        value = node.attr[key]
        kind = rng.choice(["s", "i", "f", "b", "type", "shape", "list_i", "list_type", "tensor", "func",
                           "placeholder"])
        value.Clear()
        if kind == "s":
            value.s = b"float"
        elif kind == "i":
            value.i = rng.choice([1, -1, 2**40])
        elif kind == "f":
            value.f = float("nan")
        elif kind == "b":
            value.b = True
        elif kind == "type":
            value.type = rng.choice(_DTYPES) if rng.random() < 0.3 else 1
        elif kind == "shape":
            value.shape.dim.add().size = 3
        elif kind == "list_i":
            value.list.i.extend([1, 2, 3])
        elif kind == "list_type":
            value.list.type.extend([1, 3])
        elif kind == "tensor":
            value.tensor.dtype = 1
            value.tensor.float_val.append(1.0)
        elif kind == "func":
            value.func.name = "no_such_function"
        else:
            value.placeholder = "T"
        return f"{where}node {node.name!r} attr {key!r} replaced by a {kind} value"
    if choice == "dtype":
        node = _pick(nodes, rng, lambda n: any(k in n.attr for k in ("T", "dtype", "DstT", "SrcT")))
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        key = next(k for k in ("dtype", "T", "DstT", "SrcT") if k in node.attr)
        value = rng.choice(_DTYPES)
        try:
            node.attr[key].type = value
        except ValueError:  # an enum value protobuf refuses outright
            node.attr[key].type = 999
            value = 999
        return f"{where}node {node.name!r} attr {key!r} dtype -> {value}"
    if choice in ("const_shape", "const_content"):
        node = _pick(nodes, rng, lambda n: n.op == "Const" and "value" in n.attr)
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        tensor = node.attr["value"].tensor
        if choice == "const_shape":
            dims = rng.choice([[2**40], [2**20, 2**20, 2**20], [-1], [-5, 3], [3, 3, 3, 3, 3],
                               [0], [2**31], [2**62, 4], [1] * 300, [2**16, 2**16], [7]])
            if rng.random() < 0.15:
                tensor.tensor_shape.unknown_rank = True
                return f"{where}Const {node.name!r} declares an unknown rank"
            del tensor.tensor_shape.dim[:]
            for size in dims:
                tensor.tensor_shape.dim.add().size = size
            return f"{where}Const {node.name!r} declares shape {dims[:8]}"
        edit = rng.choice(["truncate", "extend", "empty", "dtype", "string", "float_val"])
        if edit == "truncate":
            tensor.tensor_content = tensor.tensor_content[:len(tensor.tensor_content) // 2 + 1]
        elif edit == "extend":
            tensor.tensor_content = tensor.tensor_content + b"\x00" * 12
        elif edit == "empty":
            tensor.tensor_content = b""
            del tensor.float_val[:]
            del tensor.int_val[:]
        elif edit == "dtype":
            tensor.dtype = rng.choice([3, 7, 9, 2, 20, 21])
        elif edit == "string":
            tensor.string_val.append(b"x" * 100)
        else:
            tensor.float_val.extend([1.0] * 5)
        return f"{where}Const {node.name!r} content edit: {edit}"
    if choice == "placeholder_shape":
        node = _pick(nodes, rng, lambda n: n.op in ("Placeholder", "PlaceholderWithDefault"))
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        dims = rng.choice([[-1, 2**40, 2**40, 3], [-1, -5, 8, 3], [], [-1] * 300, [2**62, 2**62, 8, 3],
                           [-1, 8, 8, 2**31], [-1, 0, 0, 3], [-1, 8, 8], [-1, 8, 8, 3, 1]])
        shape = node.attr["shape"].shape
        shape.Clear()
        for size in dims:
            shape.dim.add().size = size
        return f"{where}placeholder {node.name!r} declares shape {dims[:6]}"
    if choice == "int_attr":
        node = _pick(nodes, rng, lambda n: any(v.WhichOneof("value") in ("i", "list") for v in n.attr.values()))
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        key = rng.choice(sorted(k for k, v in node.attr.items() if v.WhichOneof("value") in ("i", "list")))
        value = node.attr[key]
        absurd = rng.choice([0, -1, 2**31, 2**40, -2**63])
        if value.WhichOneof("value") == "i":
            value.i = absurd
        elif len(value.list.i):
            value.list.i[rng.randrange(len(value.list.i))] = absurd
            if rng.random() < 0.3:
                value.list.i.append(1)
        else:
            value.list.i.append(absurd)
        return f"{where}node {node.name!r} attr {key!r} gets {absurd}"
    if choice == "string_attr":
        node = _pick(nodes, rng, lambda n: any(v.WhichOneof("value") == "s" for v in n.attr.values()))
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        key = rng.choice(sorted(k for k, v in node.attr.items() if v.WhichOneof("value") == "s"))
        node.attr[key].s = rng.choice([b"", b"XYZW", b"EXPLICIT", b"NCHW", b"\xff\xfe", b"VALID" * 1000])
        return f"{where}node {node.name!r} attr {key!r} gets an odd string"
    if choice == "duplicate":
        node = rng.choice(nodes)
        copy = nodes.add()
        copy.CopyFrom(node)
        return f"{where}node {node.name!r} defined twice"
    if choice == "remove":
        position = rng.randrange(len(nodes))
        name = nodes[position].name
        del nodes[position]
        return f"{where}node {name!r} removed (its consumers now read a missing node)"
    if choice == "rename":
        node = rng.choice(nodes)
        old, node.name = node.name, rng.choice(["", "a:b", "^x", "x/", "/x", "a" * 3000, "x:0", "é"])
        return f"{where}node {old!r} renamed to {node.name[:20]!r}"
    if choice == "many_inputs":
        node = rng.choice(nodes)
        source = rng.choice(nodes).name
        node.input.extend([source] * rng.choice([1, 3, 1000]))
        return f"{where}node {node.name!r} gets extra inputs"
    if choice == "drop_inputs":
        node = _pick(nodes, rng, with_inputs)
        if node is None:
            return mutate_graph_def_fallback(nodes, rng, where)
        del node.input[:]
        return f"{where}node {node.name!r} lost its inputs"
    if choice == "versions":
        graph_def.versions.producer = rng.choice([0, -1, 2**31 - 1, 1])
        graph_def.versions.min_consumer = rng.choice([0, 2**31 - 1, 5000])
        if rng.random() < 0.3:
            graph_def.versions.bad_consumers.append(graph_def.versions.producer)
        return (f"versions producer={graph_def.versions.producer} "
                f"min_consumer={graph_def.versions.min_consumer}")
    if choice == "recursive_function":
        function = graph_def.library.function.add()
        name = rng.choice(["recurse", "recurse_a"])
        function.signature.name = name
        function.signature.input_arg.add(name="x", type=1)
        function.signature.output_arg.add(name="y", type=1)
        call = function.node_def.add(name="call", op="recurse_b" if name == "recurse_a" else name)
        call.input.append("x")
        function.ret["y"] = "call:y:0"
        if name == "recurse_a":
            other = graph_def.library.function.add()
            other.CopyFrom(function)
            other.signature.name = "recurse_b"
            other.node_def[0].op = "recurse_a"
        target = _pick(graph_def.node, rng, with_inputs)
        if target is not None:
            target.op = name
            target.attr.clear()
        return f"a node calls function {name!r}, which calls itself"
    if choice == "reverse_tail" and not where:
        # A long training-only tail (read from a "save/" node) listed backwards:
        # a pass that finds it one node per sweep takes quadratic time.
        anchor = _pick(nodes, rng, lambda n: n.op == "Placeholder") or nodes[0]
        root = f"save/tail_{rng.randrange(1000)}"
        length = rng.choice([2000, 8000])
        for position in range(length, 0, -1):
            tail = nodes.add(name=f"tail_{position}", op="Identity",
                             input=[f"tail_{position - 1}" if position > 1 else root])
            tail.attr["T"].type = 1
        head = nodes.add(name=root, op="Identity", input=[anchor.name])
        head.attr["T"].type = 1
        return f"a training tail of {length} nodes listed backwards"
    if choice == "untrusted_op":
        node = rng.choice(nodes)
        node.op = rng.choice(["ReadFile", "WriteFile", "PyFunc", "MatchingFiles"])
        return f"{where}node {node.name!r} becomes {node.op}"
    if choice == "shape_attr":
        node = _pick(nodes, rng, lambda n: any(v.WhichOneof("value") == "shape" for v in n.attr.values())
                     or "_output_shapes" in n.attr)
        if node is None:
            node = rng.choice(nodes)
            node.attr["_output_shapes"].list.shape.add().dim.add().size = 2**62
            return f"{where}node {node.name!r} gets absurd _output_shapes"
        keys = sorted(k for k, v in node.attr.items() if v.WhichOneof("value") == "shape")
        if not keys:
            keys = ["_output_shapes"]
        key = rng.choice(keys)
        value = node.attr[key]
        target = value.shape if value.WhichOneof("value") == "shape" else value.list.shape.add()
        del target.dim[:]
        for size in rng.choice([[2**62, 2**62], [-7], [2**40, 3], [-1] * 255]):
            target.dim.add().size = size
        return f"{where}node {node.name!r} shape attr {key!r} gets absurd dims"
    return mutate_graph_def_fallback(nodes, rng, where)


def mutate_graph_def_fallback(nodes, rng, where) -> str:
    node = rng.choice(nodes)
    node.input.append(node.name)
    return f"{where}node {node.name!r} also reads itself"


def _repeated(field) -> bool:
    from google.protobuf.descriptor import FieldDescriptor

    repeated = getattr(field, "is_repeated", None)  # protobuf >= 5.28; ``label`` went away later
    return repeated if repeated is not None else field.label == FieldDescriptor.LABEL_REPEATED


def mutate_proto_field(message, rng, budget=4000) -> str:
    """Change one scalar or repeated field picked at random anywhere in ``message``."""
    from google.protobuf.descriptor import FieldDescriptor

    seen = []  # (message, field, index or None, path)

    def walk(msg, path, depth):
        if depth > 40 or len(seen) >= budget:
            return
        for field, value in msg.ListFields():
            name = f"{path}.{field.name}"
            if _repeated(field):
                if field.message_type is not None and field.message_type.GetOptions().map_entry:
                    items = list(value.items())
                    seen.append((msg, field, None, name))
                    for key, item in items[:50]:
                        if hasattr(item, "ListFields"):
                            walk(item, f"{name}[{key!r}]", depth + 1)
                    continue
                seen.append((msg, field, None, name))
                for position, item in enumerate(value):
                    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                        walk(item, f"{name}[{position}]", depth + 1)
                    else:
                        seen.append((msg, field, position, f"{name}[{position}]"))
                    if position > 50:
                        break
            elif field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                seen.append((msg, field, None, name))
                walk(value, name, depth + 1)
            else:
                seen.append((msg, field, None, name))

    walk(message, "", 0)
    if not seen:
        return "no field to change"
    msg, field, position, path = rng.choice(seen)
    repeated = _repeated(field)
    if repeated and position is None:
        container = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            keys = list(container.keys())
            if keys:
                del container[rng.choice(keys)]
            return f"{path}: one map entry removed"
        if len(container) and rng.random() < 0.5:
            del container[rng.randrange(len(container))]
            return f"{path}: one element removed"
        if len(container):
            if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
                container.add().CopyFrom(container[rng.randrange(len(container))])
            else:
                container.append(container[rng.randrange(len(container))])
            return f"{path}: one element duplicated"
        return f"{path}: left as is"
    if field.cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        getattr(msg, field.name).Clear()
        return f"{path}: cleared"
    value = _odd_scalar(field, rng)
    try:
        if repeated:
            getattr(msg, field.name)[position] = value
        else:
            setattr(msg, field.name, value)
    except (ValueError, TypeError):
        return f"{path}: could not set {value!r}"
    return f"{path} = {value!r:.40}"


def _odd_scalar(field, rng):
    from google.protobuf.descriptor import FieldDescriptor

    kind = field.cpp_type
    if kind in (FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_ENUM):
        return rng.choice([0, -1, 1, 2**31 - 1, -2**31, 7, 101, 999])
    if kind == FieldDescriptor.CPPTYPE_INT64:
        return rng.choice([0, -1, 2**40, 2**63 - 1, -2**63, 3])
    if kind == FieldDescriptor.CPPTYPE_UINT32:
        return rng.choice([0, 2**32 - 1, 1])
    if kind == FieldDescriptor.CPPTYPE_UINT64:
        return rng.choice([0, 2**64 - 1, 2**40])
    if kind in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return rng.choice([float("nan"), float("inf"), -1e30, 0.0])
    if kind == FieldDescriptor.CPPTYPE_BOOL:
        return rng.random() < 0.5
    if field.type == FieldDescriptor.TYPE_BYTES:
        return rng.choice([b"", b"\xff" * 7, b"ghost:0", b"\x00" * 40])
    return rng.choice(["", "ghost", "ghost:0", "../../x", "x" * 1000, "\x00", "é:1"])


# --------------------------------------------------------------------------- file-kind mutators

def _graph_def_class():
    from tensorflow.core.framework import graph_pb2

    return graph_pb2.GraphDef


def _meta_graph_class():
    from tensorflow.core.protobuf import meta_graph_pb2

    return meta_graph_pb2.MetaGraphDef


def _saved_model_class():
    from tensorflow.core.protobuf import saved_model_pb2

    return saved_model_pb2.SavedModel


def mutate_pb(data: bytes, rng) -> tuple[bytes, str]:
    if rng.random() < 0.35:
        return mutate_bytes(data, rng)
    graph_def = _graph_def_class()()
    graph_def.ParseFromString(data)
    if rng.random() < 0.85:
        description = mutate_graph_def(graph_def, rng)
    else:
        description = mutate_proto_field(graph_def, rng)
    return graph_def.SerializeToString(), description


def mutate_pbtxt(data: bytes, rng) -> tuple[bytes, str]:
    from google.protobuf import text_format

    if rng.random() < 0.25:
        return mutate_bytes(data, rng)
    graph_def = _graph_def_class()()
    text_format.Merge(data.decode(), graph_def)
    if rng.random() < 0.85:
        description = mutate_graph_def(graph_def, rng)
    else:
        description = mutate_proto_field(graph_def, rng)
    return text_format.MessageToString(graph_def).encode(), description


def mutate_meta(data: bytes, rng) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    meta = _meta_graph_class()()
    meta.ParseFromString(data)
    if rng.random() < 0.7:
        description = "graph_def: " + mutate_graph_def(meta.graph_def, rng)
    else:
        description = mutate_proto_field(meta, rng)
    return meta.SerializeToString(), description


def mutate_saved_model(data: bytes, rng) -> tuple[bytes, str]:
    if rng.random() < 0.3:
        return mutate_bytes(data, rng)
    saved = _saved_model_class()()
    saved.ParseFromString(data)
    if not saved.meta_graphs:
        return mutate_bytes(data, rng)
    meta = saved.meta_graphs[0]
    if rng.random() < 0.55:
        description = "graph_def: " + mutate_graph_def(meta.graph_def, rng)
    else:
        description = mutate_proto_field(meta, rng)
    return saved.SerializeToString(), description


# Keras configs ---------------------------------------------------------------

_CONFIG_KEYS = ("filters", "units", "kernel_size", "pool_size", "strides", "batch_shape",
                "batch_input_shape", "shape", "dtype", "class_name", "keras_history", "axis",
                "padding", "activation", "dilation_rate", "name", "momentum", "epsilon", "groups",
                "data_format", "inbound_nodes", "input_layers", "output_layers", "layers", "module")


def _json_slots(node, path="", out=None):
    """Every (container, key, path) of a JSON tree."""
    if out is None:
        out = []
    if isinstance(node, dict):
        for key, value in node.items():
            out.append((node, key, f"{path}.{key}"))
            _json_slots(value, f"{path}.{key}", out)
    elif isinstance(node, list):
        for position, value in enumerate(node):
            out.append((node, position, f"{path}[{position}]"))
            _json_slots(value, f"{path}[{position}]", out)
    return out


def _layer_names(config) -> list[str]:
    names = []
    for container, key, _ in _json_slots(config):
        if key == "layers" and isinstance(container[key], list):
            for layer in container[key]:
                if isinstance(layer, dict):
                    name = layer.get("name") or (layer.get("config") or {}).get("name")
                    if isinstance(name, str):
                        names.append(name)
    return names


def mutate_keras_config(config, rng) -> str:
    """Edit a Keras model config (a JSON tree) in place; return a description."""
    slots = _json_slots(config)
    names = _layer_names(config)
    histories = [(c, k, p) for c, k, p in slots if k == "keras_history" and isinstance(c[k], list) and c[k]]
    if histories and rng.random() < 0.25:
        container, key, path = rng.choice(histories)
        own = next((p for p in names if p in path), None)
        target = rng.choice([n for n in names] + ["ghost_layer"]) if names else "ghost_layer"
        container[key][0] = target
        if rng.random() < 0.3:
            container[key][1] = rng.choice([5, -1, 2**40])
        return f"{path} -> {container[key]!r} (a cycle, a missing or a wrong layer; own {own!r})"
    legacy = [(c, k, p) for c, k, p in slots if k == "inbound_nodes" and isinstance(c[k], list) and c[k]]
    if legacy and rng.random() < 0.15:
        container, key, path = rng.choice(legacy)
        container[key] = rng.choice([[[["ghost", 0, 0, {}]]], [[[names[-1] if names else "x", 0, 0, {}]]],
                                     "junk", [[]], [{"args": [], "kwargs": {}}]])
        return f"{path} rewritten"
    named = [(c, k, p) for c, k, p in slots if k in _CONFIG_KEYS]
    container, key, path = rng.choice(named if named and rng.random() < 0.7 else slots)
    value = container[key]
    if key == "class_name":
        new = rng.choice(["NoSuchLayer", "Lambda", "", "Functional", "Sequential", "Conv2D", "InputLayer"])
    elif key == "dtype":
        new = rng.choice(["string", "int8", "resource", "variant", "float64", "complex64", "bogus", None, 7])
    elif key == "module":
        new = rng.choice(["os", "subprocess", "builtins", "keras.nonexistent", ""])
    elif isinstance(value, bool):
        new = not value
    elif isinstance(value, int):
        new = rng.choice([0, -1, -7, 2**31, 2**40, 2**62, 3.5, "8", None])
    elif isinstance(value, float):
        new = rng.choice([float("nan"), float("inf"), -1.0, 1e300, "x"])
    elif isinstance(value, str):
        new = rng.choice(["", "bogus", "../../../etc/passwd", "x" * 5000, "channels_first", "same", "relu", 3])
    elif isinstance(value, list):
        new = rng.choice([[], [2**40, 2**40], [-1, -1], [None, 2**31, 2**31, 3], [None, -8, 8, 3],
                          value + value, "x", None, [[[]]]])
    elif isinstance(value, dict):
        new = rng.choice([{}, None, [], "x"])
    else:
        new = rng.choice([0, "x", [], {}])
    container[key] = new
    return f"config {path} = {json.dumps(new)[:60]} (was {json.dumps(value)[:40]})"


# HDF5 -----------------------------------------------------------------------

def mutate_h5_file(path: str, rng) -> str:
    """Edit an .h5 file in place with h5py; return a description."""
    import h5py
    import numpy as np

    with h5py.File(path, "r+") as h5:
        datasets = []
        h5.visititems(lambda name, item: datasets.append(name) if isinstance(item, h5py.Dataset) else None)
        choice = rng.choice(["config", "config", "huge_dataset", "reshape", "dtype", "remove",
                             "weight_names", "attr", "empty", "scalar"])
        if choice == "config" and "model_config" in h5.attrs:
            raw = h5.attrs["model_config"]
            config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
            description = mutate_keras_config(config, rng)
            h5.attrs["model_config"] = json.dumps(config)
            return description
        if choice == "weight_names":
            groups = []
            h5.visititems(lambda name, item: groups.append(name)
                          if isinstance(item, h5py.Group) and "weight_names" in item.attrs else None)
            if groups:
                group = h5[rng.choice(groups)]
                names = list(group.attrs["weight_names"])
                new = rng.choice([names[:-1], names + names, [b"ghost:0"] * len(names), [b"../../x"] * 2])
                group.attrs["weight_names"] = np.array(new, dtype="S")
                return f"{group.name} weight_names -> {new[:4]}"
            choice = "attr"
        if choice == "attr":
            key = rng.choice(["keras_version", "backend", "layer_names", "model_config", "training_config"])
            owner = h5 if key != "layer_names" or "layer_names" in h5.attrs else h5.get("model_weights", h5)
            if rng.random() < 0.4 and key in owner.attrs:
                del owner.attrs[key]
                return f"attr {key} removed"
            owner.attrs[key] = rng.choice(["1.0.0", "junk", "{", "[]", "2.3.1", "null"])
            return f"attr {key} set to an odd value"
        if not datasets:
            return "no dataset"
        name = rng.choice(datasets)
        old = h5[name]
        shape, dtype = old.shape, old.dtype
        del h5[name]
        if choice == "huge_dataset":
            dims = rng.choice([(2**40,), (2**20, 2**20, 4), (3, 3, 3, 2**33), (2**31,), (2**28,)])
            h5.create_dataset(name, shape=dims, dtype="f4")
            return f"dataset {name} declares shape {dims} without data"
        if choice == "reshape":
            new_shape = rng.choice([tuple(reversed(shape)), shape + (1,), shape[:-1] or (2,), (7,)])
            size = int(np.prod(new_shape)) if new_shape else 1
            h5.create_dataset(name, data=np.ones(size, "f4").reshape(new_shape))
            return f"dataset {name} shape {shape} -> {new_shape}"
        if choice == "dtype":
            new = rng.choice(["i1", "S4", "c8", "f8", "u2", "bool"])
            h5.create_dataset(name, data=np.zeros(shape, new))
            return f"dataset {name} dtype {dtype} -> {new}"
        if choice == "empty":
            h5.create_dataset(name, shape=(0,), dtype="f4")
            return f"dataset {name} is empty"
        if choice == "scalar":
            h5.create_dataset(name, data=np.float32(1.0))
            return f"dataset {name} is a scalar"
        return f"dataset {name} removed"


def heap_object_sizes(data: bytes) -> list[tuple[int, int, int]]:
    """(offset of its size field, heap index, size) of each object of the file's global heaps.

    The file's variable-length strings (its model config, its version) live
    in these heaps; assumes 8-byte lengths, as h5py writes.
    """
    found = []
    offset = data.find(b"GCOL")
    while offset >= 0:
        collection = int.from_bytes(data[offset + 8:offset + 16], "little")
        position = 16
        while data[offset + 4] == 1 and position + 16 <= collection and offset + collection <= len(data):
            index = int.from_bytes(data[offset + position:offset + position + 2], "little")
            size = int.from_bytes(data[offset + position + 8:offset + position + 16], "little")
            found.append((offset + position + 8, index, size))
            need = size if index == 0 else 16 + (size + 7) // 8 * 8
            if need <= 0:
                break
            position += need
        offset = data.find(b"GCOL", offset + 4)
    return found


def damage_heap(data: bytes, rng) -> tuple[bytes, str]:
    """Write a zero or too large size into a global heap object (HDF5 loops forever on zero)."""
    objects = heap_object_sizes(data)
    if not objects:
        return absurd_integer(data, rng)
    at, index, size = rng.choice(objects)
    new = rng.choice([0, 0, 2**40, size + 4096])
    array = bytearray(data)
    array[at:at + 8] = new.to_bytes(8, "little")
    return bytes(array), f"global heap object {index} (at byte {at}) size {size} -> {new}"


def mutate_h5(data: bytes, rng) -> tuple[bytes, str]:
    if rng.random() < 0.08:
        return damage_heap(data, rng)
    if rng.random() < 0.4:
        return mutate_bytes(data, rng)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.h5")
        with open(path, "wb") as stream:
            stream.write(data)
        description = mutate_h5_file(path, rng)
        with open(path, "rb") as stream:
            return stream.read(), description


def mutate_keras_zip(data: bytes, rng) -> tuple[bytes, str]:
    if rng.random() < 0.25:
        return mutate_bytes(data, rng)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        entries = [(info, archive.read(info.filename)) for info in archive.infolist()]
    names = [info.filename for info, _ in entries]
    choice = rng.choice(["config", "config", "weights", "weights_bytes", "metadata", "drop", "sizes"])
    if choice == "sizes":  # absurd sizes declared in the zip headers
        array = bytearray(data)
        offsets = [i for i in range(len(array) - 4) if array[i:i + 4] in (b"PK\x03\x04", b"PK\x01\x02")]
        if offsets:
            at = rng.choice(offsets)
            field = 18 if array[at:at + 4] == b"PK\x03\x04" else 20
            field += rng.choice([0, 4])
            struct.pack_into("<I", array, at + field, rng.choice([2**32 - 1, 2**31, 0, 1]))
            return bytes(array), f"zip header at {at}: a declared size changed"
        choice = "drop"
    out = io.BytesIO()
    description = ""
    with zipfile.ZipFile(out, "w") as archive:
        dropped = rng.choice(names) if choice == "drop" else None
        for info, content in entries:
            if info.filename == dropped:
                description = f"{dropped} left out of the archive"
                continue
            if choice == "config" and info.filename == "config.json":
                config = json.loads(content)
                description = "config.json: " + mutate_keras_config(config, rng)
                content = json.dumps(config).encode()
            elif choice == "metadata" and info.filename == "metadata.json":
                content, description = rng.choice([
                    (b"{", "metadata.json truncated"), (b'{"keras_version": "1.0"}', "metadata: Keras 1"),
                    (b"[]", "metadata.json a list")])
            elif choice in ("weights", "weights_bytes") and info.filename.endswith(".h5"):
                if choice == "weights":
                    content, inner = mutate_h5(content, rng)
                else:
                    content, inner = mutate_bytes(content, rng)
                description = f"{info.filename}: {inner}"
            archive.writestr(info, content)
    return out.getvalue(), description or f"{choice}: nothing to change"


# --------------------------------------------------------------------------- cases

@dataclasses.dataclass
class Case:
    """One mutated model: the seed folder with ``target`` replaced by ``data``."""

    index: int
    kind: str
    seed_dir: str
    entry: str
    target: str
    description: str
    data: bytes
    deconv: bool

    def label(self) -> str:
        return f"case {self.index} [{self.kind}] {self.target}: {self.description}"


def _seed_files(seed_dir: str) -> list[str]:
    files = []
    for root, _, names in os.walk(seed_dir):
        for name in names:
            files.append(os.path.relpath(os.path.join(root, name), seed_dir))
    return sorted(files)


_seed_bytes_cache: dict[str, bytes] = {}


def _read(path: str) -> bytes:
    data = _seed_bytes_cache.get(path)
    if data is None:
        with open(path, "rb") as stream:
            data = _seed_bytes_cache[path] = stream.read()
    return data


def clean_cases(seeds: dict, first_index: int = -1000) -> list[Case]:
    """One unchanged case per seed model: each must load and visualize ("ok")."""
    cases = []
    for kind in KINDS:
        for source in seeds[kind]:
            files = _seed_files(source["dir"])
            target = next(f for f in files if f.startswith(source["entry"]))
            cases.append(Case(index=first_index + len(cases), kind=kind, seed_dir=source["dir"],
                              entry=source["entry"], target=target, description="unchanged seed model",
                              data=_read(os.path.join(source["dir"], target)), deconv=True))
    return cases


def generate_case(seeds: dict, seed: int, index: int, deconv_every: int = 3) -> Case:
    """The ``index``-th case of run ``seed``: the same pair always gives the same case."""
    rng = random.Random(f"{seed}:{index}")
    kind = KINDS[index % len(KINDS)]
    source = rng.choice(seeds[kind])
    seed_dir, entry = source["dir"], source["entry"]
    files = _seed_files(seed_dir)
    if kind in ("pb", "pbtxt", "keras", "h5", "h5_keras2"):
        target = entry
    elif kind == "meta":
        target = rng.choices(files, weights=[6 if f.endswith(".meta") else 2 if ".data" in f or f.endswith(
            ".index") else 1 for f in files])[0]
    else:  # savedmodel
        target = rng.choices(files, weights=[8 if f.endswith("saved_model.pb") else 2 if "variables" in f
                                             else 1 for f in files])[0]
    data = _read(os.path.join(seed_dir, target))
    mutator = {"pb": mutate_pb, "pbtxt": mutate_pbtxt, "keras": mutate_keras_zip, "h5": mutate_h5,
               "h5_keras2": mutate_h5}.get(kind)
    if target.endswith(".meta"):
        mutator = mutate_meta
    elif target.endswith("saved_model.pb"):
        mutator = mutate_saved_model
    elif mutator is None:
        mutator = mutate_bytes
    state = rng.getstate()
    try:
        new, description = mutator(data, rng)
    except Exception as error:  # noqa: BLE001 - a structured edit that did not apply: flip bits instead
        rng.setstate(state)
        new, description = flip_bits(data, rng)
        description += f" (structured edit failed: {type(error).__name__})"
    return Case(index=index, kind=kind, seed_dir=seed_dir, entry=entry, target=target,
                description=description, data=new, deconv=deconv_every > 0 and index % deconv_every == 0)


def materialize(case: Case, folder: str) -> dict:
    """Write ``case`` into ``folder`` (emptied first); return the worker's request."""
    if os.path.exists(folder):
        shutil.rmtree(folder)
    model_dir = os.path.join(folder, "model")
    shutil.copytree(case.seed_dir, model_dir)
    with open(os.path.join(model_dir, case.target), "wb") as stream:
        stream.write(case.data)
    return {"index": case.index, "folder": folder, "path": os.path.join(model_dir, case.entry),
            "out": os.path.join(folder, "out"), "log": os.path.join(folder, "log"), "deconv": case.deconv}


# --------------------------------------------------------------------------- worker side

def _snapshot(folder: str, skip=()) -> dict:
    """name -> (size, mtime) of every file and folder under ``folder``, except ``skip``."""
    state = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in skip]
        for name in dirs + files:
            path = os.path.join(root, name)
            try:
                info = os.lstat(path)
            except OSError:
                continue
            state[path] = (info.st_size, info.st_mtime_ns)
    return state


def _partial_files(folders) -> list[str]:
    """Temporary or truncated files left in ``folders``."""
    bad = []
    for folder in folders:
        for root, _, files in os.walk(folder):
            for name in files:
                path = os.path.join(root, name)
                if name.endswith((".part", ".tmp")) or name.startswith(".tmp"):
                    bad.append(path)
                elif name.endswith(".png"):
                    with open(path, "rb") as stream:
                        head = stream.read(8)
                        stream.seek(max(0, os.path.getsize(path) - 12))
                        tail = stream.read()
                    if head != b"\x89PNG\r\n\x1a\n" or b"IEND" not in tail:
                        bad.append(path)
    return bad


class _WriteWatch:
    """An audit hook that records Python-level writes outside the allowed folders."""

    EVENTS = {"os.mkdir", "os.rename", "os.replace", "os.remove", "os.rmdir", "os.symlink", "os.link",
              "os.truncate", "shutil.copyfile", "shutil.copytree", "shutil.move", "shutil.rmtree",
              "tempfile.mkstemp", "tempfile.mkdtemp", "os.chmod", "os.utime"}
    TWO_PATHS = {"os.rename", "os.replace", "os.symlink", "os.link", "shutil.copyfile", "shutil.copytree",
                 "shutil.move"}

    def __init__(self):
        self.allowed: tuple[str, ...] = ()
        self.active = False
        self.found: list[str] = []
        sys.addaudithook(self)

    def __call__(self, event, args):
        if not self.active:
            return
        if event == "open":
            path, mode, flags = (list(args) + [None, None, None])[:3]
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND))
            if not writing:
                return
            paths = args[:1]
        elif event in self.EVENTS:
            paths = args[:2] if event in self.TWO_PATHS else args[:1]
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)):
                self._check(os.fsdecode(path), event)

    def _check(self, path, event):
        full = os.path.realpath(os.path.abspath(path))
        if full.startswith("/dev/") or any(full == root or full.startswith(root + os.sep)
                                           for root in self.allowed):
            return
        self.found.append(f"{event} {full}")


def _describe(error: BaseException) -> str:
    text = str(error).strip().replace("\n", " ")
    return text[:400]


def _run_request(request: dict, watch: _WriteWatch, images, watched: list[str]) -> dict:
    import tf_cnnvis
    from tf_cnnvis import rebuild

    folder = request["folder"]
    out, log = request["out"], request["log"]
    watch.allowed = (os.path.realpath(out), os.path.realpath(log))
    skip = {os.path.join(folder, "out"), os.path.join(folder, "log")}
    before = {path: _snapshot(path, skip) for path in [folder] + watched}
    watch.found = []
    stage = "load"
    result: dict = {"index": request["index"]}
    began = time.perf_counter()
    watch.active = True
    try:
        model = tf_cnnvis.load_model(request["path"])
        stage = "activations"
        tf_cnnvis.activation_visualization(model, images, layers="r", path_outdir=out, path_logdir=log)
        if request.get("deconv"):
            stage = "deconv"
            tf_cnnvis.deconv_visualization(model, images, layers="r", channels=[0], path_outdir=out,
                                           path_logdir=log)
        result["outcome"] = "ok"
    except tf_cnnvis.TfCnnvisError as error:
        message = _describe(error)
        result["outcome"] = f"error:{type(error).__name__}" if len(message) >= 10 else "unclear"
        result["message"] = message
    except BaseException as error:  # noqa: BLE001 - every other type is what the fuzz is after
        result["outcome"] = f"other:{type(error).__name__}"
        result["message"] = _describe(error)
        import traceback

        result["traceback"] = traceback.format_exc()[-3000:]
    finally:
        watch.active = False
        rebuild.clear_cache()
    result["stage"] = stage
    result["seconds"] = time.perf_counter() - began
    outside = list(dict.fromkeys(watch.found))
    for path, state in before.items():
        after = _snapshot(path, skip)
        outside += [f"new or changed {name}" for name in after if after[name] != state.get(name)]
        outside += [f"removed {name}" for name in state if name not in after]
    partial = _partial_files([out, log])
    if outside:
        result["outcome"] = "outside"
        result["outside"] = outside[:10]
    elif partial:
        result["outcome"] = "partial"
        result["partial"] = partial[:10]
    return result


def worker_main(result_fd: int):
    """Answer one JSON line on ``result_fd`` for each request line read on standard input."""
    import resource

    import numpy as np

    try:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_LIMIT, WORKER_MEMORY_LIMIT))
    except (ValueError, OSError):
        pass
    import tensorflow  # noqa: F401 - imported once, before any case
    import tf_cnnvis  # noqa: F401

    watch = _WriteWatch()
    images = np.random.default_rng(0).uniform(0, 1, (1, IMAGE_SIDE, IMAGE_SIDE, 3)).astype(np.float32)
    watched = [os.getcwd(), tempfile.gettempdir()]
    if os.environ.get("HOME") and os.path.realpath(os.environ["HOME"]) not in map(os.path.realpath, watched):
        watched.append(os.environ["HOME"])
    answer = os.fdopen(result_fd, "w", buffering=1)
    answer.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        request = json.loads(line)
        answer.write(json.dumps(_run_request(request, watch, images, watched)) + "\n")


# --------------------------------------------------------------------------- parent side

def _child_env(home: str | None = None, tmp: str | None = None) -> dict:
    env = dict(os.environ)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", TF_NUM_INTRAOP_THREADS="1", TF_NUM_INTEROP_THREADS="1",
               OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join([REPO] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]))
    if home:
        env["HOME"] = home
    if tmp:
        env.update(TMPDIR=tmp, TEMP=tmp, TMP=tmp)
    return env


class Worker:
    """One worker process; :meth:`run` sends a request and waits for its answer."""

    def __init__(self, scratch: str, timeout: float = DEFAULT_TIMEOUT, name: str = "worker"):
        self.scratch = scratch
        self.timeout = timeout
        self.name = name
        self.process = None
        self.cases = 0
        self.starts = 0

    def start(self):
        home = os.path.join(self.scratch, "home")
        tmp = os.path.join(self.scratch, "tmp")
        cwd = os.path.join(self.scratch, "cwd")
        for path in (home, tmp, cwd):
            os.makedirs(path, exist_ok=True)
        read_end, write_end = os.pipe()
        self.stderr_path = os.path.join(self.scratch, f"stderr-{self.starts}.txt")
        self.stderr = open(self.stderr_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", str(write_end)],
            stdin=subprocess.PIPE, stdout=self.stderr, stderr=self.stderr, pass_fds=(write_end,),
            cwd=cwd, env=_child_env(home, tmp))
        os.close(write_end)
        self.answers = os.fdopen(read_end, "rb")
        self.buffer = b""
        self.starts += 1
        self.cases = 0
        ready = self._read_line(180.0)
        if ready is None or not json.loads(ready).get("ready"):
            tail = self.stderr_tail()
            self.stop()
            raise RuntimeError(f"the fuzz worker did not start:\n{tail}")

    def _read_line(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        fd = self.answers.fileno()
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def stderr_tail(self, size: int = 1500) -> str:
        try:
            self.stderr.flush()
            with open(self.stderr_path, "rb") as stream:
                stream.seek(max(0, os.path.getsize(self.stderr_path) - size))
                return stream.read().decode(errors="replace")
        except OSError:
            return ""

    def run(self, request: dict) -> dict:
        if self.process is None or self.cases >= WORKER_RECYCLE:
            self.stop()
            self.start()
        self.cases += 1
        size = os.path.getsize(self.stderr_path)
        try:
            self.process.stdin.write((json.dumps(request) + "\n").encode())
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass
        began = time.monotonic()
        line = self._read_line(self.timeout)
        if line is not None:
            return json.loads(line)
        seconds = time.monotonic() - began
        code = self.process.poll()
        if code is None and seconds >= self.timeout:
            self.process.kill()  # busy inside a library: closing its input would not stop it
            self.stop()
            return {"index": request["index"], "outcome": "hang", "seconds": seconds,
                    "message": f"no answer within {self.timeout:.0f} s"}
        try:
            code = self.process.wait(10)
        except subprocess.TimeoutExpired:
            code = None
        with open(self.stderr_path, "rb") as stream:
            stream.seek(size)
            tail = stream.read().decode(errors="replace")[-1500:]
        self.stop()
        if code is not None and code < 0:
            what = f"killed by {signal.Signals(-code).name}"
        else:
            what = f"exited with status {code}"
        return {"index": request["index"], "outcome": "crash", "seconds": seconds,
                "message": what, "stderr": tail}

    def stop(self):
        if self.process is None:
            return
        process, self.process = self.process, None
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        self.answers.close()
        self.stderr.close()


def run_cases(cases, scratch: str, workers: int = 2, timeout: float = DEFAULT_TIMEOUT,
              on_result=None) -> list[dict]:
    """Run every case of the iterable ``cases`` on ``workers`` processes; return the results.

    Each result holds ``outcome`` and ``label`` (the case's description),
    plus ``message``, ``stage``, ``seconds`` and what a bug left behind.
    ``on_result(result)`` is called as each arrives (from worker threads).
    """
    feed: queue.Queue = queue.Queue(maxsize=workers * 2)
    results: list[dict] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def serve(number: int):
        root = os.path.join(scratch, f"worker{number}")
        worker = Worker(root, timeout, f"worker{number}")
        try:
            worker.start()  # TensorFlow loads while the first cases are made
            while True:
                case = feed.get()
                if case is None:
                    return
                request = materialize(case, os.path.join(root, "case"))
                result = worker.run(request)
                result["label"] = case.label()
                result["kind"] = case.kind
                if not is_bug(result["outcome"]):
                    shutil.rmtree(request["folder"], ignore_errors=True)
                with lock:
                    results.append(result)
                if on_result is not None:
                    on_result(result)
        except BaseException as error:  # noqa: BLE001 - reported by the caller's thread
            failures.append(error)
            while feed.get() is not None:
                pass
        finally:
            worker.stop()

    threads = [threading.Thread(target=serve, args=(n,), daemon=True) for n in range(workers)]
    for thread in threads:
        thread.start()
    try:
        for case in cases:
            if failures:
                break
            feed.put(case)
    finally:
        for _ in threads:
            feed.put(None)
        for thread in threads:
            thread.join()
    if failures:
        raise failures[0]
    return sorted(results, key=lambda result: result["index"])


def fuzz(count: int, seed: int, scratch: str, workers: int = 2, timeout: float = DEFAULT_TIMEOUT,
         seeds_dir: str | None = None, on_result=None, clean: bool = True, extra=None) -> list[dict]:
    """Build (or reuse) the seeds and run ``count`` generated cases, after the clean ones.

    ``extra(seeds)`` may add hand-made cases (run after the clean ones).
    The seeds are built in their own process while the workers start.
    """
    seeds_dir = seeds_dir or os.path.join(scratch, "seeds")
    builder = None if load_seeds(seeds_dir) else build_seeds_in_subprocess(seeds_dir)

    def cases():
        seeds = wait_seeds(builder, seeds_dir) if builder is not None else load_seeds(seeds_dir)
        if clean:
            yield from clean_cases(seeds)
        if extra is not None:
            yield from extra(seeds)
        for index in range(count):
            yield generate_case(seeds, seed, index)

    try:
        return run_cases(cases(), os.path.join(scratch, "run"), workers, timeout, on_result)
    finally:
        if builder is not None and builder.poll() is None:
            builder.kill()
            builder.wait()


def tally(results) -> tuple[collections.Counter, dict]:
    """(count by outcome, {kind: count by outcome})."""
    results = list(results)
    overall = collections.Counter(result["outcome"] for result in results)
    by_kind: dict = collections.defaultdict(collections.Counter)
    for result in results:
        by_kind[result.get("kind", "?")][result["outcome"]] += 1
    return overall, dict(by_kind)


def bug_report(results) -> str:
    lines = []
    for result in results:
        if is_bug(result["outcome"]):
            lines.append(f"{result['outcome']} at {result.get('stage', '?')}: {result['label']}\n"
                         f"    {result.get('message', '')[:300]}")
            for key in ("outside", "partial"):
                if result.get(key):
                    lines.append(f"    {key}: {result[key][:3]}")
            if result.get("stderr"):
                lines.append("    stderr: " + result["stderr"][-600:].replace("\n", "\n      "))
            if result.get("traceback"):
                lines.append("    " + result["traceback"][-1200:].replace("\n", "\n    "))
    return "\n".join(lines)


def _main(argv):
    import argparse

    parser = argparse.ArgumentParser(description="model-file fuzz harness (worker and replay)")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--build-seeds", help=argparse.SUPPRESS)
    parser.add_argument("--replay", type=int, nargs="+", help="case indices to run again")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds-dir", help="seed models folder (built if missing)")
    parser.add_argument("--keep", help="write the case files here instead of a temporary folder")
    args = parser.parse_args(argv)
    if args.worker is not None:
        worker_main(args.worker)
        return
    if args.build_seeds:
        build_seeds(args.build_seeds)
        return
    if args.replay:
        with tempfile.TemporaryDirectory() as scratch:
            seeds_dir = args.seeds_dir or os.path.join(scratch, "seeds")
            seeds = load_seeds(seeds_dir) or wait_seeds(build_seeds_in_subprocess(seeds_dir), seeds_dir)
            cases = [generate_case(seeds, args.seed, index) for index in args.replay]
            if args.keep:
                for case in cases:
                    request = materialize(case, os.path.join(args.keep, f"case{case.index}"))
                    print(case.label(), "->", request["path"])
            for result in run_cases(cases, os.path.join(scratch, "run"), workers=1):
                print(json.dumps(result, indent=1))


if __name__ == "__main__":
    _main(sys.argv[1:])
