"""Modern activations: SiLU, GELU, hard-swish, hard-sigmoid, Mish, softplus, custom gradients and gates.

Each activation and method is checked against a hand computation of its
rule on a one-layer net, whatever ops spell the function; ``method="gradient"``
against ``tf.GradientTape`` on the user's own Keras model (EfficientNetB0
included); ``'r'`` against the activations a model has, with and without
Keras's names.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

import tf_cnnvis
from tf_cnnvis.inlining import inline_function_calls
from tf_cnnvis.load import load_model

from numerics import assert_reordered_close
from passes import batched_and_per_item

METHODS = ("gradient", "deconvnet", "guided")
SQRT_HALF = math.sqrt(0.5)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _phi(x):
    return np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _gelu_tanh_slope(x):
    c = math.sqrt(2 / math.pi)
    t = np.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


def _mish_slope(x):
    t = np.tanh(np.logaddexp(0, x))
    return t + x * (1 - t * t) * _sigmoid(x)


_ERF = np.vectorize(math.erf)

# f'(x) in float64 NumPy, written from the definitions (DESIGN.md section 8), not from the library.
SLOPES = {
    "SiLU": lambda x: _sigmoid(x) * (1 + x * (1 - _sigmoid(x))),
    "GELU": lambda x: 0.5 * (1 + _ERF(x * SQRT_HALF)) + x * _phi(x),
    "GELUTanh": _gelu_tanh_slope,
    "HardSwish": lambda x: np.where(x >= 3, 1.0, np.where(x > -3, (2 * x + 3) / 6, 0.0)),
    "HardSigmoid": lambda x: np.where((x > -3) & (x < 3), 1 / 6, 0.0),
    "Mish": _mish_slope,
    "Softplus": _sigmoid,
}

# The same functions as TensorFlow, Keras and converted graphs spell them.
SPELLINGS = {
    "tf.nn.silu": ("SiLU", tf.nn.silu),
    "x*sigmoid(x)": ("SiLU", lambda x: x * tf.sigmoid(x)),
    "tf.nn.gelu": ("GELU", lambda x: tf.nn.gelu(x, approximate=False)),
    "0.5x(1+erf(x/sqrt2))": ("GELU", lambda x: 0.5 * x * (1 + tf.math.erf(x / math.sqrt(2)))),
    "tf.nn.gelu-tanh": ("GELUTanh", lambda x: tf.nn.gelu(x, approximate=True)),
    "x*relu6(x+3)/6": ("HardSwish", lambda x: x * tf.nn.relu6(x + 3) / 6),
    "x*(relu6(x+3)*(1/6))": ("HardSwish", lambda x: x * (tf.nn.relu6(x + 3) * (1 / 6))),
    "relu6(x+3)/6": ("HardSigmoid", lambda x: tf.nn.relu6(x + 3) / 6),
    "relu6(x+3)*(1/6)": ("HardSigmoid", lambda x: tf.nn.relu6(x + 3) * (1 / 6)),
    "x*tanh(softplus(x))": ("Mish", lambda x: x * tf.tanh(tf.nn.softplus(x))),
    "softplus": ("Softplus", tf.nn.softplus),
}

X_LINE = np.linspace(-4.5, 4.5, 19, dtype=np.float32).reshape(1, 1, 19, 1)
WEIGHTS = (1.5, -2.0)  # upstream gradients of the two channels above the activation


def one_layer_graph(activation):
    """x -> activation (named 'act') -> 1x1 convolution to two channels with weights WEIGHTS ('top')."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 1], name="x")
        act = tf.identity(activation(x), name="act")
        tf.nn.conv2d(act, tf.constant([[[list(WEIGHTS)]]]), 1, "VALID", name="top")
    return graph


def reconstruct(source, feed, layer, method, **options):
    result = tf_cnnvis.deconv_visualization(source, feed, layers=[layer], method=method, path_outdir=None,
                                            path_logdir=None, **options)
    return next(iter(result.arrays.values()))[method]


