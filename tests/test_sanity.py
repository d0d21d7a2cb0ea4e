"""Sanity checks and deletion/insertion curves: measurements checked against hand computations.

- An "edge detector" method that ignores the weights is 1 at every step by
  every measure, while the plain gradient of the same model is not.
- A linear model: after randomizing its one layer, the gradient is the
  random weight vector that was assigned, and the measured rank
  correlations equal scipy's on the maps computed here.
- A linear model: deletion and insertion in the order of the exact
  contributions (given as maps, and computed by gradient x input) follow
  the analytic curves.
- SSIM equals ``tf.image.ssim``; Spearman equals ``scipy.stats.spearmanr``.
- The user's weights are bitwise unchanged, later calls see the original
  weights, and a cascade imports each graph once.
- Bad input raises the library's errors before any file is written.
- Outputs: pictures decode; TensorBoard's reader finds one run per method
  with the scalars at the documented steps; the command line works and
  answers --help without TensorFlow.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from scipy import ndimage, stats

import tf_cnnvis
import tf_cnnvis.rebuild
from tf_cnnvis import cli
from tf_cnnvis.errors import LayerNotFoundError, OptionError
from tf_cnnvis.load import load_model
from tf_cnnvis.rebuild import weight_values
from tf_cnnvis.sanity import deletion_insertion, randomized_model, sanity_check, spearman, ssim, weight_layers
from tf_cnnvis.sanity.measures import display_normalize

from conftest import small_keras_model
from numerics import assert_reordered_close

keras = pytest.importorskip("keras")

NO_OUTPUT = {"path_outdir": None, "path_logdir": None}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def linear_model(seed=0, shape=(6, 6, 2), classes=3):
    """image -> flatten -> dense (logits): the gradient of class c is the kernel's column c."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape, name="image")
    outputs = keras.layers.Dense(classes, name="dense")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(seed)
    model.get_layer("dense").set_weights([rng.normal(0, 1, (int(np.prod(shape)), classes)).astype(np.float32),
                                          rng.normal(0, 0.5, classes).astype(np.float32)])
    return model


def edges(model, images, classes):
    """A 'method' that draws the image's edges whatever the model: (N, K, H, W)."""
    gray = images.mean(axis=-1)
    magnitude = np.hypot(ndimage.sobel(gray, axis=1), ndimage.sobel(gray, axis=2))
    return np.repeat(magnitude[:, None], classes.shape[1], axis=1)


@pytest.fixture
def pictures():
    rng = np.random.default_rng(3)
    return rng.uniform(0, 1, size=(2, 20, 20, 3)).astype(np.float32)


# --------------------------------------------------------------------------- the measures

def test_ssim_equals_tensorflows_and_spearman_equals_scipys():
    rng = np.random.default_rng(0)
    first = rng.uniform(size=(3, 24, 30))
    second = np.clip(first + rng.normal(0, 0.3, first.shape), 0, 1)
    reference = tf.image.ssim(tf.constant(first[..., None]), tf.constant(second[..., None]), max_val=1.0).numpy()
    np.testing.assert_allclose(ssim(first, second), reference, atol=1e-6)  # TensorFlow computes in float32
    np.testing.assert_allclose(ssim(first, first), 1.0, atol=1e-12)
    expected = [stats.spearmanr(a.ravel(), b.ravel()).statistic for a, b in zip(first, second)]
    np.testing.assert_allclose(spearman(first, second), expected, atol=1e-12)
    tied = np.round(first * 4)  # ties get their mean rank, as scipy gives them
    np.testing.assert_allclose(spearman(tied, second), [stats.spearmanr(a.ravel(), b.ravel()).statistic
                                                        for a, b in zip(tied, second)], atol=1e-12)
    flat = np.zeros((5, 5))
    assert spearman(flat, first[0, :5, :5]) == 0 and spearman(flat, flat) == 1
    assert display_normalize(flat).max() == 0 and display_normalize(first).max() == 1


# --------------------------------------------------------------------------- randomization

