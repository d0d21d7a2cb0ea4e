"""Receptive fields read off the graph must match what the network computes.

The strongest check is against gradients: with positive weights and inputs
nothing cancels, so the input pixels with a nonzero d(unit)/d(input) are
exactly the pixels the unit depends on, which ``box(..., clip_to=image)``
must give, border units included. Average pooling is used there because max
pooling routes the gradient to one pixel per window.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

from tf_cnnvis.errors import ReceptiveFieldError, UnsupportedOpError
from tf_cnnvis.receptive_field import ReceptiveField, receptive_field, receptive_fields

v1 = tf.compat.v1


def _positive(rng, shape):
    """Positive weights scaled by fan-in so activations stay near 1."""
    fan_in = int(np.prod(shape[:-1]))
    return tf.constant(rng.uniform(0.2, 1.0, size=shape).astype(np.float32) / fan_in)


def _conv(x, rng, k, c_out, stride=1, padding="SAME", dilation=1):
    """A plain Conv2D op; dilated ones take the SpaceToBatchND route below."""
    w = _positive(rng, (k, k, x.shape[-1], c_out))
    return tf.nn.conv2d(x, w, strides=stride, padding=padding, dilations=dilation)


def _dilated_conv(x, rng, k, c_out, dilation, padding="SAME"):
    """SpaceToBatchND + Conv2D + BatchToSpaceND, as Keras builds dilated convolutions."""
    w = _positive(rng, (k, k, x.shape[-1], c_out))
    return tf.nn.convolution(x, w, padding=padding, dilations=dilation)


def _triple(field):
    return field.size, field.jump, field.start, field.output_size


def _sample_units(height, width):
    """Corners, edges and the centre: border units are where padding bites."""
    rows = {0, 1, height // 2, height - 2, height - 1}
    cols = {0, 1, width // 2, width - 2, width - 1}
    return sorted((i, j) for i in rows for j in cols if 0 <= i < height and 0 <= j < width)


def _assert_support_matches_field(graph, x, outputs, sizes, rng, bounding_only=()):
    """For every unit sampled, nonzero-gradient pixels == the clipped box.

    Layers in ``bounding_only`` join branches whose boxes are not nested, so
    their support is a union of boxes: there the box must be its bounding box.
    """
    with graph.as_default():
        masks = {name: v1.placeholder(tf.float32, y.shape) for name, y in outputs.items()}
        grads = {
            name: tf.gradients(tf.reduce_sum(y * masks[name]), x)[0] for name, y in outputs.items()
        }
    with v1.Session(graph=graph) as sess:
        for height, width in sizes:
            image = rng.uniform(0.5, 1.5, size=(1, height, width, x.shape[-1])).astype(np.float32)
            values = sess.run(outputs, {x: image})
            for name, y in outputs.items():
                field = receptive_field(graph, x.name, y.name, (height, width))
                out_h, out_w = values[name].shape[1:3]
                assert field.output_size == (out_h, out_w), name
                for i, j in _sample_units(out_h, out_w):
                    mask = np.zeros(values[name].shape, np.float32)
                    mask[0, i, j, 0] = 1.0
                    grad = sess.run(grads[name], {x: image, masks[name]: mask})
                    support = np.abs(grad[0]).sum(axis=-1) > 0
                    y0, x0, y1, x1 = field.box(i, j, clip_to=(height, width))
                    rows, cols = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
                    where = f"{name} unit {(i, j)} at input {(height, width)}"
                    if not support.any():  # a unit made of padding only
                        assert y0 == y1 or x0 == x1, where
                        continue
                    assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == (y0, x0, y1, x1), where
                    if name not in bounding_only:
                        assert support[y0:y1, x0:x1].all(), where
                    # Interior units see their whole nominal box.
                    ny0, nx0, ny1, nx1 = field.box(i, j)
                    if ny0 >= 0 and nx0 >= 0 and ny1 <= height and nx1 <= width:
                        assert (ny0, nx0, ny1, nx1) == (y0, x0, y1, x1), where


# --------------------------------------------------------------------------
# Classic arithmetic.


@pytest.mark.parametrize("pad_style", ["tf.pad", "SAME", "EXPLICIT"])
def test_alexnet_stack_matches_published_field(pad_style):
    """conv5 of AlexNet sees 163x163 pixels with a stride of 16 (Araujo et al. 2019)."""
    rng = np.random.default_rng(0)
    graph = tf.Graph()

    def padded_conv(x, k, pad):
        if pad_style == "tf.pad":
            return _conv(tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]), rng, k, 4, padding="VALID")
        if pad_style == "SAME":
            return _conv(x, rng, k, 4, padding="SAME")
        return _conv(x, rng, k, 4, padding=[[0, 0], [pad, pad], [pad, pad], [0, 0]])

    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, 227, 227, 3], name="x")
        conv1 = tf.nn.relu(_conv(x, rng, 11, 4, stride=4, padding="VALID"))
        pool1 = tf.nn.max_pool2d(tf.nn.local_response_normalization(conv1), 3, 2, "VALID")
        conv2 = tf.nn.relu(padded_conv(pool1, 5, 2))
        pool2 = tf.nn.max_pool2d(conv2, 3, 2, "VALID")
        conv3 = tf.nn.relu(padded_conv(pool2, 3, 1))
        conv4 = tf.nn.relu(padded_conv(conv3, 3, 1))
        conv5 = tf.nn.relu(padded_conv(conv4, 3, 1))

    expected = {
        conv1: (11, 4, 0, 55),
        pool1: (19, 8, 0, 27),
        conv2: (51, 8, -16, 27),
        pool2: (67, 16, -16, 13),
        conv3: (99, 16, -32, 13),
        conv4: (131, 16, -48, 13),
        conv5: (163, 16, -64, 13),
    }
    for tensor, (size, jump, start, length) in expected.items():
        field = receptive_field(graph, "x:0", tensor.name, (227, 227))
        assert _triple(field) == ((size, size), (jump, jump), (start, start), (length, length))
        assert field.output_size == tuple(tensor.shape[1:3])  # TF's own shape inference agrees

    field = receptive_field(graph, "x:0", conv5.name, (227, 227))
    assert field.box(6, 6) == (32, 32, 195, 195)  # the centre unit is centred
    assert field.box(0, 12, clip_to=(227, 227)) == (0, 128, 99, 227)


# --------------------------------------------------------------------------
# Against gradients.


def _small_net(x, rng):
    """SAME convs, 2x2 pools, a stride-2 conv, a dilated conv, residual adds."""
    h1 = tf.nn.relu(_conv(x, rng, 3, 2))
    p1 = tf.nn.avg_pool2d(h1, 2, 2, "SAME")
    h2 = tf.nn.relu(_conv(p1, rng, 3, 3, stride=2))
    h3 = tf.nn.relu(_dilated_conv(h2, rng, 3, 2, dilation=2))
    res = tf.nn.relu(h3 + _conv(h2, rng, 1, 2))
    depthwise = tf.nn.depthwise_conv2d(res, _positive(rng, (3, 3, 2, 1)), [1, 1, 1, 1], "SAME")
    cat = tf.concat([depthwise, tf.reduce_mean(res, axis=-1, keepdims=True)], axis=-1)
    p2 = tf.nn.avg_pool2d(cat, 3, 2, "VALID")
    # A branch whose box sticks out above h3's (same columns), so the sum's
    # box is a true union of two different boxes.
    side = _conv(tf.pad(h2, [[0, 0], [4, 0], [2, 2], [0, 0]]), rng, 5, 2, padding="VALID")
    union = h3 + side
    return {
        "h1": h1, "p1": p1, "h2": h2, "h3": h3, "res": res, "cat": cat, "p2": p2,
        "side": side, "union": union,
    }


def test_field_equals_gradient_support_on_a_small_net():
    rng = np.random.default_rng(1)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="x")
        outputs = _small_net(x, rng)
    # Even and odd sizes put TF's extra 'SAME' padding pixel in different places.
    _assert_support_matches_field(
        graph, x, outputs, [(32, 32), (33, 35), (30, 29)], rng, bounding_only={"union"}
    )


def test_residual_field_is_the_union_of_its_branches():
    rng = np.random.default_rng(2)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="x")
        outputs = _small_net(x, rng)
    names = ("h3", "side", "union")
    fields = {name: receptive_field(graph, "x:0", outputs[name].name, (32, 32)) for name in names}
    for axis in (0, 1):
        lo = min(fields["h3"].start[axis], fields["side"].start[axis])
        hi = max(fields[n].start[axis] + fields[n].size[axis] for n in ("h3", "side"))
        assert (fields["union"].start[axis], fields["union"].size[axis]) == (lo, hi - lo)
    assert fields["union"].size[0] > max(fields["h3"].size[0], fields["side"].size[0])


def test_border_box_skips_taps_that_land_on_padding():
    """A dilated tap on a padded position reads no pixels, though its nominal box overlaps the image."""
    rng = np.random.default_rng(1)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="x")
        h3 = _small_net(x, rng)["h3"]
    field = receptive_field(graph, "x:0", h3.name, (32, 32))
    assert _triple(field) == ((24, 24), (4, 4), (-9, -9), (8, 8))
    # Unit (0, 1): column taps at h2 positions -1 (padding), 1 and 3; the
    # field of h2 position 1 starts at column 3.
    assert field.box(0, 1) == (-9, -5, 15, 19)
    assert field.box(0, 1, clip_to=(40, 40)) == (0, 0, 15, 19)  # not the computed size: nominal
    assert field.box(0, 1, clip_to=(32, 32)) == (0, 3, 15, 19)


@pytest.mark.parametrize("size", [(20, 20), (21, 19)])
@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_dilated_conv_op_and_space_to_batch_form_agree(size, padding):
    """The raw dilated Conv2D op (no CPU gradient) against the form Keras builds."""
    rng = np.random.default_rng(7)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, *size, 3], name="x")
        h = _conv(x, rng, 3, 2, stride=2)
        raw = _conv(h, rng, 3, 2, padding=padding, dilation=3)
        blocked = _dilated_conv(h, rng, 3, 2, dilation=3, padding=padding)
    assert {op.type for op in blocked.op.graph.get_operations()} >= {"SpaceToBatchND", "BatchToSpaceND"}
    raw_field = receptive_field(graph, "x:0", raw.name, size)
    blocked_field = receptive_field(graph, "x:0", blocked.name, size)
    assert _triple(raw_field) == _triple(blocked_field)
    assert raw_field.extents == blocked_field.extents
    assert raw_field.output_size == tuple(raw.shape[1:3])
    assert raw_field.size == (3 + 2 * 3 * 2, 3 + 2 * 3 * 2)


def test_mirror_padding_reads_mirrored_pixels():
    """REFLECT/SYMMETRIC padded units copy interior pixels: the clipped box follows them."""
    rng = np.random.default_rng(8)
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [1, None, None, 3], name="x")
        h = tf.nn.relu(_conv(x, rng, 3, 2, stride=2, padding="VALID"))
        paddings = [[0, 0], [3, 1], [2, 3], [0, 0]]
        outputs = {
            mode: _conv(tf.pad(h, paddings, mode=mode), rng, 3, 2, padding="VALID")
            for mode in ("REFLECT", "SYMMETRIC")
        }
    _assert_support_matches_field(graph, x, outputs, [(17, 18)], rng)


# --------------------------------------------------------------------------
# Keras 3 models frozen the way the library freezes them.


def _freeze(model, spec_shape=(None, None, None, 3)):
    f = tf.function(lambda t: model(t, training=False))
    concrete = f.get_concrete_function(tf.TensorSpec(spec_shape, tf.float32))
    frozen = convert_variables_to_constants_v2(concrete)
    graph = tf.Graph()
    with graph.as_default():
        tf.import_graph_def(frozen.graph.as_graph_def(), name="")
    return graph, frozen.inputs[0].name, frozen.outputs[0].name


def _layer_output(graph, layer_name):
    """Last op of a Keras layer's name scope: its output in the frozen graph."""
    ops = [
        op for op in graph.get_operations()
        if any(part in (layer_name, f"{layer_name}_1") for part in op.name.split("/")[:-1])
    ]
    return ops[-1].outputs[0]