def expected_rule(function, method, x, g):
    """The rule of DESIGN.md section 8 at input x for upstream gradient g (gates: the derivative)."""
    slope = SLOPES[function](x.astype(np.float64))
    if method == "gradient" or function == "HardSigmoid":
        return g * slope
    if method == "deconvnet":
        return np.full_like(slope, max(g, 0.0))
    return max(g, 0.0) * np.maximum(slope, 0)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_each_activation_and_method_matches_a_hand_computation(spelling):
    function, build = SPELLINGS[spelling]
    graph = one_layer_graph(build)
    rows = [row for row in tf_cnnvis.list_layers(graph) if row.kind == "relu"]
    assert [row.op_type for row in rows] == [function]
    for method in METHODS:
        result = reconstruct(graph, {"x": X_LINE}, "top", method)
        for channel, g in enumerate(WEIGHTS):
            expected = expected_rule(function, method, X_LINE.ravel(), g)
            # A few float32 operations against float64: a few eps of the result's scale.
            np.testing.assert_allclose(result[0, channel, 0, :, 0], expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{spelling} {method} channel {channel}")
    # The rules differ where they should: deconvnet ignores x, guided drops negative slopes.
    if function not in ("HardSigmoid", "Softplus"):
        slope = SLOPES[function](X_LINE.ravel())
        assert slope.min() < 0  # every smooth rectifier here dips below zero somewhere on the line


def test_the_rules_reduce_to_the_relu_rules():
    graph = one_layer_graph(tf.nn.relu)
    x = X_LINE.ravel()
    for method in METHODS:
        result = reconstruct(graph, {"x": X_LINE}, "top", method)
        for channel, g in enumerate(WEIGHTS):
            relu_slope = (x > 0).astype(np.float64)
            expected = {"gradient": g * relu_slope, "deconvnet": np.full_like(x, max(g, 0)),
                        "guided": max(g, 0) * relu_slope}[method]
            np.testing.assert_array_equal(result[0, channel, 0, :, 0], expected)


def _custom_swish():
    @tf.custom_gradient
    def swish(x):
        s = tf.sigmoid(x)

        def grad(dy):
            return dy * s * (1 + x * (1 - s))
        return x * s, grad
    return swish


def _custom_tanh_gate():
    """x * tanh(x): no function tf_cnnvis knows, with its true derivative as custom gradient."""
    @tf.custom_gradient
    def tanh_gate(x):
        t = tf.tanh(x)

        def grad(dy):
            return dy * (t + x * (1 - t * t))
        return x * t, grad
    return tanh_gate


def activation_zoo(seed=0):
    """A small Keras model with one layer of each activation, a user's own custom-gradient
    activations among them, each on its own branch of a shared convolution."""
    import keras
    from keras import layers as kl

    keras.utils.set_random_seed(seed)

    class Custom(kl.Layer):
        def __init__(self, function, **kwargs):
            super().__init__(**kwargs)
            self.function = function

        def call(self, x):
            return self.function(x)

    inputs = keras.Input((12, 12, 3), name="image")
    base = kl.Conv2D(4, 3, padding="same", name="base")(inputs)
    branches = {
        "silu": kl.Activation("silu", name="silu")(base),
        "gelu": kl.Activation("gelu", name="gelu")(base),
        "gelu_tanh": kl.Activation(lambda t: keras.activations.gelu(t, approximate=True), name="gelu_tanh")(base),
        "hard_swish": kl.Activation("hard_swish", name="hard_swish")(base),
        "hard_sigmoid": kl.Activation("hard_sigmoid", name="hard_sigmoid")(base),
        "mish": kl.Activation("mish", name="mish")(base),
        "softplus": kl.Activation("softplus", name="softplus")(base),
        "my_swish": Custom(_custom_swish(), name="my_swish")(base),
        "my_tanh_gate": Custom(_custom_tanh_gate(), name="my_tanh_gate")(base),
        "conv_silu": kl.Conv2D(4, 3, padding="same", activation="silu", name="conv_silu")(base),
    }
    merged = kl.Concatenate(name="merge")(list(branches.values()))
    top = kl.Conv2D(6, 3, strides=2, padding="same", name="top")(merged)
    return keras.Model(inputs, top), list(branches)


OP_TYPES = {"silu": "SiLU", "gelu": "GELU", "gelu_tanh": "GELUTanh", "hard_swish": "HardSwish",
            "hard_sigmoid": "HardSigmoid", "mish": "Mish", "softplus": "Softplus", "my_swish": "SiLU",
            "conv_silu": "SiLU"}


@pytest.fixture(scope="module")
def zoo():
    return activation_zoo()


def test_r_selects_each_activation_under_its_keras_name(zoo):
    model, _ = zoo
    rows = tf_cnnvis.list_layers(model)
    assert {row.name: row.op_type for row in rows if row.kind == "relu"} == OP_TYPES
    convs = {row.name for row in rows if row.kind == "conv"}
    # The convolution below an activation has a name from its Keras layer, and its raw op name still works.
    assert convs == {"base/conv", "conv_silu/conv", "top/conv"}
    raw = next(row for row in rows if row.name == "conv_silu/conv").tensor.split(":")[0]
    result = tf_cnnvis.activation_visualization(model, np.zeros((1, 12, 12, 3), np.float32), layers=[raw],
                                                path_outdir=None, path_logdir=None)
    assert list(result.arrays) == ["conv_silu/conv"]


def tape_gradients(model, layer, x, channels):
    """What tf_cnnvis's whole-map gradient is, from the Keras model itself: d sum(layer[..., c]) / dx."""
    import keras

    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    image = tf.constant(x)
    out = []
    for channel in channels:
        with tf.GradientTape() as tape:
            tape.watch(image)
            objective = tf.reduce_sum(sub(image, training=False)[..., channel])
        out.append(tape.gradient(objective, image).numpy()[0])
    return np.stack(out)


def test_gradient_method_equals_gradient_tape_for_each_activation(zoo):
    """method='gradient' is the model's own gradient through every activation, custom gradients included
    (the unrecognized one through its forward ops, which here give its custom gradient's values)."""
    model, names = zoo
    x = np.random.default_rng(0).normal(0, 2, (1, 12, 12, 3)).astype(np.float32)
    result = tf_cnnvis.deconv_visualization(model, x, layers=names + ["top"], method="gradient", channels=[0, 3],
                                            path_outdir=None, path_logdir=None)
    for name in names + ["top"]:
        expected = tape_gradients(model, name, x, [0, 3])
        assert np.abs(expected).max() > 0
        assert_reordered_close(result.arrays[name]["gradient"][0], expected, err_msg=name)


def test_a_recognized_custom_gradient_gets_the_librarys_rule_and_an_unknown_one_its_forward_ops(zoo):
    """The user's custom-gradient swish is SiLU: guided backprop drops its negative slopes. The
    unknown x * tanh(x) is differentiated through its forward ops by every method: deconvnet and
    guided equal the plain gradient there (no rectifier between the image and it)."""
    model, _ = zoo
    x = np.random.default_rng(1).normal(0, 2, (1, 12, 12, 3)).astype(np.float32)
    result = tf_cnnvis.deconv_visualization(model, x, layers=["my_swish", "silu", "my_tanh_gate"],
                                            method=list(METHODS), path_outdir=None, path_logdir=None)
    for method in METHODS:
        np.testing.assert_array_equal(result.arrays["my_swish"][method], result.arrays["silu"][method])
    unknown = result.arrays["my_tanh_gate"]
    assert_reordered_close(unknown["guided"], unknown["gradient"])
    assert_reordered_close(unknown["deconvnet"], unknown["gradient"])
    swish = result.arrays["silu"]
    assert not np.allclose(swish["guided"], swish["gradient"])


def squeeze_excite_graph(v):
    """a = relu(x); s = sigmoid(v * mean(a)); y = a * s ('gated'); top = 1x1 conv of y with WEIGHTS."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 1], name="x")
        a = tf.nn.relu(x, name="a")
        gate = tf.sigmoid(v * tf.reduce_mean(a, axis=[1, 2], keepdims=True), name="gate")
        gated = tf.multiply(a, gate, name="gated")
        tf.nn.conv2d(gated, tf.constant([[[list(WEIGHTS)]]]), 1, "VALID", name="top")
    return graph


@pytest.mark.parametrize("v", [-3.0, 0.7])
def test_every_method_uses_the_product_rule_at_a_multiplicative_gate(v):
    """At y = a * sigmoid(s) (squeeze-and-excitation) a's gradient is g * gate plus the gate branch's
    g * a through the sigmoid's derivative; only the ReLU below gets the method's rule."""
    x = X_LINE.ravel().astype(np.float64)
    a = np.maximum(x, 0)
    n = x.size
    s = _sigmoid(v * a.mean())
    for method in METHODS:
        result = reconstruct(squeeze_excite_graph(v), {"x": X_LINE}, "top", method)
        for channel, g in enumerate(WEIGHTS):
            # d/da_i sum_j g a_j s = g s + g (sum_j a_j) s (1 - s) v / n
            at_a = np.full(n, g * s + g * a.sum() * s * (1 - s) * v / n)
            expected = {"gradient": at_a * (x > 0), "deconvnet": np.maximum(at_a, 0),
                        "guided": np.maximum(at_a, 0) * (x > 0)}[method]
            np.testing.assert_allclose(result[0, channel, 0, :, 0], expected, rtol=1e-5, atol=1e-6,
                                       err_msg=f"{method} channel {channel} v={v}")


# ---------------------------------------------------------------------- EfficientNetB0

@pytest.fixture(scope="module")
def efficientnet():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3))
    return model, load_model(model)


@pytest.mark.slow
def test_efficientnet_gradient_equals_gradient_tape(efficientnet):
    model, frozen = efficientnet
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype(np.float32)
    layers = ["block3a_expand_activation", "top_activation"]
    result = tf_cnnvis.deconv_visualization(frozen, x, layers=layers, method="gradient", channels=[0, 5],
                                            path_outdir=None, path_logdir=None)
    for layer in layers:
        expected = tape_gradients(model, layer, x, [0, 5])
        assert np.abs(expected).max() > 0
        assert_reordered_close(result.arrays[layer]["gradient"][0], expected, err_msg=layer)


@pytest.mark.slow
def test_efficientnet_as_a_frozen_pb_selects_the_same_activations(efficientnet, tmp_path):
    """Without Keras's names the same 49 SiLU layers are found by what their ops compute."""
    _, frozen = efficientnet
    path = tmp_path / "efficientnet.pb"
    path.write_bytes(frozen.graph_def.SerializeToString())
    named = [row for row in tf_cnnvis.list_layers(frozen) if row.kind == "relu"]
    unnamed = [row for row in tf_cnnvis.list_layers(str(path)) if row.kind == "relu"]
    assert len(named) == 49 and {row.op_type for row in named} == {"SiLU"}
    assert [(row.tensor, row.op_type) for row in unnamed] == [(row.tensor, row.op_type) for row in named]
    assert named[-1].name == "top_activation"


@pytest.fixture(scope="module")
def convnext():
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.ConvNeXtTiny(weights=None, input_shape=(64, 64, 3))
    return model, load_model(model)


def unit_gradients(model, layer, x, units):
    """d layer[0, y, x, c] / d image from the Keras model itself, one per ``(y, x, c)``: (units, H, W)."""
    import keras

    sub = keras.Model(model.inputs, model.get_layer(layer).output)
    image = tf.constant(x)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(image)
        output = sub(image, training=False)
        picked = [output[0, y, x_, c] for y, x_, c in units]
    return np.stack([np.abs(tape.gradient(value, image).numpy()[0]).sum(-1) for value in picked])


@pytest.mark.slow
@pytest.mark.parametrize("net, finite, whole", [
    ("efficientnet", ["stem_activation", "block1a_activation"], ["block2a_expand_activation"]),
    # ConvNeXt: a 4x4/4 stem, then 7x7 depthwise convolutions at jump 4 (28 px, then 52 px).
    ("convnext", ["convnext_tiny_stage_0_block_0_gelu", "convnext_tiny_stage_0_block_1_gelu"], []),
])
def test_unit_gradients_are_zero_outside_the_reported_field(net, finite, whole, request):
    """The field reported for a unit of a real modern net is never smaller than its true support.

    Sampled units (corners, centre and random ones, random channels) of
    layers with a finite field: the Keras model's own gradient of the unit
    is zero outside the field's box, and the box is smaller than the image
    (so the check can fail). Layers after squeeze-and-excitation's global
    gate depend on the whole image: no finite field is reported.
    """
    from tf_cnnvis.rebuild import rebuild
    from tf_cnnvis.receptive_field import receptive_field

    model, frozen = request.getfixturevalue(net)
    rows = {row.name: row for row in tf_cnnvis.list_layers(frozen)}
    graph = rebuild(frozen, "gradient").graph
    size = (64, 64)
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (1,) + size + (3,)).astype(np.float32)
    for layer in whole:
        assert receptive_field(graph, frozen.inputs[0], rows[layer].tensor, size) is None, layer
    for layer in finite:
        field = receptive_field(graph, frozen.inputs[0], rows[layer].tensor, size)
        height, width, channels = model.get_layer(layer).output.shape[1:]
        units = [(0, 0), (height // 2, width // 2), (height - 1, width - 1), (0, width - 1)]
        units += [tuple(rng.integers(0, (height, width))) for _ in range(2)]
        units = [(y, x_, int(rng.integers(channels))) for y, x_ in units]
        gradients = unit_gradients(model, layer, x, units)
        for (y, x_, c), gradient in zip(units, gradients):
            top, left, bottom, right = field.box(y, x_, clip_to=size)
            assert (bottom - top) * (right - left) < size[0] * size[1], f"{layer}: the field covers the image"
            assert gradient[top:bottom, left:right].max() > 0, f"{layer} unit {(y, x_, c)}: no gradient"
            outside = gradient.copy()
            outside[top:bottom, left:right] = 0
            assert not np.any(outside), f"{layer} unit {(y, x_, c)}: gradient outside its field {field.box(y, x_)}"


# ---------------------------------------------------------------------- grouped convolutions

def grouped_graph(kernels, groups, stride, padding, split):
    """x -> grouped conv (kernels[0]) -> relu -> grouped conv (kernels[1], 'top'); ``split``: the same
    as one ordinary convolution per group and a concatenation."""
    def conv(h, kernel, name=None):
        if not split:
            return tf.nn.conv2d(h, kernel, stride, padding, name=name)
        parts = zip(tf.split(h, groups, axis=3), np.split(kernel, groups, axis=3))
        return tf.concat([tf.nn.conv2d(part, k, stride, padding) for part, k in parts], axis=3, name=name)

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 4], name="x")
        conv(tf.nn.relu(conv(x, kernels[0])), kernels[1], name="top")
    return graph


