"""Class attribution maps: hand computations, exact identities, a trained model, a peer, and bad input.

- A tiny net with set weights: Grad-CAM, Grad-CAM++, LayerCAM and
  Score-CAM equal their definitions computed here in NumPy (upsampling by
  ``tf.image.resize``, independent of the library's resize matrices).
- A linear model: gradient x input is each pixel's exact contribution,
  Integrated Gradients from zero equals it, occlusion equals the exact
  patch contributions.
- The real emotion classifier: Integrated Gradients' completeness.
- A digits CNN trained here: Grad-CAM of each class lies on that class's
  half of a two-digit image; tf-keras-vis 0.8.7 computes the same maps.
"""

import importlib.util
import io
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_cnnvis
from tf_cnnvis import cli, compute
from tf_cnnvis.attribution.methods import integration_points, noise_sample, patch_positions
from tf_cnnvis.errors import FeedError, LayerNotFoundError, OptionError, TfCnnvisError
from tf_cnnvis.report import build_gallery
from tf_cnnvis.render import VIRIDIS, colour_map, colour_overlay, display_image, positive_scale

from conftest import small_keras_model
from numerics import assert_reordered_close

keras = pytest.importorskip("keras")

NO_OUTPUT = {"path_outdir": None, "path_logdir": None}
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "examples", "train_digits.py")


def attribute(model, feed, **options):
    return tf_cnnvis.attribution_visualization(model, feed, **{**NO_OUTPUT, **options})


def relu(values):
    return np.maximum(values, 0)


def resize(maps, height, width):
    """(..., h, w) maps resized as tf.image.resize does (bilinear, half-pixel centres)."""
    maps = np.asarray(maps, np.float32)
    flat = maps.reshape((-1,) + maps.shape[-2:])[..., None]
    return tf.image.resize(flat, (height, width), "bilinear").numpy()[..., 0].reshape(
        maps.shape[:-2] + (height, width))


# --------------------------------------------------------------------------- a tiny net by hand

def tiny_net(seed=1):
    """6x6x2 -> conv 3x3 valid (3 filters) + ReLU -> flatten -> dense 5 + ReLU -> dense 3 (logits)."""
    rng = np.random.default_rng(seed)
    weights = [rng.normal(0, 0.5, (3, 3, 2, 3)), rng.normal(0.1, 0.1, 3), rng.normal(0, 0.3, (48, 5)),
               rng.normal(0.1, 0.1, 5), rng.normal(0, 0.5, (5, 3)), rng.normal(0, 0.1, 3)]
    weights = [w.astype(np.float32) for w in weights]
    inputs = keras.Input((6, 6, 2), name="image")
    conv = keras.layers.Conv2D(3, 3, activation="relu", name="conv")
    hidden = keras.layers.Dense(5, activation="relu", name="hidden")
    logits = keras.layers.Dense(3, name="logits")
    model = keras.Model(inputs, logits(hidden(keras.layers.Flatten()(conv(inputs)))))
    conv.set_weights(weights[:2])
    hidden.set_weights(weights[2:4])
    logits.set_weights(weights[4:])
    return model, weights


def tiny_forward(x, weights):
    """(A, hidden pre-activation, logits) of one image, in float64."""
    kernel, bias, w1, b1, w2, b2 = (np.asarray(w, np.float64) for w in weights)
    maps = np.zeros((4, 4, 3))
    for y in range(4):
        for x0 in range(4):
            maps[y, x0] = np.einsum("ijc,ijcf->f", x[y:y + 3, x0:x0 + 3], kernel)
    maps = relu(maps + bias)
    pre = maps.reshape(-1) @ w1 + b1
    return maps, pre, relu(pre) @ w2 + b2


def tiny_gradient(pre, weights, c):
    """d logit_c / d A: (4, 4, 3)."""
    _, _, w1, _, w2, _ = weights
    return (np.asarray(w1, np.float64) @ (np.asarray(w2, np.float64)[:, c] * (pre > 0))).reshape(4, 4, 3)


@pytest.fixture(scope="module")
def tiny():
    model, weights = tiny_net()
    images = np.random.default_rng(5).uniform(0, 1, (3, 6, 6, 2)).astype(np.float32)
    return model, weights, images


def test_gradient_cams_equal_their_definitions(tiny):
    model, weights, images = tiny
    classes = [0, 2]
    result = attribute(model, images, classes=classes, method=["gradcam", "gradcam++", "layercam"])
    assert result.arrays["layer"] == "conv"
    for n, x in enumerate(images):
        maps, pre, _ = tiny_forward(x, weights)
        for k, c in enumerate(classes):
            g = tiny_gradient(pre, weights, c)
            gradcam = relu((maps * g.mean(axis=(0, 1))).sum(-1))
            denominator = 2 * g**2 + maps.sum(axis=(0, 1)) * g**3
            alpha = np.where(denominator != 0, g**2 / np.where(denominator != 0, denominator, 1), 0)
            plus = relu((maps * (alpha * relu(g)).sum(axis=(0, 1))).sum(-1))
            layercam = relu((relu(g) * maps).sum(-1))
            for name, expected in (("gradcam", gradcam), ("gradcam++", plus), ("layercam", layercam)):
                assert expected.max() > 0  # a test of something
                assert_reordered_close(result.arrays[name][n, k], resize(expected, 6, 6), err_msg=name)


