"""The backward rules are what each method says, checked against hand computations."""

import numpy as np
import pytest
import tensorflow as tf

import tf_cnnvis
from tf_cnnvis import compute
from tf_cnnvis.feeds import resolve_feed
from tf_cnnvis.layers import select_layers
from tf_cnnvis.load import load_model
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.receptive_field import receptive_field

from conftest import small_keras_model
from numerics import assert_reordered_close
from passes import batched_and_per_item

METHODS = ("gradient", "deconvnet", "guided")


def graph_of(build):
    """A graph with placeholder 'x' of shape (None, None, None, C) built by ``build(x)``."""
    def make(channels=1):
        graph = tf.Graph()
        with graph.as_default():
            x = tf.compat.v1.placeholder(tf.float32, [None, None, None, channels], name="x")
            build(x)
        return graph
    return make


def reconstructions(source, images, layer, method, target="map", **options):
    result = tf_cnnvis.deconv_visualization(source, {"x:0": images}, layers=[layer], method=method,
                                            target=target, path_outdir=None, path_logdir=None,
                                            **options)
    return next(iter(result.arrays.values()))[method]


def two_layer_graph(second_activation=tf.nn.relu):
    """x -> 1x1 conv (w=1) -> relu -> 1x1 conv to 2 channels (w=[+1, -1], b=[0, 3]) -> activation."""
    def build(x):
        r1 = tf.nn.relu(tf.nn.conv2d(x, tf.ones([1, 1, 1, 1]), 1, "VALID"), name="r1")
        z2 = tf.nn.conv2d(r1, tf.constant([[[[1.0, -1.0]]]]), 1, "VALID") + tf.constant([0.0, 3.0])
        second_activation(z2, name="r2")
    return graph_of(build)()


X_LINE = np.array([1.0, -1.0, 2.0, -2.0], np.float32).reshape(1, 1, 4, 1)


@pytest.mark.parametrize("method, channel, expected", [
    # channel 0: z2 = r1 = [1, 0, 2, 0]; channel 1: z2 = 3 - r1 = [2, 3, 1, 3] (all positive).
    ("gradient", 0, [1, 0, 1, 0]),    # g * [x > 0] at both relus
    ("deconvnet", 0, [1, 1, 1, 1]),   # relu(g) ignores the forward pass
    ("guided", 0, [1, 0, 1, 0]),      # g * [x > 0] * [g > 0]
    ("gradient", 1, [-1, 0, -1, 0]),  # -1 flows back through relu1 where x > 0
    ("deconvnet", 1, [0, 0, 0, 0]),   # relu(-1) = 0 at relu1
    ("guided", 1, [0, 0, 0, 0]),      # negative gradient is blocked
])
def test_each_rule_matches_hand_computation(method, channel, expected):
    graph = two_layer_graph()
    result = reconstructions(graph, X_LINE, "r2", method)
    np.testing.assert_allclose(result[0, channel, 0, :, 0], expected)


def test_leaky_relu_rules_match_hand_computation():
    graph = two_layer_graph(lambda z, name: tf.nn.leaky_relu(z, alpha=0.25, name=name))
    x = X_LINE
    r1 = np.maximum(x.ravel(), 0)
    z2 = 3 - r1  # channel 1 of the second layer: always positive here
    # Upstream of r1 the gradient is -1 * (leaky slope at z2 = 1) = -1 everywhere.
    by_method = {
        "gradient": -1.0 * (x.ravel() > 0),
        "deconvnet": np.zeros(4),   # relu(-1) at relu1 is 0
        "guided": np.zeros(4),
    }
    assert np.all(z2 > 0)
    for method, expected in by_method.items():
        result = reconstructions(graph, x, "r2", method)
        np.testing.assert_allclose(result[0, 1, 0, :, 0], expected, err_msg=method)

    # A single LeakyRelu layer on x: deconvnet passes leaky(g), guided g*[g>0]*slope.
    graph = graph_of(lambda x: tf.nn.leaky_relu(-x, alpha=0.25, name="leaky"))()
    x = np.array([1.0, -2.0], np.float32).reshape(1, 1, 2, 1)
    # d/dx of leaky(-x) with upstream 1: -slope(-x); slope is 1 where -x > 0 else 0.25.
    np.testing.assert_allclose(reconstructions(graph, x, "leaky", "gradient")[0, 0, 0, :, 0], [-0.25, -1])
    # deconvnet: leaky(1) = 1 at the leaky op, then Neg: -1 everywhere.
    np.testing.assert_allclose(reconstructions(graph, x, "leaky", "deconvnet")[0, 0, 0, :, 0], [-1, -1])
    # guided: 1 * slope(-x) * [1 > 0], then Neg.
    np.testing.assert_allclose(reconstructions(graph, x, "leaky", "guided")[0, 0, 0, :, 0], [-0.25, -1])


