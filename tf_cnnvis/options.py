"""Options: what each keyword option accepts, checked before any work starts.

One home for the accepted values and their checks, shared by the entry
functions, the training callback and the command line, so a bad value gets
the same message wherever it is given. Nothing here loads TensorFlow: the
command line checks its arguments with these before TensorFlow starts.
"""

from __future__ import annotations

import math
import numbers

from tf_cnnvis.errors import OptionError

METHODS = ("deconvnet", "guided", "gradient")
TARGETS = ("map", "unit")
# How reconstructions become grey levels (render.normalize_signed, render.normalize_each).
SCALINGS = ("robust", "minmax")
# How single units are drawn: cut to their receptive field, or on the whole image.
UNIT_VIEWS = ("field", "image")
DEFAULT_MEMORY_BUDGET_MB = 1024
LETTERS = {"r": "relu", "p": "pool", "c": "conv"}


def _choices(values) -> str:
    return ", ".join(map(repr, values))


def is_integer(value) -> bool:
    """An int or NumPy integer, but not a bool (``True`` is no channel index)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_integer(name: str, value, minimum: int | None = None, unit: str = "") -> int:
    """``value`` as an int, refused with its ``name`` unless an integer of at least ``minimum``."""
    if not is_integer(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise OptionError(f"{name}={value!r} must be an integer{bound}" + (f" ({unit})" if unit else ""))
    return int(value)


def check_method(method) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise OptionError(f"method {method!r} is not one of {_choices(METHODS)}")
    return method


def check_methods(method) -> list[str]:
    """``method`` as a list of distinct method names (one name or a non-empty list of them)."""
    if isinstance(method, str):
        return [check_method(method)]
    if not isinstance(method, (list, tuple)) or not method:
        raise OptionError(f"method={method!r} must be one of {_choices(METHODS)} or a non-empty list "
                          "of them")
    names = [check_method(name) for name in method]
    _refuse_repeats("method", names)
    return names


def check_scaling(scaling) -> str:
    if not isinstance(scaling, str) or scaling not in SCALINGS:
        raise OptionError(f"scaling={scaling!r} is not one of {_choices(SCALINGS)}")
    return scaling


def check_unit_view(unit_view) -> str:
    if not isinstance(unit_view, str) or unit_view not in UNIT_VIEWS:
        raise OptionError(f"unit_view={unit_view!r} is not one of {_choices(UNIT_VIEWS)}")
    return unit_view


def check_target(target) -> str:
    if not isinstance(target, str) or target not in TARGETS:
        raise OptionError(f"target {target!r} is not one of {_choices(TARGETS)}")
    return target


def check_memory_budget(memory_budget_mb) -> float:
    """Refuse a budget that is not a finite positive number."""
    if (isinstance(memory_budget_mb, bool) or not isinstance(memory_budget_mb, numbers.Real)
            or not math.isfinite(memory_budget_mb) or memory_budget_mb <= 0):
        raise OptionError(f"memory_budget_mb={memory_budget_mb!r} must be a positive number of "
                          f"megabytes (default {DEFAULT_MEMORY_BUDGET_MB})")
    return float(memory_budget_mb)


def check_channels(channels, count: int | None = None, layer: str | None = None) -> list | None:
    """``channels``: None (all), one index, or a non-empty flat list of distinct indices.

    Without ``count`` only the form is checked, before the model is known;
    with the layer's channel ``count`` (and its name, for the message) each
    index must be an integer in ``0..count-1``.
    """
    if channels is None:
        return None
    items = [channels] if is_integer(channels) else _flat_items("channels", channels)
    _refuse_repeats("channels", items)
    if count is None:
        return items
    valid = f"0..{count - 1}" + (f" for layer {layer!r}" if layer is not None else "")
    for item in items:
        if not is_integer(item):
            raise OptionError(f"channel {item!r} is not an integer; give indices in {valid}")
        if not 0 <= item < count:
            raise OptionError(f"channel {item} is out of range for layer {layer!r}, which has {count} "
                              f"channels (0..{count - 1})")
    return [int(item) for item in items]


def check_layer_selection(layers) -> list[str]:
    """``layers`` as a list of non-empty selectors: kind letters or layer names (None is ``'r'``)."""
    if layers is None:
        return ["r"]
    items = [layers] if isinstance(layers, str) else _flat_items("layers", layers, strings=True)
    for item in items:
        if not isinstance(item, str):
            raise OptionError(f"layer selector {item!r} is not a string; give letters "
                              f"{_choices(LETTERS)} or layer names")
        if not item.strip():
            raise OptionError(f"layers={layers!r} holds an empty name; give letters "
                              f"{_choices(LETTERS)} or layer names")
    return items


# Class attribution maps (tf_cnnvis.attribution): the methods, grouped by how they are computed.
CAM_METHODS = ("gradcam", "gradcam++", "layercam", "scorecam", "guided_gradcam")
# Maps from the gradient of the class score with respect to the input; each
# can be wrapped by SmoothGrad, VarGrad or SquareGrad.
GRADIENT_ATTRIBUTIONS = ("saliency", "deconvnet", "guided", "gradient_x_input", "integrated_gradients")
ATTRIBUTION_METHODS = CAM_METHODS + GRADIENT_ATTRIBUTIONS + ("occlusion",)
SMOOTHINGS = ("smoothgrad", "vargrad", "squaregrad")
INTEGRATION_RULES = ("trapezoid", "riemann_right", "riemann_left", "riemann_middle")


def check_labels(labels) -> list[str] | None:
    """Class names, one per class, as strings (None: classes are named by their indices)."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or not hasattr(labels, "__len__") or not len(labels):
        raise OptionError(f"labels={labels!r} must be a non-empty list of class names, one per class")
    return [str(label) for label in labels]