def test_score_cam_and_its_capped_variant_equal_their_definitions(tiny):
    model, weights, images = tiny
    classes = [1, 2]
    full = attribute(model, images, classes=classes, method="scorecam").arrays["scorecam"]
    capped = attribute(model, images, classes=classes, method="scorecam", max_channels=2).arrays["scorecam"]
    for n, x in enumerate(images):
        maps, _, _ = tiny_forward(x, weights)
        upsampled = resize(np.moveaxis(maps, -1, 0), 6, 6)  # (3, 6, 6)
        low, high = upsampled.min(axis=(1, 2), keepdims=True), upsampled.max(axis=(1, 2), keepdims=True)
        masks = np.where(high > low, (upsampled - low) / np.where(high > low, high - low, 1), 0)
        scores = np.array([tiny_forward(x * mask[..., None], weights)[2] for mask in masks])  # (3, classes)
        strongest = np.sort(np.argsort(-maps.reshape(-1, 3).var(axis=0))[:2])
        for k, c in enumerate(classes):
            for kept, result in ((np.arange(3), full), (strongest, capped)):
                w = np.exp(scores[kept, c] - scores[kept, c].max())
                w /= w.sum()
                expected = relu((maps[..., kept] * w).sum(-1))
                assert expected.max() > 0
                assert_reordered_close(result[n, k], resize(expected, 6, 6))


def test_guided_gradcam_is_gradcam_times_the_librarys_guided_backprop(tiny):
    model, _, images = tiny
    result = attribute(model, images, classes=[0, 1], method=["guided_gradcam", "gradcam", "guided"])
    raw = result.arrays["guided_gradcam_raw"]
    assert_reordered_close(raw, result.arrays["gradcam"][..., None] * result.arrays["guided_raw"])
    assert_reordered_close(result.arrays["guided_gradcam"], np.abs(raw).max(axis=-1))


def test_resizing_matches_tensorflow_for_up_and_down_sampling():
    from tf_cnnvis.attribution.batches import upsample

    maps = np.random.default_rng(0).normal(size=(2, 5, 7)).astype(np.float32)
    for size in ((17, 23), (5, 7), (3, 4), (224, 224)):
        assert_reordered_close(upsample(maps, *size), resize(maps, *size))


# --------------------------------------------------------------------------- a linear model: exact answers

@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(7)
    weights = rng.normal(0, 1, (5 * 4 * 2, 3)).astype(np.float32)
    bias = rng.normal(0, 1, 3).astype(np.float32)
    inputs = keras.Input((5, 4, 2), name="image")
    dense = keras.layers.Dense(3, name="logits")
    model = keras.Model(inputs, dense(keras.layers.Flatten()(inputs)))
    dense.set_weights([weights, bias])
    images = rng.uniform(-1, 1, (2, 5, 4, 2)).astype(np.float32)
    return model, weights.reshape(5, 4, 2, 3), images


def test_gradient_x_input_is_each_pixels_contribution_and_integrated_gradients_equal_it(linear):
    model, weights, images = linear
    classes = [0, 2]
    contribution = np.einsum("nhwc,hwck->nkhwc", images, weights[..., classes])
    result = attribute(model, images, classes=classes, method=["gradient_x_input", "integrated_gradients"],
                       steps=7)
    assert_reordered_close(result.arrays["gradient_x_input_raw"], contribution)
    assert_reordered_close(result.arrays["gradient_x_input"], contribution.sum(-1))
    for rule in ("trapezoid", "riemann_right", "riemann_left", "riemann_middle"):
        integrated = attribute(model, images, classes=classes, method="integrated_gradients", steps=5, rule=rule)
        assert_reordered_close(integrated.arrays["integrated_gradients_raw"], contribution, err_msg=rule)
    # The same with a baseline: (x - x') times the (constant) gradient.
    shifted = attribute(model, images, classes=classes, method="integrated_gradients", steps=3, baseline=0.25)
    assert_reordered_close(shifted.arrays["integrated_gradients"],
                           np.einsum("nhwc,hwck->nkhw", images - 0.25, weights[..., classes]))


def test_occlusion_equals_the_exact_patch_contributions(linear):
    model, weights, images = linear
    classes = [1, 2]
    patch, stride, baseline = (2, 3), (2, 1), 0.5
    result = attribute(model, images, classes=classes, method="occlusion", patch=patch, stride=stride,
                       baseline=baseline)
    rows, columns = patch_positions(5, 2, 2), patch_positions(4, 3, 1)
    assert rows.tolist() == [0, 2, 3] and columns.tolist() == [0, 1]
    expected = np.zeros((2, 2, 5, 4))
    covered = np.zeros((5, 4))
    for y in rows:
        for x in columns:
            region = (slice(y, y + 2), slice(x, x + 3))
            covered[region] += 1
            for n in range(2):
                drop = np.einsum("hwc,hwck->k", images[n][region] - baseline, weights[region][..., classes])
                expected[n, :, region[0], region[1]] += drop[:, None, None]
    assert covered.min() >= 1  # every pixel under some patch
    assert_reordered_close(result.arrays["occlusion"], expected / covered)