def test_prelu_inside_keras_gets_a_correct_guided_rule():
    """Keras builds PReLU from two Relu ops; a blind rule would pass negative gradients."""
    import keras

    inputs = keras.Input((1, 4, 1), name="image")
    conv = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer="ones", name="flip")(inputs)
    prelu = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.3), name="prelu")(conv)
    out = keras.layers.Conv2D(1, 1, use_bias=False, kernel_initializer=keras.initializers.Constant(-2.0),
                              name="scale")(prelu)
    model = keras.Model(inputs, out)
    x = np.array([1.0, -1.0, 2.0, -2.0], np.float32).reshape(1, 1, 4, 1)
    # Upstream of the PReLU the gradient is -2 everywhere.
    slope = np.where(x.ravel() > 0, 1.0, 0.3)
    expected = {
        "gradient": -2.0 * slope,
        "guided": np.zeros(4),             # g = -2 < 0 is blocked everywhere
        "deconvnet": -2.0 * 0.3 * np.ones(4),  # prelu(g) = 0.3 * g for g < 0
    }
    for method, want in expected.items():
        result = tf_cnnvis.deconv_visualization(model, x, layers=["scale"], method=method,
                                                path_outdir=None, path_logdir=None)
        # A hand computation of two products: a few eps.
        np.testing.assert_allclose(result["scale"][method][0, 0, 0, :, 0], want, rtol=1e-6,
                                   err_msg=method)


def test_prelu_is_one_relu_layer_not_three():
    import keras

    inputs = keras.Input((8, 8, 1), name="image")
    x = keras.layers.Conv2D(2, 3, name="conv")(inputs)
    x = keras.layers.PReLU(name="prelu")(x)
    model = keras.Model(inputs, x)
    relus = [row for row in tf_cnnvis.list_layers(model) if row.kind == "relu"]
    assert [(row.name, row.op_type) for row in relus] == [("prelu", "PReLU")]


def test_methods_agree_without_relu():
    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(3, 3, 2, 4)).astype(np.float32)
    w2 = rng.normal(size=(3, 3, 4, 3)).astype(np.float32)

    def build(x):
        h = tf.nn.max_pool2d(tf.nn.conv2d(x, w1, 1, "SAME"), 2, 2, "SAME")
        tf.nn.avg_pool2d(tf.nn.conv2d(h, w2, 1, "SAME"), 2, 2, "SAME", name="top")

    graph = graph_of(build)(channels=2)
    x = rng.normal(size=(1, 12, 12, 2)).astype(np.float32)
    results = [reconstructions(graph, x, "top", method) for method in METHODS]
    assert np.abs(results[0]).max() > 0
    for other in results[1:]:
        assert_reordered_close(other, results[0])  # the same sums, maybe in another order


def test_max_pool_routes_to_the_switch():
    graph = graph_of(lambda x: tf.nn.max_pool2d(x, 2, 2, "VALID", name="pool"))()
    x = np.array([[1, 5, 0, 2], [3, 4, 9, 1]], np.float32).reshape(1, 2, 4, 1)
    for method in METHODS:
        result = reconstructions(graph, x, "pool", method)[0, 0, ..., 0]
        np.testing.assert_array_equal(result, [[0, 1, 0, 0], [0, 0, 1, 0]])


@pytest.mark.parametrize("static", [False, True], ids=["open-size", "fixed-size"])
@pytest.mark.parametrize("size", [(9, 7), (8, 8)])
@pytest.mark.parametrize("window, stride, padding", [
    (2, 2, "SAME"), (2, 2, "VALID"), (3, 3, "SAME"), (3, 3, "VALID"), (3, 2, "SAME")])