def _make_weights_positive(model, rng):
    """Positive weights and an identity-like batch norm, so no gradient cancels."""
    for layer in model.layers:
        weights = layer.get_weights()
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = weights
            layer.set_weights(
                [np.ones_like(gamma), np.full_like(beta, 0.1), np.zeros_like(mean), np.ones_like(var)]
            )
        elif weights:
            layer.set_weights([rng.uniform(0.05, 0.5, size=w.shape).astype(np.float32) for w in weights])


def _keras_convnet():
    layers = keras.layers
    inp = keras.Input((None, None, 3))
    x = layers.ZeroPadding2D(((1, 0), (0, 2)), name="zpad")(inp)
    x = layers.Conv2D(4, 3, padding="same", name="conv")(x)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Cropping2D(((0, 1), (2, 0)), name="crop")(x)
    x = layers.AveragePooling2D(2, name="pool")(x)
    y = layers.SeparableConv2D(4, 3, padding="same", name="sep")(x)
    x = layers.Add(name="add")([x, y])
    x = layers.Conv2D(4, 3, dilation_rate=2, padding="same", name="dilated")(x)
    x = layers.Conv2D(4, 3, strides=2, padding="same", activation="relu", name="down")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(3, name="dense")(x)
    return keras.Model(inp, out)


