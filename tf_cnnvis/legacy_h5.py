"""Load: whole-model ``.h5`` files written by Keras 1 or 2, repaired for Keras 3.

Keras 3 reads many such files but mishandles some of their configs; the
loader here rebuilds the model from a repaired config and the stored
weights. :func:`tf_cnnvis.load.load_model` uses it for every ``.h5`` that
Keras 1 or 2 wrote, and the built-in emotion classifier is such a file.
"""

from __future__ import annotations

import json
import logging
import os

from tf_cnnvis.errors import ModelLoadError, ModelNotFoundError

logger = logging.getLogger("tf_cnnvis")


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


def _text(value):
    """Decode an HDF5 string attribute that may come back as bytes."""
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
