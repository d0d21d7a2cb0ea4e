"""Layer names come from model files: none of them may write outside the output folder or collide.

The graphs here carry the names a downloaded model could: ``..`` and
``../../x`` components, ``/`` separators, names that differ only in case or
only after sanitizing, a name equal to another's hashed folder, Windows
device names and very long names. Every file written must lie under
``path_outdir`` (or the log folder), every layer must get its own folder,
and each layer's pictures must be its own.
"""

import hashlib
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_cnnvis
from tf_cnnvis.deepdream import deepdream_visualization
from tf_cnnvis.write import MAX_NAME_LENGTH, inside, safe_names

IMAGES = np.random.default_rng(1).uniform(0, 1, (1, 8, 8, 3)).astype(np.float32)

# Valid TensorFlow op names that are hostile as paths, each with its own channel count
# so a picture written into the wrong folder shows up as a wrong grid size.
HOSTILE_OPS = [
    "../../escape", "..", "a/b", "a_b", "Conv", "conv", ".hidden", "con",
    "x>y", "L" * 250, "a_b-" + hashlib.sha1(b"a/b").hexdigest()[:8],
]


def hostile_graph():
    """A GraphDef whose ReLU ops carry HOSTILE_OPS (set in the GraphDef: TensorFlow's
    Python API would rename 'conv' after 'Conv', a file in a download need not)."""
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        h = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="x")
        for index in range(len(HOSTILE_OPS)):
            channels = index + 2
            kernel = rng.normal(0, 1, (1, 1, h.shape[-1], channels)).astype(np.float32)
            h = tf.nn.relu(tf.nn.conv2d(h, tf.constant(kernel), 1, "SAME") + 0.1, name=f"relu{index}")
    graph_def = graph.as_graph_def()
    rename = {f"relu{index}": name for index, name in enumerate(HOSTILE_OPS)}
    for node in graph_def.node:
        node.name = rename.get(node.name, node.name)
        node.input[:] = [rename.get(source, source) for source in node.input]
    return graph_def


def files_under(root):
    found = set()
    for folder, _, files in os.walk(root):
        found.update(os.path.join(folder, name) for name in files)
    return found


def decode(path):
    with Image.open(path) as image:
        image.load()
        return np.asarray(image)


def assert_contained(paths, root):
    root = os.path.realpath(root)
    for path in paths:
        assert os.path.commonpath([root, os.path.realpath(path)]) == root, path