def test_frozen_keras_model_fields_match_gradients():
    rng = np.random.default_rng(3)
    model = _keras_convnet()
    _make_weights_positive(model, rng)
    graph, input_name, _ = _freeze(model)
    x = graph.get_tensor_by_name(input_name)
    names = ("zpad", "conv", "bn", "relu", "crop", "pool", "sep", "add", "dilated", "down")
    outputs = {name: _layer_output(graph, name) for name in names}
    _assert_support_matches_field(graph, x, outputs, [(24, 24), (25, 23)], rng)

    # One shared walk gives the same answers as one walk per layer.
    together = receptive_fields(graph, input_name, [t.name for t in outputs.values()], (25, 23))
    for tensor in outputs.values():
        alone = receptive_field(graph, input_name, tensor.name, (25, 23))
        assert together[tensor.name] == alone
        assert together[tensor.name].extents == alone.extents


def test_frozen_keras_model_arithmetic():
    """Weight-path Reshape/Squeeze (bias) and BatchNorm constants are not spatial."""
    graph, input_name, output_name = _freeze(_keras_convnet())
    field = receptive_field(graph, input_name, _layer_output(graph, "sep").name, (24, 24))
    # zpad moves the start up 1 row; conv 3x3 -> size 3; crop moves it 2
    # columns right; pool 2/2 -> 4, jump 2; depthwise 3x3 at jump 2 -> 8.
    # Rows: 24 + 1 padded - 1 cropped; columns: 24 + 2 - 2; then halved.
    assert _triple(field) == ((8, 8), (2, 2), (-1 - 1 - 2, -1 + 2 - 2), (12, 12))


