"""What lands on disk and in TensorBoard is complete, decodable and where the README says."""

import glob
import io
import math
import os

import numpy as np
import pytest
from PIL import Image

import tf_cnnvis
from tf_cnnvis import write
from tf_cnnvis.render import normalize_signed
from tf_cnnvis.utils import convert_into_grid, image_normalization
from tf_cnnvis.write import safe_names

from conftest import small_keras_model


def read_png(path):
    with Image.open(path) as image:
        image.load()
        return np.asarray(image)


def grid_shape(cells, height, width, padding=1):
    columns = math.ceil(math.sqrt(cells))
    rows = math.ceil(cells / columns)
    return rows * height + padding * (rows - 1), columns * width + padding * (columns - 1)


def event_images(logdir):
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(logdir, size_guidance={"images": 0})
    accumulator.Reload()
    return {tag: accumulator.Images(tag) for tag in accumulator.Tags()["images"]}


def test_layout_sizes_and_contents_for_one_image(tmp_path, images):
    model = small_keras_model()
    out, log = tmp_path / "Output", tmp_path / "Log"
    acts = tf_cnnvis.activation_visualization(model, images[:1], layers=["r", "p"], path_outdir=str(out),
                                              path_logdir=str(log))
    recon = tf_cnnvis.deconv_visualization(model, images[:1], layers="r", method=["deconvnet", "guided"],
                                           path_outdir=str(out), path_logdir=str(log), save_channels=True)
    for layer in ("conv1", "pool1", "conv2", "pool2", "conv3"):
        values = acts.arrays[layer]
        picture = read_png(out / layer / "activations" / "grid_activation.png")
        assert picture.shape == grid_shape(values.shape[-1], *values.shape[1:3])
        assert picture.min() < picture.max()
    for layer in ("conv1", "conv2", "conv3"):
        channels = recon.arrays[layer]["deconvnet"].shape[1]
        for method in ("deconvnet", "guided"):
            folder = out / layer / "deconvolution" / method
            picture = read_png(folder / "grid_image.png")
            assert picture.shape == grid_shape(channels, 20, 20) + (3,)
            assert picture.min() < picture.max()
            per_channel = sorted(glob.glob(str(folder / "channels" / "channel_*.png")))
            assert len(per_channel) == channels
            assert read_png(per_channel[0]).shape == (20, 20, 3)
    written = acts.paths + recon.paths
    assert all(os.path.isfile(path) and str(path).startswith(str(out)) for path in written)
    assert not glob.glob(str(out / "**" / ".tmp-*"), recursive=True)

    tags = event_images(str(log))
    expected_tags = ({f"{layer}/activations" for layer in acts.arrays}
                     | {f"{layer}/deconvolution/{method}" for layer in recon.arrays
                        for method in ("deconvnet", "guided")})
    assert set(tags) == expected_tags
    # TensorBoard holds the same bytes as the file on disk.
    stored = tags["conv2/deconvolution/guided"][0].encoded_image_string
    assert stored == (out / "conv2" / "deconvolution" / "guided" / "grid_image.png").read_bytes()


def test_several_images_get_an_index_and_steps_make_a_slider(tmp_path, images):
    model = small_keras_model()
    out, log = tmp_path / "Output", tmp_path / "Log"
    for step in (0, 5):
        tf_cnnvis.deconv_visualization(model, images, layers=["conv2"], target="unit", path_outdir=str(out),
                                       path_logdir=str(log), step=step)
    first = read_png(out / "conv2" / "deconvolution" / "deconvnet_unit" / "image_000" / "grid_image.png")
    second = read_png(out / "conv2" / "deconvolution" / "deconvnet_unit" / "image_001" / "grid_image.png")
    assert first.shape == second.shape and not np.array_equal(first, second)
    tags = event_images(str(log))
    assert set(tags) == {"conv2/deconvolution/deconvnet_unit/image_000",
                         "conv2/deconvolution/deconvnet_unit/image_001"}
    assert [event.step for event in tags["conv2/deconvolution/deconvnet_unit/image_001"]] == [0, 5]


@pytest.mark.parametrize("target", ["map", "unit"])
def test_streamed_pictures_are_the_arrays_rendered_and_need_no_arrays(tmp_path, images, target):
    """Grids and channel PNGs are built chunk by chunk; keep_arrays=False writes the same files."""
    model = small_keras_model()
    options = dict(layers=["conv2"], target=target, method="guided", save_channels=True, memory_budget_mb=0.01,
                   unit_view="image")
    kept = tf_cnnvis.deconv_visualization(model, images, path_outdir=str(tmp_path / "kept"), path_logdir=None,
                                          **options)
    arrays = kept.arrays["conv2"]["guided"]
    folder = "guided" if target == "map" else "guided_unit"
    for index in range(len(images)):
        grid = read_png(tmp_path / "kept" / "conv2" / "deconvolution" / folder / f"image_{index:03d}"
                        / "grid_image.png")
        expected = convert_into_grid(normalize_signed(arrays[index]))
        np.testing.assert_array_equal(grid, expected)
    streamed = tf_cnnvis.deconv_visualization(model, images, path_outdir=str(tmp_path / "streamed"),
                                              path_logdir=str(tmp_path / "log"), keep_arrays=False, **options)
    assert streamed.arrays == {"conv2": {}}
    assert len(streamed.paths) == len(kept.paths) == len(images) * (2 + arrays.shape[1])  # input, grid, channels
    for old, new in zip(kept.paths, streamed.paths):
        assert os.path.relpath(old, tmp_path / "kept") == os.path.relpath(new, tmp_path / "streamed")
        assert open(old, "rb").read() == open(new, "rb").read()


