"""A broken model file never crashes the caller's process.

A few hundred model files of every kind, mutated by ``tests/model_fuzz.py``,
each loaded and (when that works) visualized in a worker process: every one
must succeed or raise a ``TfCnnvisError``, in bounded time, writing nothing
outside its folders. Then one case per kind of failure that was found and
fixed, and exact checks of the messages for damaged graphs.
"""

import os
import time

import numpy as np
import pytest
import tensorflow as tf

import model_fuzz
import tf_cnnvis
from tf_cnnvis.errors import ModelLoadError

FUZZ_CASES = 300
FUZZ_SEED = 1
WORKERS = 2


# --------------------------------------------------------------------------- regression cases

def _graph_def_case(seeds, index, description, edit):
    """The TF1 seed graph (.pb) after ``edit(graph_def)``."""
    source = next(s for s in seeds["pb"] if "tf1" in s["dir"])
    graph_def = tf.compat.v1.GraphDef()
    with open(os.path.join(source["dir"], source["entry"]), "rb") as stream:
        graph_def.ParseFromString(stream.read())
    edit(graph_def)
    return model_fuzz.Case(index=index, kind="pb", seed_dir=source["dir"], entry=source["entry"],
                           target=source["entry"], description=description,
                           data=graph_def.SerializeToString(), deconv=True)


def _node(graph_def, name):
    return next(node for node in graph_def.node if node.name == name)


def _reverse_tail(graph_def, length=20000):
    """A training-only tail read from a "save/" node, its nodes listed last to first."""
    for position in range(length, 0, -1):
        node = graph_def.node.add(name=f"tail_{position}", op="Identity",
                                  input=[f"tail_{position - 1}" if position > 1 else "save/tail"])
        node.attr["T"].type = tf.float32.as_datatype_enum
    head = graph_def.node.add(name="save/tail", op="Identity", input=["x"])
    head.attr["T"].type = tf.float32.as_datatype_enum


def _h5_case(seeds, kind, index, description, edit):
    source = seeds[kind][0]
    with open(os.path.join(source["dir"], source["entry"]), "rb") as stream:
        data = stream.read()
    return model_fuzz.Case(index=index, kind=kind, seed_dir=source["dir"], entry=source["entry"],
                           target=source["entry"], description=description, data=edit(data),
                           deconv=False)


def _free_heap_space_of_size_zero(data):
    at = next(at for at, index, _ in model_fuzz.heap_object_sizes(data) if index == 0)
    return data[:at] + bytes(8) + data[at + 8:]


def _h5_edit(change):
    def edit(data):
        import tempfile

        import h5py

        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.h5")
            with open(path, "wb") as stream:
                stream.write(data)
            with h5py.File(path, "r+") as h5:
                change(h5)
            with open(path, "rb") as stream:
                return stream.read()
    return edit


def _keras_weights_edit(change):
    """Apply ``change(h5)`` to the weights file inside a .keras archive."""
    def edit(data):
        import io
        import zipfile

        out = io.BytesIO()
        with zipfile.ZipFile(io.BytesIO(data)) as archive, zipfile.ZipFile(out, "w") as rewritten:
            for info in archive.infolist():
                content = archive.read(info)
                if info.filename.endswith(".h5"):
                    content = _h5_edit(change)(content)
                rewritten.writestr(info, content)
        return out.getvalue()
    return edit


def _gigabyte_dataset(h5):
    names = []
    h5.visititems(lambda name, item: names.append(name) if hasattr(item, "shape") else None)
    del h5[names[0]]
    h5.create_dataset(names[0], shape=(2**28,), dtype="f4")  # 1 GiB declared, nothing stored


def _broken_config(h5):
    h5.attrs["model_config"] = '{"class_name": "Functional", "config": {"layers": ['


