"""Shared fixtures: small nets with known weights, built the ways users build them."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf

import tf_cnnvis.rebuild


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test that takes more than a few seconds")


@pytest.fixture(autouse=True)
def _fresh_rebuild_cache():
    """Each test starts without graphs imported by another test."""
    yield
    tf_cnnvis.rebuild.clear_cache()


def small_keras_model(seed=0, input_shape=(None, None, 3), name="small"):
    """conv3x3 relu -> maxpool -> conv3x3 relu -> maxpool -> conv3x3 relu -> GAP -> dense."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2")(x)
    x = keras.layers.MaxPooling2D(name="pool2")(x)
    x = keras.layers.Conv2D(10, 3, padding="same", activation="relu", name="conv3")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(4, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture
def keras_model():
    return small_keras_model()


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 1, size=(2, 20, 20, 3)).astype(np.float32)


def tf1_graph(weights_seed=0, with_variables=False):
    """A TF1-style graph: placeholder 'x' -> conv/relu/pool x2, as the original's examples."""
    rng = np.random.default_rng(weights_seed)
    w1 = rng.normal(0, 0.5, (3, 3, 3, 5)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (3, 3, 5, 7)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (5,)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="x")
        if with_variables:
            w1_t = tf.compat.v1.get_variable("w1", initializer=w1)
            w2_t = tf.compat.v1.get_variable("w2", initializer=w2)
        else:
            w1_t, w2_t = tf.constant(w1, name="w1"), tf.constant(w2, name="w2")
        h = tf.nn.relu(tf.nn.conv2d(x, w1_t, 1, "SAME") + b1, name="relu1")
        h = tf.nn.max_pool2d(h, 2, 2, "SAME", name="pool1")
        h = tf.nn.relu(tf.nn.conv2d(h, w2_t, 1, "SAME", name="conv2"), name="relu2")
        tf.nn.max_pool2d(h, 2, 2, "SAME", name="pool2")
    return graph, (w1, b1, w2)