def test_integration_points_are_the_quadrature_rules():
    positions, weights = integration_points(5, "trapezoid")
    assert positions.tolist() == [0, 0.25, 0.5, 0.75, 1] and weights.tolist() == [0.125, 0.25, 0.25, 0.25, 0.125]
    assert integration_points(4, "riemann_right")[0].tolist() == [0.25, 0.5, 0.75, 1.0]
    assert integration_points(4, "riemann_middle")[0].tolist() == [0.125, 0.375, 0.625, 0.875]
    for rule in ("trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
        assert integration_points(6, rule)[1].sum() == pytest.approx(1.0)


# --------------------------------------------------------------------------- smoothing

def test_smoothing_with_zero_noise_is_the_base_method(tiny):
    model, _, images = tiny
    for method in ("saliency", "guided", "deconvnet", "gradient_x_input"):
        base = attribute(model, images, classes=[0, 2], method=method).arrays
        smooth = attribute(model, images, classes=[0, 2], method=method, smooth="smoothgrad", noise=0.0,
                           samples=4).arrays
        assert_reordered_close(smooth[f"{method}_smoothgrad_raw"], base[f"{method}_raw"], err_msg=method)
        assert_reordered_close(smooth[f"{method}_smoothgrad"], base[method], err_msg=method)
        square = attribute(model, images, classes=[0, 2], method=method, smooth="squaregrad", noise=0.0,
                           samples=3).arrays[f"{method}_squaregrad_raw"]
        assert_reordered_close(square, base[f"{method}_raw"] ** 2, err_msg=method)
        variance = attribute(model, images, classes=[0, 2], method=method, smooth="vargrad", noise=0.0,
                             samples=3).arrays[f"{method}_vargrad_raw"]
        assert np.abs(variance).max() <= 1e-5 * max(1.0, float(square.max()))


def test_smoothgrad_averages_gradients_of_the_documented_noisy_copies(tiny):
    model, _, images = tiny
    samples, noise, seed = 6, 0.2, 11
    result = attribute(model, images[:2], classes=[1], method="gradient_x_input", smooth="smoothgrad",
                       samples=samples, noise=noise, seed=seed)
    expected = np.zeros(images[:2].shape)
    for n, x in enumerate(images[:2]):
        sigma = noise * (x.max() - x.min())
        for sample in range(samples):
            noisy = tf.constant((x + sigma * noise_sample(seed, n, sample, x.shape))[None])
            with tf.GradientTape() as tape:
                tape.watch(noisy)
                score = model(noisy)[0, 1]
            expected[n] += (tape.gradient(score, noisy)[0] * noisy[0]).numpy() / samples
    assert_reordered_close(result.arrays["gradient_x_input_smoothgrad_raw"][:, 0], expected)


# --------------------------------------------------------------------------- a real classifier

def test_integrated_gradients_are_complete_on_the_emotion_classifier():
    """The attributions sum to f(x) - f(baseline) of the logit, up to the integration error.

    Along the path from the grey baseline the logit has kinks (ReLUs,
    max-pool switches), so each rule's error at 64 steps differs from image
    to image (on this face, class happy: trapezoid 2.3%, midpoint 0.07%,
    right Riemann 1.8%); the trapezoid rule is within 0.1% at 256.
    """
    models = pytest.importorskip("tf_cnnvis.models")
    try:
        model = models.emotion_model()
    except ImportError as error:
        pytest.skip(str(error))
    face = models.emotion_preprocess(models.sample_image("face", 64))[None]
    logits = keras.Model(model.inputs, model.get_layer("predictions").input)
    gained = (logits(face) - logits(np.zeros_like(face))).numpy()[0, 3]  # f(x) - f(baseline), class happy
    for steps, rule in ((64, "riemann_middle"), (256, "trapezoid")):
        result = attribute(model, face, labels=list(models.EMOTION_LABELS), method="integrated_gradients",
                           steps=steps, rule=rule)
        assert result.arrays["class_names"] == [["happy"]]  # the top class
        total = result.arrays["integrated_gradients_raw"].sum(dtype=np.float64)
        assert abs(total - gained) <= 0.01 * abs(gained), (rule, total, gained)
        assert result.arrays["integrated_gradients_delta"][0, 0] == pytest.approx(total - gained, abs=1e-3)
        assert_reordered_close(result.arrays["scores"], logits(face).numpy())  # the logits, not the softmax


def load_example():
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    """The example's digits CNN, trained here: (model, test images, test labels)."""
    pytest.importorskip("sklearn")
    example = load_example()
    x_train, y_train, x_test, y_test = example.load_data()
    model = example.build_model()
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    assert accuracy > 0.85
    return model, x_test, y_test


@pytest.mark.slow
def test_gradcam_of_each_class_lies_on_its_own_half_of_a_two_digit_image(digits):
    """Each half is the classifier's most confident test digit of its class; either order.

    The pairs are digits drawn with different strokes. For digits that share
    strokes (2 and 3, 1 and 8, 4 and 6) this classifier's own class map
    (``A . W`` before the average) is positive on the other digit too, and
    Grad-CAM, which equals that map's positive part for this architecture,
    rightly shows it: there about 55% of the mass is on the own half.
    """
    model, images, _ = digits
    probabilities = tf.nn.softmax(model.predict(images, verbose=0)).numpy()
    best = {c: images[np.argmax(probabilities[:, c])] for c in range(10)}
    pairs = [(0, 7), (1, 6), (4, 1), (5, 8)]
    pairs += [(right, left) for left, right in pairs]
    composites = np.stack([np.concatenate([best[left], best[right]], axis=1) for left, right in pairs])  # 16 x 32
    maps = attribute(model, composites, classes=[list(pair) for pair in pairs], method="gradcam").arrays["gradcam"]
    half = composites.shape[2] // 2
    on_left = maps[:, 0, :, :half].sum(axis=(1, 2)) / maps[:, 0].sum(axis=(1, 2))
    on_right = maps[:, 1, :, half:].sum(axis=(1, 2)) / maps[:, 1].sum(axis=(1, 2))
    assert (on_left >= 0.7).all() and (on_right >= 0.7).all(), (pairs, on_left, on_right)


# --------------------------------------------------------------------------- the peer: tf-keras-vis 0.8.7

def correlation(a, b):
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.mark.slow
def test_gradcam_and_smoothgrad_equal_tf_keras_vis_and_the_differences_are_definitions(digits, monkeypatch):
    peer = pytest.importorskip("tf_keras_vis")
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.scores import CategoricalScore

    assert peer.__version__ == "0.8.7"
    model, images, _ = digits
    images = images[:4]
    classes = model.predict(images, verbose=0).argmax(axis=1)
    score = CategoricalScore(list(classes))
    ours = attribute(model, images, classes=[[c] for c in classes], layer="conv3",
                     method=["gradcam", "gradcam++", "scorecam"]).arrays

    def peer_cam(kind, **options):  # before their normalization, upsampled as ours are
        cam = kind(model, clone=True)(score, images, penultimate_layer="conv3", expand_cam=False,
                                      normalize_cam=False, **options)
        return resize(np.asarray(cam), *images.shape[1:3])

    theirs = peer_cam(Gradcam)
    for n in range(4):
        assert correlation(ours["gradcam"][n, 0], theirs[n]) >= 0.999
    assert_reordered_close(ours["gradcam"][:, 0], theirs)

    # Grad-CAM++: the definitions differ. Ours is the paper's (and pytorch-grad-cam's)
    # w_k = sum_ij alpha_ij relu(g_ij); tf-keras-vis, like the authors' code, also divides
    # alpha by its sum over the positions of each channel and multiplies by exp(score).
    # Both libraries compute their own definition, checked here on the same A and g.
    conv3 = keras.Model(model.inputs, [model.get_layer("conv3").output, model.get_layer("logits").output])
    with tf.GradientTape() as tape:
        maps, logits = conv3(images)
        chosen = tf.gather(logits, classes, axis=1, batch_dims=1)
    g = tape.gradient(chosen, maps).numpy().astype(np.float64)
    maps = maps.numpy().astype(np.float64)
    denominator = 2 * g**2 + maps.sum(axis=(1, 2), keepdims=True) * g**3
    alpha = np.where(denominator != 0, g**2 / np.where(denominator != 0, denominator, 1), 0)
    paper = relu((maps * (alpha * relu(g)).sum(axis=(1, 2), keepdims=True)).sum(-1))
    scale = alpha.sum(axis=(1, 2), keepdims=True)
    normalized = alpha / np.where(scale != 0, scale, 1)
    exponent = np.exp(chosen.numpy().astype(np.float64))[:, None, None, None]
    authors = relu((maps * (normalized * relu(exponent * g)).sum(axis=(1, 2), keepdims=True)).sum(-1))
    theirs = peer_cam(GradcamPlusPlus)
    for n in range(4):
        assert correlation(ours["gradcam++"][n, 0], resize(paper[n], 16, 16)) >= 0.999
        assert correlation(theirs[n], resize(authors[n], 16, 16)) >= 0.999

    # Score-CAM: the definitions differ. Ours weighs channels by the softmax over the channels
    # of the masked images' logits (DESIGN.md 9, pytorch-grad-cam); tf-keras-vis by the masked
    # images' class probabilities, and it upsamples masks with corners aligned (scipy's zoom).
    # The maps still agree on where the evidence is.
    theirs = peer_cam(Scorecam)
    assert np.mean([correlation(ours["scorecam"][n, 0], theirs[n]) for n in range(4)]) >= 0.8

    # SmoothGrad: the same noise (ours, handed to their np.random.normal), 20 samples of 15%.
    samples, seed = 20, 7
    smooth = attribute(model, images, classes=[[c] for c in classes], method="saliency", smooth="smoothgrad",
                       samples=samples, noise=0.15, seed=seed).arrays["saliency_smoothgrad"][:, 0]

    def our_noise(loc, scale, size):
        z = np.stack([np.stack([noise_sample(seed, n, s, images.shape[1:]) for n in range(len(images))])
                      for s in range(samples)])
        assert z.shape == tuple(size)
        return loc + np.asarray(scale) * z

    monkeypatch.setattr(np.random, "normal", our_noise)
    theirs = Saliency(model, clone=True)(score, images, smooth_samples=samples, smooth_noise=0.15,
                                         normalize_map=False)
    monkeypatch.undo()
    for n in range(4):
        assert correlation(smooth[n], theirs[n]) >= 0.999
    assert_reordered_close(smooth, theirs)


def nested_model():
    keras.utils.set_random_seed(0)
    inner = keras.Input((None, None, 3))
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="c1")(inner)
    h = keras.layers.MaxPooling2D(name="p1")(h)
    h = keras.layers.Conv2D(12, 3, padding="same", activation="relu", name="c2")(h)
    backbone = keras.Model(inner, h, name="backbone")
    image = keras.Input((16, 16, 3), name="image")
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(image))
    head = keras.layers.Dense(5, activation="softmax", name="probabilities")
    return keras.Model(image, head(pooled), name="nested"), backbone, head