# Each: (label, builder(seeds, index), expected outcome, words the message must hold). Before
# the fixes these crashed (SIGSEGV), hung, took 20-30 s, or raised UnimplementedError,
# JSONDecodeError or ValueError.
REGRESSIONS = [
    ("input port 2**31 (crashed TensorFlow's importer)",
     lambda seeds, i: _graph_def_case(seeds, i, "pool1 reads relu1:2147483648",
                                      lambda g: _node(g, "pool1").input.__setitem__(0, "relu1:2147483648")),
     "error:ModelLoadError", ["'pool1'", "output 2147483648", "'relu1'"]),
    ("zero-size global heap object (hung inside HDF5)",
     lambda seeds, i: _h5_case(seeds, "h5", i, "free heap space of size 0", _free_heap_space_of_size_zero),
     "error:ModelLoadError", ["global heap", "never ends"]),
    ("long training tail listed backwards (quadratic pruning, hung)",
     lambda seeds, i: _graph_def_case(seeds, i, "20000-node reverse tail", _reverse_tail),
     "ok", []),
    ("pooling stride on the batch axis (UnimplementedError at run time)",
     lambda seeds, i: _graph_def_case(seeds, i, "pool1 strides [2, 2, 2, 1]",
                                      lambda g: _node(g, "pool1").attr["strides"].list.i.__setitem__(0, 2)),
     "error:ModelLoadError", ["cannot run", "batch dimension"]),
    (".keras weights declaring 1 GiB without data (read whole by Keras: 20-30 s)",
     lambda seeds, i: _h5_case(seeds, "keras", i, "a dataset declares 2**28 floats",
                               _keras_weights_edit(_gigabyte_dataset)),
     "error:ModelLoadError", ["(model.weights.h5) declares dataset", "(268435456,)"]),
    ("constant whose value is a string in a float Const (ValueError when reading the weights)",
     lambda seeds, i: _graph_def_case(seeds, i, "w3's value has dtype string",
                                      lambda g: setattr(_node(g, "w3").attr["value"].tensor, "dtype", 7)),
     "error:ModelLoadError", ["'w3' declares dtype float32 but its value 'value' is string"]),
    ("Keras 2 .h5 config that is not JSON (JSONDecodeError)",
     lambda seeds, i: _h5_case(seeds, "h5_keras2", i, "model_config cut short", _h5_edit(_broken_config)),
     "error:ModelLoadError", ["not JSON"]),
]


def _regression_cases(seeds):
    return [build(seeds, -100 - number) for number, (_, build, _, _) in enumerate(REGRESSIONS)]


@pytest.fixture(scope="module")
def fuzz_run(tmp_path_factory):
    """The clean seeds, the regression cases and FUZZ_CASES mutated files, through the workers."""
    scratch = str(tmp_path_factory.mktemp("fuzz"))
    began = time.perf_counter()
    results = model_fuzz.fuzz(FUZZ_CASES, FUZZ_SEED, scratch, workers=WORKERS, extra=_regression_cases)
    return {result["index"]: result for result in results}, time.perf_counter() - began


@pytest.mark.slow
def test_mutated_model_files_succeed_or_raise_a_library_error(fuzz_run):
    results, seconds = fuzz_run
    bugs = [result for result in results.values() if model_fuzz.is_bug(result["outcome"])]
    overall, _ = model_fuzz.tally(results.values())
    assert not bugs, (f"{len(bugs)} of {len(results)} model files crashed, hung, raised a foreign "
                      f"exception or wrote outside their folders ({dict(overall)}, {seconds:.0f} s); "
                      f"replay one with: python tests/model_fuzz.py --replay INDEX --seed {FUZZ_SEED}\n"
                      + model_fuzz.bug_report(bugs))