def block_means(picture, factor):
    """Each factor x factor block's mean (partial blocks at the right and bottom edges), rounded."""
    height, width = picture.shape[:2]
    padded = np.full((-(-height // factor) * factor, -(-width // factor) * factor) + picture.shape[2:], np.nan)
    padded[:height, :width] = picture
    blocks = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor, -1)
    return np.rint(np.nanmean(blocks, axis=(1, 3))).astype(np.uint8).reshape(
        (padded.shape[0] // factor, padded.shape[1] // factor) + picture.shape[2:])


def test_grids_beyond_tensorboards_size_limit_stream_to_disk_and_shrink_for_tensorboard(
        tmp_path, images, monkeypatch, caplog):
    """Past SUMMARY_MAX_SIDE a grid is encoded into its file as it fills; TensorBoard gets
    each block's mean and a description saying so."""
    model = small_keras_model()
    options = dict(layers=["conv2"], method="guided", keep_arrays=False, memory_budget_mb=0.01)
    whole = tf_cnnvis.deconv_visualization(model, images, path_outdir=str(tmp_path / "whole"), path_logdir=None,
                                           **options)
    monkeypatch.setattr(write, "SUMMARY_MAX_SIDE", 25)  # the 3 x 3 grid of 20 px cells is 62 px wide
    log = tmp_path / "log"
    shrunk = tf_cnnvis.deconv_visualization(model, images, path_outdir=str(tmp_path / "out"),
                                            path_logdir=str(log), **options)
    activations = tf_cnnvis.activation_visualization(model, images, layers=["conv1"], path_outdir=None,
                                                     path_logdir=str(log), step=1)
    assert [os.path.relpath(p, tmp_path / "out") for p in shrunk.paths] == \
        [os.path.relpath(p, tmp_path / "whole") for p in whole.paths]
    for old, new in zip(whole.paths[:-len(images)], shrunk.paths):  # the grids; the inputs come last
        full = read_png(new)
        np.testing.assert_array_equal(full, read_png(old))  # every pixel kept on disk
        tag = "conv2/deconvolution/guided/" + os.path.basename(os.path.dirname(new))
        (event,) = event_images(str(log))[tag]
        picture = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)))
        assert (event.height, event.width) == picture.shape[:2] == (21, 21)
        np.testing.assert_array_equal(picture, block_means(full, 3))
    assert not [name for _, _, files in os.walk(tmp_path) for name in files if name.endswith(".part")]
    # Pictures drawn whole in memory (activation grids) follow the same limit.
    activation_grid = tf_cnnvis.utils.convert_into_grid(tf_cnnvis.utils.normalize_each(
        np.moveaxis(activations.arrays["conv1"][0], -1, 0)[..., None]))
    (event,) = event_images(str(log))["conv1/activations/image_000"]
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(event.encoded_image_string))),
                                  block_means(activation_grid, 3)[..., 0])
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(log))
    accumulator.Reload()
    description = accumulator.SummaryMetadata("conv2/deconvolution/guided/image_000").summary_description
    assert not [record for record in caplog.records if "not associated with a plugin" in record.getMessage()]
    assert accumulator.SummaryMetadata("conv2/deconvolution/guided/image_000").plugin_data.plugin_name == "images"
    assert description.startswith("reduced 3x from 62x62 px; every pixel is in ") and \
        description.endswith(os.path.join("image_000", "grid_image.png"))


def test_layers_stay_the_models_own_after_reconstructions(images):
    """Backward passes built on an imported graph add convolutions and ReLUs that are not layers."""
    model = small_keras_model()
    before = [(info.name, info.kind) for info in tf_cnnvis.list_layers(model)]
    for method in ("deconvnet", "guided", "gradient"):
        tf_cnnvis.deconv_visualization(model, images[:1], layers="rpc", method=method, channels=[0],
                                       path_outdir=None, path_logdir=None)
        assert [(info.name, info.kind) for info in tf_cnnvis.list_layers(model)] == before
        result = tf_cnnvis.activation_visualization(model, images[:1], layers="rpc", path_outdir=None,
                                                    path_logdir=None)
        assert list(result.arrays) == [name for name, _ in before]


def test_hostile_layer_names_stay_inside_and_do_not_collide():
    names = ["conv/Relu", "conv_Relu", "../../etc/passwd", "/abs/path", "a\x00b", "CONV_relu",
             "conv_relu", "x" * 500, "..", ".", ""]
    folders = safe_names(names)
    values = list(folders.values())
    assert len({value.lower() for value in values}) == len(names)
    for value in values:
        assert value and "/" not in value and "\x00" not in value and not value.startswith(".")
        assert len(value) <= 120