def test_pool_and_relu_rules_equal_tensorflows_gradients(window, stride, padding, size, static):
    """The broadcast max-pool and ReLU rules give TensorFlow's own gradients, bit for bit.

    Integer pixels and a ReLU make ties (whole windows of zeros) common, so
    the test also checks that ties go to the input TensorFlow picks; a
    different weight for every window makes sending a gradient to the wrong
    window visible.
    """
    rng = np.random.default_rng(3)

    def build(x):
        if static:
            x = tf.ensure_shape(x, (None, *size, 3))
        pooled = tf.nn.max_pool2d(tf.nn.relu(x), window, stride, padding)
        rows, columns = tf.shape(pooled)[1], tf.shape(pooled)[2]
        weight = (tf.cast(tf.range(rows), tf.float32)[:, None] * 100
                  + tf.cast(tf.range(columns), tf.float32)[None, :] + 1)
        tf.multiply(pooled, weight[None, :, :, None], name="top")

    x = rng.integers(-2, 3, size=(2, *size, 3)).astype(np.float32)
    ours = reconstructions(graph_of(build)(channels=3), x, "top", "gradient")
    plain = graph_of(build)(channels=3)
    with plain.as_default():
        top = plain.get_tensor_by_name("top:0")
        grads = [tf.gradients(tf.reduce_sum(top[..., c]), plain.get_tensor_by_name("x:0"))[0]
                 for c in range(3)]
        with tf.compat.v1.Session(graph=plain) as session:
            expected = [session.run(grads, {"x:0": x[i:i + 1]}) for i in range(len(x))]
    assert (np.asarray(expected) != 0).any()
    for i in range(len(x)):
        for c in range(3):
            # Exact: small integers times integer weights, one product per path.
            np.testing.assert_array_equal(ours[i, c], expected[i][c][0])


@pytest.mark.parametrize("kernel, strides, padding, dilations", [
    ((3, 3), 1, "SAME", 1), ((2, 4), 1, "SAME", 1), ((3, 2), 1, "VALID", 1),
    ((3, 3), 1, [[0, 0], [2, 0], [1, 1], [0, 0]], 1), ((3, 3), 1, [[0, 0], [3, 1], [0, 0], [0, 0]], 1),
    ((3, 3), 2, "SAME", 1), ((3, 3), 1, "SAME", 2)])
def test_convolution_rule_equals_tensorflows_gradient(kernel, strides, padding, dilations):
    """Stride-1 convolutions go backward as a convolution with the flipped kernel; others keep TF's op."""
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(*kernel, 4, 6)).astype(np.float32)

    def build(x):
        if dilations > 1:  # on a CPU: space-to-batch around a plain Conv2D
            tf.nn.convolution(x, weights, strides, padding, dilations=dilations, name="top")
        else:
            tf.nn.conv2d(x, weights, strides, padding, name="top")

    x = rng.normal(size=(2, 11, 10, 4)).astype(np.float32)
    ours = reconstructions(graph_of(build)(channels=4), x, "top", "gradient")
    plain = graph_of(build)(channels=4)
    with plain.as_default():
        top = plain.get_tensor_by_name("top:0")
        grads = [tf.gradients(tf.reduce_sum(top[..., c]), plain.get_tensor_by_name("x:0"))[0] for c in range(6)]
        with tf.compat.v1.Session(graph=plain) as session:
            expected = session.run(grads, {"x:0": x})
    for c in range(6):
        assert np.abs(expected[c]).max() > 0
        # A flipped-kernel convolution sums the same products in another order.
        assert_reordered_close(ours[:, c], expected[c])


def _reference_reconstruction(model, x, layer_name, channel, rule):
    """The same reconstruction computed eagerly with tf.custom_gradient ReLUs."""
    import keras

    @tf.custom_gradient
    def relu(z):
        y = tf.nn.relu(z)

        def backward(g):
            if rule == "deconvnet":
                return tf.nn.relu(g)
            return g * tf.cast(z > 0, g.dtype) * tf.cast(g > 0, g.dtype)
        return y, backward

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = x
        for layer in model.layers[1:]:
            if isinstance(layer, keras.layers.Conv2D):
                h = relu(tf.nn.conv2d(h, layer.kernel, 1, "SAME") + layer.bias)
            elif isinstance(layer, keras.layers.MaxPooling2D):
                h = tf.nn.max_pool2d(h, 2, 2, "VALID")
            if layer.name == layer_name:
                break
        objective = tf.reduce_sum(h[..., channel])
    return tape.gradient(objective, x).numpy()


