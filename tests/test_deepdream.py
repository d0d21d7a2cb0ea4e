"""DeepDream building blocks and the entry function on the real emotion classifier.

Exact properties on small arrays (pyramid, Fourier parameterization,
transforms, tiling, regularizers), then end-to-end runs on fer's 7-class
emotion model with short optimizations.
"""

import os

import numpy as np
import pytest

from tf_cnnvis import errors, load, models, rebuild
from tf_cnnvis.deepdream import deepdream_visualization, normalize, objectives, regularizers, transforms
from tf_cnnvis.deepdream.param import FourierImage, PixelImage
from tf_cnnvis.deepdream.render import NetworkObjective, octave_sizes
from tf_cnnvis.deepdream.tiling import TilePlan
from tf_cnnvis.feeds import resolve_feed
from tf_cnnvis.layers import select_layers

from numerics import assert_reordered_close

QUICK = dict(path_logdir=None, path_outdir=None, iterations=3, octaves=1)


# --------------------------------------------------------------------------- building blocks

@pytest.mark.parametrize("size, levels", [((32, 32), 4), ((33, 27), 4), ((5, 7), 2)])
def test_laplacian_pyramid_is_exactly_invertible(size, levels):
    images = np.random.default_rng(0).standard_normal((2,) + size + (3,)).astype(np.float32)
    pyramid = normalize.laplacian_split(images, 4)
    assert_reordered_close(normalize.laplacian_merge(pyramid), images)  # blur, subtract, add back
    assert len(pyramid) == levels  # fewer levels when the image is too small to halve


def test_normalizers_scale_each_item_on_its_own():
    rng = np.random.default_rng(1)
    gradient = rng.standard_normal((2, 24, 24, 3)).astype(np.float32)
    scaled = gradient * np.array([1000.0, 0.001], np.float32)[:, None, None, None]
    for name in ("laplacian", "std", "mean_abs"):
        np.testing.assert_allclose(normalize.get(name)(scaled), normalize.get(name)(gradient),
                                   rtol=1e-3, atol=1e-3)
    levels = normalize.laplacian_split(normalize.laplacian(gradient), 4)
    # Each band of the normalized gradient has about unit RMS (the merge mixes them only slightly).
    assert all(0.5 < np.sqrt(np.mean(band[0] ** 2)) < 2.0 for band in levels[:-1])


@pytest.mark.parametrize("shape", [(2, 16, 16, 3), (1, 15, 9, 3), (2, 11, 12, 1)])
def test_fourier_image_inverts_any_image_odd_or_even(shape):
    rng = np.random.default_rng(2)
    target = np.tanh(rng.standard_normal(shape)).astype(np.float32) * 0.9
    param = FourierImage(shape, rng, images=target)
    np.testing.assert_allclose(param.image(), target, atol=1e-3)
    fresh = FourierImage(shape, rng)
    assert fresh.image().shape == shape and np.abs(fresh.image()).max() < 1


def test_fourier_ascent_climbs_a_linear_objective():
    rng = np.random.default_rng(3)
    direction = rng.standard_normal((1, 17, 16, 3)).astype(np.float32)
    param = FourierImage(direction.shape, rng)
    before = float(np.sum(param.image() * direction))
    for _ in range(30):
        param.ascend(direction)
    after = param.image()
    assert float(np.sum(after * direction)) > before + 0.3 * np.abs(direction).sum()
    assert np.abs(after).max() <= 1


def test_tape_transforms_pull_back_with_their_adjoint():
    """Pad, jitter, scale, rotate and crop are linear: <T x, y> == <x, T* y>."""
    rng_state = 7
    x = np.random.default_rng(0).standard_normal((2, 31, 30, 3)).astype(np.float32)
    y = np.random.default_rng(1).standard_normal((2, 31, 30, 3)).astype(np.float32)
    transform = transforms.TapeTransform(transforms.standard_transforms(), np.random.default_rng(rng_state))
    tx = transform.apply(x)
    assert tx.shape == x.shape
    pulled = transform.undo(y)
    assert_reordered_close(np.sum(tx * y), np.sum(x * pulled))  # the adjoint sums the same products
    roll = transforms.Roll(5, np.random.default_rng(0))
    np.testing.assert_array_equal(roll.undo(roll.apply(x)), x)


def test_tile_plan_covers_every_pixel_and_blends_a_shared_field_exactly():
    plan = TilePlan.for_image((150, 97), (64, 64))
    covered = np.zeros((150, 97), int)
    for y, x in plan.corners:
        covered[y:y + 64, x:x + 64] += 1
    assert covered.min() >= 1
    assert max(y for y, _ in plan.corners) == 150 - 64 and max(x for _, x in plan.corners) == 97 - 64
    field = np.random.default_rng(0).standard_normal((3, 150, 97, 2)).astype(np.float32)
    assert_reordered_close(plan.blend(plan.cut(field), 3), field)  # overlapping weights sum to one
    with pytest.raises(errors.OptionError, match="smaller than the network's input"):
        TilePlan.for_image((40, 80), (64, 64))


