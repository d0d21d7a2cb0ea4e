"""The tf-cnnvis command: options, errors, URL models, progress, gallery and demo."""

import functools
import html.parser
import http.server
import io
import os
import subprocess
import sys
import threading
import urllib.parse

import numpy as np
import pytest
from PIL import Image

from tf_cnnvis import arguments, cli, demo, progress
from tf_cnnvis.visualize import activation_visualization, deconv_visualization

from conftest import small_keras_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ("layers", "activations", "deconv", "deepdream", "report", "demo")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "small.keras"
    small_keras_model().save(path)
    return str(path)


@pytest.fixture
def image_files(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for index in range(2):
        pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
        path = tmp_path / f"picture_{index}.png"
        Image.fromarray(pixels).save(path)
        paths.append(str(path))
    return paths


def run_cli(args, capsys):
    code = cli.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --------------------------------------------------------------------------- help and errors

@pytest.mark.parametrize("command", COMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main([command, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: tf-cnnvis {command}")
    assert "--quiet" in out
    if command in ("activations", "deconv", "deepdream"):
        assert "--outdir" in out and "--logdir" in out and "IMAGE" in out


def test_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert all(command in out for command in COMMANDS)


@pytest.mark.parametrize("args, expected", [
    (["layers", "no/such/model.keras"], "does not exist"),
    (["layers", "vgg17"], "neither a built-in model"),
    (["activations", "{model}", "no_such_image.png"], "no_such_image.png"),
    (["activations", "{model}", "{image}", "--layers", "conv_1"], "closest names: conv1"),
    (["deconv", "{model}", "{image}", "--layers", "conv1", "--channels", "9"], "out of range"),
    (["report", "{empty}"], "holds no PNG"),
])
def test_bad_input_exits_1_with_one_line(args, expected, model_file, image_files, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = [arg.format(model=model_file, image=image_files[0], empty=empty) for arg in args]
    code, out, err = run_cli(args, capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"tf-cnnvis {args[0]}: error:"), err
    assert expected in err


@pytest.mark.parametrize("args, expected", [
    (["deconv", "m", "i", "--channels", "3-1"], "runs backwards"),
    (["deconv", "m", "i", "--channels", ","], "holds no index"),
    (["deconv", "m", "i", "--method", "deconvnets"], "'deconvnets' is not one of"),
    (["deconv", "m", "i", "--method", ""], "holds no name"),
    (["deconv", "m", "i", "--method", "guided,guided"], "twice"),
    (["activations", "m", "i", "--layers", " , "], "holds no name"),
    (["deepdream", "m", "i", "--layer", "logits", "--classes", ""], "holds no name"),
    (["demo", "--images", ""], "holds no name"),
    (["activations", "m", "i", "--size", "0"], "not a size"),
    (["frobnicate"], "invalid choice"),
])
def test_malformed_command_line_exits_2_with_one_line(args, expected, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(args)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err and expected in err, err


def test_help_and_bad_arguments_answer_without_loading_tensorflow():
    """The command line parses and checks its arguments before TensorFlow loads."""
    script = (
        "import sys\n"
        "from tf_cnnvis import cli\n"
        f"for argv in ([], *([c, '--help'] for c in {COMMANDS!r}), ['--help'],\n"
        "             ['deconv', 'm', 'i', '--method', 'lrp'], ['deconv', 'm', 'i', '--channels', '2-1']):\n"
        "    try:\n"
        "        cli.main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print(sorted(name for name in ('tensorflow', 'keras') if name in sys.modules))\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_import_gives_the_whole_api_on_first_use():
    script = ("import sys, tf_cnnvis\n"
              "assert 'tensorflow' not in sys.modules\n"
              "missing = [name for name in tf_cnnvis.__all__ if not hasattr(tf_cnnvis, name)]\n"
              "from tf_cnnvis import deconv_visualization, utils, VisualizationCallback\n"
              "print(missing, 'tensorflow' in sys.modules, callable(deconv_visualization))\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[] True True"


def test_no_log_handler_outlives_the_command(model_file, image_files, capsys):
    """The command's handler writes to its own call's stderr and leaves with it."""
    import logging

    library = logging.getLogger("tf_cnnvis")
    before = list(library.handlers), library.level
    code, _, err = run_cli(["deconv", model_file, image_files[0], "--layers", "conv1", "--channels", "0",
                            "--no-outdir", "--no-logdir", "--memory-budget-mb", "1e-6", "-v"], capsys)
    assert code == 0 and "tf-cnnvis: " in err  # it logged while it ran
    assert (list(library.handlers), library.level) == before
    library.warning("after the command")  # goes nowhere closed: no "Logging error"
    assert "Logging error" not in capsys.readouterr().err


def test_channel_lists_and_sizes_parse():
    assert arguments.integers("0,3,5-7") == [0, 3, 5, 6, 7]
    assert arguments.size("160x240") == (160, 240) and arguments.size("64") == (64, 64)


@pytest.mark.parametrize("preset, expected", [(None, "true"), ("false", "false")])
def test_the_command_picks_the_pooling_allocator_unless_told_otherwise(preset, expected, monkeypatch):
    monkeypatch.setenv(cli.ALLOCATOR_ENV, "recorded")  # restored after the test, whatever console() sets
    monkeypatch.delenv(cli.ALLOCATOR_ENV)
    if preset is not None:
        monkeypatch.setenv(cli.ALLOCATOR_ENV, preset)
    seen = []
    monkeypatch.setattr(cli, "main", lambda: seen.append(os.environ.get(cli.ALLOCATOR_ENV)) or 0)
    with pytest.raises(SystemExit) as stop:
        cli.console()
    assert stop.value.code == 0 and seen == [expected]


# --------------------------------------------------------------------------- the work itself

def test_layers_table_via_python_dash_m(model_file):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop(cli.TF_LOG_LEVEL_ENV, None)  # as on a user's terminal: TensorFlow's lines are the command's to hide
    done = subprocess.run([sys.executable, "-m", "tf_cnnvis", "layers", model_file],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # none of TensorFlow's start-up lines (oneDNN, CUDA, CPU features)
    rows = done.stdout.splitlines()
    names = [row.split()[0] for row in rows[1:]]
    assert ["conv1", "pool1", "conv2", "pool2", "conv3"] == [n for n in names if "/" not in n]
    assert "\r" not in done.stderr  # no progress bar when stderr is not a terminal


def test_activations_from_files_equal_the_python_call(model_file, image_files, tmp_path, capsys):
    """Reading, stacking and scaling image files must give the model the same batch."""
    outdir = tmp_path / "cli"
    code, out, _ = run_cli(["activations", model_file, *image_files, "--preprocess", "unit",
                            "--layers", "conv1,pool2", "--outdir", outdir, "--no-logdir"], capsys)
    assert code == 0
    assert "8 PNG" not in out and "6 PNG file(s) for 2 layer(s)" in out  # 4 grids and the 2 inputs
    batch = np.stack([np.asarray(Image.open(path), np.float32) / 255 for path in image_files])
    expected = activation_visualization(model_file, batch, layers=["conv1", "pool2"],
                                        path_logdir=None, path_outdir=str(tmp_path / "py"))
    for path in expected.paths:
        twin = outdir / os.path.relpath(path, tmp_path / "py")
        assert twin.read_bytes() == open(path, "rb").read(), twin


def test_deconv_methods_targets_and_channels(model_file, image_files, tmp_path, capsys):
    outdir, logdir = tmp_path / "out", tmp_path / "log"
    code, out, _ = run_cli(["deconv", model_file, image_files[0], "--preprocess", "unit",
                            "--layers", "conv2", "--method", "deconvnet,guided", "--target", "unit",
                            "--unit-view", "image", "--channels", "0,2-3", "--outdir", outdir,
                            "--logdir", logdir], capsys)
    assert code == 0
    assert f"tensorboard --logdir {logdir}" in out
    image = np.asarray(Image.open(image_files[0]), np.float32)[None] / 255
    expected = deconv_visualization(model_file, image, layers="conv2", method=["deconvnet", "guided"],
                                    target="unit", channels=[0, 2, 3], path_logdir=None,
                                    path_outdir=None)
    for method in ("deconvnet", "guided"):
        grid = np.asarray(Image.open(outdir / "conv2" / "deconvolution" / f"{method}_unit" / "grid_image.png"))
        assert grid.shape == (24 * 2 + 1, 24 * 2 + 1, 3)  # 3 channels -> a 2x2 grid
        cells = [grid[:24, :24], grid[:24, 25:], grid[25:, :24]]
        recon = expected.arrays["conv2"][method][0]
        for cell, channel_recon in zip(cells, recon):
            # each cell is its channel's reconstruction: zero outside the unit's
            # receptive field shows as the cell's most common value
            flat = channel_recon == 0
            assert flat.any() and (~flat).any()
            background = np.bincount(cell.reshape(-1, 3)[:, 0]).argmax()
            assert np.all(cell[flat.all(axis=-1)][:, 0] == background)
    assert list(logdir.glob("events.out.tfevents.*"))


# --------------------------------------------------------------------------- models by URL

class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    requests: list = []

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_folder(tmp_path):
    folder = tmp_path / "served"
    folder.mkdir()
    handler = type("Handler", (_CountingHandler,), {"requests": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield folder, f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_model_url_is_downloaded_once_into_the_cache(http_folder, model_file, tmp_path, capsys,
                                                     monkeypatch):
    folder, base, handler = http_folder
    (folder / "my model.keras").write_bytes(open(model_file, "rb").read())
    workdir, cache = tmp_path / "work", tmp_path / "cache"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    url = f"{base}/{urllib.parse.quote('my model.keras')}"
    first = run_cli(["layers", url, "--cache-dir", cache], capsys)
    second = run_cli(["layers", url, "--cache-dir", cache], capsys)
    local = run_cli(["layers", model_file], capsys)
    assert first[0] == second[0] == 0
    assert first[1] == second[1] == local[1]
    assert len(handler.requests) == 1  # the second run used the cache
    cached = list((cache / "models").iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("-my_model.keras")
    assert cached[0].read_bytes() == open(model_file, "rb").read()
    assert list(workdir.iterdir()) == []  # wget's temporary file did not land in the cwd
    assert os.getcwd() == str(workdir)


def test_cache_folder_from_environment_and_missing_url(http_folder, model_file, tmp_path, capsys,
                                                       monkeypatch):
    folder, base, _ = http_folder
    (folder / "m.keras").write_bytes(open(model_file, "rb").read())
    monkeypatch.setenv(cli.CACHE_ENV, str(tmp_path / "env_cache"))
    assert run_cli(["layers", f"{base}/m.keras"], capsys)[0] == 0
    assert len(list((tmp_path / "env_cache" / "models").glob("*-m.keras"))) == 1
    code, _, err = run_cli(["layers", f"{base}/absent.keras"], capsys)
    assert code == 1 and err.count("\n") == 1 and "cannot download model" in err and "404" in err
    assert [p.name for p in (tmp_path / "env_cache" / "models").iterdir()] == [
        next((tmp_path / "env_cache" / "models").glob("*-m.keras")).name]  # no partial file left


# --------------------------------------------------------------------------- progress

class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_draws_only_on_a_terminal():
    terminal, pipe = _Terminal(), io.StringIO()
    for stream in (terminal, pipe):
        with progress.ProgressBar(3, "work", stream=stream) as bar:
            for _ in range(3):
                bar.update()
    assert pipe.getvalue() == ""
    text = terminal.getvalue()
    assert text.endswith("\n") and "\r" in text
    assert text.rstrip("\n").split("\r")[-1].startswith("work [" + "#" * 28 + "] 3/3")
    assert progress.ProgressBar(4, "x", stream=terminal).render().startswith("x [" + "." * 28 + "] 0/4")
    with pytest.raises(Exception, match="progress="):
        progress.progress_bar("yes", 3)


def test_progress_option_counts_every_reconstruction(model_file, image_files):
    counted = []
    image = np.stack([np.asarray(Image.open(p), np.float32) / 255 for p in image_files])
    deconv_visualization(model_file, image, layers=["conv1", "conv2"], method=["guided", "gradient"],
                         path_logdir=None, path_outdir=None, progress=counted.append)
    assert sum(counted) == 2 * 2 * (6 + 8)  # images x methods x channels of both layers


@pytest.mark.parametrize("quiet", [False, True])
def test_cli_progress_bar_on_terminal_unless_quiet(quiet, model_file, image_files, tmp_path,
                                                   monkeypatch, capsys):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    args = ["deconv", model_file, image_files[0], "--layers", "conv1", "--outdir", tmp_path / "o",
            "--no-logdir"] + (["--quiet"] if quiet else [])
    assert cli.main([str(a) for a in args]) == 0
    drawn = terminal.getvalue()
    if quiet:
        assert drawn == "" and capsys.readouterr().out == ""
    else:
        assert "reconstructions [" in drawn and "6/6" in drawn


# --------------------------------------------------------------------------- gallery

class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if key in attrs:
                self.links.append(attrs[key])


def _parse(path):
    parser = _Links()
    parser.feed(open(path, encoding="utf-8").read())
    return parser


def test_report_links_every_picture_and_no_link_is_broken(model_file, image_files, tmp_path, capsys):
    outdir = tmp_path / "out"
    common = [*image_files, "--outdir", outdir, "--no-logdir", "--save-channels", "--quiet"]
    assert run_cli(["activations", model_file, *common, "--layers", "conv1,pool1"], capsys)[0] == 0
    assert run_cli(["deconv", model_file, *common, "--layers", "conv2", "--method", "guided,deconvnet"],
                   capsys)[0] == 0
    code, out, _ = run_cli(["report", outdir], capsys)
    assert code == 0 and out.strip() == f"gallery: {outdir / 'index.html'}"
    pages = [outdir / "index.html"] + sorted(outdir.glob("*/index.html"))
    assert len(pages) == 1 + 3
    referenced = set()
    for page in pages:
        parsed = _parse(page)
        for link in parsed.links:
            target, _, fragment = urllib.parse.unquote(link).partition("#")
            path = (page.parent / target).resolve() if target else page
            assert path.is_file(), f"{page}: broken link {link}"
            if fragment:
                assert fragment in _parse(path).ids, f"{page}: missing anchor {link}"
            referenced.add(path)
    pictures = {path.resolve() for path in outdir.rglob("*.png")}
    assert len(pictures) == 2 * 2 * (1 + 6) + 2 * 2 * (1 + 8) + 2  # layers|methods x images x (grid +
    # channels), and the 2 input images
    assert pictures <= referenced  # every layer, method, image and channel is linked
    index = open(outdir / "index.html", encoding="utf-8").read()
    for anchor in ("conv2/index.html#deconvolution-guided-image_001", "pool1/index.html#activations"):
        assert anchor in index


# --------------------------------------------------------------------------- demo

def test_demo_command_writes_every_method_to_output_and_log(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, _ = run_cli(["demo", "--size", "48", "--channels", "2", "--layers",
                            "block1_conv2,block3_conv3", "--deconv-layers", "block2_conv2,block3_conv3",
                            "--dream-iterations", "1", "--dream-octaves", "1",
                            "--class-iterations", "3"], capsys)
    assert code == 0
    output, log = tmp_path / "Output", tmp_path / "Log"
    assert f"tensorboard --logdir {log}" in out and str(output / "index.html") in out
    expected = ["block1_conv2/activations/grid_activation.png",
                "block3_conv3/activations/grid_activation.png",
                "block3_conv3/deconvolution/deconvnet_unit/grid_image.png",
                "block2_conv2/deconvolution/guided/grid_image.png",  # guided whole maps: shallow only
                "block4_conv3/deepdream/amplified.png",
                "predictions/deepdream/grid_deepdream.png"]
    for name in expected:
        picture = np.asarray(Image.open(output / name))
        assert picture.std() > 1, f"{name} is flat"
    guided = np.asarray(Image.open(output / expected[3]))
    assert guided.shape == (48, 97, 3)  # the two strongest channels side by side
    assert not np.array_equal(guided[:, :48], guided[:, 49:])
    assert not (output / "block3_conv3" / "deconvolution" / "guided").exists()
    assert (output / "input_000.png").exists()  # the gallery shows the input first
    emotions = sorted(p.name for p in (output / "predictions" / "deepdream").glob("class_*.png"))
    assert len(emotions) == 7 and "class_happy.png" in emotions
    assert list(log.glob("events.out.tfevents.*"))


def test_strongest_channels_orders_by_peak_activation():
    values = np.zeros((2, 4, 4, 5), np.float32)
    values[1, 2, 3, 4] = 9.0
    values[0, 0, 0, 1] = 5.0
    values[:, :, :, 2] = 1.0  # a high mean but a low peak
    assert demo.strongest_channels(values, 3) == [4, 1, 2]


def test_deepdream_command_draws_classes_the_model_recognizes(tmp_path, capsys):
    """Each picture, read back from disk, is scored highest for its own class by the model itself."""
    from tf_cnnvis import models

    outdir = tmp_path / "out"
    code, _, _ = run_cli(["deepdream", "emotion", "face", "--layer", "predictions", "--classes",
                          "happy,surprise,3", "--iterations", "5", "--outdir", outdir, "--no-logdir"],
                         capsys)
    assert code == 1  # "3" is happy again: a repeated class is refused
    code, out, _ = run_cli(["deepdream", "emotion", "face", "--layer", "predictions", "--classes",
                            "happy,surprise", "--iterations", "5", "--outdir", outdir, "--no-logdir"],
                           capsys)
    assert code == 0 and "3 PNG file(s) for 1 layer(s)" in out
    folder = outdir / "predictions" / "deepdream"
    faces = np.stack([np.asarray(Image.open(folder / f"class_{name}.png").convert("L"), np.float32)
                      for name in ("happy", "surprise")])
    scores = np.asarray(models.emotion_model()(models.emotion_preprocess(faces)))
    happy, surprise = models.EMOTION_LABELS.index("happy"), models.EMOTION_LABELS.index("surprise")
    assert scores[0, happy] > scores[1, happy] and scores[1, surprise] > scores[0, surprise]


def test_deepdream_progress_counts_every_iteration(tmp_path, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main(["deepdream", "emotion", "face", "--layer", "predictions", "--classes", "sad",
                     "--iterations", "2", "--octaves", "2", "--outdir", str(tmp_path), "--no-logdir"]) == 0
    assert terminal.getvalue().rstrip("\n").split("\r")[-1].startswith("deepdream [" + "#" * 28 + "] 4/4")