def reference_gradcam(maps_and_scores, images, classes):
    """Grad-CAM from a GradientTape: (N, 16, 16)."""
    with tf.GradientTape() as tape:
        maps, logits = maps_and_scores(images)
        chosen = tf.gather(logits, classes, axis=1, batch_dims=1)
    g = tape.gradient(chosen, maps).numpy()
    cam = relu((maps.numpy() * g.mean(axis=(1, 2), keepdims=True)).sum(-1))
    return resize(cam, 16, 16)


@pytest.mark.slow
def test_a_backbone_inside_a_model_and_a_two_input_model_work_where_the_peer_fails():
    pytest.importorskip("tf_keras_vis")
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    images = np.random.default_rng(0).uniform(0, 1, (2, 16, 16, 3)).astype(np.float32)
    model, backbone, head = nested_model()
    result = attribute(model, images, classes=[[1], [3]])
    assert result.arrays["layer"] == "backbone/c2"  # found inside the nested model

    def nested_parts(x):
        maps = backbone(x)
        return maps, tf.matmul(tf.reduce_mean(maps, axis=[1, 2]), head.kernel) + head.bias  # the logits

    assert_reordered_close(result.arrays["gradcam"][:, 0], reference_gradcam(nested_parts, images, [1, 3]))
    with pytest.raises(ValueError, match="not connected"):  # tf-keras-vis cannot reach into the backbone
        Gradcam(model, clone=True)(CategoricalScore([1, 3]), images)

    keras.utils.set_random_seed(1)
    image, extra = keras.Input((16, 16, 3), name="image"), keras.Input((4,), name="extra")
    conv = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv")(image)
    joined = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(conv),
                                         keras.layers.Dense(8, name="extra_dense")(extra)])
    two = keras.Model([image, extra], keras.layers.Dense(3, name="logits")(joined))
    side = np.random.default_rng(1).normal(size=(2, 4)).astype(np.float32)
    result = attribute(two, {"image": images, "extra": side}, classes=[2, 0])
    parts = keras.Model(two.inputs, [two.get_layer("conv").output, two.output])
    expected = [reference_gradcam(lambda x, c=c: parts([x, side]), images, [c, c]) for c in (2, 0)]
    assert_reordered_close(result.arrays["gradcam"], np.stack(expected, axis=1))
    with pytest.raises(RuntimeError):  # tf-keras-vis resizes the CAM to every input, the vector too
        Gradcam(two, clone=True)(CategoricalScore([2, 2]), [images, side], penultimate_layer="conv")


