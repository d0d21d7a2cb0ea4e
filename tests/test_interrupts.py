"""Interrupts, crashes and concurrent runs lose nothing that was written.

A KeyboardInterrupt (in-process, or Ctrl-C as a signal to a real process),
a hard kill, and two processes writing the same folders at once must all
leave only complete PNGs and TensorBoard logs that TensorBoard's own reader
reads. A backend that runs out of memory is met with smaller chunks.
"""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import tf_cnnvis
from tf_cnnvis import compute, write

from conftest import tf1_graph
from numerics import assert_reordered_close

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGES = np.random.default_rng(2).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)
OTHER_IMAGES = np.random.default_rng(3).uniform(0, 1, (1, 16, 16, 3)).astype(np.float32)


def pictures_and_leftovers(root):
    pngs, others = [], []
    for folder, _, files in os.walk(root):
        for name in files:
            (pngs if name.endswith(".png") else others).append(os.path.join(folder, name))
    return pngs, others


def assert_complete_png(path):
    with Image.open(path) as image:
        image.load()  # raises on a truncated or corrupt file
        picture = np.asarray(image)
    assert picture.size, path
    if os.path.basename(path).startswith("grid_"):  # a single channel may be dead; a grid is not flat
        assert picture.min() < picture.max(), path


def read_tensorboard(logdir):
    """Every image of every tag as TensorBoard's reader sees it: {tag: [steps]}."""
    from tensorboard.backend.event_processing import event_accumulator

    accumulator = event_accumulator.EventAccumulator(str(logdir), size_guidance={"images": 0})
    accumulator.Reload()
    found = {}
    for tag in accumulator.Tags()["images"]:
        events = accumulator.Images(tag)
        for event in events:
            decoded = tf.io.decode_png(event.encoded_image_string).numpy()
            assert decoded.shape[:2] == (event.height, event.width)
        found[tag] = sorted(event.step for event in events)
    return found


class _InterruptingOs(types.SimpleNamespace):
    """``os`` as write.py sees it, with a Ctrl-C after the n-th file's bytes are on disk."""

    def __init__(self, after):
        super().__init__()
        self.calls, self.after = 0, after

    def __getattr__(self, name):
        return getattr(os, name)

    def chmod(self, path, mode):  # write_atomic calls it between writing and renaming
        self.calls += 1
        if self.calls == self.after:
            raise KeyboardInterrupt
        return os.chmod(path, mode)


def test_keyboard_interrupt_while_a_grid_streams_into_its_file(tmp_path, monkeypatch):
    """A grid past TensorBoard's size limit is encoded into a temporary file chunk by chunk;
    a Ctrl-C between chunks removes that file and leaves no grid behind."""
    from tf_cnnvis import render

    graph = tf1_graph()[0]
    out = tmp_path / "out"
    monkeypatch.setattr(write, "SUMMARY_MAX_SIDE", 8)
    real_normalize = render.normalize_signed
    calls = []

    def interrupting_normalize(values):
        calls.append(len(values))
        if len(calls) == 3:
            assert [name for _, _, files in os.walk(out) for name in files if name.endswith(".part")]
            raise KeyboardInterrupt
        return real_normalize(values)

    monkeypatch.setattr(render, "normalize_signed", interrupting_normalize)
    with pytest.raises(KeyboardInterrupt):
        tf_cnnvis.deconv_visualization(graph, {"x": IMAGES}, layers=["relu2"], memory_budget_mb=0.001,
                                       keep_arrays=False, path_outdir=str(out), path_logdir=None)
    assert len(calls) == 3
    assert pictures_and_leftovers(out) == ([], [])


def test_keyboard_interrupt_in_the_middle_of_a_write(tmp_path, monkeypatch):
    graph = tf1_graph()[0]
    out, log = tmp_path / "out", tmp_path / "log"
    options = dict(layers="r", method="guided", path_outdir=str(out), path_logdir=str(log),
                   save_channels=True)  # guided: the pictures depend on the image
    complete = tf_cnnvis.deconv_visualization(graph, {"x": IMAGES}, step=0, **options)
    before = {path: open(path, "rb").read() for path in complete.paths}

    fake_os = _InterruptingOs(after=5)
    monkeypatch.setattr(write, "os", fake_os)
    with pytest.raises(KeyboardInterrupt):
        tf_cnnvis.deconv_visualization(graph, {"x": OTHER_IMAGES}, step=1, **options)
    monkeypatch.undo()
    assert fake_os.calls == 5

    pngs, leftovers = pictures_and_leftovers(out)
    assert leftovers == []  # the interrupted temporary file was removed
    assert sorted(pngs) == sorted(before)  # same files, each either the old or a new complete one
    changed = [path for path in pngs if open(path, "rb").read() != before[path]]
    assert len(changed) == 4  # the 4 written before the interrupt were replaced whole
    for path in pngs:
        assert_complete_png(path)
    # The log holds the finished call; the interrupted one added nothing half-done.
    tags = read_tensorboard(log)
    assert len(tags) == 2 and all(steps == [0] for steps in tags.values())

    again = tf_cnnvis.deconv_visualization(graph, {"x": OTHER_IMAGES}, step=1, **options)
    assert sorted(again.paths) == sorted(before)
    assert all(steps == [0, 1] for steps in read_tensorboard(log).values())


