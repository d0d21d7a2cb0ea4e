"""Each channel's top images in a dataset: exact top-k, receptive fields, reconstructions, outputs."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_cnnvis.top_activations.scan as scan_module
from tf_cnnvis import compute
from tf_cnnvis.errors import FeedError, OptionError
from tf_cnnvis.top_activations import (
    StreamingTopK,
    load_top_activations,
    render_top_activations,
    top_activations,
)

from conftest import small_keras_model
from numerics import assert_reordered_close

HERE = os.path.dirname(os.path.abspath(__file__))


def brute_force(values: np.ndarray, k: int):
    """Top-k by sorting everything: (scores, image index, (y, x)) per channel."""
    n, height, width, channels = values.shape
    flat = values.reshape(n, height * width, channels)
    best, where = flat.max(axis=1), flat.argmax(axis=1)  # (N, C)
    order = np.lexsort((np.broadcast_to(np.arange(n)[:, None], best.shape), -best), axis=0)[:k].T
    units = np.stack(np.unravel_index(where, (height, width)), axis=-1)  # (N, C, 2)
    picked_units = np.stack([units[order[c], c] for c in range(channels)])
    return np.take_along_axis(best.T, order, axis=1), order, picked_units


def assert_same_top_k(tops, values, scores, index, units):
    """``tops`` is brute force's top-k, up to ties within float32 rounding.

    The scan's batches sum in another order than brute force's single
    batch, so two candidates whose values differ by less than that rounding
    may trade places; every pick must still hold the value it claims, and
    that value must be brute force's at the same rank.
    """
    channels = np.arange(values.shape[-1])[:, None]
    picked = values[tops.image_index, tops.units[..., 0], tops.units[..., 1], channels]
    assert_reordered_close(tops.scores, picked)
    assert_reordered_close(tops.scores, scores)
    for row in tops.image_index:  # no image twice in one channel's top-k
        assert len(set(row.tolist())) == len(row)
    assert np.mean(tops.image_index == index) > 0.9 and np.mean(np.all(tops.units == units, -1)) > 0.9


def test_streaming_top_k_equals_a_full_sort_whatever_the_batches():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(500, 7)).astype(np.float32)
    scores[100:110] = scores[0]  # ties: the earlier image must win
    units = rng.integers(0, 9, (500, 7, 2)).astype(np.int32)
    top = StreamingTopK(7, 9)
    begin = 0
    while begin < len(scores):
        size = int(rng.integers(1, 40))
        top.update(scores[begin:begin + size], np.arange(begin, min(begin + size, 500)),
                   units[begin:begin + size])
        begin += size
    order = np.lexsort((np.broadcast_to(np.arange(500)[:, None], scores.shape), -scores), axis=0)[:9].T
    np.testing.assert_array_equal(top.index, order)
    np.testing.assert_array_equal(top.scores, np.take_along_axis(scores.T, order, axis=1))
    np.testing.assert_array_equal(top.units, np.stack([units[order[c], c] for c in range(7)]))


@pytest.fixture(scope="module")
def model_and_images():
    rng = np.random.default_rng(1)
    return small_keras_model(seed=2), rng.uniform(0, 1, (150, 20, 20, 3)).astype(np.float32)


def generator_of(images):
    """Single images and batches of odd sizes, with labels, as a training generator yields them."""
    yield images[0], 0
    begin = 1
    for size in (7, 1, 50):
        yield images[begin:begin + size], np.zeros(size)
        begin += size
    for image in images[begin:]:
        yield image, 0


@pytest.mark.parametrize("source", ["array", "dataset", "unbatched dataset", "generator"])
def test_top_k_equals_brute_force_for_every_kind_of_source(model_and_images, source):
    model, images = model_and_images
    stream = {
        "array": lambda: images,
        "dataset": lambda: tf.data.Dataset.from_tensor_slices((images, np.zeros(150))).batch(32),
        "unbatched dataset": lambda: tf.data.Dataset.from_tensor_slices(images),
        "generator": lambda: generator_of(images),
    }[source]()
    result = top_activations(model, stream, ["conv2", "conv3"], k=5, batch_size=16,
                             reconstruct=False, path_outdir=None)
    assert result.count == 150
    for name in ("conv2", "conv3"):
        values = keras.Model(model.inputs, model.get_layer(name).output)(images).numpy()
        scores, index, units = brute_force(values, 5)
        assert_same_top_k(result[name], values, scores, index, units)
    # Only images in some top-k are kept, whatever the dataset size.
    kept = set(np.concatenate([t.image_index.ravel() for t in result.layers.values()]).tolist())
    assert set(result.image_index.tolist()) == kept


def integer_net():
    """One convolution with integer weights: on small integer images every sum is exact, so equal images tie."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 1))
    conv = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")
    model = keras.Model(inputs, conv(inputs))
    kernel = np.random.default_rng(5).integers(-2, 3, (3, 3, 1, 4)).astype(np.float32)
    conv.set_weights([kernel, np.zeros(4, np.float32)])
    return model


