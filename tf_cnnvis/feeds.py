"""Match a user's feed dict to the inputs of a frozen model.

Keys may be placeholder tensors (of the user's own graph: matched by name),
tensor names (``"x:0"``), op names (``"x"``), Keras input names, or the feed
may be a bare array when the model has one input. The image input is the one
named by ``input_tensor``, or the only input, or the only 4-D float input fed.
"""

from __future__ import annotations

import dataclasses
import difflib

import numpy as np
import tensorflow as tf

from tf_cnnvis.errors import FeedError
from tf_cnnvis.graph import as_tensor_name, op_name
from tf_cnnvis.load import FrozenModel


@dataclasses.dataclass(frozen=True)
class Feed:
    """The image input and its batch, plus every other value to feed."""

    input_name: str
    images: np.ndarray
    others: dict[str, np.ndarray]

    def with_images(self, images) -> dict[str, np.ndarray]:
        """A session feed dict with ``images`` in place of the user's batch."""
        return {self.input_name: images, **self.others}


def _key_name(key) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, tf.Operation):
        return key.name
    name = getattr(key, "name", None)
    if isinstance(name, str):
        return name
    raise FeedError(f"feed key {key!r} is not a tensor, an op or a name; give a placeholder tensor, "
                    "its name ('x:0' or 'x') or a Keras input name")


def resolve_key(model: FrozenModel, graph: tf.Graph, key) -> str:
    """The tensor name a feed key stands for: a tensor, an op, or a tensor, op or Keras input name."""
    return _resolve(model, graph, _key_name(key))


def _resolve(model: FrozenModel, graph: tf.Graph, name: str) -> str:
    """The frozen graph's tensor name for a user's key."""
    if name in model.input_aliases:
        return model.input_aliases[name]
    candidate = as_tensor_name(name)
    try:
        graph.get_tensor_by_name(candidate)
        return candidate
    except (KeyError, ValueError):
        pass
    base = op_name(name)
    if base in model.input_aliases:
        return model.input_aliases[base]
    known = sorted(set(model.input_aliases) | set(model.inputs))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    raise FeedError(f"feed key {name!r} is not an input of this model; its inputs are "
                    f"{', '.join(known)}" + (f" (did you mean {', '.join(close)}?)" if close else ""))


def resolve_feed(model: FrozenModel, graph: tf.Graph, value_feed_dict, input_tensor=None) -> Feed:
    if value_feed_dict is None:
        raise FeedError("value_feed_dict is None; give {input: images} or an image array")
    if not isinstance(value_feed_dict, dict):
        if len(model.inputs) != 1:
            raise FeedError(f"a bare array was given but the model has {len(model.inputs)} inputs "
                            f"({', '.join(model.inputs)}); give a dict keyed by input")
        value_feed_dict = {model.inputs[0]: value_feed_dict}
    values: dict[str, np.ndarray] = {}
    for key, value in value_feed_dict.items():
        name = resolve_key(model, graph, key)
        values[name] = _as_array(name, value, graph)
    input_name = _pick_input(model, graph, values, input_tensor)
    images = values.pop(input_name)
    placeholder = graph.get_tensor_by_name(input_name)
    images = _check_images(input_name, images, placeholder)
    return Feed(input_name=input_name, images=images, others=values)


def _as_array(name: str, value, graph) -> np.ndarray:
    dtype = graph.get_tensor_by_name(name).dtype
    try:
        array = np.asarray(value, dtype=dtype.as_numpy_dtype)
    except (TypeError, ValueError) as error:
        raise FeedError(f"the value fed to {name!r} cannot be converted to {dtype.name}: {error}") from None
    if dtype.is_integer or dtype.is_bool:  # a silent cast would truncate 0.5 to 0
        given = np.asarray(value)
        if given.dtype.kind in "fc" and not np.array_equal(given, array):
            bad = given.flat[np.flatnonzero(given.ravel() != array.ravel())[0]].item()
            raise FeedError(f"the value fed to {name!r} holds {bad!r}, which {dtype.name} cannot "
                            f"represent; feed whole numbers for this {dtype.name} input")
    return array


def _pick_input(model, graph, values, input_tensor) -> str:
    if input_tensor is not None:
        name = resolve_key(model, graph, input_tensor)
        if name not in values:
            raise FeedError(f"input_tensor {name!r} is not in value_feed_dict (fed: "
                            f"{', '.join(values) or 'nothing'}); feed it the images")
        return name
    fed_inputs = [name for name in values if name in model.inputs]
    if len(model.inputs) == 1 and model.inputs[0] in values:
        return model.inputs[0]
    images = [name for name in fed_inputs
              if graph.get_tensor_by_name(name).dtype.is_floating and values[name].ndim >= 3]
    if len(images) == 1:
        return images[0]
    raise FeedError(f"cannot tell which input holds the images among {', '.join(model.inputs)} "
                    f"(fed: {', '.join(values) or 'nothing'}); pass input_tensor=")


def _check_images(name: str, images: np.ndarray, placeholder) -> np.ndarray:
    shape = placeholder.shape
    if shape.rank is not None and images.ndim == shape.rank - 1:
        images = images[None]
    if shape.rank is not None and images.ndim != shape.rank:
        raise FeedError(f"images fed to {name!r} have shape {images.shape}; the input accepts "
                        f"{_shape_text(shape)}")
    if shape.rank is not None:
        for axis, (want, got) in enumerate(zip(shape.as_list()[1:], images.shape[1:]), start=1):
            if want is not None and want != got:
                raise FeedError(f"images fed to {name!r} have shape {images.shape}; the input "
                                f"accepts {_shape_text(shape)} (axis {axis} must be {want})")
    if images.shape[0] == 0:
        raise FeedError(f"the batch fed to {name!r} is empty (shape {images.shape}); give at least one image")
    if images.dtype.kind == "f" and not np.all(np.isfinite(images)):
        where = tuple(int(i) for i in np.argwhere(~np.isfinite(images))[0])
        raise FeedError(f"images fed to {name!r} contain NaN or infinite values (first {images[where]} "
                        f"at index {where}); give finite pixels")
    return images


def _shape_text(shape) -> str:
    return "(" + ", ".join("None" if d is None else str(d) for d in shape.as_list()) + ")"