@pytest.mark.slow
def test_fuzz_covers_every_kind(fuzz_run):
    results, _ = fuzz_run
    clean = [result for result in results.values() if result["label"].endswith("unchanged seed model")]
    assert len(clean) == 8 and all(result["outcome"] == "ok" for result in clean), clean
    _, by_kind = model_fuzz.tally(result for result in results.values() if result["index"] >= 0)
    assert set(by_kind) == set(model_fuzz.KINDS)
    for kind, outcomes in by_kind.items():
        assert outcomes["error:ModelLoadError"] > 0, (kind, outcomes)  # the mutations bite
        assert sum(outcomes.values()) >= FUZZ_CASES // len(model_fuzz.KINDS), (kind, outcomes)


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(REGRESSIONS)), ids=[label for label, *_ in REGRESSIONS])
def test_each_failure_found_by_fuzzing_is_now_a_library_error(fuzz_run, number):
    results, _ = fuzz_run
    label, _, outcome, words = REGRESSIONS[number]
    result = results[-100 - number]
    assert result["outcome"] == outcome, result
    for word in words:
        assert word in result.get("message", ""), result
    assert result["seconds"] < 15, result


# --------------------------------------------------------------------------- exact messages

def small_graph_def():
    """x -> conv (constant w) -> relu1 -> relu2."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="x")
        w = tf.constant(np.full((3, 3, 3, 4), 0.1, np.float32), name="w")
        h = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", name="conv"), name="relu1")
        tf.nn.relu(h, name="relu2")
    return graph.as_graph_def()


def edited(edit):
    graph_def = small_graph_def()
    edit(graph_def, {node.name: node for node in graph_def.node})
    return graph_def


def test_a_cycle_is_refused_naming_its_nodes(tmp_path):
    two_cycle = edited(lambda g, n: n["relu1"].input.__setitem__(0, "relu2"))
    with pytest.raises(ModelLoadError, match=r"node 'relu1' is in a cycle \('relu1' <- 'relu2' <- 'relu1'\)"):
        tf_cnnvis.load_model(two_cycle)
    path = tmp_path / "cycle.pb"
    path.write_bytes(edited(lambda g, n: n["relu2"].input.__setitem__(0, "relu2")).SerializeToString())
    with pytest.raises(ModelLoadError, match=r"cycle.pb is not a valid TensorFlow graph: node 'relu2' is in "
                                             r"a cycle \('relu2' <- 'relu2'\); TensorFlow graphs must be acyclic"):
        tf_cnnvis.load_model(str(path))


def test_a_missing_input_is_refused_naming_the_node():
    missing = edited(lambda g, n: n["relu2"].input.__setitem__(0, "ghost:0"))
    with pytest.raises(ModelLoadError, match=r"node 'relu2' reads 'ghost:0', but the graph has no node 'ghost'"):
        tf_cnnvis.load_model(missing)
    control = edited(lambda g, n: n["conv"].input.append("^gone"))
    with pytest.raises(ModelLoadError, match=r"node 'conv' reads '\^gone'"):
        tf_cnnvis.load_model(control)


def _set(node, key, **value):
    node.attr[key].Clear()
    for field, content in value.items():
        if field == "shape":
            node.attr[key].shape.CopyFrom(content)
        else:
            setattr(node.attr[key], field, content)


def _const_shape(dims, empty=False):
    def edit(graph_def, nodes):
        tensor = nodes["w"].attr["value"].tensor
        del tensor.tensor_shape.dim[:]
        for size in dims:
            tensor.tensor_shape.dim.add().size = size
        if empty:
            tensor.tensor_content = b""
    return edit


def _recursive_function(graph_def, nodes):
    function = graph_def.library.function.add()
    function.signature.name = "again"
    function.signature.input_arg.add(name="a", type=tf.float32.as_datatype_enum)
    function.signature.output_arg.add(name="b", type=tf.float32.as_datatype_enum)
    function.node_def.add(name="call", op="again", input=["a"])
    function.ret["b"] = "call:b:0"
    nodes["relu2"].op = "again"
    nodes["relu2"].attr.clear()


DAMAGED_GRAPHS = {
    "unknown op": (lambda g, n: setattr(n["relu2"], "op", "NoSuchOp"),
                   r"node 'relu2' has op 'NoSuchOp', which is not"),
    "missing attr": (lambda g, n: n["relu1"].attr.pop("T"), r"node 'relu1' lacks attr 'T' \(type\)"),
    "attr of the wrong kind": (lambda g, n: _set(n["conv"], "strides", s=b"1"),
                               r"node 'conv' has attr 'strides' of kind 's'; the op expects list\(int\)"),
    "reference dtype": (lambda g, n: _set(n["relu1"], "T", type=101),
                        r"'T' = 101 \(float32_ref\), which is a reference"),
    "string not allowed": (lambda g, n: _set(n["conv"], "padding", s=b"\xff\xfe"),
                           r"node 'conv' has attr 'padding' = b'\\xff\\xfe'; op Conv2D accepts SAME, VALID"),
    "absurd constant shape": (_const_shape([2**40], empty=True), r"node 'w' holds a tensor 'value' of shape "
                              r"\[1099511627776\] that would fill 4398046511104 bytes from 0 value"),
    "negative dimension": (_const_shape([-5, 3]), r"node 'w' .* a constant needs a known shape .* each >= 0"),
    "content not fitting the shape": (_const_shape([3, 3, 3, 5]), r"content is 432 bytes; expected 540"),
    "duplicate node": (lambda g, n: g.node.add().CopyFrom(n["relu1"]), r"node 'relu1' is defined twice"),
    "extra input": (lambda g, n: n["relu2"].input.append("relu1"),
                    r"node 'relu2' has 2 data input\(s\); op Relu takes 1"),
    "input port out of range": (lambda g, n: n["relu2"].input.__setitem__(0, "relu1:2147483648"),
                                r"node 'relu2' reads output 2147483648 of 'relu1', which has 1 output"),
    "newer graph version": (lambda g, n: setattr(g.versions, "min_consumer", 10**6), r"min_consumer=1000000"),
    "shapes that do not fit": (lambda g, n: _set(n["x"], "shape", shape=tf.TensorShape([None, 8, 8]).as_proto()),
                               r"Shape must be rank 4 but is rank 3 for '\{\{node conv\}\}"),
    "recursive function": (_recursive_function, r"function 'again' calls itself \('again' -> 'again'\)"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGED_GRAPHS))
def test_a_damaged_graph_is_refused_at_load_naming_what_is_wrong(damage):
    edit, message = DAMAGED_GRAPHS[damage]
    with pytest.raises(ModelLoadError, match=message):
        tf_cnnvis.load_model(edited(edit))


def test_the_undamaged_graph_loads_and_visualizes():
    images = np.random.default_rng(0).uniform(size=(1, 8, 8, 3)).astype(np.float32)
    result = tf_cnnvis.activation_visualization(small_graph_def(), images, layers="r", path_outdir=None,
                                                path_logdir=None)
    assert sorted(result.arrays) == ["relu1", "relu2"]


def test_loading_a_keras_file_writes_no_temporary_file(tmp_path, monkeypatch):
    """Tracing a Keras model with AutoGraph left its converted source in the temp folder."""
    import tempfile

    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(inputs)
    path = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(path)
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    tf_cnnvis.load_model(str(path))
    assert os.listdir(temporary) == []


def test_an_h5_dataset_declaring_more_than_the_file_holds_is_refused_before_it_is_read(tmp_path):
    """Recent Keras refuses it too, but older Keras 3 releases would allocate the 32 GB first."""
    import h5py
    import keras

    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    path = str(tmp_path / "model.h5")
    keras.Model(inputs, outputs).save(path)
    with h5py.File(path, "r+") as h5:
        name = "model_weights/conv/conv/bias"
        del h5[name]
        h5.create_dataset(name, shape=(2**33,), dtype="f4")  # declared, nothing stored
    with pytest.raises(ModelLoadError, match=r"declares dataset 'model_weights/conv/conv/bias' of shape "
                                             r"\(8589934592,\) \(34359738368 bytes\), more than a \d+-byte file"):
        tf_cnnvis.load_model(path)
