"""Train a small CNN on scikit-learn's digits and watch it learn in TensorBoard.

    python examples/train_digits.py --logdir logs/digits --epochs 10
    tensorboard --logdir logs/digits

The Scalars tab shows Keras's loss curves (runs ``train`` and
``validation``); the Images tab shows, under the run ``visualization``, the
feature maps of two test digits and the deconvnet reconstruction of each
channel's strongest unit, at every epoch (drag the step slider). With ``--outdir`` the script also finds, for
every channel of the last convolution, the nine test digits that excite it
most, cropped to the channel's receptive field (open
``<outdir>/top_activations.html``).

The 8x8 digits are upsampled to 16x16 so that the pictures have room to
show something; it trains in a few seconds on a laptop CPU.
"""

from __future__ import annotations

import argparse
import os

import keras
import numpy as np
import tensorflow as tf

from tf_cnnvis.callbacks import VisualizationCallback
from tf_cnnvis.top_activations import top_activations

SIZE = 16
VISUALIZED_LAYERS = ["conv1", "conv2", "conv3"]


def load_data(size: int = SIZE, test_fraction: float = 0.2, seed: int = 0):
    """(x_train, y_train, x_test, y_test): digits in [0, 1], shape (N, size, size, 1)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]
    images = tf.image.resize(images, (size, size), method="bilinear").numpy().clip(0, 1)
    order = np.random.default_rng(seed).permutation(len(images))
    split = int(len(images) * (1 - test_fraction))
    train, test = order[:split], order[split:]
    return images[train], digits.target[train], images[test], digits.target[test]


def build_model(seed: int = 0) -> keras.Model:
    """conv-conv-pool-conv-pool-average-dense; any input size (global average pooling)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((None, None, 1), name="digit"),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.MaxPooling2D(name="pool1"),
        keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv3"),
        keras.layers.MaxPooling2D(name="pool2"),
        keras.layers.GlobalAveragePooling2D(name="average"),
        keras.layers.Dense(10, name="logits"),
    ], name="digits_cnn")
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--logdir", default="logs/digits", help="TensorBoard log folder")
    parser.add_argument("--outdir", default=None,
                        help="also write PNG folders per epoch and the top-activation pages here")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--every", type=int, default=1, help="visualize every N epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)

    x_train, y_train, x_test, y_test = load_data()
    model = build_model()
    visualizer = VisualizationCallback(
        x_test[:2], log_dir=args.logdir, layers=VISUALIZED_LAYERS,
        visualizations=("activations", "deconvnet"), target="unit", every_n_epochs=args.every,
        path_outdir=None if args.outdir is None else os.path.join(args.outdir, "epochs"))
    history = model.fit(x_train, y_train, validation_data=(x_test, y_test), epochs=args.epochs,
                        batch_size=args.batch_size, verbose=2,
                        callbacks=[keras.callbacks.TensorBoard(log_dir=args.logdir), visualizer])
    top = None
    if args.outdir is not None:
        top = top_activations(model, x_test, layers=["conv2", "conv3"], k=9,
                              path_outdir=os.path.join(args.outdir, "top"))
    return {"model": model, "history": history, "callback": visualizer, "top": top,
            "data": (x_train, y_train, x_test, y_test)}


if __name__ == "__main__":
    main()