# --------------------------------------------------------------------------- batching

def batch_of(feed_dict):
    sizes = [len(value) for key, value in feed_dict.items() if getattr(key, "name", key) == "image:0"]
    return sizes[0] if sizes else 0


def test_every_item_goes_through_the_network_in_one_run_when_the_budget_allows(monkeypatch, images):
    model = small_keras_model()
    images = np.concatenate([images, images[:1] * 0.5])  # 3 images
    real_run = compute.run
    runs = []

    def counting(rebuilt, fetches, feed_dict):
        runs.append(batch_of(feed_dict))
        return real_run(rebuilt, fetches, feed_dict)

    monkeypatch.setattr(compute, "run", counting)
    cases = [
        (dict(method=["gradcam", "gradcam++", "layercam"]), [6]),  # 3 images x 2 classes, all three CAMs
        (dict(method="saliency", smooth="smoothgrad", samples=10), [3, 60]),  # the clean images, then 60 copies
        (dict(method="integrated_gradients", steps=8), [3, 48, 3]),  # the images, the paths, the baselines
        (dict(method="scorecam"), [3, 30]),  # the layer's 10 channels mask each image
        (dict(method="occlusion", patch=10, stride=5), [3, 27]),  # 9 patches per image
    ]
    for options, expected in cases:
        runs.clear()
        attribute(model, images, classes=[0, 1], **options)
        assert [size for size in runs if size > 1] == expected, options


