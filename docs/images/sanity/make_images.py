"""Make the README's sanity-check pictures and print its tables.

Run from the repository root: ``python docs/images/sanity/make_images.py``
(needs scikit-learn for the digits and ``fer`` for the emotion classifier;
about two minutes on a 2-core CPU). It trains the digits CNN of
examples/train_digits.py for 15 epochs, runs ``sanity_check`` with every
method on 8 test digits and on the bundled face with the pretrained emotion
classifier, writes the pictures next to this script and prints the tables.
"""

import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "examples"))

from tf_cnnvis import models  # noqa: E402
from tf_cnnvis.sanity import sanity_check  # noqa: E402


def save(picture: np.ndarray, name: str):
    """A figure next to this script, with a 256-colour palette to keep the README small."""
    image = Image.fromarray(picture).quantize(256, dither=Image.Dither.NONE)
    image.save(os.path.join(HERE, name), optimize=True)


def report(title: str, result, prefix: str, cascade_figure: str):
    save(result.figures[cascade_figure], f"{prefix}_cascade.png")
    save(result.figures["similarity_cascade"], f"{prefix}_similarity_cascade.png")
    save(result.figures["similarity_independent"], f"{prefix}_similarity_independent.png")
    save(result.figures["deletion_insertion"], f"{prefix}_deletion_insertion.png")
    print(f"\n### {title}\n")
    print("randomized, from the output:", ", ".join(result.randomized))
    print(result.table())


def main():
    from train_digits import build_model, load_data

    x_train, y_train, x_test, y_test = load_data()
    digits = build_model()
    digits.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
    _, accuracy = digits.evaluate(x_test, y_test, verbose=0)
    print(f"digits CNN: test accuracy {accuracy:.3f}")
    picked = np.concatenate([np.flatnonzero(y_test == digit)[:1] for digit in range(8)])
    result = sanity_check(digits, x_test[picked], path_outdir=None, path_logdir=None, seed=0)
    report("digits CNN (8 test digits, 0 to 7)", result, "digits", "image_000/cascade")

    emotion = models.emotion_model()
    face = models.emotion_preprocess(models.sample_image("face"))[None]
    result = sanity_check(emotion, face, labels=list(models.EMOTION_LABELS), path_outdir=None, path_logdir=None,
                          seed=0)
    print(f"\nemotion classifier, class {result.arrays['class_names'][0][0]}")
    report("emotion classifier (the bundled face)", result, "emotion", "cascade")


if __name__ == "__main__":
    main()