def test_a_method_that_ignores_the_weights_stays_identical_at_every_step(pictures):
    model = small_keras_model()
    result = sanity_check(model, pictures, methods=[edges, "gradient"], faithfulness=False, **NO_OUTPUT)
    assert result.randomized == ["logits", "conv3", "conv2", "conv1"]
    for table in (result.cascade["edges"], result.independent["edges"]):
        for measure, values in table.items():
            np.testing.assert_allclose(values, 1.0, atol=1e-12, err_msg=measure)
    gradient = result.cascade["gradient"]
    assert gradient["spearman_abs"][0] == 1 and gradient["spearman_abs"][-1] < 0.5
    assert result.passed() == {"edges": False, "gradient": True}
    assert np.all(result.independent["gradient"]["spearman_signed"] < 0.9)


@pytest.mark.parametrize("how", ["normal", "shuffle"])
def test_linear_model_gradient_becomes_the_random_weights_and_correlations_match_scipy(how):
    model = linear_model()
    kernel = model.get_layer("dense").get_weights()[0]
    images = np.random.default_rng(1).uniform(-1, 1, (2, 6, 6, 2)).astype(np.float32)
    result = sanity_check(model, images, methods=["gradient"], classes=[2], faithfulness=False,
                          randomization=how, seed=7, **NO_OUTPUT)
    assert result.randomized == ["dense"]
    frozen = load_model(model)
    randomized_weights = weight_values(randomized_model(frozen, ["dense"], 7, how).graph_def)
    random_kernel = next(value for value in randomized_weights.values() if value.shape == kernel.shape)
    assert not np.allclose(random_kernel, kernel)
    if how == "shuffle":
        np.testing.assert_array_equal(np.sort(random_kernel, axis=None), np.sort(kernel, axis=None))
    else:
        assert 0.7 < random_kernel.std() / kernel.std() < 1.3
    original = kernel[:, 2].reshape(6, 6, 2)
    randomized = random_kernel[:, 2].reshape(6, 6, 2)
    maps = result.arrays["maps"]["gradient"]  # (steps + 1, N, K, H, W): channels summed
    for n in range(2):
        assert_reordered_close(maps[0, n, 0], original.sum(axis=-1))
        assert_reordered_close(maps[1, n, 0], randomized.sum(axis=-1))
    expected_signed = stats.spearmanr(original.sum(-1).ravel(), randomized.sum(-1).ravel()).statistic
    expected_abs = stats.spearmanr(np.abs(original).sum(-1).ravel(), np.abs(randomized).sum(-1).ravel()).statistic
    scores = result.arrays["cascade"]["gradient"]
    np.testing.assert_allclose(scores["spearman_signed"][1], expected_signed, atol=1e-9)
    np.testing.assert_allclose(scores["spearman_abs"][1], expected_abs, atol=1e-9)
    # One layer: its independent randomization is the cascade's first step, the same random weights.
    for measure in scores:
        np.testing.assert_allclose(result.independent["gradient"][measure], result.cascade["gradient"][measure][1:])


def test_the_users_weights_stay_and_later_calls_see_them(pictures):
    model = small_keras_model()
    before = [weight.copy() for weight in model.get_weights()]
    plain = tf_cnnvis.attribution_visualization(model, pictures, method="saliency", **NO_OUTPUT)
    imports = []
    original_init = tf_cnnvis.rebuild.RebuiltGraph.__init__

    def counting_init(self, *args, **kwargs):
        imports.append(args[1] if len(args) > 1 else kwargs.get("method"))
        original_init(self, *args, **kwargs)

    tf_cnnvis.rebuild.RebuiltGraph.__init__ = counting_init
    try:
        result = sanity_check(model, pictures, methods=["gradient", "guided", "saliency"], faithfulness=False,
                              **NO_OUTPUT)
    finally:
        tf_cnnvis.rebuild.RebuiltGraph.__init__ = original_init
    # Eight randomized copies, yet only the guided graph was new: the others were assigned their weights.
    assert len(result.randomized) == 4 and imports == ["guided"]
    after = model.get_weights()
    assert len(after) == len(before)
    for old, new in zip(before, after):
        assert old.dtype == new.dtype
        np.testing.assert_array_equal(old, new)
    again = tf_cnnvis.attribution_visualization(model, pictures, method="saliency", **NO_OUTPUT)
    np.testing.assert_array_equal(again.arrays["saliency"], plain.arrays["saliency"])
    assert_reordered_close(result.arrays["abs_maps"]["saliency"][0], plain.arrays["saliency_raw"].sum(axis=-1))