class _FullDiskOs(_InterruptingOs):
    """``os`` as write.py sees it, with the disk full when the n-th file is about to be renamed."""

    def chmod(self, path, mode):
        self.calls += 1
        if self.calls == self.after:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return os.chmod(path, mode)


@pytest.mark.parametrize("streamed", [False, True], ids=["in memory", "streamed into its file"])
def test_a_grid_that_cannot_be_written_stops_the_call(streamed, tmp_path, monkeypatch):
    """A full disk while the first layer's grid is written: the error reaches the caller,
    no temporary file stays behind and no later layer is drawn."""
    graph = tf1_graph()[0]
    out = tmp_path / "out"
    if streamed:  # grids past this size go into a temporary file as their cells arrive
        monkeypatch.setattr(write, "SUMMARY_MAX_SIDE", 8)
    full = _FullDiskOs(after=1)  # the first layer's grid
    monkeypatch.setattr(write, "os", full)
    with pytest.raises(OSError, match="No space left on device"):
        tf_cnnvis.deconv_visualization(graph, {"x": IMAGES}, layers="r", path_outdir=str(out),
                                       path_logdir=None)
    monkeypatch.undo()
    assert full.calls == 1  # no later grid was written
    assert pictures_and_leftovers(out) == ([], [])


WORKER = textwrap.dedent("""
    import os, signal, sys
    # A shell starting the test run in the background makes children ignore
    # SIGINT; the worker stands for a script run from a terminal.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path[:0] = [{repo!r}, {tests!r}]
    import numpy as np
    import tf_cnnvis
    from conftest import tf1_graph

    graph = tf1_graph()[0]
    images = np.random.default_rng(int(sys.argv[3])).uniform(0, 1, (2, 24, 24, 3)).astype(np.float32)
    for step in range(int(sys.argv[4])):
        tf_cnnvis.activation_visualization(graph, {{"x": images}}, layers=["r", "p"], path_outdir=sys.argv[1],
                                           path_logdir=sys.argv[2], step=step, save_channels=True)
        tf_cnnvis.deconv_visualization(graph, {{"x": images}}, layers="r", method=["deconvnet", "guided"],
                                       path_outdir=sys.argv[1], path_logdir=sys.argv[2], step=step,
                                       save_channels=True)
        print("step", step, flush=True)
""")


