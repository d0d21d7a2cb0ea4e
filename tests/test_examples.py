"""Each script in examples/ runs as a user would run it (shortened by its options)."""

import os
import re
import subprocess
import sys

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(name, args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, os.path.join(REPO, "examples", name), *map(str, args)],
                          cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def picture(path):
    image = np.asarray(Image.open(path))
    assert image.std() > 1, f"{path} is flat"
    return image


def logged_tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(logdir), size_guidance={"images": 0})
    accumulator.Reload()
    return set(accumulator.Tags()["images"])


def test_quickstart_writes_every_method_into_output_and_log(tmp_path):
    out = run_example("quickstart.py", ["--size", 48, "--channels", 2, "--dream-iterations", 1], tmp_path)
    output, log = tmp_path / "Output", tmp_path / "Log"  # the defaults, relative to the cwd
    assert f"tensorboard --logdir {log}" in out
    for layer in ("block1_conv2", "block3_conv3", "block5_conv3"):
        assert picture(output / layer / "activations" / "grid_activation.png").ndim == 2
        grid = picture(output / layer / "deconvolution" / "guided" / "grid_image.png")
        assert grid.shape == (48, 97, 3)  # two reconstructions of the 48 px image
        # two units, each at its receptive field (at least 64 px) beside the photo's patch
        grid = picture(output / layer / "deconvolution" / "deconvnet_unit" / "grid_image.png")
        side = grid.shape[0]
        assert side >= 64 and grid.shape == (side, 2 * (2 * side + 2) + 1, 3)
    dream = picture(output / "block4_conv3" / "deepdream" / "amplified.png")
    original = np.asarray(Image.open(os.path.join(REPO, "tf_cnnvis", "data", "astronaut.jpg"))
                          .resize((48, 48), Image.BILINEAR), np.float32)
    # the dream starts from the photo and stays recognizably the photo
    assert np.corrcoef(dream.reshape(-1), original.reshape(-1))[0, 1] > 0.5
    tags = logged_tags(log)
    assert {"block1_conv2/activations", "block5_conv3/deconvolution/guided",
            "block5_conv3/deconvolution/deconvnet_unit", "block4_conv3/deepdream"} <= tags


def test_keras_model_example_raises_every_emotion(tmp_path):
    out = run_example("keras_model.py", ["--iterations", 3, "--layers", "conv2d_1,activation_6",
                                         "--outdir", tmp_path / "o", "--logdir", tmp_path / "l"], tmp_path)
    scores = re.findall(r"class_(\w+)\s+logit\s+(-?[\d.]+) ->\s+(-?[\d.]+)", out)
    assert len(scores) == 7
    for name, before, after in scores:
        assert float(after) > float(before) + 1, name  # the model itself sees more of each emotion
    # 64 px grayscale faces: 8 channels in a 3x3 grid, 128 in an 11x12 grid
    for layer, count, shape in (("conv2d_1", 8, (194, 194)), ("activation_6", 128, (714, 779))):
        grid = picture(tmp_path / "o" / layer / "deconvolution" / "guided" / "grid_image.png")
        assert grid.shape == shape
        channels = sorted((tmp_path / "o" / layer / "activations" / "channels").glob("channel_*.png"))
        assert len(channels) == count
    assert len(list((tmp_path / "o" / "predictions" / "deepdream").glob("class_*.png"))) == 7


def test_tf1_graph_session_example_trains_then_visualizes(tmp_path):
    out = run_example("tf1_graph_session.py", ["--steps", 60, "--outdir", tmp_path / "o",
                                               "--logdir", tmp_path / "l"], tmp_path)
    accuracy = float(re.search(r"accuracy after 60 steps: ([\d.]+)", out).group(1))
    assert accuracy > 0.9  # the session's trained weights were used, not re-initialized ones
    for layer in ("relu1", "pool1", "relu2", "pool2"):
        picture(tmp_path / "o" / layer / "activations" / "grid_activation.png")
    relu1 = picture(tmp_path / "o" / "relu1" / "deconvolution" / "deconvnet" / "grid_image.png")
    assert relu1.shape[:2] == (3 * 32 + 2, 3 * 32 + 2)  # 8 channels of 32 px in a 3x3 grid
    assert {"relu1/activations", "relu2/deconvolution/deconvnet"} <= logged_tags(tmp_path / "l")


def test_saved_model_example_exports_then_loads_the_folder(tmp_path):
    run_example("saved_model.py", ["--workdir", tmp_path / "w", "--outdir", tmp_path / "o",
                                   "--logdir", tmp_path / "l"], tmp_path)
    assert (tmp_path / "w" / "emotion" / "saved_model.pb").is_file()
    grids = sorted((tmp_path / "o").glob("*/deconvolution/guided/grid_image.png"))
    assert len(grids) == 6  # the six ReLU layers of the emotion model
    for grid in grids:
        height, width = picture(grid).shape[:2]
        assert (height + 1) % 65 == 0 and (width + 1) % 65 == 0  # cells of the 64 px face


def test_frozen_pb_example_freezes_then_loads_the_file(tmp_path):
    out = run_example("frozen_pb.py", ["--size", 48, "--channels", 3, "--workdir", tmp_path / "w",
                                       "--outdir", tmp_path / "o", "--logdir", tmp_path / "l"], tmp_path)
    assert (tmp_path / "w" / "vgg16_frozen.pb").is_file()
    assert out.count("Relu") >= 13  # the layer table lists VGG16's 13 ReLUs by op name
    grids = sorted((tmp_path / "o").glob("*/deconvolution/guided/grid_image.png"))
    assert len(grids) == 2
    for grid in grids:
        assert picture(grid).shape == (2 * 48 + 1, 2 * 48 + 1, 3)  # 3 channels in a 2x2 grid