def test_regularizers_lower_what_they_penalize():
    rng = np.random.default_rng(4)
    edge = np.zeros((1, 32, 32, 3), np.float32)
    edge[:, :, 16:] = 0.8
    noisy = edge + rng.normal(0, 0.1, edge.shape).astype(np.float32)
    denoised = regularizers.tv_denoise(noisy, weight=0.05)
    assert regularizers.total_variation(denoised)[0] < 0.5 * regularizers.total_variation(noisy)[0]
    assert abs(denoised.mean() - noisy.mean()) < 1e-3
    stepped = noisy + 0.01 * regularizers.tv_direction(noisy)
    assert regularizers.total_variation(stepped)[0] < regularizers.total_variation(noisy)[0]
    smoothed = regularizers.bilateral(noisy, spatial_sigma=1.0, range_sigma=0.3)
    assert smoothed[:, :, 2:14].std() < 0.7 * noisy[:, :, 2:14].std()  # flat part: noise goes down
    contrast = smoothed[:, :, 18:30].mean() - smoothed[:, :, 2:14].mean()
    assert contrast > 0.9 * 0.8  # the edge survives
    assert regularizers.falling_sigma(0, 10) == pytest.approx(0.44)
    assert regularizers.falling_sigma(9, 10) == pytest.approx(0.304)


def test_octave_sizes_grow_by_the_scale_and_end_at_the_image_size():
    assert octave_sizes((100, 71), 3, 1.4, 16) == [(51, 36), (71, 51), (100, 71)]
    assert octave_sizes((64, 64), 3, 1.4, 64) == [(64, 64)]


# --------------------------------------------------------------------------- the emotion model

@pytest.fixture(scope="module")
def emotion():
    keras_model = models.emotion_model()
    frozen = load.load_model(keras_model)
    face = models.emotion_preprocess(models.sample_image("face"))[None]
    return keras_model, frozen, face


def _objective(frozen, face, layer, kind, tile_size, budget=1024):
    rebuilt = rebuild.rebuild(frozen, "gradient")
    info = select_layers(rebuilt.graph, frozen, [layer])[0]
    feed = resolve_feed(frozen, rebuilt.graph, face)
    ops = objectives.build(rebuilt, feed.input_name, info.tensor, kind)
    return NetworkObjective(rebuilt, feed, ops, info, (-1, 1), tile_size, budget)


def test_one_tile_gradient_equals_the_untiled_gradient(emotion):
    _, frozen, face = emotion
    images = np.repeat(face, 3, axis=0)
    targets = np.array([0, 3, 5])
    whole = _objective(frozen, face, "predictions", "unit", None)(images, targets)
    tiled = _objective(frozen, face, "predictions", "unit", (64, 64))(images, targets)
    # Exact: one tile covering the image feeds the network the very same batch.
    np.testing.assert_array_equal(tiled[1], whole[1])
    np.testing.assert_array_equal(tiled[0], whole[0])


def test_tiles_all_run_and_borders_get_gradient_like_the_interior(emotion):
    _, frozen, face = emotion
    objective = _objective(frozen, face, "predictions", "unit", (64, 64))
    images = np.random.default_rng(0).uniform(-1, 1, (2, 160, 160, 1)).astype(np.float32)
    _, gradient = objective(images, np.array([3, 5]))
    magnitude = np.abs(gradient).mean(axis=(0, 3))
    assert magnitude.min() > 0  # no tile was dropped
    edges = [32, 64, 96, 128]  # where tiles start or end inside the image
    near = np.zeros((160, 160), bool)
    for edge in edges:
        near[:, edge - 2:edge + 2] = near[edge - 2:edge + 2, :] = True
    interior = np.zeros((160, 160), bool)
    interior[8:-8, 8:-8] = True
    ratio = magnitude[near & interior].mean() / magnitude[interior & ~near].mean()
    assert 0.6 < ratio < 1.6


def test_chunking_by_memory_budget_does_not_change_the_gradient(emotion):
    _, frozen, face = emotion
    images = np.random.default_rng(1).uniform(-1, 1, (5, 64, 64, 1)).astype(np.float32)
    targets = np.arange(5)
    batched = _objective(frozen, face, "activation_6", "channel", None)
    one_by_one = _objective(frozen, face, "activation_6", "channel", None, budget=1e-3)
    values_a, grad_a = batched(images, targets)
    values_b, grad_b = one_by_one(images, targets)
    assert batched.network_runs == 1 and one_by_one.network_runs == 5
    assert_reordered_close(grad_b, grad_a)  # batch size changes summation order
    assert_reordered_close(values_b, values_a)