def test_a_small_budget_and_out_of_memory_give_smaller_chunks_and_the_same_maps(monkeypatch, images):
    model = small_keras_model()
    options = dict(classes=[0, 1, 3], method=["gradcam", "saliency"], smooth=None)
    expected = attribute(model, images, **options).arrays
    real_run = compute.run
    runs = []

    def refusing(rebuilt, fetches, feed_dict):
        size = batch_of(feed_dict)
        runs.append(size)
        if size > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_run(rebuilt, fetches, feed_dict)

    monkeypatch.setattr(compute, "run", refusing)
    got = attribute(model, images, **options).arrays
    assert max(runs) > 2 and max(runs[-3:]) <= 2
    for name in ("gradcam", "saliency", "saliency_raw"):
        assert_reordered_close(got[name], expected[name])
    monkeypatch.setattr(compute, "run", real_run)
    tiny_budget = attribute(model, images, memory_budget_mb=0.05, **options).arrays
    for name in ("gradcam", "saliency"):
        assert_reordered_close(tiny_budget[name], expected[name])


def test_out_of_memory_with_one_item_says_what_to_do(monkeypatch, images):
    def always_out_of_memory(rebuilt, fetches, feed_dict):
        raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")

    model = small_keras_model()
    attribute(model, images[:1], classes=0)  # sizes measured before the backend refuses everything
    monkeypatch.setattr(compute, "run", always_out_of_memory)
    with pytest.raises(TfCnnvisError, match="memory_budget_mb"):
        attribute(model, images[:1], classes=0)


# --------------------------------------------------------------------------- outputs

def read_png(path):
    with Image.open(path) as picture:
        return np.asarray(picture.convert("RGB"))


def event_images(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    reader = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0})
    reader.Reload()
    return {tag: (reader.Images(tag), reader.SummaryMetadata(tag).summary_description)
            for tag in reader.Tags()["images"]}


def test_pictures_on_disk_and_in_tensorboard_show_the_maps(tmp_path, images):
    model = small_keras_model()
    out, log = tmp_path / "Output", tmp_path / "Log"
    result = tf_cnnvis.attribution_visualization(model, images, classes=[2, 3], method=["gradcam", "saliency"],
                                                 path_outdir=str(out), path_logdir=str(log), step=4)
    assert result.kind == "attribution" and result
    tags = event_images(log)
    for layer, method in (("conv3", "gradcam"), ("image", "saliency")):
        folder = out / layer / "attribution" / method
        maps = result.arrays[method]
        assert maps.shape == (2, 2, 20, 20) and maps.dtype == np.float32
        for n in range(2):
            picture = display_image(images[n])
            for k, c in enumerate((2, 3)):
                shown, top = positive_scale(maps[n, k])
                assert top == pytest.approx(max(float(maps[n, k].max()), 0.0))
                overlay = read_png(folder / f"image_{n:03d}" / f"overlay_class_{c}.png")
                assert overlay.shape[:2] == (20, 20 + 2 + 4)  # the map, a gap, the colour bar
                np.testing.assert_array_equal(overlay[:, :20], colour_overlay(picture, shown))
                np.testing.assert_array_equal(overlay[0, -1], VIRIDIS[-1])  # the bar: maximum on top
                np.testing.assert_array_equal(overlay[-1, -1], colour_map(0.0))
                np.testing.assert_array_equal(read_png(folder / f"image_{n:03d}" / f"map_class_{c}.png"),
                                              colour_map(shown))
                events, description = tags[f"{layer}/attribution/{method}/image_{n:03d}/class_{c}"]
                assert events[0].step == 4 and f"to {top:.4g}" in description
                assert f"{layer}/attribution/{method}/image_{n:03d}/class_{c}/map" in tags
        grid = read_png(folder / "grid_attribution.png")
        assert grid.shape[:2] == (2 * 20 + 2, 2 * 20 + 2 + 2 + 4)  # rows: images, columns: classes
        assert tags[f"{layer}/attribution/{method}"][0][0].step == 4
    html = open(build_gallery(str(out)), encoding="utf-8").read()
    assert "attribution/gradcam" in html and "attribution/saliency" in html


def zero_for_class_one():
    """conv + ReLU -> average -> dense with weights +1 (class 0) and -1 (class 1): Grad-CAM of class 1 is 0."""
    inputs = keras.Input((8, 8, 1), name="image")
    conv = keras.layers.Conv2D(2, 3, padding="same", activation="relu", name="conv")
    dense = keras.layers.Dense(2, name="logits")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(conv(inputs))))
    conv.set_weights([np.ones((3, 3, 1, 2), np.float32), np.zeros(2, np.float32)])
    dense.set_weights([np.array([[1, -1], [1, -1]], np.float32), np.zeros(2, np.float32)])
    return model