@pytest.mark.parametrize("method", ["deconvnet", "guided"])
def test_override_reaches_relus_inside_keras_model(method, images):
    model = small_keras_model()
    ours = tf_cnnvis.deconv_visualization(model, images[:1], layers=["conv3"], method=method,
                                          channels=[0, 3], path_outdir=None, path_logdir=None)
    plain = tf_cnnvis.deconv_visualization(model, images[:1], layers=["conv3"], method="gradient",
                                           channels=[0, 3], path_outdir=None, path_logdir=None)
    for k, channel in enumerate([0, 3]):
        reference = _reference_reconstruction(model, images[:1], "conv3", channel, method)
        got = ours["conv3"][method][0, k]
        assert np.abs(reference).max() > 0
        assert_reordered_close(got, reference[0])  # eager kernels against the rebuilt graph's
        assert not np.allclose(got, plain["conv3"]["gradient"][0, k])


def _layer_setup(source, images, layer, method):
    model = load_model(source)
    rebuilt = rebuild(model, method)
    info = select_layers(rebuilt.graph, model, [layer])[0]
    feed = resolve_feed(model, rebuilt.graph, images, None)
    values = compute.activations(rebuild(model, "gradient"), feed, [info])[info.tensor]
    return rebuilt, feed, info, values


@pytest.mark.parametrize("size", [(21, 18), (32, 32)])
def test_unit_reconstruction_is_zero_outside_its_receptive_field(size):
    model = small_keras_model(seed=3)
    rng = np.random.default_rng(2)
    x = rng.uniform(0.1, 1, (1,) + size + (3,)).astype(np.float32)
    for layer in ("conv1", "pool1", "conv2", "conv3"):
        for method in METHODS:
            rebuilt, feed, info, values = _layer_setup(model, x, layer, method)
            field = receptive_field(rebuilt.graph, feed.input_name, info.tensor, size)
            recon = compute.reconstruct(rebuilt, feed, info, target="unit", layer_values=values)
            units = compute.strongest_units(values)
            for channel in range(info.channels):
                y0, x0, y1, x1 = field.box(*units[0, channel], clip_to=size)
                outside = np.abs(recon[0, channel]).sum(axis=-1)
                assert outside[y0:y1, x0:x1].max() > 0 or values[0, ..., channel].max() <= 0
                outside[y0:y1, x0:x1] = 0
                assert outside.max() == 0, (layer, method, channel)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("size", [(37, 30), (48, 48)])