@pytest.mark.parametrize("batches_per_call", ["many", "one"])
def test_ties_go_to_the_earlier_image_across_batches_and_calls(monkeypatch, batches_per_call):
    rng = np.random.default_rng(6)
    distinct = rng.integers(0, 4, (12, 7, 7, 1)).astype(np.float32)
    images = distinct[rng.integers(0, 12, 61)]  # each image several times: exact ties everywhere
    if batches_per_call == "one":
        monkeypatch.setattr(scan_module, "CALL_BYTES", 1)
    model = integer_net()
    result = top_activations(model, images, ["conv"], k=6, batch_size=7, reconstruct=False, path_outdir=None)
    scores, index, units = brute_force(model(images).numpy(), 6)
    tops = result["conv"]
    np.testing.assert_array_equal(tops.image_index, index)
    np.testing.assert_array_equal(tops.scores, scores)
    np.testing.assert_array_equal(tops.units, units)
    assert result.count == 61 and set(result.image_index.tolist()) == set(index.ravel().tolist())


def test_a_layer_inside_a_dilated_convolution_is_refused_with_a_way_out():
    """Inside SpaceToBatchND ... BatchToSpaceND a tensor holds four blocks per image, not one map."""
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 1], name="x")
        blocks = tf.space_to_batch_nd(x, [2, 2], [[0, 0], [0, 0]])
        inner = tf.nn.relu(tf.nn.conv2d(blocks, np.ones((3, 3, 1, 2), np.float32), 1, "SAME"), name="inner")
        tf.identity(tf.compat.v1.batch_to_space_nd(inner, [2, 2], [[0, 0], [0, 0]]), name="out")
    images = np.random.default_rng(7).uniform(0, 1, (5, 8, 8, 1)).astype(np.float32)
    with pytest.raises(OptionError, match="gives 20 items for 5 images, so it is not one map per image"):
        top_activations(graph, images, ["inner"], reconstruct=False, path_outdir=None)