def test_class_visualizations_are_classified_as_their_class(emotion, tmp_path):
    keras_model, _, face = emotion
    result = deepdream_visualization(
        keras_model, face, "predictions", list(models.EMOTION_LABELS), path_logdir=str(tmp_path / "log"),
        path_outdir=str(tmp_path / "out"), labels=models.EMOTION_LABELS, iterations=20, octaves=3)
    arrays = result.arrays["predictions"]
    predicted = keras_model.predict(arrays["images"], verbose=0).argmax(axis=1)
    assert np.mean(predicted == np.arange(7)) >= 5 / 7
    # Each class logit ends far above its value on the start noise.
    gain = arrays["objective_final"] - arrays["objective_start"]
    assert np.all(gain > 5.0)
    assert np.all(arrays["objective_final"] > arrays["objective_start"].max() + 5.0)

    folder = tmp_path / "out" / "predictions" / "deepdream"
    names = sorted(os.listdir(folder))
    assert names == sorted([f"class_{label}.png" for label in models.EMOTION_LABELS] + ["grid_deepdream.png"])
    from PIL import Image

    for name in names:
        picture = np.asarray(Image.open(folder / name))
        assert picture.std() > 5  # not flat
        if name != "grid_deepdream.png":
            assert picture.shape == (64, 64)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "log"), size_guidance={"images": 0})
    events.Reload()
    tags = set(events.Tags()["images"])
    assert tags == {"predictions/deepdream"} | {f"predictions/deepdream/class_{label}"
                                                for label in models.EMOTION_LABELS}


def test_conv_channels_and_names_and_odd_sizes(emotion):
    _, frozen, face = emotion
    odd = np.pad(face, ((0, 0), (3, 4), (0, 5), (0, 0)), mode="reflect")  # 71 x 69
    for param in ("pixel", "fourier"):
        result = deepdream_visualization(frozen, odd, "activation_4", [0, 5, 31], param=param,
                                         path_logdir=None, path_outdir=None, iterations=8, octaves=2)
        arrays = result.arrays["activation_4"]
        assert arrays["images"].shape == (3, 71, 69, 1)
        assert np.all(arrays["objective_final"] > arrays["objective_start"])
        assert arrays["names"] == ["class_0", "class_5", "class_31"]


def test_amplification_keeps_the_image_content(emotion):
    _, frozen, face = emotion
    result = deepdream_visualization(frozen, face, "add_2", None, tile_size=64, path_logdir=None,
                                     path_outdir=None, iterations=10, value_range=(-1, 1))
    arrays = result.arrays["add_2"]
    assert arrays["names"] == ["amplified"]
    assert arrays["objective_final"][0] > 1.5 * arrays["objective_start"][0]
    correlation = np.corrcoef(arrays["images"].ravel(), face.ravel())[0, 1]
    assert correlation > 0.7  # DeepDream proper: the face is still there
    assert np.abs(arrays["images"] - face).max() > 0.1  # ... and something was added


@pytest.mark.parametrize("classes, message", [
    ([7], "out of range"), ([-1], "out of range"), ([1.5], "not an integer"), ([True], "not an integer"),
    ([], "empty"), (["happy"], "no labels"), ([0, 0], "repeat"),
])
def test_bad_classes_raise_clear_errors(emotion, classes, message):
    _, frozen, face = emotion
    with pytest.raises(errors.OptionError, match=message):
        deepdream_visualization(frozen, face, "predictions", classes, **QUICK)


def test_bad_options_raise_clear_errors(emotion):
    _, frozen, face = emotion
    with pytest.raises(errors.OptionError, match="closest"):
        deepdream_visualization(frozen, face, "predictions", ["hapy"], labels=models.EMOTION_LABELS, **QUICK)
    with pytest.raises(errors.LayerNotFoundError, match="predictions"):
        deepdream_visualization(frozen, face, "predictionz", [0], **QUICK)
    with pytest.raises(errors.OptionError, match="normalize"):
        deepdream_visualization(frozen, face, "predictions", [0], normalize="rms", **QUICK)
    with pytest.raises(errors.OptionError, match="value_range"):
        deepdream_visualization(frozen, np.zeros((1, 64, 64, 1), np.float32), "predictions", [0], **QUICK)
    with pytest.raises(errors.OptionError, match="one image for all classes"):
        deepdream_visualization(frozen, np.repeat(face, 2, axis=0), "predictions", [0, 1, 2],
                                start="image", **QUICK)
    with pytest.raises(errors.OptionError, match="labels has 3 names"):
        deepdream_visualization(frozen, face, "predictions", [0], labels=["a", "b", "c"], **QUICK)


def test_pixel_param_clips_to_the_unit_range():
    param = PixelImage(np.zeros((1, 4, 4, 1), np.float32))
    param.ascend(np.full((1, 4, 4, 1), 10.0, np.float32), 1.0)
    assert param.image().max() == 1.0


def test_a_layer_may_be_named_by_keras_name_op_name_or_tensor_name(emotion):
    _, frozen, face = emotion
    tensor = frozen.keras_layers["activation_4"]
    results = [deepdream_visualization(frozen, face, name, [2, 9], tile_size=64, **QUICK)
               for name in ("activation_4", tensor.split(":")[0], tensor)]
    first = results[0].arrays["activation_4"]["images"]
    for result in results[1:]:
        (arrays,) = result.arrays.values()
        np.testing.assert_array_equal(arrays["images"], first)  # exact: the same run, named otherwise