def test_hostile_op_names_stay_inside_and_never_collide(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    # Nested, so an escape through ../.. would land in tmp_path, where it is seen.
    out, log = tmp_path / "deep" / "er" / "out", tmp_path / "deep" / "er" / "log"
    graph = hostile_graph()
    acts = tf_cnnvis.activation_visualization(graph, {"x": IMAGES}, layers="r", path_outdir=str(out),
                                              path_logdir=str(log), save_channels=True)
    recon = tf_cnnvis.deconv_visualization(graph, {"x": IMAGES}, layers=HOSTILE_OPS[:4],
                                           path_outdir=str(out), path_logdir=str(log))
    names = [layer.name for layer in acts.layers]
    assert sorted(names) == sorted(HOSTILE_OPS)

    inputs = {str(out / "input_000.png")}  # the input image, at the top, written by each call
    assert acts.paths[-1] == recon.paths[-1] == str(out / "input_000.png")
    written = acts.paths[:-1] + recon.paths[:-1]
    on_disk = files_under(tmp_path)
    events = {path for path in on_disk if "tfevents" in os.path.basename(path)}
    assert on_disk - events == set(written) | inputs  # nothing else anywhere under tmp_path
    assert len(set(written)) == len(written)  # no file written twice
    assert_contained(written, out)
    assert_contained(events, log)

    folders = {os.path.relpath(path, out).split(os.sep)[0] for path in written}
    assert len(folders) == len(HOSTILE_OPS)
    assert len({folder.lower() for folder in folders}) == len(folders)  # case-insensitive file systems
    for folder in folders:
        assert not folder.startswith(".") and len(folder) < 255

    # Folders are named over the model's whole layer list, so both calls agree.
    mapping = safe_names([layer.name for layer in tf_cnnvis.list_layers(graph)])
    for index, name in enumerate(HOSTILE_OPS):
        grid = decode(out / mapping[name] / "activations" / "grid_activation.png")
        channels = index + 2
        columns = int(np.ceil(np.sqrt(channels)))
        rows = int(np.ceil(channels / columns))
        assert grid.shape == (rows * 8 + rows - 1, columns * 8 + columns - 1)  # its own channel count
        per_channel = list((out / mapping[name] / "activations" / "channels").iterdir())
        assert len(per_channel) == channels
    for name in HOSTILE_OPS[:4]:
        grid = decode(out / mapping[name] / "deconvolution" / "deconvnet" / "grid_image.png")
        assert grid.ndim == 3 and grid.min() < grid.max()

    accumulator = event_accumulator.EventAccumulator(str(log), size_guidance={"images": 0})
    accumulator.Reload()
    tags = set(accumulator.Tags()["images"])
    assert tags == ({f"{name}/activations" for name in HOSTILE_OPS}
                    | {f"{name}/deconvolution/deconvnet" for name in HOSTILE_OPS[:4]})


def test_hostile_keras_layer_names(tmp_path):
    import keras

    names = ["..", "...", ".hidden", "Conv", "conv", "con", "z" * 300, "a>b", "a_b", "a.b"]
    inputs = keras.Input((None, None, 3), name="image")
    x = inputs
    for index, name in enumerate(names):
        x = keras.layers.Conv2D(index + 1, 1, activation="relu", name=name)(x)
    model = keras.Model(inputs, x)
    out = tmp_path / "nest" / "out"
    result = tf_cnnvis.activation_visualization(model, IMAGES, layers=names, path_outdir=str(out),
                                                path_logdir=None)
    assert [layer.name for layer in result.layers] == names
    assert files_under(tmp_path) == set(result.paths)
    assert_contained(result.paths, out)
    folders = {os.path.relpath(path, out).split(os.sep)[0] for path in result.paths[:-1]}  # not the input
    assert len({folder.lower() for folder in folders}) == len(names)
    mapping = safe_names([layer.name for layer in tf_cnnvis.list_layers(model)])
    for index, name in enumerate(names):  # each folder holds its own layer's picture
        grid = decode(out / mapping[name] / "activations" / "grid_activation.png")
        columns = int(np.ceil(np.sqrt(index + 1)))
        assert grid.shape[1] == columns * 8 + columns - 1


def test_separate_calls_never_share_a_folder(tmp_path):
    graph = hostile_graph()
    out = tmp_path / "out"
    first = tf_cnnvis.activation_visualization(graph, {"x": IMAGES}, layers=["a/b"], path_outdir=str(out),
                                               path_logdir=None)
    second = tf_cnnvis.activation_visualization(graph, {"x": IMAGES}, layers=["a_b"],
                                                path_outdir=str(out), path_logdir=None)
    assert first.paths[0] != second.paths[0]
    assert decode(first.paths[0]).shape != decode(second.paths[0]).shape  # 4 and 5 channels


def test_deepdream_names_a_layers_folder_as_the_other_entry_functions(tmp_path):
    """'a_b' collides with 'a/b' once made safe: DeepDream must pick the same folder as activations."""
    graph = hostile_graph()
    out = tmp_path / "out"
    options = dict(path_outdir=str(out), path_logdir=None)
    for layer in ("a/b", "a_b"):
        activations = tf_cnnvis.activation_visualization(graph, {"x": IMAGES}, layers=[layer], **options)
        dream = deepdream_visualization(graph, {"x": IMAGES}, layer=layer, classes=[0], iterations=1,
                                        octaves=1, **options)
        folder = os.path.relpath(activations.paths[0], out).split(os.sep)[0]
        assert {os.path.relpath(path, out).split(os.sep)[0] for path in dream.paths} == {folder}
    assert len([entry for entry in os.scandir(out) if entry.is_dir()]) == 2  # one per layer, shared


def test_hostile_class_labels_in_deepdream(tmp_path):
    import keras

    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, keras.layers.Dense(5, name="logits")(x))
    labels = ["../../../etc/passwd", "/abs/path", "A", "a", "x\x00y"]
    out = tmp_path / "nest" / "out"
    result = deepdream_visualization(model, IMAGES, layer="logits", classes=list(range(5)), labels=labels,
                                     iterations=1, octaves=1, path_outdir=str(out), path_logdir=None)
    assert files_under(tmp_path) == set(result.paths)
    assert_contained(result.paths, out)
    pictures = [path for path in result.paths if "grid_deepdream" not in path]
    assert len({os.path.basename(path).lower() for path in pictures}) == len(labels)