def test_unit_crops_equal_whole_image_including_border_units(method, size):
    model = small_keras_model(seed=4)
    rng = np.random.default_rng(5)
    x = rng.uniform(0, 1, (2,) + size + (3,)).astype(np.float32)
    for layer in ("conv1", "conv2", "pool2", "conv3"):
        rebuilt, feed, info, values = _layer_setup(model, x, layer, method)
        plan = compute.crop_plan(rebuilt, feed, info)
        assert plan is not None and plan.size[0] < size[0]
        # Put strongest units on every border: the field crosses the image edge.
        border = values.copy()
        height, width = values.shape[1:3]
        corners = [(0, 0), (height - 1, width - 1), (0, width - 1), (height - 1, 0), (height // 2, 0)]
        for channel in range(info.channels):
            y, x_ = corners[channel % len(corners)]
            border[:, y, x_, channel] = values.max() + 1
        cropped = compute.reconstruct(rebuilt, feed, info, target="unit", layer_values=border)
        whole = compute.reconstruct(rebuilt, feed, info, target="unit", layer_values=border, crop=False)
        assert np.abs(whole).max() > 0
        # Same products; a crop's smaller shape may pick other kernels that sum in another order.
        assert_reordered_close(cropped, whole)


def test_batch_gives_every_image_its_own_result(images):
    model = small_keras_model(seed=5)
    together = tf_cnnvis.deconv_visualization(model, images, layers=["conv2"], path_outdir=None,
                                              path_logdir=None)["conv2"]["deconvnet"]
    for index in range(len(images)):
        alone = tf_cnnvis.deconv_visualization(model, images[index:index + 1], layers=["conv2"],
                                               path_outdir=None, path_logdir=None)["conv2"]["deconvnet"]
        assert_reordered_close(together[index], alone[0])  # batch size changes summation order
    assert not np.allclose(together[0], together[1])


def test_chunk_size_does_not_change_results(images):
    model = small_keras_model(seed=6)
    big = tf_cnnvis.deconv_visualization(model, images, layers=["conv2"], path_outdir=None,
                                         path_logdir=None)["conv2"]["deconvnet"]
    tiny = tf_cnnvis.deconv_visualization(model, images, layers=["conv2"], path_outdir=None,
                                          path_logdir=None, memory_budget_mb=0.01)["conv2"]["deconvnet"]
    assert_reordered_close(tiny, big)  # chunk size changes summation order


def test_chunk_sizes_come_from_one_measuring_run_per_graph_and_are_remembered(images, monkeypatch):
    """Open shapes are measured for all layers at once; a repeated call measures nothing."""
    model = small_keras_model(seed=7)
    real_run = compute.run
    measuring = []

    def counting_run(rebuilt, fetches, feed_dict):
        if isinstance(fetches, list) and fetches and all(getattr(f, "op", None) is not None
                                                         and f.op.type == "Size" for f in fetches):
            measuring.append(len(fetches))
        return real_run(rebuilt, fetches, feed_dict)

    monkeypatch.setattr(compute, "run", counting_run)
    options = dict(layers="rp", method=["deconvnet", "guided"], path_outdir=None, path_logdir=None)
    first = tf_cnnvis.deconv_visualization(model, images, **options)
    assert len(first.layers) == 5 and len(measuring) == 2  # one run per method's graph, all layers in it
    measuring.clear()
    tf_cnnvis.deconv_visualization(model, images, **options)
    assert measuring == []
    tf_cnnvis.deconv_visualization(model, images[:, :12, :12], **options)  # another image size: measured anew
    assert len(measuring) == 2


def test_a_vectorized_backward_pass_counts_gradients_not_forward_tensors_per_item(images):
    """One image's forward pass serves every item: an item's share is a few of the largest tensors."""
    model = small_keras_model(seed=8)
    rebuilt = rebuild(load_model(model), "guided")
    (layer,) = select_layers(rebuilt.graph, load_model(model), ["conv3"])
    feed = resolve_feed(load_model(model), rebuilt.graph, images, None)
    sizes = compute.tensor_sizes(rebuilt, feed, [layer], images.shape[1:])[layer.tensor]
    assert max(sizes) == 20 * 20 * 6 and len(sizes) > 8
    budget_mb = 1.0
    shared = compute.chunk_size(rebuilt, feed, layer, images.shape[1:], budget_mb, 10**6, shared_forward=True)
    batched = compute.chunk_size(rebuilt, feed, layer, images.shape[1:], budget_mb, 10**6)
    assert shared == 2**20 // ((max(sizes) * compute.GRADIENT_COPIES + 20 * 20 * 3) * 4)
    assert batched == 2**20 // (sum(sizes) * 4 * compute.BACKWARD_FACTOR)
    assert shared > batched


@pytest.mark.parametrize("method", ["deconvnet", "guided", "gradient"])
def test_whole_maps_through_the_channelwise_head_equal_the_per_item_backward_pass(images, method, monkeypatch):
    """Below a layer, ops up to the first convolution keep channels apart: all seeds cross them
    in one pass and the convolution as one depthwise convolution. Same result as per item."""
    from tf_cnnvis import backward as backward_module
    from tf_cnnvis import rebuild as rebuild_module
    from tf_cnnvis.layers import depends_on_inputs

    model = load_model(small_keras_model(seed=9))
    rebuilt = rebuild(model, method)
    feed = resolve_feed(model, rebuilt.graph, images, None)
    layers = select_layers(rebuilt.graph, model, "rpc")
    dependent = depends_on_inputs(rebuilt.graph, [feed.input_name])
    heads = {layer.name: backward_module.channelwise_head(rebuilt.graph.get_tensor_by_name(layer.tensor).op,
                                                           dependent) for layer in layers}
    assert {"conv1", "pool1", "conv2", "pool2", "conv3"} <= set(heads) and None not in heads.values()
    fast = {layer.name: compute.reconstruct(rebuilt, feed, layer, channels=[0, 3, 5]) for layer in layers}
    rebuild_module.clear_cache()
    monkeypatch.setattr(rebuild_module, "channelwise_head", lambda op, dependent: None)
    rebuilt = rebuild(model, method)
    for layer in layers:
        slow = compute.reconstruct(rebuilt, feed, layer, channels=[0, 3, 5])
        assert np.abs(slow).max() > 0
        assert_reordered_close(fast[layer.name], slow)
    rebuild_module.clear_cache()


def test_the_channelwise_head_stops_at_ops_that_mix_channels_or_strided_convolutions():
    from tf_cnnvis import backward as backward_module
    from tf_cnnvis.layers import depends_on_inputs

    graph = tf.Graph()
    kernel = np.ones((3, 3, 3, 4), np.float32)
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="x")
        plain = tf.nn.relu(tf.nn.bias_add(tf.nn.conv2d(x, kernel, 1, "SAME", name="plain"), np.ones(4, np.float32)))
        mixed = tf.nn.relu(tf.nn.local_response_normalization(tf.nn.conv2d(x, kernel, 1, "SAME")))
        strided = tf.nn.relu(tf.nn.conv2d(x, kernel, 2, "SAME"))
        spatial_bias = tf.nn.relu(tf.nn.conv2d(x, kernel, 1, "SAME") + np.ones((1, 5, 5, 4), np.float32))
    dependent = depends_on_inputs(graph, ["x:0"])
    assert backward_module.channelwise_head(plain.op, dependent).name == "plain"
    for tensor in (mixed, strided, spatial_bias):
        assert backward_module.channelwise_head(tensor.op, dependent) is None


def layer_zoo_model(seed=0):
    """A small Keras model with one of each op the batched backward pass knows."""
    import keras
    from keras import layers as kl

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3), name="image")
    x = kl.Rescaling(0.5, offset=-0.25)(inputs)
    x = kl.ZeroPadding2D(1)(x)
    x = kl.Conv2D(6, 3, name="conv1")(x)
    x = kl.BatchNormalization(name="bn")(x)
    x = kl.ReLU(name="relu1")(x)
    x = kl.MaxPooling2D(2, name="pool1")(x)  # over a ReLU: fused
    a = kl.DepthwiseConv2D(3, padding="same", name="dw")(x)
    a = kl.LeakyReLU(negative_slope=0.2, name="leaky")(a)
    b = kl.Conv2D(6, 1, activation="elu", name="conv_b")(x)
    x = kl.Concatenate(name="cat")([a, b])
    x = kl.Add(name="residual")([x, kl.Conv2D(12, 3, padding="same", name="conv2")(x)])
    x = kl.AveragePooling2D(2, name="avg")(x)
    excite = kl.Conv2D(12, 1, activation="sigmoid", name="excite")(
        kl.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x))
    x = kl.Activation("tanh", name="tanh")(kl.Multiply(name="scale")([x, excite]))  # a product of two maps
    x = kl.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="strided")(x)
    x = kl.Concatenate(name="cat2")([kl.GlobalAveragePooling2D(name="gap")(x), kl.Flatten(name="flat")(x)])
    model = keras.Model(inputs, kl.Dense(5, activation="relu", name="dense")(x))
    bn = model.get_layer("bn")  # statistics away from the identity
    rng = np.random.default_rng(seed)
    bn.set_weights([w + rng.uniform(0.5, 1.5, w.shape).astype(np.float32) for w in bn.get_weights()])
    return model