def linear_strided_net():
    """No rectifiers or pooling: a unit's input-gradient is nonzero on its whole receptive field."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(3, 3, strides=2, padding="same", name="conv_a")(inputs)
    x = keras.layers.Conv2D(4, 3, dilation_rate=2, padding="valid", name="conv_b")(x)
    x = keras.layers.Conv2D(5, 2, strides=2, padding="valid", name="conv_c")(x)
    return keras.Model(inputs, x)


def test_boxes_are_the_support_of_each_kept_units_gradient():
    model = linear_strided_net()
    images = np.random.default_rng(3).uniform(-1, 1, (12, 29, 29, 1)).astype(np.float32)
    result = top_activations(model, images, ["conv_c"], k=3, method="gradient", path_outdir=None)
    tops = result["conv_c"]
    # 3x3/2 same -> 3x3 dilated 2 (extent 5, jump 2) -> 2x2/2: 3 -> 11 -> 13, jump 4.
    assert tops.field_size == (13, 13) and tops.field_jump == (4, 4)
    inputs = tf.constant(images)
    for channel in range(5):
        for rank in range(3):
            index, (y, x) = tops.image_index[channel, rank], tops.units[channel, rank]
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                unit = model(inputs)[index, y, x, channel]
            gradient = tape.gradient(unit, inputs).numpy()[index, ..., 0]
            rows, columns = np.nonzero(gradient)
            y0, x0, y1, x1 = tops.boxes[channel, rank]
            assert (rows.min(), columns.min()) == (max(y0, 0), max(x0, 0))
            assert (rows.max() + 1, columns.max() + 1) == (min(y1, 29), min(x1, 29))


def test_reconstructions_are_the_units_gradient_inside_its_box(model_and_images):
    model, images = model_and_images
    images = images[:40]
    result = top_activations(model, images, ["conv3"], k=3, channels=[1, 7], method="gradient",
                             path_outdir=None)
    tops = result["conv3"]
    assert tops.reconstructions.shape == (2, 3, 18, 18, 3)
    inputs = tf.constant(images)
    submodel = keras.Model(model.inputs, model.get_layer("conv3").output)
    for row, channel in enumerate(tops.channels):
        for rank in range(3):
            index, (y, x) = tops.image_index[row, rank], tops.units[row, rank]
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                unit = submodel(inputs)[index, y, x, channel]
            gradient = tape.gradient(unit, inputs).numpy()[index]
            y0, x0, y1, x1 = tops.boxes[row, rank]
            expected = np.zeros((18, 18, 3), np.float32)
            sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, 20), min(x1, 20)
            expected[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = gradient[sy0:sy1, sx0:sx1]
            assert_reordered_close(tops.reconstructions[row, rank], expected)
            outside = gradient.copy()
            outside[sy0:sy1, sx0:sx1] = 0
            assert not outside.any()  # nothing of the unit's gradient lies outside its box


def test_reconstructions_survive_a_backend_that_refuses_big_batches(model_and_images, monkeypatch):
    """Reconstructions go through compute's crop path: an out-of-memory chunk is halved, not fatal."""
    model, images = model_and_images
    options = dict(k=3, channels=[0, 1, 5], method="deconvnet", path_outdir=None)
    expected = top_activations(model, images[:40], ["conv2", "conv3"], **options)
    real_run = compute.run
    sizes = []

    def run_with_little_memory(rebuilt, fetches, feed_dict):
        batch = max((len(value) for key, value in feed_dict.items()
                     if getattr(key, "dtype", None) == tf.int32), default=1)  # the chunk's units
        sizes.append(batch)
        if batch > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_run(rebuilt, fetches, feed_dict)

    monkeypatch.setattr(compute, "run", run_with_little_memory)
    got = top_activations(model, images[:40], ["conv2", "conv3"], **options)
    assert max(sizes) > 2 and sizes[-1] <= 2  # it was refused, then went on in smaller chunks
    for name in ("conv2", "conv3"):
        np.testing.assert_array_equal(got[name].image_index, expected[name].image_index)
        np.testing.assert_array_equal(got[name].boxes, expected[name].boxes)
        assert got[name].reconstructions.any()
        assert_reordered_close(got[name].reconstructions, expected[name].reconstructions)  # other chunk sizes


def decode(path):
    return np.asarray(Image.open(path))


def test_pictures_pages_and_h5_render_again_identically(tmp_path, model_and_images):
    model, images = model_and_images
    result = top_activations(model, images[:60], ["conv1", "conv3"], k=4, channels=[0, 2],
                             path_outdir=str(tmp_path / "first"))
    folder = tmp_path / "first" / "conv3" / "top_activations"
    crops = decode(folder / "channel_0002" / "crops.png")
    recon = decode(folder / "channel_0002" / "reconstructions.png")
    boxed = decode(folder / "channel_0002" / "images.png")
    zoom = 4  # 18 px fields are enlarged to at least 64 px
    assert crops.shape[:2] == recon.shape[:2] == (2 * 18 * zoom + 1, 2 * 18 * zoom + 1)
    assert boxed.shape == (2 * 20 * zoom + 1, 2 * 20 * zoom + 1, 3)
    for picture in (crops, recon, boxed):
        assert picture.min() < picture.max()
    assert ((boxed == [255, 40, 40]).all(axis=-1)).sum() > 0  # the field is outlined
    page = (folder / "index.html").read_text()
    for channel in (0, 2):
        for what in ("crops", "reconstructions", "images"):
            assert f'src="channel_{channel:04d}/{what}.png"' in page
    assert 'href="conv3/top_activations/index.html"' in (tmp_path / "first" / "top_activations.html").read_text()

    loaded = load_top_activations(result.h5_path)
    for name, tops in result.layers.items():
        for key in ("scores", "image_index", "units", "boxes", "reconstructions"):
            np.testing.assert_array_equal(getattr(loaded[name], key), getattr(tops, key))
    np.testing.assert_array_equal(loaded.images, result.images)
    render_top_activations(result.h5_path, str(tmp_path / "again"))
    for path in result.paths:
        if path.endswith(".png"):
            relative = os.path.relpath(path, tmp_path / "first")
            np.testing.assert_array_equal(decode(tmp_path / "again" / relative), decode(path))