def test_every_step_computes_with_exactly_its_randomized_weights(pictures):
    """Steps assign only the weights that changed; the maps equal those of copies loaded whole afterwards."""
    model = small_keras_model()
    result = sanity_check(model, pictures, methods=["gradient_x_input"], faithfulness=False, seed=3, **NO_OUTPUT)
    frozen = load_model(model)
    layers = result.randomized
    classes = result.arrays["classes"].tolist()

    def whole(randomized):
        copy = randomized_model(frozen, randomized, seed=3)
        tf_cnnvis.rebuild.clear_cache()  # imported anew: every weight read from the copy's own graph
        return tf_cnnvis.attribution_visualization(copy, pictures, classes=classes, method="gradient_x_input",
                                                   **NO_OUTPUT).arrays["gradient_x_input"]

    for depth in range(1, len(layers) + 1):
        assert_reordered_close(result.arrays["maps"]["gradient_x_input"][depth], whole(layers[:depth]))
    for place, layer in enumerate(layers):  # one layer alone: the one before it is back to its trained weights
        assert_reordered_close(result.arrays["independent_maps"]["gradient_x_input"][place], whole([layer]))


def test_weight_layers_run_from_the_output_and_group_a_layers_kernels():
    inputs = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(4, 3, name="first")(inputs)
    x = keras.layers.SeparableConv2D(5, 3, name="separable")(x)
    x = keras.layers.BatchNormalization(name="norm")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="head")(x)
    layers = weight_layers(load_model(keras.Model(inputs, outputs)))
    assert [layer.name for layer in layers] == ["head", "separable", "first"]
    assert [len(layer.weights) for layer in layers] == [2, 3, 2]  # kernel(s) and bias; batch norm kept


# --------------------------------------------------------------------------- deletion and insertion

def analytic_curves(model, images, classes, order_maps, steps):
    """Deletion and insertion probabilities computed here: the logits of a linear model are x.W + b."""
    kernel, bias = (np.asarray(w, np.float64) for w in model.get_layer("dense").get_weights())
    count, height, width, channels = images.shape
    per_step = int(np.ceil(height * width / steps))
    counts = list(range(0, height * width, per_step)) + [height * width]
    deletion, insertion = np.zeros((count, len(counts))), np.zeros((count, len(counts)))
    for n in range(count):
        order = np.argsort(-order_maps[n].ravel(), kind="stable")
        for i, removed in enumerate(counts):
            mask = np.zeros(height * width, bool)
            mask[order[:removed]] = True
            mask = mask.reshape(height, width, 1)
            for curve, kept in ((deletion, ~mask), (insertion, mask)):
                logits = (images[n].astype(np.float64) * kept).ravel() @ kernel + bias
                probabilities = np.exp(logits - logits.max())
                curve[n, i] = (probabilities / probabilities.sum())[classes[n]]
    return np.asarray(counts) / (height * width), deletion, insertion


def test_deletion_in_the_order_of_exact_contributions_gives_the_analytic_curve():
    model = linear_model(seed=2)
    images = np.random.default_rng(4).uniform(-1, 1, (2, 6, 6, 2)).astype(np.float32)
    kernel = model.get_layer("dense").get_weights()[0].astype(np.float64)
    classes = np.array([0, 2])
    contributions = np.stack([(images[n] * kernel[:, c].reshape(6, 6, 2)).sum(axis=-1)
                              for n, c in enumerate(classes)])
    result = deletion_insertion(model, images, methods=["gradient_x_input"], classes=[[0], [2]],
                                maps={"exact": contributions}, baseline="zero", **NO_OUTPUT)
    fractions, deletion, insertion = analytic_curves(model, images, classes, contributions, steps=100)
    np.testing.assert_allclose(result.arrays["fractions"], fractions)
    assert len(fractions) == 37  # 36 pixels, one per step, and the start
    for name in ("exact", "gradient_x_input"):  # gradient x input is each pixel's exact contribution here
        assert_reordered_close(result.arrays["deletion"][name][:, 0], deletion, err_msg=name)
        assert_reordered_close(result.arrays["insertion"][name][:, 0], insertion, err_msg=name)
        np.testing.assert_allclose(result.faithfulness[name]["deletion_auc"],
                                   np.trapezoid(deletion, fractions, axis=1).mean(), rtol=1e-4)
    # Coarser steps: 4 pixels each (10 steps), the same analytic points.
    coarse = deletion_insertion(model, images, classes=[[0], [2]], maps={"exact": contributions}, baseline="zero",
                                steps=10, **NO_OUTPUT)
    fractions, deletion, _ = analytic_curves(model, images, classes, contributions, steps=10)
    assert len(fractions) == 10  # 0, 4, ..., 32, 36
    assert_reordered_close(coarse.arrays["deletion"]["exact"][:, 0], deletion)