@pytest.mark.parametrize("names", [
    ["..", ".", "...", ""],
    ["/etc/passwd", "etc/passwd", "etc_passwd", "\\etc\\passwd"],
    ["a\x00b", "ab", "a b", "a_b", "a-b"],
    ["Conv", "conv", "CONV", "cOnV"],
    ["con", "nul", "aux", "prn", "CON"],
    ["n" * 1000, "n" * 1001, "n" * MAX_NAME_LENGTH],
    ["é", "e", "名前", "\udc80"],
])
def test_safe_names_edge_cases(tmp_path, names):
    folders = safe_names(names)
    assert set(folders) == set(names)
    lowered = [folder.lower() for folder in folders.values()]
    assert len(set(lowered)) == len(names)
    for folder in folders.values():
        assert folder and not folder.startswith(".") and len(folder.encode()) < 200
        assert set(folder) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        assert os.path.dirname(inside(str(tmp_path), folder)) == str(tmp_path)


def test_name_equal_to_another_names_hashed_folder():
    taken = "a_b-" + hashlib.sha1(b"a b").hexdigest()[:8]
    for order in (["a b", taken], [taken, "a b"]):
        folders = safe_names(order)
        assert folders[taken] == taken  # a plain name keeps its folder
        assert folders["a b"] != taken and folders["a b"].lower() != taken.lower()
    assert safe_names(["a b", taken]) == safe_names([taken, "a b"])  # independent of order


@pytest.mark.parametrize("parts", [("..",), ("a", "..", ".."), ("/etc",), ("a", "/b")])
def test_inside_refuses_escapes(tmp_path, parts):
    from tf_cnnvis.errors import OutputError

    with pytest.raises(OutputError, match="outside the output folder"):
        inside(str(tmp_path / "out"), *parts)


@pytest.mark.parametrize("name", ["com1", "LPT9", "con.txt", "Nul.layer", "aux"])
def test_windows_device_names_get_a_hash(name):
    folder = safe_names([name])[name]
    assert folder != name and folder.split(".")[0].split("-")[0].lower() == name.split(".")[0].lower()


def test_a_link_planted_inside_the_output_folder_is_refused(tmp_path):
    """A folder inside path_outdir that links elsewhere must not carry writes out of it."""
    graph = hostile_graph()
    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    options = dict(layers=[HOSTILE_OPS[2]], path_outdir=str(out), path_logdir=None)
    first = tf_cnnvis.activation_visualization(graph, {"x": IMAGES}, **options)
    folder = out / os.path.relpath(first.paths[0], out).split(os.sep)[0]
    for path in first.paths:
        os.unlink(path)
    os.rmdir(folder / "activations")
    os.rmdir(folder)
    os.symlink(elsewhere, folder)
    with pytest.raises(tf_cnnvis.OutputError, match="link"):
        tf_cnnvis.activation_visualization(graph, {"x": IMAGES}, **options)
    assert os.listdir(elsewhere) == []