@pytest.mark.parametrize("groups, multiplier, stride, padding", [
    (4, 1, 1, "SAME"), (4, 2, 2, "VALID"), (2, 2, 1, "SAME"), (2, 1, 2, "SAME")])
def test_grouped_convolution_rule_equals_one_convolution_per_group(groups, multiplier, stride, padding):
    """Keras Conv2D(groups=...) (ConvNeXt's depthwise 7x7 among them) goes backward without
    TensorFlow's grouped Conv2DBackpropInput, which its CPU kernels lack without oneDNN."""
    rng = np.random.default_rng(groups * 10 + multiplier)
    kernels = [rng.normal(size=(3, 3, 4 // groups, groups * multiplier)).astype(np.float32)]
    kernels.append(rng.normal(size=(3, 3, groups * multiplier // groups, groups * 2)).astype(np.float32))
    x = rng.normal(size=(1, 11, 11, 4)).astype(np.float32)
    for method in METHODS:
        for target in ("map", "unit"):
            grouped = reconstruct(grouped_graph(kernels, groups, stride, padding, False), {"x": x}, "top", method,
                                  target=target)
            split = reconstruct(grouped_graph(kernels, groups, stride, padding, True), {"x": x}, "top", method,
                                target=target)
            assert np.abs(split).max() > 0
            assert_reordered_close(grouped, split, err_msg=f"{method} {target}")


# ---------------------------------------------------------------------- the batched backward pass

def modern_zoo_model(seed=0):
    """A small Keras model with the ops of modern nets: overlapping max-pooling, cropping,
    LayerNormalization, per-position Dense (a Tensordot), squeeze-and-excitation with a
    hard-sigmoid gate, a grouped and a depthwise convolution, each smooth rectifier and a softmax."""
    import keras
    from keras import layers as kl

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((20, 20, 3), name="image")
    x = kl.Conv2D(8, 3, padding="same", activation="gelu", name="stem")(inputs)
    x = kl.MaxPooling2D(3, strides=2, padding="same", name="overlapping_pool")(x)
    x = kl.Cropping2D(((1, 0), (0, 1)), name="crop")(x)
    x = kl.LayerNormalization(epsilon=1e-6, name="layernorm")(x)
    x = kl.Dense(16, activation="silu", name="pointwise")(x)
    x = kl.Conv2D(16, 3, padding="same", groups=4, activation="hard_swish", name="grouped")(x)
    x = kl.DepthwiseConv2D(3, padding="same", activation="mish", name="depthwise")(x)
    squeeze = kl.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    excite = kl.Conv2D(16, 1, activation="hard_sigmoid", name="excite")(
        kl.Conv2D(4, 1, activation="softplus", name="reduce")(squeeze))
    x = kl.Multiply(name="gate")([x, excite])
    x = kl.Conv2D(8, 3, strides=2, activation=lambda t: keras.activations.gelu(t, approximate=True),
                  name="strided")(x)
    x = kl.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, kl.Dense(5, activation="softmax", name="probabilities")(x))


@pytest.mark.parametrize("method", METHODS)
def test_batched_pass_equals_the_parallel_for_pass_on_modern_ops(method, monkeypatch):
    """Every layer of the modern zoo goes through the batched pass, and gives what TensorFlow's own
    gradient machinery (with the same rules) gives per item."""
    from tf_cnnvis.layers import select_layers

    model = load_model(modern_zoo_model())
    x = np.random.default_rng(0).uniform(-1, 1, (1, 20, 20, 3)).astype(np.float32)
    names = ["overlapping_pool", "layernorm", "pointwise", "grouped", "depthwise", "gate", "strided", "probabilities"]
    batched, per_item, unbatched = batched_and_per_item(
        model, x, method, lambda graph, model: select_layers(graph, model, names), monkeypatch)
    assert len(batched) == 2 * 8 and unbatched == []
    for key, expected in per_item.items():
        assert np.abs(expected).max() > 0, key
        assert_reordered_close(batched[key], expected, err_msg=str(key))


# ---------------------------------------------------------------------- function calls

def test_keras_grouped_convolutions_are_ordinary_layers_of_the_frozen_graph():
    """Keras runs Conv2D(groups=...) in a function marked for XLA, which freezing leaves as a call;
    the frozen graph holds the convolution itself, named after its layer, with the model's gradient."""
    import keras
    from keras import layers as kl

    keras.utils.set_random_seed(3)
    inputs = keras.Input((10, 10, 4), name="image")
    x = kl.Conv2D(8, 3, padding="same", groups=4, activation="gelu", name="grouped")(inputs)
    x = kl.Conv2D(8, 5, padding="same", groups=8, name="depthwise_like")(x)  # ConvNeXt's 7x7 "depthwise"
    model = keras.Model(inputs, x)
    frozen = load_model(model)
    assert not any(node.op.endswith("PartitionedCall") for node in frozen.graph_def.node)
    assert len(frozen.graph_def.library.function) == 0
    rows = tf_cnnvis.list_layers(frozen)
    assert [(row.name, row.kind) for row in rows] == [
        ("grouped/conv", "conv"), ("grouped", "relu"), ("depthwise_like/conv", "conv")]
    x = np.random.default_rng(0).normal(size=(1, 10, 10, 4)).astype(np.float32)
    result = tf_cnnvis.deconv_visualization(frozen, x, layers=["depthwise_like"], method="gradient",
                                            channels=[0, 7], path_outdir=None, path_logdir=None)
    assert_reordered_close(result.arrays["depthwise_like"]["gradient"][0],
                           tape_gradients(model, "depthwise_like", x, [0, 7]))


def test_a_call_that_cannot_be_inlined_is_named_in_a_model_load_error():
    from tf_cnnvis.errors import ModelLoadError

    graph = tf.Graph()
    with graph.as_default():
        tf.nn.relu(tf.compat.v1.placeholder(tf.float32, [None, 4, 4, 1], name="x"), name="r")
    graph_def = graph.as_graph_def()
    call = graph_def.node.add(name="mystery", op="PartitionedCall", input=["r"])
    call.attr["f"].func.name = "not_in_the_library"
    call.attr["Tin"].list.type.append(tf.float32.as_datatype_enum)
    call.attr["Tout"].list.type.append(tf.float32.as_datatype_enum)
    with pytest.raises(ModelLoadError, match=r"'mystery'.*not_in_the_library"):
        load_model(graph_def)  # the graph's check finds it first
    with pytest.raises(ModelLoadError, match=r"cannot inline op 'mystery' \(PartitionedCall\).*not_in_the_library"):
        inline_function_calls(graph_def, "a graph")


def test_calls_nested_in_a_graph_are_inlined_with_their_custom_gradients():
    """A GraphDef that still holds calls (a function calling a function that applies tf.nn.silu)
    is inlined at loading; the SiLU inside stays a SiLU layer with its rule."""
    @tf.function
    def inner(x):
        return tf.nn.silu(x)

    @tf.function
    def outer(x):
        return inner(x) * 2.0

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 1], name="x")
        tf.identity(outer(x), name="out")
    graph_def = graph.as_graph_def()
    assert any(node.op.endswith("PartitionedCall") for node in graph_def.node)
    frozen = load_model(graph_def)
    assert not any(node.op.endswith("PartitionedCall") for node in frozen.graph_def.node)
    rows = [row for row in tf_cnnvis.list_layers(frozen) if row.kind == "relu"]
    assert [row.op_type for row in rows] == ["SiLU"]
    values = X_LINE
    result = reconstruct(frozen, {"x": values}, "out", "guided")
    expected = 2.0 * np.maximum(SLOPES["SiLU"](values.ravel().astype(np.float64)), 0)
    np.testing.assert_allclose(result[0, 0, 0, :, 0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kernel, multiplier, stride, padding", [
    (3, 1, 1, "SAME"), (4, 1, 1, "SAME"), (2, 1, 1, "VALID"), (7, 1, 1, "SAME"), (3, 2, 1, "SAME"),
    (3, 1, 2, "SAME")])
def test_depthwise_backward_equals_tensorflows_gradient(kernel, multiplier, stride, padding):
    """A stride-1 depthwise convolution goes backward as a forward one with the flipped kernel
    (even kernels' SAME padding is lopsided and swaps sides); the rest keep TensorFlow's op."""
    rng = np.random.default_rng(kernel * 10 + multiplier)
    weights = rng.normal(size=(kernel, kernel, 3, multiplier)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="x")
        top = tf.nn.depthwise_conv2d(x, weights, [1, stride, stride, 1], padding, name="top")
        references = [tf.gradients(tf.reduce_sum(top[..., c]), x)[0] for c in range(3 * multiplier)]
    image = rng.normal(size=(1, 9, 9, 3)).astype(np.float32)
    with tf.compat.v1.Session(graph=graph) as session:
        expected = np.stack(session.run(references, {x: image}))[:, 0]
    result = reconstruct(graph, {"x:0": image}, "top", "gradient")[0]
    assert_reordered_close(result, expected)