def check_attribution_methods(method) -> list[str]:
    """``method`` as a list of distinct attribution method names (one name or a non-empty list)."""
    items = [method] if isinstance(method, str) else method
    if not isinstance(items, (list, tuple)) or not items:
        raise OptionError(f"method={method!r} must be one of {_choices(ATTRIBUTION_METHODS)} or a non-empty "
                          "list of them")
    for name in items:
        if not isinstance(name, str) or name not in ATTRIBUTION_METHODS:
            raise OptionError(f"attribution method {name!r} is not one of {_choices(ATTRIBUTION_METHODS)}")
    _refuse_repeats("method", list(items))
    return list(items)


def check_smoothing(smooth, methods, samples, noise) -> str | None:
    """``smooth`` (None or one of SMOOTHINGS) for ``methods``, with its sample count and noise level."""
    if smooth is None:
        return None
    if not isinstance(smooth, str) or smooth not in SMOOTHINGS:
        raise OptionError(f"smooth={smooth!r} is not one of {_choices(SMOOTHINGS)} (or None for no smoothing)")
    others = [name for name in methods if name not in GRADIENT_ATTRIBUTIONS]
    if others:
        raise OptionError(f"smooth={smooth!r} wraps gradient methods ({_choices(GRADIENT_ATTRIBUTIONS)}); "
                          f"method {others[0]!r} is not one: compute it in a call of its own")
    check_integer("samples", samples, 1, "noisy copies per image")
    if (isinstance(noise, bool) or not isinstance(noise, numbers.Real) or not math.isfinite(noise)
            or noise < 0):
        raise OptionError(f"noise={noise!r} must be a number >= 0: the noise's standard deviation as a "
                          "fraction of each image's value range (default 0.15)")
    return smooth


def check_integration(steps, rule) -> tuple[int, str]:
    """Integrated Gradients' number of gradient evaluations and quadrature rule."""
    if not isinstance(rule, str) or rule not in INTEGRATION_RULES:
        raise OptionError(f"rule={rule!r} is not one of {_choices(INTEGRATION_RULES)}")
    check_integer("steps", steps, 2 if rule == "trapezoid" else 1,
                  "points on the path from the baseline" + (", both ends included" if rule == "trapezoid" else ""))
    return int(steps), rule


def check_pair(name: str, value, what: str) -> tuple[int, int] | None:
    """An int or a (height, width) pair of ints, each >= 1 (None: the default)."""
    if value is None:
        return None
    pair = (value, value) if is_integer(value) else value
    if (not isinstance(pair, (list, tuple)) or len(pair) != 2
            or not all(is_integer(item) and item >= 1 for item in pair)):
        raise OptionError(f"{name}={value!r} must be an integer >= 1 or a pair (height, width) of them "
                          f"({what})")
    return int(pair[0]), int(pair[1])


def check_model_source(graph_or_path, sess_graph_path):
    """The model, given once: as ``graph_or_path`` or, as in the original, ``sess_graph_path``."""
    if graph_or_path is not None and sess_graph_path is not None:
        raise OptionError("give the model once: graph_or_path or sess_graph_path, not both")
    source = graph_or_path if graph_or_path is not None else sess_graph_path
    if source is None:
        raise OptionError("no model given; pass a Keras model, graph, session or a model path")
    return source


def _flat_items(name: str, value, strings: bool = False) -> list:
    """The items of a non-empty, flat list-like ``value`` (a list, tuple, range or 1-D array)."""
    shape = getattr(value, "shape", None)
    if isinstance(value, (str, bytes, dict, set, frozenset)) or not hasattr(value, "__len__") or (
            shape is not None and len(shape) != 1):
        what = "layer selectors" if strings else "integers"
        raise OptionError(f"{name}={value!r} must be a non-empty list of {what}")
    items = list(value)
    if not items:
        accepted = (f"letters {_choices(LETTERS)} or layer names" if strings
                    else "at least one index, or None for all")
        raise OptionError(f"{name} is empty; give {accepted}")
    return items


def _refuse_repeats(name: str, items: list):
    seen = set()
    for item in items:
        try:
            if item in seen:
                raise OptionError(f"{name} lists {item!r} twice; give each once")
            seen.add(item)
        except TypeError:  # unhashable (a nested list): the item checks report it
            continue


# Sanity checks (tf_cnnvis.sanity): the reconstructions on a class score, then the other attribution methods.
SANITY_METHODS = METHODS + tuple(name for name in ATTRIBUTION_METHODS if name not in METHODS)
# How weights are randomized: normal draws with each tensor's mean and deviation, or its values shuffled.
RANDOMIZATIONS = ("normal", "shuffle")
# What deletion replaces pixels with (and insertion starts from), and the class score it measures.
DELETION_BASELINES = ("blur", "zero", "mean")
DELETION_SCORES = ("probability", "logit")


def check_sanity_methods(methods) -> list:
    """``methods`` (None: all of SANITY_METHODS) as a list of distinct names and callables."""
    if methods is None:
        return list(SANITY_METHODS)
    items = [methods] if isinstance(methods, str) or callable(methods) else methods
    accepted = f"{_choices(SANITY_METHODS)}, or a callable method(model, images, classes)"
    if not isinstance(items, (list, tuple)) or not items:
        raise OptionError(f"methods={methods!r} must be one of {accepted}, or a non-empty list of them")
    names = []
    for item in items:
        if isinstance(item, str):
            if item not in SANITY_METHODS:
                raise OptionError(f"method {item!r} is not one of {accepted}")
            names.append(item)
        elif callable(item):
            names.append(getattr(item, "__name__", type(item).__name__))
        else:
            raise OptionError(f"method {item!r} is neither a name nor callable; give {accepted}")
    _refuse_repeats("methods", names)
    return list(items)