def test_a_map_that_is_zero_everywhere_is_shown_as_zero_and_says_so(tmp_path, caplog):
    images = np.random.default_rng(2).uniform(0.1, 1, (1, 8, 8, 1)).astype(np.float32)
    out, log = tmp_path / "Output", tmp_path / "Log"
    with caplog.at_level(logging.WARNING, logger="tf_cnnvis"):
        result = tf_cnnvis.attribution_visualization(zero_for_class_one(), images, classes=[0, 1],
                                                     path_outdir=str(out), path_logdir=str(log))
    maps = result.arrays["gradcam"][0]
    assert maps[0].max() > 0 and not maps[1].any()
    assert "zero everywhere" in caplog.text and "class 1" in caplog.text
    zero = read_png(out / "conv" / "attribution" / "gradcam" / "map_class_1.png")
    assert (zero == colour_map(0.0)).all()  # the colour of 0 all over: not stretched, not black
    overlay = read_png(out / "conv" / "attribution" / "gradcam" / "overlay_class_1.png")[:, :8]
    np.testing.assert_array_equal(overlay, colour_overlay(display_image(images[0]), np.zeros((8, 8))))
    _, description = event_images(log)["conv/attribution/gradcam/class_1"]
    assert "zero everywhere" in description


def test_the_command_line_writes_attribution_maps(tmp_path, capsys):
    model_path = tmp_path / "small.keras"
    small_keras_model().save(model_path)
    picture = tmp_path / "picture.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(picture)
    out = tmp_path / "Output"
    code = cli.main(["attribution", str(model_path), str(picture), "--method", "gradcam,occlusion", "--classes",
                     "1,3", "--outdir", str(out), "--no-logdir", "--patch", "6", "-q"])
    assert code == 0
    for folder, method in (("conv3", "gradcam"), ("image", "occlusion")):
        for c in (1, 3):
            assert read_png(out / folder / "attribution" / method / f"overlay_class_{c}.png").shape == (24, 30, 3)
    code = cli.main(["attribution", str(model_path), str(picture), "--classes", "7", "--no-outdir",
                     "--no-logdir", "-q"])
    assert code == 1 and "class 7 is out of range" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["attribution", "m", "i", "--method", "gradcam,gradcm"])
    assert stop.value.code == 2 and "'gradcm' is not one of" in capsys.readouterr().err


def test_the_subcommands_help_and_bad_arguments_answer_without_loading_tensorflow():
    script = ("import sys\n"
              "from tf_cnnvis import cli\n"
              "for argv in (['attribution', '--help'], ['attribution', 'm', 'i', '--method', 'lrp']):\n"
              "    try:\n"
              "        cli.main(argv)\n"
              "    except SystemExit:\n"
              "        pass\n"
              "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "usage: tf-cnnvis attribution" in done.stdout and "--smooth" in done.stdout
    assert "'lrp' is not one of" in done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_the_training_callback_writes_attribution_maps_every_epoch(tmp_path, images):
    from tf_cnnvis.callbacks import VisualizationCallback

    model = small_keras_model()
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    callback = VisualizationCallback(images[:1], log_dir=str(tmp_path / "logs"),
                                     visualizations=("gradcam", "saliency"), classes=[0, 1])
    model.fit(images, np.array([0, 1]), epochs=2, verbose=0, callbacks=[callback])
    tags = event_images(tmp_path / "logs" / "visualization")
    for tag in ("conv3/attribution/gradcam", "image/attribution/saliency"):
        assert sorted(event.step for event in tags[tag][0]) == [0, 1]
    assert callback.results[1][0].kind == "attribution"
    picture = np.asarray(Image.open(io.BytesIO(tags["conv3/attribution/gradcam/class_0"][0][0].encoded_image_string)))
    assert picture.shape[:2] == (20, 26)


# --------------------------------------------------------------------------- bad input

def raises(error_class, *needles):
    """A check that the library's ``error_class`` is raised and its message holds every needle."""

    class Check:
        def __enter__(self):
            self.context = pytest.raises(error_class)
            self.info = self.context.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.context.__exit__(*exc)
            if not handled:
                return False
            assert isinstance(self.info.value, TfCnnvisError)
            for needle in needles:
                assert needle in str(self.info.value), f"{needle!r} not in {str(self.info.value)!r}"
            return handled

    return Check()


def side_branch_graph():
    """x -> conv relu -> mean -> dense logits, and a convolution 'side' that feeds nothing."""
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 8, 8, 3], name="x")
        h = tf.nn.relu(tf.nn.conv2d(x, rng.normal(size=(3, 3, 3, 4)).astype(np.float32), 1, "SAME"), name="relu")
        tf.nn.conv2d(x, rng.normal(size=(3, 3, 3, 2)).astype(np.float32), 1, "SAME", name="side")
        tf.matmul(tf.reduce_mean(h, axis=[1, 2]), rng.normal(size=(4, 3)).astype(np.float32), name="logits")
    return graph