@pytest.mark.parametrize(
    "architecture, size",
    [
        ("VGG16", 212),
        pytest.param("ResNet50", 483, marks=pytest.mark.slow),
        pytest.param("MobileNetV2", 491, marks=pytest.mark.slow),
    ],
)
def test_keras_applications_match_published_fields(architecture, size):
    """Last feature map of each network, against Araujo et al. (Distill, 2019).

    The field depends on the architecture only, so the traced graph is used
    as it is: variable reads are not on any path from the image.
    """
    model = getattr(keras.applications, architecture)(
        weights=None, include_top=False, input_shape=(224, 224, 3)
    )
    traced = tf.function(lambda t: model(t, training=False)).get_concrete_function(
        tf.TensorSpec((None, 224, 224, 3), tf.float32)
    )
    field = receptive_field(traced.graph, traced.inputs[0].name, traced.outputs[0].name, (224, 224))
    assert (field.size, field.jump, field.output_size) == ((size, size), (32, 32), (7, 7))


def _modern_block_net():
    """The pieces of ConvNeXt and EfficientNet: a 7x7 depthwise convolution, LayerNormalization,
    Dense layers applied at each position (a Tensordot: Reshape, MatMul, Reshape), GELU and SiLU,
    a residual sum, a strided convolution, and squeeze-and-excitation gating."""
    layers = keras.layers
    inp = keras.Input((None, None, 3))
    x = layers.Conv2D(8, 2, strides=2, name="stem")(inp)
    x = layers.LayerNormalization(epsilon=1e-6, name="stem_ln")(x)
    y = layers.DepthwiseConv2D(7, padding="same", name="dw")(x)
    y = layers.LayerNormalization(epsilon=1e-6, name="ln")(y)
    y = layers.Dense(16, activation="gelu", name="pw1")(y)
    y = layers.Dense(8, name="pw2")(y)
    x = layers.Add(name="res")([x, y])
    x = layers.Conv2D(8, 3, padding="same", name="down_conv")(x)
    # SiLU spelled out: Keras's own is a custom-gradient op that tf.gradients cannot
    # differentiate in a frozen graph (the library's rebuilt graphs handle it).
    x = layers.Multiply(name="down")([x, layers.Activation("sigmoid", name="down_gate")(x)])
    squeeze = layers.GlobalAveragePooling2D(keepdims=True, name="se_pool")(x)
    gate = layers.Conv2D(8, 1, activation="sigmoid", name="se_gate")(squeeze)
    x = layers.Multiply(name="se_mul")([x, gate])
    return keras.Model(inp, x)


