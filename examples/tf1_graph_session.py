"""A TF1-style graph and session, as in the original tf_cnnvis examples.

    python examples/tf1_graph_session.py

Builds a small convnet with placeholders and variables, trains it for a few
steps to tell horizontal from vertical stripes, then passes the session to
tf_cnnvis exactly as the original examples did. The session is only read:
its variables are not re-initialized and nothing is added to its graph.
"""

import argparse
import os

import numpy as np
import tensorflow as tf

from tf_cnnvis import activation_visualization, deconv_visualization

tf1 = tf.compat.v1


def stripes(count, size, rng):
    """Images of horizontal (label 0) or vertical (label 1) stripes with noise."""
    labels = rng.integers(0, 2, count)
    phase = rng.uniform(0, 2 * np.pi, count)
    period = rng.uniform(4, 8, count)
    grid = np.arange(size, dtype=np.float32)
    images = np.empty((count, size, size, 1), np.float32)
    for i in range(count):
        wave = np.sin(2 * np.pi * grid / period[i] + phase[i])
        images[i, ..., 0] = wave[:, None] if labels[i] == 0 else wave[None, :]
    images += rng.normal(0, 0.3, images.shape).astype(np.float32)
    return images, labels


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--size", type=int, default=32, help="image side")
    parser.add_argument("--outdir", default="./Output", help="PNG folder")
    parser.add_argument("--logdir", default="./Log", help="TensorBoard folder")
    args = parser.parse_args()
    rng = np.random.default_rng(0)

    graph = tf.Graph()
    with graph.as_default():
        tf1.set_random_seed(0)
        X = tf1.placeholder(tf.float32, [None, args.size, args.size, 1], name="X")  # noqa: N806 - the original's name
        y = tf1.placeholder(tf.int64, [None], name="y")
        w1 = tf1.get_variable("w1", [5, 5, 1, 8])
        w2 = tf1.get_variable("w2", [3, 3, 8, 16])
        w3 = tf1.get_variable("w3", [16, 2])
        h = tf.nn.relu(tf.nn.conv2d(X, w1, 1, "SAME"), name="relu1")
        h = tf.nn.max_pool2d(h, 2, 2, "SAME", name="pool1")
        h = tf.nn.relu(tf.nn.conv2d(h, w2, 1, "SAME"), name="relu2")
        h = tf.nn.max_pool2d(h, 2, 2, "SAME", name="pool2")
        logits = tf.matmul(tf.reduce_mean(h, axis=[1, 2]), w3, name="logits")
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        train = tf1.train.AdamOptimizer(0.01).minimize(loss)
        accuracy = tf.reduce_mean(tf.cast(tf.equal(tf.argmax(logits, 1), y), tf.float32))

        with tf1.Session(graph=graph) as sess:
            sess.run(tf1.global_variables_initializer())
            for _ in range(args.steps):
                images, labels = stripes(32, args.size, rng)
                sess.run(train, {X: images, y: labels})
            images, labels = stripes(200, args.size, rng)
            print(f"accuracy after {args.steps} steps: {sess.run(accuracy, {X: images, y: labels}):.2f}")

            im = images[:1]
            # The original call shapes: the session, a feed dict, layer letters.
            activation_visualization(sess_graph_path=sess, value_feed_dict={X: im},
                                     layers=["r", "p"], path_logdir=args.logdir,
                                     path_outdir=args.outdir)
            deconv_visualization(sess_graph_path=sess, value_feed_dict={X: im}, layers="r",
                                 path_logdir=args.logdir, path_outdir=args.outdir)
    print(f"Pictures in {os.path.abspath(args.outdir)}; "
          f"tensorboard --logdir {os.path.abspath(args.logdir)}")


if __name__ == "__main__":
    main()
