"""Visualizing during training: the Keras callback, and repeated calls that follow the weights."""

import importlib.util
import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_cnnvis
from tf_cnnvis.callbacks import VisualizationCallback
from tf_cnnvis.errors import OptionError
from tf_cnnvis.load import load_model
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.receptive_field import receptive_field

from conftest import small_keras_model, tf1_graph
from numerics import assert_reordered_close

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_digits.py")


def load_example():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_images(run_dir):
    """{tag: {step: uint8 array}} as TensorBoard's own reader sees the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    reader = EventAccumulator(run_dir, size_guidance={"images": 0})
    reader.Reload()
    return {tag: {event.step: np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
                  for event in reader.Images(tag)}
            for tag in reader.Tags()["images"]}


def keras_outputs(model, layer_name, images):
    return keras.Model(model.inputs, model.get_layer(layer_name).output)(images).numpy()


def test_example_training_writes_changing_pictures_at_every_epoch(tmp_path):
    example = load_example()
    logdir = str(tmp_path / "logs")
    run = example.main(["--logdir", logdir, "--epochs", "3"])

    pictures = read_images(os.path.join(logdir, "visualization"))
    for layer in example.VISUALIZED_LAYERS:
        for what in ("activations", "deconvolution/deconvnet_unit"):
            for image in ("image_000", "image_001"):
                steps = pictures[f"{layer}/{what}/{image}"]
                assert sorted(steps) == [0, 1, 2]
                for picture in steps.values():
                    assert picture.min() < picture.max()
                # Training changed the network, so the pictures changed too.
                assert not np.array_equal(steps[0], steps[2])

    # Keras's own TensorBoard callback wrote into the same log folder undisturbed.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train = EventAccumulator(os.path.join(logdir, "train"))
    train.Reload()
    assert "epoch_loss" in train.Tags()["tensors"] + train.Tags()["scalars"]

    # The last pictures show the weights training ended with.
    model, (_, _, x_test, _) = run["model"], run["data"]
    last = run["callback"].results[2][0]
    assert_reordered_close(last.arrays["conv3"], keras_outputs(model, "conv3", x_test[:2]))


def tiny_data(count=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (count, 12, 12, 3)).astype(np.float32), rng.integers(0, 4, count)


@pytest.mark.parametrize("epochs, every, expected", [(5, 2, [0, 2, 4]), (4, 2, [0, 2, 3])])
def test_every_n_epochs_and_always_the_last(tmp_path, epochs, every, expected):
    model = small_keras_model()
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = tiny_data()
    callback = VisualizationCallback(x[:1], log_dir=str(tmp_path / "logs"), layers=["conv1"],
                                     visualizations="activations", every_n_epochs=every,
                                     path_outdir=str(tmp_path / "png"))
    model.fit(x, y, epochs=epochs, batch_size=8, verbose=0, callbacks=[callback])
    from tf_cnnvis.write import SummaryWriter

    assert os.path.abspath(callback.run_dir) not in SummaryWriter._writers  # closed after fit
    assert sorted(callback.results) == expected
    assert sorted(read_images(callback.run_dir)["conv1/activations"]) == expected
    assert sorted(os.listdir(tmp_path / "png")) == [f"epoch_{step:04d}" for step in expected]
    picture = np.asarray(Image.open(tmp_path / "png" / "epoch_0000" / "conv1" / "activations"
                                    / "grid_activation.png"))
    assert picture.shape == (2 * 12 + 1, 3 * 12 + 2) and picture.min() < picture.max()  # 6 maps, 3x2


def test_custom_training_loop_sees_the_current_weights_at_every_call():
    model = small_keras_model()
    optimizer = keras.optimizers.SGD(0.5)
    x, y = tiny_data()
    images = x[:2]
    graphs = set()
    for step in range(3):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables),
                                      model.trainable_variables))

        values = tf_cnnvis.activation_visualization(model, images, layers=["conv2"], path_outdir=None,
                                                    path_logdir=None, step=step)["conv2"]
        assert_reordered_close(values, keras_outputs(model, "conv2", images))

        channels = [0, 5]
        recon = tf_cnnvis.deconv_visualization(model, images, layers=["conv2"], method="gradient",
                                               channels=channels, path_outdir=None, path_logdir=None,
                                               step=step)["conv2"]["gradient"]
        inputs = tf.constant(images)
        submodel = keras.Model(model.inputs, model.get_layer("conv2").output)
        for column, channel in enumerate(channels):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                objective = tf.reduce_sum(submodel(inputs)[..., channel])
            assert_reordered_close(recon[:, column], tape.gradient(objective, inputs).numpy())
        graphs.add(id(rebuild(load_model(model), "gradient").graph))
    assert len(graphs) == 1  # one imported graph served every call: new weights were assigned


def test_tf1_session_loop_sees_the_current_variables_at_every_call():
    graph, _ = tf1_graph(with_variables=True)
    with graph.as_default():
        init = tf.compat.v1.global_variables_initializer()
        w2 = next(v for v in tf.compat.v1.global_variables() if v.op.name == "w2")
        update = w2.assign(-1.5 * w2 + 0.1)
        relu2 = graph.get_tensor_by_name("relu2:0")
    session = tf.compat.v1.Session(graph=graph)
    session.run(init)
    images = np.random.default_rng(1).uniform(0, 1, (2, 12, 12, 3)).astype(np.float32)
    version, graphs = graph.version, set()
    for _ in range(3):
        session.run(update)
        got = tf_cnnvis.activation_visualization(session, {"x:0": images}, layers=["relu2"],
                                                 path_outdir=None, path_logdir=None)["relu2"]
        assert_reordered_close(got, session.run(relu2, {"x:0": images}))
        graphs.add(id(rebuild(load_model(session), "gradient").graph))
    assert len(graphs) == 1
    assert graph.version == version  # the user's graph was never modified


def test_changed_architecture_is_frozen_again():
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((10, 10, 1)),
                              keras.layers.Conv2D(3, 3, activation="relu", name="first")])
    images = np.random.default_rng(2).uniform(0, 1, (1, 10, 10, 1)).astype(np.float32)
    tf_cnnvis.activation_visualization(model, images, layers="r", path_outdir=None, path_logdir=None)
    model.add(keras.layers.Conv2D(4, 3, activation="relu", name="second"))
    result = tf_cnnvis.activation_visualization(model, images, layers="r", path_outdir=None,
                                                path_logdir=None)
    assert [layer.name for layer in result.layers] == ["first", "second"]
    assert_reordered_close(result["second"], model(images).numpy())


def test_weights_imported_as_variables_keep_shapes_and_receptive_fields(images):
    model = load_model(small_keras_model())
    rebuilt = rebuild(model, "deconvnet")
    kernels = [op.inputs[1] for op in rebuilt.graph.get_operations() if op.type == "Conv2D"]
    assert len(kernels) == 3 and all(kernel.shape.is_fully_defined() for kernel in kernels)
    for kernel in kernels:
        source = kernel.op
        while source.type == "Identity":
            source = source.inputs[0].op
        assert source.type == "ReadVariableOp"
    conv3 = model.keras_layers["conv3"]
    field = receptive_field(rebuilt.graph, model.inputs[0], conv3, (20, 20))
    # 3x3 conv, 2x2 pool, 3x3 conv, 2x2 pool, 3x3 conv: 3 -> 4 -> 8 -> 10 -> 18, jump 4.
    assert field.size == (18, 18) and field.jump == (4, 4)


def test_invalid_options_name_what_is_accepted(tmp_path):
    with pytest.raises(OptionError, match="'activations', 'deconvnet', 'guided', 'gradient'"):
        VisualizationCallback(np.zeros((1, 8, 8, 1)), visualizations=["deconv"])
    with pytest.raises(OptionError, match="every_n_epochs=0"):
        VisualizationCallback(np.zeros((1, 8, 8, 1)), every_n_epochs=0)
    with pytest.raises(OptionError, match="nothing would be written"):
        VisualizationCallback(np.zeros((1, 8, 8, 1)), log_dir=None)
    with pytest.raises(OptionError, match="run_name"):
        VisualizationCallback(np.zeros((1, 8, 8, 1)), run_name="../elsewhere")
