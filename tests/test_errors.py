"""Every bad input raises a tf_cnnvis error that names the bad value and what is accepted.

Each case checks the exception class (and the built-in class a generic
handler would catch), then that the message quotes the offending value and
says what would have worked. Nothing here may surface as a raw TensorFlow,
NumPy or h5py traceback.
"""

import os

import numpy as np
import pytest
import tensorflow as tf

import tf_cnnvis
from tf_cnnvis.deepdream import deepdream_visualization
from tf_cnnvis.errors import (
    FeedError,
    LayerNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    OutputError,
    TfCnnvisError,
    UntrustedModelError,
)

from conftest import small_keras_model, tf1_graph

IMAGES = np.random.default_rng(0).uniform(0, 1, (1, 12, 12, 3)).astype(np.float32)
NO_OUTPUT = {"path_outdir": None, "path_logdir": None}


def raises(error_class, *needles):
    """Run ``call`` and check the error class and that the message holds every needle."""

    class Check:
        def __init__(self):
            self.context = pytest.raises(error_class)

        def __enter__(self):
            self.info = self.context.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.context.__exit__(*exc)
            if not handled:  # another exception: let it surface as it is
                return False
            assert isinstance(self.info.value, TfCnnvisError)
            message = str(self.info.value)
            for needle in needles:
                assert needle in message, f"{needle!r} not in {message!r}"
            return handled

    return Check()


@pytest.fixture(scope="module")
def keras_model():
    return small_keras_model()


@pytest.fixture(scope="module")
def graph():
    return tf1_graph()[0]