@pytest.mark.parametrize("method", METHODS)
def test_batched_backward_pass_equals_the_parallel_for_pass(method, monkeypatch):
    """Every layer of a model with many op types goes through the batched pass (no parallel-for)
    and gives what the per-item parallel-for pass over TensorFlow's gradient machinery gives."""
    model = load_model(layer_zoo_model())
    x = np.random.default_rng(0).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)
    def choose(graph, model):
        return select_layers(graph, model, "rpc") + select_layers(graph, model, ["dense"])

    batched, per_item, unbatched = batched_and_per_item(model, x, method, choose, monkeypatch)
    assert len(batched) >= 2 * 12 and unbatched == []
    nonzero = 0
    for key, expected in per_item.items():
        nonzero += np.abs(expected).max() > 0
        assert_reordered_close(batched[key], expected, err_msg=str(key))
    assert nonzero >= len(per_item) - 2


def test_batched_pass_refuses_ops_it_has_no_rule_for():
    """An op without a batched rule (here an Erf and a cumulative sum) gives None, so the caller
    falls back to parallel-for instead of broadcasting wrongly."""
    from tf_cnnvis.backward import batched_gradient
    from tf_cnnvis.layers import depends_on_inputs

    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 6, 6, 2], name="x")
        soft = tf.math.erf(x)
        overlapping = tf.math.cumsum(tf.nn.relu(x), axis=1)
        fine = tf.nn.relu(x)
        dependent = depends_on_inputs(graph, ["x:0"])
        for top in (soft, overlapping):
            assert batched_gradient(top, tf.ones((4,) + tuple(top.shape[1:])), x, "guided", dependent) is None
        assert batched_gradient(fine, tf.ones((4, 6, 6, 2)), x, "guided", dependent).shape == (4, 6, 6, 2)
