"""Make the README's pictures of modern blocks: SiLU, squeeze-and-excitation, GELU, hard-swish.

Run from the repository root: ``python docs/images/modern/make_images.py``
(needs scikit-learn; about a minute on a 2-core CPU).

No pretrained ConvNeXt or EfficientNet installs from a package registry, so
the pictures come from two sources:

- a small net built from their blocks (an EfficientNet MBConv block with
  SiLU and a squeeze-and-excitation gate, a ConvNeXt block with a grouped
  5x5 convolution, LayerNormalization and a per-position GELU Dense, a
  hard-swish convolution as in MobileNetV3) trained here on the digits of
  examples/train_digits.py at 32 px: what its channels respond to;
- ConvNeXtTiny and EfficientNetB0 from keras.applications with random
  He-normal weights on the cat at 160 px: single units through the whole
  nets, each drawn at its receptive field (random filters give noise
  inside it; the point is the field).
"""

import os
import shutil
import sys
import tempfile

import numpy as np

import tf_cnnvis
from tf_cnnvis import models
from tf_cnnvis.demo import strongest_channels

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "examples"))


def keep(result, target, name="grid_image.png", scale=1):
    """Copy one written grid next to this script (enlarged ``scale`` times), with a 256-colour palette."""
    from PIL import Image

    path = next(path for path in result.paths if os.path.basename(path) == name)
    with Image.open(path) as picture:
        picture = picture.convert("RGB").resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        picture.quantize(256, dither=Image.Dither.NONE).save(os.path.join(HERE, target), optimize=True)


def modern_blocks(classes: int = 10, seed: int = 0):
    """Stem, an MBConv block with squeeze-and-excitation, a ConvNeXt block, a hard-swish convolution."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    image = keras.Input((None, None, 1), name="digit")
    x = layers.Conv2D(16, 3, padding="same", activation="silu", name="stem")(image)
    x = layers.Conv2D(32, 1, activation="silu", name="mb_expand")(x)
    x = layers.DepthwiseConv2D(3, strides=2, padding="same", activation="silu", name="mb_dwconv")(x)
    squeeze = layers.GlobalAveragePooling2D(keepdims=True, name="mb_squeeze")(x)
    squeeze = layers.Conv2D(8, 1, activation="silu", name="mb_reduce")(squeeze)
    gate = layers.Conv2D(32, 1, activation="sigmoid", name="mb_gate")(squeeze)
    x = layers.Multiply(name="mb_excite")([x, gate])
    x = layers.Conv2D(24, 1, name="mb_project")(x)
    y = layers.Conv2D(24, 5, padding="same", groups=24, name="cx_dwconv")(x)
    y = layers.LayerNormalization(epsilon=1e-6, name="cx_norm")(y)
    y = layers.Dense(96, activation="gelu", name="cx_gelu")(y)
    y = layers.Dense(24, name="cx_pointwise")(y)
    x = layers.Add(name="cx_add")([x, y])
    x = layers.Conv2D(48, 3, strides=2, padding="same", activation="hard_swish", name="hs_conv")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    logits = layers.Dense(classes, name="logits")(x)
    return keras.Model(image, logits, name="modern_blocks")


def random_net(name: str, size: int, seed: int = 0):
    """A keras.applications model with He-normal kernels (fan-in per output channel)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))
    rng = np.random.default_rng(seed)

    def he_normal(weight, fan_in):
        weight.assign(rng.normal(0, np.sqrt(2.0 / fan_in), tuple(weight.shape)).astype(np.float32))

    for layer in model.layers:
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            he_normal(layer.kernel, np.prod(layer.kernel.shape[:2]))
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            he_normal(layer.kernel, np.prod(layer.kernel.shape[:-1]))
    return model


def main():
    import keras
    from train_digits import load_data

    work = tempfile.mkdtemp()
    try:
        x_train, y_train, x_test, y_test = load_data(size=32)
        model = modern_blocks()
        model.compile(optimizer=keras.optimizers.Adam(3e-3),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
        model.fit(x_train, y_train, epochs=15, batch_size=32, verbose=0)
        print(f"modern blocks on the digits: test accuracy {model.evaluate(x_test, y_test, verbose=0)[1]:.3f}")
        digit = x_test[np.flatnonzero(y_test == 2)[:1]]
        common = dict(path_outdir=work, path_logdir=None)
        for layer in ("mb_dwconv", "cx_gelu", "hs_conv"):
            values = tf_cnnvis.activation_visualization(model, digit, layers=[layer], path_outdir=None,
                                                        path_logdir=None)[layer]
            channels = strongest_channels(values, 8)
            for method, target in (("deconvnet", "unit"), ("guided", "map")):
                result = tf_cnnvis.deconv_visualization(model, digit, layers=[layer], method=method, target=target,
                                                        channels=channels, unit_view="image", **common)
                keep(result, f"digits_{layer}_{method}_{target}.png", scale=3)

        photo = models.sample_image("chelsea", size=160)
        for name, module, layer in (("ConvNeXtTiny", "convnext", "convnext_tiny_stage_1_block_2_gelu"),
                                    ("EfficientNetB0", "efficientnet", "block2b_activation")):
            net = random_net(name, 160)
            batch = np.asarray(getattr(keras.applications, module).preprocess_input(photo[None].copy()), np.float32)
            values = tf_cnnvis.activation_visualization(net, batch, layers=[layer], path_outdir=None,
                                                        path_logdir=None)[layer]
            result = tf_cnnvis.deconv_visualization(net, batch, layers=[layer], method="deconvnet", target="unit",
                                                    channels=strongest_channels(values, 4), **common)
            keep(result, f"{name.lower()}_random_deconvnet_unit.png")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
