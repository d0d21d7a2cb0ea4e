"""Make the README's attribution pictures: the grids the library writes, from real models.

Run from the repository root: ``python docs/images/attribution/make_images.py``
(needs ``fer`` and scikit-learn; about a minute on a 2-core CPU).

- The emotion classifier (``fer``) on the bundled face, classes happy,
  surprise and sad, one grid per method (columns: classes).
- The example's digits CNN trained here, on two digits side by side:
  Grad-CAM of the left digit's class and of the right one's.
"""

import importlib.util
import os
import tempfile

import numpy as np

from tf_cnnvis import models
from tf_cnnvis.attribution import attribution_visualization

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))


def keep(folder, target, scale=2):
    """Copy a written grid next to this script, enlarged ``scale`` times (whole pixels)."""
    from PIL import Image

    with Image.open(os.path.join(folder, "grid_attribution.png")) as picture:
        picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        picture.save(os.path.join(HERE, target), optimize=True)


def main():
    out = tempfile.mkdtemp()
    face = models.emotion_preprocess(models.sample_image("face", 64))[None]
    methods = ["gradcam", "gradcam++", "scorecam", "layercam", "guided_gradcam", "integrated_gradients",
               "occlusion"]
    result = attribution_visualization(models.emotion_model(), face, ["happy", "surprise", "sad"], methods,
                                       path_outdir=out, path_logdir=None, labels=list(models.EMOTION_LABELS),
                                       steps=64, patch=8, stride=4)
    layer = result.arrays["layer"]
    for method in methods:
        where = layer if "cam" in method else "input_1"
        keep(os.path.join(out, where, "attribution", method), f"emotion_{method.replace('+', 'p')}.png")
    smooth = attribution_visualization(models.emotion_model(), face, ["happy", "surprise", "sad"], "saliency",
                                       path_outdir=out, path_logdir=None, labels=list(models.EMOTION_LABELS),
                                       smooth="smoothgrad", samples=50)
    assert smooth
    keep(os.path.join(out, "input_1", "attribution", "saliency_smoothgrad"), "emotion_saliency_smoothgrad.png")

    spec = importlib.util.spec_from_file_location("train_digits", os.path.join(ROOT, "examples", "train_digits.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    x_train, y_train, x_test, _ = example.load_data()
    model = example.build_model()
    model.fit(x_train, y_train, epochs=8, batch_size=64, verbose=0)
    logits = model.predict(x_test, verbose=0)
    confidence = np.exp(logits - logits.max(axis=1, keepdims=True))
    confidence /= confidence.sum(axis=1, keepdims=True)  # the classifier's most confident digit of each class
    pair = np.concatenate([x_test[np.argmax(confidence[:, 1])], x_test[np.argmax(confidence[:, 6])]], axis=1)[None]
    attribution_visualization(model, pair, [1, 6], "gradcam", path_outdir=out, path_logdir=None)
    keep(os.path.join(out, "pool2", "attribution", "gradcam"), "digits_1_6_gradcam.png", scale=6)


if __name__ == "__main__":
    main()