@pytest.mark.parametrize("options, error, needles", [
    (dict(classes=4), OptionError, ["class 4 is out of range", "0..3"]),
    (dict(classes=[1, -1]), OptionError, ["class -1 is out of range"]),
    (dict(classes=[1.5]), OptionError, ["class 1.5 is not an integer", "0..3"]),
    (dict(classes=2.0), OptionError, ["classes=2.0 is not accepted", "class index"]),
    (dict(classes="cat", labels=["a", "b", "c", "d"]), OptionError, ["'cat' is not one of the labels"]),
    (dict(classes="cat"), OptionError, ["'cat' is a name but no labels"]),
    (dict(classes=[]), OptionError, ["classes=[] is empty", "None for each image's top class"]),
    (dict(classes=[[0], [1], [2]]), OptionError, ["3 lists but 2 image(s)"]),
    (dict(classes=[[0], [1, 2]]), OptionError, ["of one length"]),
    (dict(classes=[1, 1]), OptionError, ["lists 1 twice"]),
    (dict(labels=["a", "b"]), OptionError, ["labels has 2 names", "4 classes"]),
    (dict(method="gradcams"), OptionError, ["'gradcams' is not one of", "'gradcam'"]),
    (dict(method=[]), OptionError, ["method=[]"]),
    (dict(layer="gap"), OptionError, ["layer 'gap' has output shape", "spatial extent"]),
    (dict(layer="conv9"), LayerNotFoundError, ["no layer named 'conv9'", "closest names"]),
    (dict(method="saliency", layer="conv3"), OptionError, ["layer='conv3' is used by the CAM methods"]),
    (dict(method="saliency", smooth="smoothgrad", samples=0), OptionError, ["samples=0", ">= 1"]),
    (dict(method="saliency", smooth="smoothgrad", samples=-3), OptionError, ["samples=-3"]),
    (dict(method="saliency", smooth="smoothgrad", noise=-0.1), OptionError, ["noise=-0.1", ">= 0"]),
    (dict(method="saliency", smooth="blur"), OptionError, ["smooth='blur' is not one of", "'smoothgrad'"]),
    (dict(smooth="smoothgrad"), OptionError, ["wraps gradient methods", "'gradcam' is not one"]),
    (dict(method="integrated_gradients", steps=0), OptionError, ["steps=0", ">= 2"]),
    (dict(method="integrated_gradients", steps=-2, rule="riemann_right"), OptionError, ["steps=-2", ">= 1"]),
    (dict(method="integrated_gradients", rule="simpson"), OptionError, ["rule='simpson'", "'trapezoid'"]),
    (dict(method="occlusion", patch=0), OptionError, ["patch=0", "integer >= 1"]),
    (dict(method="occlusion", patch=(3, -1)), OptionError, ["patch=(3, -1)"]),
    (dict(method="occlusion", stride=0), OptionError, ["stride=0"]),
    (dict(method="occlusion", patch=21), OptionError, ["patch=(21, 21) is larger than the images (20x20)"]),
    (dict(method="integrated_gradients", baseline=np.zeros((5, 5, 3))), OptionError,
     ["baseline of shape (5, 5, 3)", "(20, 20, 3)"]),
    (dict(method="occlusion", baseline=np.zeros((3, 20, 20, 3))), OptionError, ["baseline of shape (3, 20, 20, 3)"]),
    (dict(method="scorecam", max_channels=0), OptionError, ["max_channels=0"]),
    (dict(output="conv3"), OptionError, ["shape (None, None, None, 10)", "(N, classes)"]),
    (dict(opacity=2), OptionError, ["opacity=2"]),
])
def test_bad_input_is_refused_before_anything_is_written(options, error, needles, images, tmp_path):
    out, log = tmp_path / "Output", tmp_path / "Log"
    with raises(error, *needles):
        tf_cnnvis.attribution_visualization(small_keras_model(), images, **{"classes": None, **options},
                                            path_outdir=str(out), path_logdir=str(log))
    assert not out.exists() and not log.exists()


def test_a_layer_that_does_not_feed_the_scores_several_outputs_and_images_that_are_not_images():
    images = np.zeros((1, 8, 8, 3), np.float32)
    with raises(OptionError, "layer 'side' does not feed the class scores"):
        attribute(side_branch_graph(), {"x": images}, layer="side")
    assert attribute(side_branch_graph(), {"x": images}).arrays["layer"] == "relu"  # the default ignores it
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs))
    two_outputs = keras.Model(inputs, [keras.layers.Dense(3, name="kind")(features),
                                       keras.layers.Dense(5, activation="softmax", name="colour")(features)])
    with raises(OptionError, "cannot tell which output holds the class scores", "pass output="):
        attribute(two_outputs, images)
    chosen = attribute(two_outputs, images, output="colour", classes=4)  # the softmax's logits
    assert chosen.arrays["scores"].shape == (1, 5) and chosen.arrays["gradcam"].shape == (1, 1, 8, 8)
    with raises(FeedError, "float images (N, H, W, C)"):
        attribute(keras.Sequential([keras.Input((5,)), keras.layers.Dense(2)]), np.zeros((2, 5), np.float32),
                  method="saliency")