def test_fewer_images_than_k_and_deprocess(tmp_path, model_and_images):
    model, images = model_and_images
    result = top_activations(model, images[:3], ["conv3"], k=5, deprocess=lambda x: x * 255.0,
                             path_outdir=str(tmp_path))
    tops = result["conv3"]
    assert (tops.image_index[:, 3:] == -1).all() and np.isneginf(tops.scores[:, 3:]).all()
    assert sorted(tops.image_index[0, :3]) == [0, 1, 2]
    np.testing.assert_array_equal(result.image(1), np.round(images[1] * 255).astype(np.uint8))
    assert decode(tmp_path / "conv3" / "top_activations" / "channel_0000" / "crops.png").min() < 255


def test_invalid_arguments_name_what_is_accepted(model_and_images):
    model, images = model_and_images
    with pytest.raises(OptionError, match="k=0"):
        top_activations(model, images, ["conv3"], k=0, path_outdir=None)
    with pytest.raises(OptionError, match="out of range.*10 channels"):
        top_activations(model, images, ["conv3"], channels=[10], path_outdir=None)
    with pytest.raises(FeedError, match="no images"):
        top_activations(model, images[:0], ["conv3"], path_outdir=None)
    with pytest.raises(FeedError, match="cannot stream"):
        top_activations(model, 42, ["conv3"], path_outdir=None)


def test_the_name_the_package_exports_is_callable(model_and_images):
    """``from tf_cnnvis import top_activations`` gives the package (its submodule's name); it runs the scan."""
    import tf_cnnvis
    from tf_cnnvis import top_activations as exported

    model, images = model_and_images
    options = dict(k=2, reconstruct=False, path_outdir=None)
    called = exported(model, images[:10], ["conv3"], **options)
    direct = top_activations(model, images[:10], ["conv3"], **options)
    assert tf_cnnvis.top_activations is exported and called.count == 10
    np.testing.assert_array_equal(called["conv3"].image_index, direct["conv3"].image_index)


MIRRORED_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()])
    from conftest import small_keras_model
    from tf_cnnvis.top_activations import top_activations

    model = small_keras_model(seed=2)
    images = np.random.default_rng(1).uniform(0, 1, (90, 20, 20, 3)).astype(np.float32)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    options = dict(k=4, batch_size=16, method="deconvnet", path_outdir=None)
    mirrored = top_activations(model, images, ["conv2", "conv3"], strategy=strategy, **options)
    with strategy.scope():  # an active strategy is used without being passed
        active = top_activations(model, images, ["conv2", "conv3"], **options)
    single = top_activations(model, images, ["conv2", "conv3"], **options)
    from numerics import REORDERED_RTOL, REORDERED_SCALE

    def near(a, b):  # each replica's half batch sums in another order
        return np.allclose(a, b, rtol=REORDERED_RTOL, atol=REORDERED_SCALE * np.abs(b).max())

    def matching(a, b):  # picks that agree; float32 near-ties may trade places
        return (a.image_index == b.image_index) & np.all(a.units == b.units, -1)

    pairs = [(a[name], single[name]) for a in (mirrored, active) for name in ("conv2", "conv3")]
    same = all(matching(a, b).mean() > 0.9 and np.array_equal(a.boxes[matching(a, b)], b.boxes[matching(a, b)])
               for a, b in pairs)
    close = all(near(a.scores, b.scores)
                and near(a.reconstructions[matching(a, b)], b.reconstructions[matching(a, b)])
                for a, b in pairs)
    print(json.dumps({"replicas": [mirrored.replicas, active.replicas, single.replicas],
                      "same": bool(same), "close": bool(close), "count": mirrored.count}))
""")


def test_mirrored_strategy_over_two_devices_gives_identical_results(tmp_path):
    script = tmp_path / "mirrored.py"
    script.write_text(MIRRORED_SCRIPT)
    done = subprocess.run([sys.executable, str(script), HERE], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"replicas": [2, 2, 1], "same": True, "close": True, "count": 90}