def test_modern_blocks_fields_match_gradients():
    """Per-position Dense layers, LayerNorm, GELU and SiLU keep a finite field that equals
    the gradient's support; squeeze-and-excitation makes every later unit see the whole image."""
    rng = np.random.default_rng(11)
    model = _modern_block_net()
    _make_weights_positive(model, rng)
    for layer in model.layers:  # LayerNorm with equal gammas would cancel a channel sum's gradient
        if isinstance(layer, keras.layers.LayerNormalization):
            gamma, beta = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape).astype(np.float32), beta])
    graph, input_name, _ = _freeze(model)
    x = graph.get_tensor_by_name(input_name)
    names = ("stem_ln", "dw", "ln", "pw1", "pw2", "res", "down")
    outputs = {name: _layer_output(graph, name) for name in names}
    _assert_support_matches_field(graph, x, outputs, [(22, 22), (23, 21)], rng)
    # stem 2x2/2, then 7x7 depthwise at jump 2 -> 14; Dense and LayerNorm add nothing; 3x3 -> 18.
    assert _triple(receptive_field(graph, input_name, outputs["pw2"].name, (22, 22)))[:2] == ((14, 14), (2, 2))
    assert receptive_field(graph, input_name, outputs["down"].name, (22, 22)).size == (18, 18)
    assert receptive_field(graph, input_name, _layer_output(graph, "se_mul").name, (22, 22)) is None


def test_grouped_convolution_field_matches_its_support():
    """A Conv2D whose kernel reads a fraction of the input channels (ResNeXt, RegNet, ConvNeXt).

    TensorFlow's CPU kernels without oneDNN have no gradient for grouped
    convolutions, so the support is found forward: each input pixel raised
    in turn, in one batch, and the output units that change.
    """
    rng = np.random.default_rng(12)
    height, width = 19, 20
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, [None, None, None, 4], name="x")
        h = tf.nn.relu(tf.nn.conv2d(x, _positive(rng, (3, 3, 2, 6)), 1, "SAME"))  # 2 groups
        y = tf.nn.conv2d(h, _positive(rng, (5, 5, 3, 6)), 2, "SAME")
    image = rng.uniform(0.5, 1.5, (1, height, width, 4)).astype(np.float32)
    raised = np.repeat(image, height * width, axis=0)
    raised.reshape(height, width, height, width, 4)[np.arange(height)[:, None], np.arange(width)[None],
                                                    np.arange(height)[:, None], np.arange(width)[None]] += 10
    with v1.Session(graph=graph) as session:
        base, moved = session.run(y, {x: image}), session.run(y, {x: raised})
    changed = (np.abs(moved - base) > 1e-4).any(axis=-1).reshape(height, width, *base.shape[1:3])
    field = receptive_field(graph, "x:0", y.name, (height, width))
    assert _triple(field)[:2] == ((7, 7), (2, 2))
    for i, j in _sample_units(*base.shape[1:3]):
        support = changed[:, :, i, j]
        rows, cols = np.flatnonzero(support.any(1)), np.flatnonzero(support.any(0))
        assert (rows[0], cols[0], rows[-1] + 1, cols[-1] + 1) == field.box(i, j, clip_to=(height, width))


def test_a_reshape_that_only_splits_channels_keeps_the_field():
    def grouped(x):
        h = tf.reshape(tf.nn.relu(x), [1, 8, 8, 3, 1])
        return tf.reshape(h * 2.0, [1, 8, 8, 3])

    graph, y = _graph_with(grouped)
    assert _triple(receptive_field(graph, "x:0", y.name, (8, 8))) == ((1, 1), (1, 1), (0, 0), (8, 8))


@pytest.mark.parametrize("head", ["gap", "flatten"])
def test_global_pooling_and_flatten_heads_have_no_field(head):
    layers = keras.layers
    inp = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", name="conv")(inp)
    pooling = layers.GlobalAveragePooling2D if head == "gap" else layers.Flatten
    x = pooling(name="head")(x)
    out = layers.Dense(3, name="dense")(x)
    graph, input_name, output_name = _freeze(keras.Model(inp, out), (None, 16, 16, 3))

    assert receptive_field(graph, input_name, _layer_output(graph, "conv").name, (16, 16)).size == (3, 3)
    assert receptive_field(graph, input_name, _layer_output(graph, "head").name, (16, 16)) is None
    assert receptive_field(graph, input_name, output_name, (16, 16)) is None


# --------------------------------------------------------------------------
# Refusals and errors.