def start_worker(tmp_path, out, log, seed, steps):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO, tests=os.path.join(REPO, "tests")))
    return subprocess.Popen([sys.executable, str(script), str(out), str(log), str(seed), str(steps)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_first_step(process, timeout=120):
    deadline = time.monotonic() + timeout
    line = process.stdout.readline()  # blocks until the worker finished a step
    assert line.startswith("step"), (line, process.stderr.read() if process.poll() is not None else "")
    assert time.monotonic() < deadline


def test_two_processes_writing_the_same_folders(tmp_path):
    out, log = tmp_path / "out", tmp_path / "log"
    workers = [start_worker(tmp_path, out, log, seed, steps=3) for seed in (0, 1)]
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-2000:]
        assert stdout.split() == ["step", "0", "step", "1", "step", "2"]
    pngs, leftovers = pictures_and_leftovers(out)
    assert leftovers == []
    # 2 images x (relu1 5 + pool1 5 + relu2 7 + pool2 7 channels + 4 grids) activations,
    # 2 images x 2 methods x (relu1 5 + relu2 7 channels + 2 grids) reconstructions.
    assert len(pngs) == 2 * (24 + 4) + 2 * 2 * (12 + 2) + 2  # and the 2 input images
    for path in pngs:
        assert_complete_png(path)
    assert len([name for name in os.listdir(log) if "tfevents" in name]) == 2  # one file per process
    tags = read_tensorboard(log)
    assert len(tags) == 2 * 4 + 2 * 2 * 2
    assert all(steps == [0, 0, 1, 1, 2, 2] for steps in tags.values())  # both processes, every step


def test_ctrl_c_and_hard_kill_of_running_processes(tmp_path):
    interrupted = start_worker(tmp_path, tmp_path / "out_int", tmp_path / "log_int", 0, steps=1000)
    killed = start_worker(tmp_path, tmp_path / "out_kill", tmp_path / "log_kill", 1, steps=1000)
    wait_for_first_step(interrupted)
    wait_for_first_step(killed)
    time.sleep(0.7)  # well inside a later step: mid-way through its writes
    interrupted.send_signal(signal.SIGINT)
    killed.send_signal(signal.SIGKILL)
    _, stderr = interrupted.communicate(timeout=120)
    killed.communicate(timeout=120)
    assert interrupted.returncode != 0 and "KeyboardInterrupt" in stderr
    assert killed.returncode == -signal.SIGKILL

    pngs, leftovers = pictures_and_leftovers(tmp_path / "out_int")
    assert leftovers == []  # Ctrl-C: every temporary file was cleaned up
    assert pngs
    for path in pngs:
        assert_complete_png(path)
    pngs, leftovers = pictures_and_leftovers(tmp_path / "out_kill")
    assert pngs
    for path in pngs:  # a hard kill may strand a hidden temporary file, never a broken picture
        assert_complete_png(path)
    for path in leftovers:
        assert os.path.basename(path).startswith(".tmp-") and path.endswith(".part")
    for log in ("log_int", "log_kill"):
        tags = read_tensorboard(tmp_path / log)
        assert tags and all(steps and steps[0] == 0 for steps in tags.values())


def test_out_of_memory_is_met_with_smaller_chunks(monkeypatch):
    """A backend that refuses big batches gets smaller ones; the result is the same."""
    graph = tf1_graph()[0]
    expected = tf_cnnvis.deconv_visualization(graph, {"x": IMAGES}, layers="relu2", path_outdir=None,
                                              path_logdir=None).arrays["relu2"]["deconvnet"]
    real_run = compute.run
    sizes = []

    def run_with_little_memory(rebuilt, fetches, feed_dict):
        batch = max((len(value) for key, value in feed_dict.items()
                     if getattr(key, "dtype", None) == tf.int32), default=1)  # the chunk's indices
        sizes.append(batch)
        if batch > 2:
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_run(rebuilt, fetches, feed_dict)

    monkeypatch.setattr(compute, "run", run_with_little_memory)
    got = tf_cnnvis.deconv_visualization(graph, {"x": IMAGES}, layers="relu2", path_outdir=None,
                                         path_logdir=None).arrays["relu2"]["deconvnet"]
    assert_reordered_close(got, expected)  # smaller chunks sum in another order
    assert max(sizes) > 2 and sizes[-1] <= 2  # it was refused, then went on in smaller chunks


def test_out_of_memory_with_one_item_says_what_to_do(monkeypatch):
    real_run = compute.run

    def always_out_of_memory(rebuilt, fetches, feed_dict):
        if any(getattr(key, "dtype", None) == tf.int32 for key in feed_dict):  # a chunk of reconstructions
            raise tf.errors.ResourceExhaustedError(None, None, "OOM when allocating tensor")
        return real_run(rebuilt, fetches, feed_dict)

    graph = tf1_graph()[0]
    monkeypatch.setattr(compute, "run", always_out_of_memory)
    with pytest.raises(tf_cnnvis.TfCnnvisError, match="memory_budget_mb|smaller images"):
        tf_cnnvis.deconv_visualization(graph, {"x": IMAGES}, layers="relu2", path_outdir=None,
                                       path_logdir=None)


def test_temporaries_stranded_by_a_killed_process_are_removed(tmp_path):
    """A hard kill can leave '.tmp-<pid>-*.part'; the next writer removes those of dead processes only."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    folder = tmp_path / "out" / "relu1" / "activations"
    folder.mkdir(parents=True)
    stranded = folder / f".tmp-{dead.stdout.strip()}-abc.part"
    alive = folder / f".tmp-{os.getppid()}-def.part"  # a writer that still runs: left alone
    stranded.write_bytes(b"half a picture")
    alive.write_bytes(b"being written")
    tf_cnnvis.activation_visualization(tf1_graph()[0], {"x": IMAGES}, layers=["relu1"],
                                       path_outdir=str(tmp_path / "out"), path_logdir=None)
    assert not stranded.exists() and alive.exists()