def graph_with_extra_placeholder():
    """x -> conv -> relu, scaled by a second placeholder 'scale' the user must feed."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="x")
        scale = tf.compat.v1.placeholder(tf.float32, [], name="scale")
        shift = tf.compat.v1.placeholder(tf.int32, [], name="shift")
        kernel = tf.constant(np.ones((3, 3, 3, 4), np.float32), name="kernel")
        h = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME") * scale + tf.cast(shift, tf.float32),
                       name="relu1")
        tf.reduce_mean(h, axis=3, name="mean_map")  # (N, H, W): no channel axis
    return graph


def two_input_model():
    import keras

    first = keras.Input((None, None, 3), name="left")
    second = keras.Input((None, None, 3), name="right")
    merged = keras.layers.Add(name="merge")([first, second])
    out = keras.layers.Conv2D(2, 3, activation="relu", name="conv")(merged)
    return keras.Model([first, second], out)


# --------------------------------------------------------------------------- model sources

def test_missing_path(tmp_path):
    path = str(tmp_path / "nowhere.keras")
    with raises(ModelNotFoundError, path, ".keras file", "SavedModel folder"):
        tf_cnnvis.load_model(path)
    with pytest.raises(FileNotFoundError):  # generic handlers keep working
        tf_cnnvis.activation_visualization(path, IMAGES, **NO_OUTPUT)


def test_folder_that_is_not_a_saved_model(tmp_path):
    (tmp_path / "variables").mkdir()
    with raises(ModelLoadError, str(tmp_path), "saved_model.pb"):
        tf_cnnvis.load_model(str(tmp_path))


def test_corrupt_saved_model(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"\x08\x01garbage" * 10)
    with raises(ModelLoadError, str(tmp_path), "SavedModel"):
        tf_cnnvis.load_model(str(tmp_path))


def test_corrupt_pb(tmp_path):
    path = tmp_path / "model.pb"
    path.write_bytes(b"\xff\xfe not a protocol buffer \x00\x01" * 4)
    with raises(ModelLoadError, str(path), "binary .pb or text .pbtxt"):
        tf_cnnvis.load_model(str(path))


def test_truncated_pb(tmp_path, graph):
    data = graph.as_graph_def().SerializeToString()
    path = tmp_path / "truncated.pb"
    path.write_bytes(data[: len(data) // 2])
    with raises(ModelLoadError, str(path), "GraphDef"):
        tf_cnnvis.load_model(str(path))


def test_corrupt_pbtxt(tmp_path):
    path = tmp_path / "model.pbtxt"
    path.write_text("node { name: 'x' op: ")
    with raises(ModelLoadError, str(path), ".pbtxt"):
        tf_cnnvis.load_model(str(path))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_corrupt_keras_file(tmp_path, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"this is not a model file\x00" * 8)
    with raises(ModelLoadError, str(path)):
        tf_cnnvis.load_model(str(path))


@pytest.mark.parametrize("suffix", [".h5", ".keras"])
def test_truncated_keras_file(tmp_path, keras_model, suffix):
    whole = tmp_path / f"whole{suffix}"
    keras_model.save(whole)
    data = whole.read_bytes()
    path = tmp_path / f"truncated{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with raises(ModelLoadError, str(path)):
        tf_cnnvis.load_model(str(path))


def test_path_of_unknown_kind(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x00")
    with raises(ModelLoadError, str(path), ".keras", ".pb"):
        tf_cnnvis.load_model(str(path))


def test_source_of_unknown_type():
    with raises(ModelLoadError, "int", "keras.Model"):
        tf_cnnvis.activation_visualization(42, IMAGES, **NO_OUTPUT)


def test_no_model_given():
    with raises(OptionError, "no model given", "Keras model"):
        tf_cnnvis.activation_visualization(None, IMAGES, **NO_OUTPUT)


# --------------------------------------------------------------------------- feeds

def test_unknown_feed_key_suggests_inputs(graph):
    with raises(FeedError, "'xx'", "its inputs are", "did you mean x"):
        tf_cnnvis.activation_visualization(graph, {"xx": IMAGES}, **NO_OUTPUT)


def test_feed_of_wrong_rank(keras_model):
    with raises(FeedError, "(12,)", "accepts (None, None, None, 3)"):
        tf_cnnvis.activation_visualization(keras_model, np.zeros(12, np.float32), **NO_OUTPUT)


def test_feed_with_wrong_channel_count(keras_model):
    with raises(FeedError, "(1, 12, 12, 4)", "axis 3 must be 3"):
        tf_cnnvis.activation_visualization(keras_model, np.zeros((1, 12, 12, 4), np.float32),
                                           **NO_OUTPUT)


def test_feed_of_wrong_dtype(keras_model):
    with raises(FeedError, "float32", "cannot be converted"):
        tf_cnnvis.activation_visualization(keras_model, np.full((1, 4, 4, 3), "pixel"), **NO_OUTPUT)


def test_fractional_values_for_an_integer_placeholder():
    feed = {"x": IMAGES, "scale": 1.0, "shift": 0.5}
    with raises(FeedError, "'shift:0'", "int32", "0.5"):
        tf_cnnvis.activation_visualization(graph_with_extra_placeholder(), feed, layers="relu1",
                                           **NO_OUTPUT)


def test_extra_feed_of_wrong_shape():
    feed = {"x": IMAGES, "scale": np.ones(3, np.float32), "shift": 0}
    with raises(FeedError, "scale:0", "(3,)", "value_feed_dict"):
        tf_cnnvis.activation_visualization(graph_with_extra_placeholder(), feed, layers="relu1",
                                           **NO_OUTPUT)


def test_missing_placeholder_is_named():
    with raises(FeedError, "'scale'", "float", "value_feed_dict"):
        tf_cnnvis.activation_visualization(graph_with_extra_placeholder(), {"x": IMAGES, "shift": 0},
                                           layers="relu1", **NO_OUTPUT)


def test_empty_batch(keras_model):
    with raises(FeedError, "empty", "(0, 12, 12, 3)", "at least one image"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES[:0], **NO_OUTPUT)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_pixels(keras_model, bad):
    images = IMAGES.copy()
    images[0, 3, 4, 1] = bad
    with raises(FeedError, "NaN or infinite", "finite pixels", "(0, 3, 4, 1)"):
        tf_cnnvis.deconv_visualization(keras_model, images, **NO_OUTPUT)


def test_no_feed(keras_model):
    with raises(FeedError, "value_feed_dict is None"):
        tf_cnnvis.activation_visualization(keras_model, None, **NO_OUTPUT)


def test_several_inputs_and_no_input_tensor():
    model = two_input_model()
    feed = {"left": IMAGES, "right": IMAGES}
    with raises(FeedError, "left", "right", "input_tensor="):
        tf_cnnvis.activation_visualization(model, feed, **NO_OUTPUT)
    with raises(FeedError, "2 inputs", "dict keyed by input"):
        tf_cnnvis.activation_visualization(model, IMAGES, **NO_OUTPUT)
    # With input_tensor the same feed is accepted: the error was about the ambiguity only.
    assert tf_cnnvis.activation_visualization(model, feed, input_tensor="left", **NO_OUTPUT)


# --------------------------------------------------------------------------- layers

def test_unknown_layer_suggests_close_names(keras_model):
    with raises(LayerNotFoundError, "'conv_2'", "closest names", "conv2"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, layers=["conv_2"], **NO_OUTPUT)
    with pytest.raises(KeyError):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, layers=["conv_2"], **NO_OUTPUT)


@pytest.mark.parametrize("letters", ["x", "rx"])
def test_unknown_layer_letter(keras_model, letters):
    with raises(LayerNotFoundError, repr(letters), "'r', 'p', 'c'"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, layers=letters, **NO_OUTPUT)


def test_selection_matching_no_layer():
    graph = graph_with_extra_placeholder()  # has no pooling
    feed = {"x": IMAGES, "scale": 1.0, "shift": 0}
    with raises(LayerNotFoundError, "'p'", "matches no layer", "relu1"):
        tf_cnnvis.activation_visualization(graph, feed, layers="p", **NO_OUTPUT)


@pytest.mark.parametrize("layers, needle", [([], "layers is empty"), ([3], "3")])
def test_layers_argument_of_wrong_form(keras_model, layers, needle):
    with raises(OptionError, needle, "'r', 'p', 'c'"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, layers=layers, **NO_OUTPUT)


def test_layer_without_channels_for_deconv():
    feed = {"x": IMAGES, "scale": 1.0, "shift": 0}
    with raises(OptionError, "'mean_map'", "(None, None, None)", "(N, H, W, C) or (N, C)"):
        tf_cnnvis.deconv_visualization(graph_with_extra_placeholder(), feed, layers="mean_map",
                                       **NO_OUTPUT)


# --------------------------------------------------------------------------- channels and classes

@pytest.mark.parametrize("channels, needles", [
    ([6], ("channel 6", "6 channels", "0..5")),
    ([-1], ("channel -1", "0..5")),
    ([1.5], ("1.5", "not an integer", "0..5")),
    (["2"], ("'2'", "not an integer")),
    ([True], ("True", "not an integer")),
])
def test_bad_channel_index(keras_model, channels, needles):
    with raises(OptionError, *needles):
        tf_cnnvis.deconv_visualization(keras_model, IMAGES, layers=["conv1"], channels=channels,
                                       **NO_OUTPUT)


@pytest.mark.parametrize("classes, needles", [
    (4, ("class 4", "4 units", "0..3")),
    (-1, ("class -1", "0..3")),
    (2.5, ("2.5", "not an integer", "0..3")),
    ("cat", ("'cat'", "labels")),
])
def test_bad_class_index(keras_model, classes, needles):
    with raises(OptionError, *needles):
        deepdream_visualization(keras_model, IMAGES, layer="logits", classes=classes, iterations=1,
                                octaves=1, **NO_OUTPUT)


# --------------------------------------------------------------------------- options

@pytest.mark.parametrize("option, needles", [
    ({"octaves": -1}, ("octaves=-1", ">= 1")),
    ({"octaves": 0}, ("octaves=0", ">= 1")),
    ({"iterations": 0}, ("iterations=0", ">= 1")),
    ({"iterations": 2.5}, ("iterations=2.5", "integer")),
    ({"octave_scale": 0.5}, ("octave_scale=0.5", ">= 1")),
    ({"step_size": 0}, ("step_size=0", "positive")),
    ({"jitter": -3}, ("jitter=-3", ">= 0")),
    ({"normalize": "bogus"}, ("'bogus'", "laplacian")),
    ({"param": "voxels"}, ("'voxels'", "'pixel'")),
    ({"memory_budget_mb": 0}, ("memory_budget_mb=0", "positive")),
])
def test_bad_deepdream_option(keras_model, option, needles):
    settings = {"iterations": 1, "octaves": 1, **option}
    with raises(OptionError, *needles):
        deepdream_visualization(keras_model, IMAGES, layer="logits", classes=[0], **settings,
                                **NO_OUTPUT)


@pytest.mark.parametrize("budget", [0, -5, float("nan"), float("inf"), "big", True])
def test_bad_memory_budget(keras_model, budget):
    with raises(OptionError, f"memory_budget_mb={budget!r}", "positive number of megabytes"):
        tf_cnnvis.deconv_visualization(keras_model, IMAGES, layers=["conv1"],
                                       memory_budget_mb=budget, **NO_OUTPUT)


def test_zero_batch_size_for_top_activations(keras_model):
    from tf_cnnvis.top_activations import top_activations

    with raises(OptionError, "batch_size=0", ">= 1"):
        top_activations(keras_model, IMAGES, layers=["conv1"], batch_size=0)


@pytest.mark.parametrize("option, needles", [
    ({"method": "saliency"}, ("'saliency'", "'deconvnet'", "'guided'")),
    ({"method": ["guided", "lrp"]}, ("'lrp'", "'gradient'")),
    ({"target": "pixel"}, ("'pixel'", "'map'", "'unit'")),
    ({"step": "3"}, ("step='3'", "integer")),
    ({"step": 1.5}, ("step=1.5", "integer")),
    ({"keep_arrays": "no"}, ("keep_arrays='no'", "True or False")),
    ({"keep_arrays": False}, ("keep_arrays=False", "discard", "give a folder")),
])
def test_bad_deconv_option(keras_model, option, needles):
    with raises(OptionError, *needles):
        tf_cnnvis.deconv_visualization(keras_model, IMAGES, layers=["conv1"], path_outdir=None,
                                       path_logdir=None, **option)


def test_bad_step_is_refused_before_any_work(keras_model, tmp_path, monkeypatch):
    from tf_cnnvis import compute

    def fail(*args, **kwargs):
        raise AssertionError("the network ran although the options were invalid")

    monkeypatch.setattr(compute, "activations", fail)
    with raises(OptionError, "step=None"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, path_outdir=str(tmp_path / "out"),
                                           path_logdir=None, step=None)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- output folders

def test_output_folder_that_is_a_file(keras_model, tmp_path):
    path = tmp_path / "taken"
    path.write_text("a file")
    with raises(OutputError, str(path), "not a folder"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, path_outdir=str(path), path_logdir=None)
    assert path.read_text() == "a file"
    with raises(OutputError, str(path), "log folder"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, path_outdir=None, path_logdir=str(path))


def test_output_folder_below_a_file(keras_model, tmp_path):
    path = tmp_path / "taken"
    path.write_text("a file")
    with raises(OutputError, str(path / "Output"), "cannot create"):
        tf_cnnvis.deconv_visualization(keras_model, IMAGES, layers=["conv1"],
                                       path_outdir=str(path / "Output"), path_logdir=None)


def test_output_folder_not_writable(keras_model, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    # Root ignores permission bits; a kernel file system refuses even root.
    target = "/proc/tf_cnnvis_output" if os.geteuid() == 0 else str(locked / "Output")
    try:
        with raises(OutputError, target, "cannot create"):
            tf_cnnvis.activation_visualization(keras_model, IMAGES, path_outdir=target, path_logdir=None)
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------- untrusted model files

def lambda_model(marker):
    """A model whose Lambda writes ``marker`` when it runs: proof of executed file code."""
    import keras

    # A lambda, not a def: Keras stores a lambda's bytecode in the file.
    touch_and_double = lambda tensor, marker: (open(marker, "w").close(), tensor * 2.0)[1]  # noqa: E731

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    outputs = keras.layers.Lambda(touch_and_double, arguments={"marker": str(marker)}, name="double")(x)
    return keras.Model(inputs, outputs)


def as_keras2_file(path):
    """Mark an .h5 as written by Keras 2, so it takes the legacy loader."""
    import h5py

    with h5py.File(path, "r+") as h5:
        h5.attrs["keras_version"] = "2.4.0"


@pytest.mark.parametrize("suffix", [".keras", ".h5", "legacy.h5"])
def test_lambda_layer_file_is_refused_until_trusted(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"model{suffix}"
    lambda_model(marker).save(path)
    if suffix == "legacy.h5":
        as_keras2_file(path)
    marker.unlink()
    with raises(UntrustedModelError, str(path), "Lambda", "trust_model_code=True"):
        tf_cnnvis.activation_visualization(str(path), IMAGES[:, :8, :8], **NO_OUTPUT)
    with raises(UntrustedModelError, "trust_model_code=True"):
        tf_cnnvis.list_layers(str(path))
    assert not marker.exists()
    # The refusal holds even where the process allowed unsafe deserialization globally.
    import keras

    keras.config.enable_unsafe_deserialization()
    try:
        with raises(UntrustedModelError, str(path)):
            tf_cnnvis.load_model(str(path))
    finally:
        from keras.src.saving import serialization_lib

        serialization_lib.global_state.set_global_attribute("safe_mode_saving", None)
    assert not marker.exists()

    result = tf_cnnvis.activation_visualization(str(path), IMAGES[:, :8, :8], layers="conv",
                                                trust_model_code=True, **NO_OUTPUT)
    assert result.arrays["conv"].shape == (1, 6, 6, 4)
    assert marker.exists()  # the trusted code did run


def test_graph_file_with_file_ops_is_refused_until_trusted(tmp_path, graph):
    graph_def = tf.compat.v1.GraphDef()
    graph_def.CopyFrom(graph.as_graph_def())
    with tf.Graph().as_default() as hostile:
        tf.import_graph_def(graph_def, name="")
        secret = tf.io.read_file("/etc/hostname", name="steal")
        relu = hostile.get_tensor_by_name("relu2:0")
        length = tf.cast(tf.strings.length(secret, name="len"), tf.float32)
        tf.identity(relu + 0.0 * length, name="leaky")
    path = tmp_path / "hostile.pb"
    path.write_bytes(hostile.as_graph_def().SerializeToString())
    with raises(UntrustedModelError, str(path), "'steal' (ReadFile)", "trust_model_code=True"):
        tf_cnnvis.activation_visualization(str(path), {"x": IMAGES}, **NO_OUTPUT)
    # The caller's own graph object is the caller's code: it is not second-guessed.
    assert tf_cnnvis.activation_visualization(hostile, {"x": IMAGES}, layers="relu1", **NO_OUTPUT)
    assert tf_cnnvis.activation_visualization(str(path), {"x": IMAGES}, layers="relu1",
                                              trust_model_code=True, **NO_OUTPUT)


# --------------------------------------------------------------------------- empty and malformed selections

def _top_activations(model, images, path_logdir, **options):  # it writes no TensorBoard events
    from tf_cnnvis.top_activations import top_activations

    return top_activations(model, images, **{"layers": ["conv1"], **options})


def _callback(model, images, path_logdir, **options):
    # Checked when the callback is made, before any training epoch.
    return tf_cnnvis.VisualizationCallback(images, log_dir=path_logdir, **options)


SELECTIONS = [
    # (entry, options, error class, needles)
    (tf_cnnvis.activation_visualization, {"layers": []}, OptionError, ("layers is empty",)),
    (tf_cnnvis.activation_visualization, {"layers": ""}, OptionError, ("empty name",)),
    (tf_cnnvis.activation_visualization, {"layers": ["conv1", " "]}, OptionError, ("empty name",)),
    (tf_cnnvis.activation_visualization, {"layers": [["conv1"]]}, OptionError, ("['conv1']", "not a string")),
    (tf_cnnvis.activation_visualization, {"value_feed_dict": IMAGES[:0]}, FeedError, ("empty",)),
    (tf_cnnvis.deconv_visualization, {"channels": []}, OptionError, ("channels is empty",)),
    (tf_cnnvis.deconv_visualization, {"channels": np.array([], int)}, OptionError, ("channels is empty",)),
    (tf_cnnvis.deconv_visualization, {"channels": [[0]]}, OptionError, ("[0]", "not an integer")),
    (tf_cnnvis.deconv_visualization, {"channels": np.zeros((1, 2), int)}, OptionError, ("non-empty list",)),
    (tf_cnnvis.deconv_visualization, {"channels": {1, 2}}, OptionError, ("{1, 2}", "non-empty list")),
    (tf_cnnvis.deconv_visualization, {"channels": [1, 1]}, OptionError, ("channels lists 1 twice",)),
    (tf_cnnvis.deconv_visualization, {"method": []}, OptionError, ("method=[]", "'deconvnet'")),
    (tf_cnnvis.deconv_visualization, {"method": ()}, OptionError, ("method=()", "non-empty list")),
    (tf_cnnvis.deconv_visualization, {"method": None}, OptionError, ("method=None", "'guided'")),
    (tf_cnnvis.deconv_visualization, {"method": ["guided", "guided"]}, OptionError, ("'guided' twice",)),
    (tf_cnnvis.deconv_visualization, {"layers": []}, OptionError, ("layers is empty",)),
    (tf_cnnvis.deconv_visualization, {"value_feed_dict": IMAGES[:0]}, FeedError, ("empty",)),
    (deepdream_visualization, {"layer": "logits", "classes": []}, OptionError, ("classes is empty",)),
    (deepdream_visualization, {"layer": "logits", "classes": [[]]}, OptionError, ("classes is empty",)),
    (deepdream_visualization, {"layer": "", "classes": [0]}, OptionError, ("layer=''", "must name one layer")),
    (deepdream_visualization, {"layer": [], "classes": [0]}, OptionError, ("layer=[]", "must name one layer")),
    (deepdream_visualization, {"layer": "logits", "classes": [0], "value_feed_dict": IMAGES[:0]}, FeedError,
     ("empty",)),
    (_top_activations, {"layers": []}, OptionError, ("layers is empty",)),
    (_top_activations, {"channels": []}, OptionError, ("channels is empty",)),
    (_top_activations, {"channels": [2, 2]}, OptionError, ("twice",)),
    (_top_activations, {"method": []}, OptionError, ("method []", "'deconvnet'")),
    (_callback, {"layers": []}, OptionError, ("layers is empty",)),
    (_callback, {"channels": []}, OptionError, ("channels is empty",)),
    (_callback, {"visualizations": []}, OptionError, ("visualizations=[]", "'activations'")),
    (_callback, {"value_feed_dict": IMAGES[:0]}, FeedError, ("no image",)),
]


@pytest.mark.parametrize("entry, options, error_class, needles", SELECTIONS,
                         ids=[f"{entry.__name__}-{list(options.items())[-1]!r}" for entry, options, *_ in SELECTIONS])
def test_empty_or_malformed_selection_is_refused_before_anything_is_written(
        keras_model, tmp_path, entry, options, error_class, needles):
    options = dict(options)
    images = options.pop("value_feed_dict", IMAGES)
    if entry is deepdream_visualization:
        options.update(iterations=1, octaves=1)
    with raises(error_class, *needles):
        entry(keras_model, images, path_outdir=str(tmp_path / "out"), path_logdir=str(tmp_path / "log"),
              **options)
    assert not list(tmp_path.rglob("*"))