def test_image_normalization_and_grid_are_robust():
    assert image_normalization(np.full((4, 4), 7.0)).max() == 0
    scaled = image_normalization(np.array([[0.0, np.nan], [np.inf, 2.0]]))
    assert scaled.dtype == np.uint8 and scaled.max() == 255 and scaled[0, 0] == 0
    grid = convert_into_grid(np.zeros((5, 3, 2, 1)), padding=1)
    assert grid.shape == (2 * 3 + 1, 3 * 2 + 2, 1)  # 2 rows of height 3, 3 columns of width 2
    assert grid[3, 0, 0] == 255 and grid[0, 0, 0] == 0  # padding row is white, cells keep values


@pytest.mark.slow
def test_real_pretrained_vgg16_end_to_end(tmp_path):
    models = pytest.importorskip("tf_cnnvis.models")
    try:
        model = models.vgg16()
    except ImportError as error:
        pytest.skip(str(error))
    image = models.vgg16_preprocess(models.sample_image("chelsea", size=64))[None]
    out, log = tmp_path / "Output", tmp_path / "Log"
    layers = ["block1_conv2", "block3_pool", "block4_conv1"]
    acts = tf_cnnvis.activation_visualization(model, image, layers=layers, path_outdir=str(out),
                                              path_logdir=str(log))
    recon = tf_cnnvis.deconv_visualization(model, image, layers=["block1_conv2", "block3_conv3"],
                                           channels=range(16), method=["deconvnet", "guided"],
                                           path_outdir=str(out), path_logdir=str(log))
    assert acts.arrays["block4_conv1"].shape == (1, 8, 8, 512)
    deconvnet = recon.arrays["block3_conv3"]["deconvnet"]
    guided = recon.arrays["block3_conv3"]["guided"]
    assert deconvnet.shape == (1, 16, 64, 64, 3)
    assert not np.allclose(deconvnet, guided)  # the methods really differ on a real net
    for path in acts.paths + recon.paths:
        picture = read_png(path)
        assert picture.min() < picture.max(), path
    assert len(event_images(str(log))) == len(layers) + 4


def test_single_units_are_drawn_at_their_receptive_field_beside_the_input_patch(tmp_path):
    """Each cell: the reconstruction cut to the unit's field, then the input pixels under it."""
    from tf_cnnvis import compute
    from tf_cnnvis.load import load_model
    from tf_cnnvis.rebuild import rebuild
    from tf_cnnvis.receptive_field import receptive_field

    model = small_keras_model(seed=4)
    images = np.random.default_rng(3).uniform(0, 1, (1, 32, 32, 3)).astype(np.float32)
    channels = [0, 2, 5]
    common = dict(layers=["conv2"], method="guided", target="unit", channels=channels, path_logdir=None)
    fields = tf_cnnvis.deconv_visualization(model, images, path_outdir=str(tmp_path / "field"), **common)
    whole = tf_cnnvis.deconv_visualization(model, images, path_outdir=str(tmp_path / "whole"),
                                           unit_view="image", **common)
    np.testing.assert_array_equal(fields["conv2"]["guided"], whole["conv2"]["guided"])  # the same arrays

    frozen = load_model(model)
    graph = rebuild(frozen, "guided").graph
    tensor = fields.layers[0].tensor
    field = receptive_field(graph, frozen.inputs[0], tensor, (32, 32))
    assert field.size == (8, 8)  # conv 3x3, pool 2, conv 3x3 at a jump of 2
    side = 8 * math.ceil(64 / 8)  # small fields are enlarged with whole pixels
    grid = read_png([p for p in fields.paths if p.endswith("grid_image.png")][0])
    assert grid.shape == (2 * side + 1, 2 * (2 * side + 2) + 1, 3)  # 3 cells: 2 x 2, one empty
    assert read_png([p for p in whole.paths if p.endswith("grid_image.png")][0]).shape[:2] == (65, 65)

    values = compute.activations(rebuild(frozen, "gradient"), _feed(frozen, images), fields.layers)[tensor]
    units = compute.strongest_units(values)[0, channels]
    for cell, (i, j) in enumerate(units):
        y0, x0, y1, x1 = field.box(int(i), int(j), clip_to=(32, 32))
        row, column = divmod(cell, 2)
        top, left = row * (side + 1), column * (2 * side + 3)
        patch = grid[top:top + side, left + side + 2:left + 2 * side + 2]
        expected = np.asarray(Image.fromarray(image_normalization(images[0])[y0:y1, x0:x1]).resize(
            (side, side), Image.BILINEAR if max(y1 - y0, x1 - x0) > side else Image.NEAREST))
        np.testing.assert_array_equal(patch, expected)
        reconstruction = grid[top:top + side, left:left + side]
        assert reconstruction.std() > 0  # the field carries the unit's signal, not flat grey


def _feed(frozen, images):
    from tf_cnnvis.feeds import resolve_feed
    from tf_cnnvis.rebuild import rebuild

    return resolve_feed(frozen, rebuild(frozen, "gradient").graph, images)