def test_the_blurred_baseline_is_each_channel_blurred():
    model = linear_model(seed=5, shape=(40, 40, 1), classes=2)
    images = np.random.default_rng(6).uniform(0, 1, (1, 40, 40, 1)).astype(np.float32)
    ones = np.ones((1, 1, 40, 40))
    result = deletion_insertion(model, images, maps={"flat": ones}, classes=0, steps=1, score="logit", **NO_OUTPUT)
    kernel, bias = model.get_layer("dense").get_weights()
    blurred = ndimage.gaussian_filter(images[0, :, :, 0].astype(np.float64), 2.0, mode="nearest")  # max(2, 40/20)
    expected = blurred.ravel() @ kernel[:, 0] + bias[0]  # everything removed: the baseline's logit
    np.testing.assert_allclose(result.arrays["deletion"]["flat"][0, 0, -1], expected, rtol=1e-4)
    np.testing.assert_allclose(result.arrays["insertion"]["flat"][0, 0, 0], expected, rtol=1e-4)


# --------------------------------------------------------------------------- every method, the outputs

def test_every_method_runs_and_the_outputs_can_be_read(pictures, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = small_keras_model()
    result = sanity_check(model, pictures[:1], steps=2, independent=False, deletion_steps=20,
                          attribution_options={"steps": 4}, path_outdir=str(tmp_path / "out"),
                          path_logdir=str(tmp_path / "log"))
    assert result.methods == list(tf_cnnvis.options.SANITY_METHODS)
    for name in result.methods:
        for measure, values in result.cascade[name].items():
            assert values.shape == (3,) and values[0] == 1 and np.all(np.abs(values) <= 1 + 1e-9), (name, measure)
        assert result.faithfulness[name]["deletion"].shape == (21,)
    assert result.arrays["maps"]["gradcam"].shape == (3, 1, 1, 20, 20)
    files = {os.path.relpath(path, tmp_path / "out") for path in result.paths}
    assert {"sanity/cascade.png", "sanity/similarity_cascade.png", "sanity/deletion_insertion.png",
            "input_000.png"} <= files
    cascade = np.asarray(Image.open(tmp_path / "out" / "sanity" / "cascade.png"))
    np.testing.assert_array_equal(cascade, result.figures["cascade"])
    assert cascade.shape[0] > 12 * 64 and cascade.shape[1] > 4 * 64 and cascade.std() > 10  # 12 rows, 4 columns
    run = EventAccumulator(str(tmp_path / "log" / "gradcam_plus_plus"))
    run.Reload()
    spearman_abs = run.Scalars("sanity/cascade/spearman_abs")
    assert [event.step for event in spearman_abs] == [0, 1, 2]
    np.testing.assert_allclose([event.value for event in spearman_abs], result.cascade["gradcam++"]["spearman_abs"],
                               rtol=1e-6)
    deletion = run.Scalars("faithfulness/deletion")
    assert [event.step for event in deletion] == list(range(0, 101, 5))
    assert run.Scalars("faithfulness/insertion_auc")[0].step == 0
    images = EventAccumulator(str(tmp_path / "log"))
    images.Reload()
    assert {"sanity/cascade", "sanity/similarity_cascade", "sanity/deletion_insertion"} <= set(images.Tags()["images"])


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("options, error, words", [
    ({"methods": ["gradcam", "lrp"]}, OptionError, ["'lrp'", "'gradcam'", "callable"]),
    ({"methods": []}, OptionError, ["non-empty"]),
    ({"layers": ["conv2", "conv9"]}, LayerNotFoundError, ["'conv9'", "closest", "conv3"]),
    ({"steps": 0}, OptionError, ["steps=0", ">= 1"]),
    ({"steps": 5}, OptionError, ["steps=5", "4 layer(s)", "at most 4"]),
    ({"deletion_steps": 0}, OptionError, ["deletion_steps=0"]),
    ({"randomization": "uniform"}, OptionError, ["'uniform'", "'normal'", "'shuffle'"]),
    ({"baseline": "noise"}, OptionError, ["'noise'", "'blur'"]),
    ({"score": "odds"}, OptionError, ["'odds'", "'probability'"]),
    ({"attribution_options": {"smoth": "smoothgrad"}}, OptionError, ["'smoth'", "smooth"]),
    ({"attribution_options": {"classes": 1}}, OptionError, ["'classes'", "sets it itself"]),
    ({"target_channel": 3}, OptionError, ["target_layer"]),
    ({"target_layer": "conv2", "target_channel": 8}, OptionError, ["channel 8", "'conv2'", "0..7"]),
    ({"classes": 7}, OptionError, ["class 7", "4 classes"]),
])
def test_bad_input_is_refused_before_any_file_is_written(pictures, tmp_path, options, error, words):
    outdir, logdir = tmp_path / "out", tmp_path / "log"
    with pytest.raises(error) as raised:
        sanity_check(small_keras_model(), pictures, path_outdir=str(outdir), path_logdir=str(logdir), **options)
    for word in words:
        assert word in str(raised.value), (word, str(raised.value))
    assert not outdir.exists() and not logdir.exists()


def test_a_model_without_weights_to_randomize_is_refused(tmp_path):
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Softmax()(keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(OptionError, match="no layer with weights to randomize"):
        sanity_check(keras.Model(inputs, outputs), np.ones((1, 8, 8, 3), np.float32), methods=["gradient"],
                     path_outdir=str(tmp_path / "out"), path_logdir=str(tmp_path / "log"))
    assert not (tmp_path / "out").exists()


def test_a_callable_that_returns_the_wrong_shape_is_named(pictures, tmp_path):
    def broken(model, images, classes):
        return images

    with pytest.raises(OptionError, match=r"'broken' returned values of shape \(2, 20, 20, 3\)"):
        sanity_check(small_keras_model(), pictures, methods=[broken], path_outdir=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- command line

def test_the_command_line_prints_the_table_and_writes_the_pictures(tmp_path, capsys):
    path = str(tmp_path / "digits.keras")
    small_keras_model(input_shape=(16, 16, 3)).save(path)
    picture = str(tmp_path / "noise.png")
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), np.uint8)).save(picture)
    code = cli.main(["sanity", path, picture, "--method", "gradient,guided", "--layers", "conv3,logits",
                     "--no-independent", "--deletion-steps", "10", "--outdir", str(tmp_path / "out"),
                     "--logdir", str(tmp_path / "log"), "--report", "--quiet"])
    assert code == 0
    assert (tmp_path / "out" / "sanity" / "cascade.png").is_file() and (tmp_path / "out" / "index.html").is_file()
    assert sorted(os.listdir(tmp_path / "log"))[-2:] == ["gradient", "guided"]
    code = cli.main(["sanity", path, picture, "--method", "gradient", "--layers", "conv3", "--no-faithfulness",
                     "--no-outdir", "--no-logdir"])
    out = capsys.readouterr().out
    assert code == 0 and "| method | Spearman abs, mean |" in out and "| gradient |" in out and "conv3" in out


def test_help_and_bad_methods_answer_without_loading_tensorflow():
    script = ("import sys\n"
              "from tf_cnnvis import cli\n"
              "for argv in (['sanity', '--help'], ['sanity', 'm', 'i', '--method', 'lrp']):\n"
              "    try:\n"
              "        cli.main(argv)\n"
              "    except SystemExit as stop:\n"
              "        print('exit', stop.code)\n"
              "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[-3:] == ["exit 0", "exit 2", "[]"]
    assert "'lrp' is not one of" in done.stderr and "cascade" in done.stdout