def _graph_with(build, shape=(1, 8, 8, 3)):
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, shape, name="x")
        y = build(x)
    return graph, y


def test_tensor_independent_of_the_input_is_an_error():
    graph, y = _graph_with(lambda x: tf.constant(np.ones((1, 8, 8, 3), np.float32)) * 2.0)
    with pytest.raises(ReceptiveFieldError, match="does not depend on the input"):
        receptive_field(graph, "x:0", y.name, (8, 8))


def test_unknown_tensor_name_suggests_close_names():
    graph, _ = _graph_with(lambda x: tf.nn.relu(x, name="relu1"))
    with pytest.raises(ValueError, match="relu1:0"):
        receptive_field(graph, "x:0", "relu:0", (8, 8))


def test_input_size_must_match_static_shape():
    graph, y = _graph_with(tf.nn.relu)
    with pytest.raises(ValueError, match="does not match"):
        receptive_field(graph, "x:0", y.name, (9, 8))


def test_spatial_reshape_is_not_local_but_channel_ops_are():
    graph, y = _graph_with(lambda x: tf.reshape(tf.nn.relu(x), [1, 16, 4, 3]))
    assert receptive_field(graph, "x:0", y.name, (8, 8)) is None
    graph, y = _graph_with(lambda x: tf.nn.softmax(tf.reduce_sum(x, axis=-1, keepdims=True) + x))
    assert _triple(receptive_field(graph, "x:0", y.name, (8, 8))) == ((1, 1), (1, 1), (0, 0), (8, 8))


def test_axis_bookkeeping_through_expand_squeeze_and_transpose():
    rng = np.random.default_rng(9)
    w = rng.uniform(0.1, 1.0, size=(3, 1, 3, 2)).astype(np.float32)  # 3 tall, 1 wide

    def roundabout(x):
        h = tf.squeeze(tf.expand_dims(tf.nn.conv2d(x, w, 1, "VALID"), 0), axis=0)
        h = tf.transpose(tf.transpose(h, [0, 2, 1, 3]), [0, 2, 1, 3])
        return tf.nn.avg_pool2d(h, 2, 2, "VALID")

    graph, y = _graph_with(roundabout)
    assert _triple(receptive_field(graph, "x:0", y.name, (8, 8))) == ((4, 2), (2, 2), (0, 0), (3, 4))
    graph, y = _graph_with(lambda x: tf.transpose(tf.nn.conv2d(x, w, 1, "VALID"), [0, 2, 1, 3]))
    with pytest.raises(UnsupportedOpError, match="transposed"):
        receptive_field(graph, "x:0", y.name, (8, 8))


def test_too_small_input_is_an_error():
    rng = np.random.default_rng(10)
    graph, y = _graph_with(lambda x: _conv(x, rng, 5, 2, padding="VALID"), shape=(1, None, None, 3))
    with pytest.raises(ReceptiveFieldError, match="too small"):
        receptive_field(graph, "x:0", y.name, (4, 9))


def test_nchw_is_refused():
    rng = np.random.default_rng(4)
    graph, y = _graph_with(
        lambda x: tf.nn.conv2d(x, _positive(rng, (3, 3, 8, 2)), 1, "SAME", data_format="NCHW")
    )
    with pytest.raises(UnsupportedOpError, match="NCHW"):
        receptive_field(graph, "x:0", y.name, (8, 8))


def test_transposed_convolution_is_refused():
    rng = np.random.default_rng(5)
    graph, y = _graph_with(
        lambda x: tf.nn.conv2d_transpose(x, _positive(rng, (3, 3, 2, 3)), [1, 16, 16, 2], 2, "SAME")
    )
    with pytest.raises(UnsupportedOpError, match="Conv2DBackpropInput"):
        receptive_field(graph, "x:0", y.name, (8, 8))


def test_paths_with_different_strides_are_refused():
    rng = np.random.default_rng(6)
    graph, y = _graph_with(lambda x: _conv(x, rng, 1, 3, stride=2, padding="VALID") + x[:, :4, :4, :])
    with pytest.raises(UnsupportedOpError, match="different y strides"):
        receptive_field(graph, "x:0", y.name, (8, 8))


def test_box_checks_unit_indices():
    field = ReceptiveField((5, 3), (2, 1), (-2, -1), (4, 6))
    assert field.box(3, 5) == (4, 4, 9, 7)
    assert field.box(3, 5, clip_to=(8, 6)) == (4, 4, 8, 6)
    with pytest.raises(ValueError, match="i=4"):
        field.box(4, 0)
