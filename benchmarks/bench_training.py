"""Visualizing during training: per-call cost against one training epoch.

    python benchmarks/bench_training.py [--repeats 5]

On the digits CNN of ``examples/train_digits.py`` (1437 training images,
batch 32), what ``VisualizationCallback`` does each epoch: feature maps and
deconvnet reconstructions of two images for three layers, TensorBoard only.
Reported, best of ``--repeats``:

- one training epoch (``model.fit``);
- the first call (trace, freeze, import the graph, build the backward pass);
- a repeated call after the weights changed (the frozen graph and the
  imported graph are reused, only the weights are copied in);
- the same call with both caches emptied first, which is what every call
  cost before the reuse existed.

The same for a TF1 session loop (a graph with variables, trained with a
``GradientDescentOptimizer`` between calls).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_cnnvis  # noqa: E402
import tf_cnnvis.load  # noqa: E402
import tf_cnnvis.rebuild  # noqa: E402

LAYERS = ["conv1", "conv2", "conv3"]


def forget_everything():
    """Empty the freeze and import caches: every call then starts from scratch."""
    tf_cnnvis.load._keras_freezes.clear()
    tf_cnnvis.rebuild.clear_cache()


def visualize(model, images, logdir, step, layers=LAYERS, feed_key=None):
    feed = images if feed_key is None else {feed_key: images}
    tf_cnnvis.activation_visualization(model, feed, layers=layers, path_logdir=logdir,
                                       path_outdir=None, step=step)
    tf_cnnvis.deconv_visualization(model, feed, layers=layers, path_logdir=logdir, path_outdir=None,
                                   step=step, method="deconvnet", target="unit")


def best_of(repeats, run, before=None):
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return min(times)


def keras_figures(repeats, logdir):
    import train_digits

    x_train, y_train, x_test, _ = train_digits.load_data()
    images = x_test[:2]
    model = train_digits.build_model()
    model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0)  # warm up
    epoch = best_of(repeats, lambda: model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0))
    step = iter(range(10**6))

    def train_one_batch():
        model.train_on_batch(x_train[:32], y_train[:32])

    first = []
    for _ in range(repeats):
        fresh = train_digits.build_model(seed=len(first) + 1)
        forget_everything()
        began = time.perf_counter()
        visualize(fresh, images, logdir, next(step))
        first.append(time.perf_counter() - began)
    visualize(model, images, logdir, next(step))
    repeated = best_of(repeats, lambda: visualize(model, images, logdir, next(step)), train_one_batch)
    uncached = best_of(repeats, lambda: visualize(model, images, logdir, next(step)),
                       lambda: (train_one_batch(), forget_everything()))
    return epoch, min(first), repeated, uncached


def session_figures(repeats, logdir):
    rng = np.random.default_rng(0)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, 16, 16, 1], name="x")
        labels = tf.compat.v1.placeholder(tf.int64, [None], name="labels")
        h = x
        for index, width in enumerate((16, 32, 32), start=1):
            kernel = tf.compat.v1.get_variable(f"w{index}", [3, 3, h.shape[-1], width])
            h = tf.nn.relu(tf.nn.conv2d(h, kernel, 1, "SAME"), name=f"conv{index}")
            if index > 1:
                h = tf.nn.max_pool2d(h, 2, 2, "SAME")
        dense = tf.compat.v1.get_variable("dense", [32, 10])
        logits = tf.matmul(tf.reduce_mean(h, [1, 2]), dense)
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        train = tf.compat.v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        init = tf.compat.v1.global_variables_initializer()
    session = tf.compat.v1.Session(graph=graph)
    session.run(init)
    images = rng.uniform(0, 1, (2, 16, 16, 1)).astype(np.float32)
    batch = {x: rng.uniform(0, 1, (32, 16, 16, 1)).astype(np.float32), labels: rng.integers(0, 10, 32)}
    step = iter(range(10**6))
    layers = ["conv1", "conv2", "conv3"]
    first = best_of(repeats, lambda: visualize(session, images, logdir, next(step), layers, "x:0"),
                    forget_everything)
    repeated = best_of(repeats, lambda: visualize(session, images, logdir, next(step), layers, "x:0"),
                       lambda: session.run(train, batch))
    return first, repeated


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as logdir:
        epoch, first, repeated, uncached = keras_figures(args.repeats, logdir)
        print(f"digits CNN (Keras), {os.cpu_count()} CPUs; per call: activations + deconvnet (unit) of "
              f"2 images, layers {LAYERS}, TensorBoard only; best of {args.repeats}")
        print(f"  one training epoch            {epoch * 1000:8.1f} ms")
        print(f"  first call                    {first * 1000:8.1f} ms")
        print(f"  repeated call, new weights    {repeated * 1000:8.1f} ms   "
              f"({repeated / epoch:.1%} of an epoch, {first / repeated:.1f}x cheaper than the first)")
        print(f"  same call, caches emptied     {uncached * 1000:8.1f} ms   "
              f"(reuse saves {uncached / repeated:.1f}x)")
        session_first, session_repeated = session_figures(args.repeats, logdir)
        print("TF1 session loop (3 conv layers, variables trained between calls)")
        print(f"  first call                    {session_first * 1000:8.1f} ms")
        print(f"  repeated call, new weights    {session_repeated * 1000:8.1f} ms   "
              f"({session_first / session_repeated:.1f}x cheaper)")


if __name__ == "__main__":
    main()
