"""Every method's maps of one model: the part of a sanity check that runs the network.

A :class:`MapMaker` holds what stays fixed while the weights change (the
images, the classes, the methods and their options) and computes every
method's values for a model: the original or a randomized copy of it.
Copies share the original's rebuilt graphs (:func:`tf_cnnvis.rebuild.rebuild`
assigns their weights), so each is one call per method, no import.

Methods:

- ``"deconvnet"``, ``"guided"``, ``"gradient"``: the reconstruction
  (:func:`tf_cnnvis.compute.reconstruct`, whole map) of each image's class
  score, or of one channel of a chosen layer (``target_layer``);
- every attribution method of :func:`tf_cnnvis.attribution_visualization`
  except its ``deconvnet`` and ``guided``, which are the reconstructions
  above on the class score; all in one call per model;
- a callable ``method(model, images, classes)`` returning ``(N, K, H, W)``
  or ``(N, K, H, W, C)`` values, for maps from elsewhere (``model`` is a
  :class:`~tf_cnnvis.load.FrozenModel` every tf_cnnvis function accepts).
"""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np

from tf_cnnvis import compute
from tf_cnnvis.attribution import attribution_visualization
from tf_cnnvis.attribution.methods import RULES, variant_name
from tf_cnnvis.errors import OptionError
from tf_cnnvis.feeds import Feed
from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.load import FrozenModel
from tf_cnnvis.options import METHODS as DECONVOLUTION_METHODS
from tf_cnnvis.rebuild import rebuild

# Options of attribution_visualization a sanity check sets itself.
_OWN_OPTIONS = frozenset({"graph_or_path", "value_feed_dict", "classes", "method", "input_tensor", "path_logdir",
                          "path_outdir", "sess_graph_path", "labels", "output", "deprocess", "opacity", "step",
                          "memory_budget_mb", "progress", "trust_model_code"})
ATTRIBUTION_OPTIONS = tuple(name for name in inspect.signature(attribution_visualization).parameters
                            if name not in _OWN_OPTIONS)


def check_attribution_options(options) -> dict:
    """``attribution_options``: a dict of keyword options of attribution_visualization (None: none)."""
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise OptionError(f"attribution_options={options!r} must be a dict of options of "
                          f"attribution_visualization ({', '.join(ATTRIBUTION_OPTIONS)})")
    for key in options:
        if key not in ATTRIBUTION_OPTIONS:
            own = " (the sanity check sets it itself)" if key in _OWN_OPTIONS else ""
            raise OptionError(f"attribution option {key!r} is not accepted{own}; give any of "
                              f"{', '.join(ATTRIBUTION_OPTIONS)}")
    return dict(options)


def per_image_inputs(rebuilt, feed: Feed) -> set[str]:
    """The other inputs fed one value per image (batch-sized, of an open batch size): they follow their image."""
    count = feed.images.shape[0]
    follow = set()
    for name, value in feed.others.items():
        placeholder = rebuilt.tensor(name)
        if value.ndim >= 1 and value.shape[0] == count and placeholder.shape.rank and placeholder.shape[0] is None:
            follow.add(name)
    return follow


def method_name(method) -> str:
    """The name a method's results go by: its own, or a callable's ``__name__``."""
    return method if isinstance(method, str) else getattr(method, "__name__", type(method).__name__)


@dataclasses.dataclass
class MapMaker:
    """Computes every method's values ``(N, K, H, W[, C])`` for a model of one architecture."""

    methods: list            # names and callables
    feed: Feed
    classes: np.ndarray      # (N, K)
    scores: LayerInfo        # the class scores (N, classes)
    output: str | None = None  # the user's name for them, if given (else the model's only output is found once)
    target_layer: LayerInfo | None = None
    target_channel: int | None = None
    attribution_options: dict = dataclasses.field(default_factory=dict)
    memory_budget_mb: float = 1024.0

    @property
    def names(self) -> list[str]:
        return [method_name(method) for method in self.methods]

    def __call__(self, model: FrozenModel, progress=None) -> dict[str, np.ndarray]:
        values = {}
        attributions = [m for m in self.methods if isinstance(m, str) and m not in DECONVOLUTION_METHODS]
        if attributions:
            values.update(self._attributions(model, attributions))
        for method in self.methods:
            if isinstance(method, str) and method in DECONVOLUTION_METHODS:
                values[method] = self._reconstructions(model, method)
            elif callable(method):
                values[method_name(method)] = self._custom(model, method)
            if progress is not None:
                progress(1)
        return {name: values[name] for name in self.names}

    def rules(self) -> list[str]:
        """The backward rules whose rebuilt graphs the named methods run in."""
        rules = set()
        for method in self.methods:
            if isinstance(method, str):
                rules.add(method if method in DECONVOLUTION_METHODS else "gradient")
                rules.add(RULES.get(method, "gradient"))
        return sorted(rules)

    def switch(self, previous: FrozenModel, model: FrozenModel, changed: dict[str, np.ndarray]):
        """Load ``model``, which differs from ``previous`` (the model computed last) in ``changed``, into the graphs.

        Only the changed weights are assigned; :func:`rebuild` of ``previous``
        first makes sure each graph holds it (a graph that holds anything
        else gets all of ``previous``'s weights).
        """
        for rule in self.rules():
            rebuild(previous, rule).load_changed_weights(model, changed)

    def _attributions(self, model: FrozenModel, methods: list[str]) -> dict[str, np.ndarray]:
        feed = {self.feed.input_name: self.feed.images, **self.feed.others}
        result = attribution_visualization(model, feed, classes=self.classes.tolist(), method=methods,
                                           input_tensor=self.feed.input_name, path_logdir=None, path_outdir=None,
                                           output=self.output, memory_budget_mb=self.memory_budget_mb,
                                           **self.attribution_options)
        smooth = self.attribution_options.get("smooth")
        values = {}
        for name in methods:
            variant = variant_name(name, smooth)
            raw = result.arrays.get(f"{variant}_raw")
            values[name] = np.asarray(raw if raw is not None else result.arrays[variant], np.float32)
        return values

    def _reconstructions(self, model: FrozenModel, method: str) -> np.ndarray:
        rebuilt = rebuild(model, method)
        images = self.feed.images
        count, per_image = self.classes.shape
        result = np.zeros((count, per_image) + images.shape[1:], np.float32)
        layer = self.target_layer or self.scores
        for n in range(count):
            channels = [self.target_channel] if self.target_layer is not None else self.classes[n]
            values = compute.reconstruct(rebuilt, self.image_feed(rebuilt, n), layer, target="map",
                                         channels=channels, memory_budget_mb=self.memory_budget_mb)
            result[n] = values[0]  # one channel broadcast over the classes with a target layer
        return result

    def image_feed(self, rebuilt, n: int) -> Feed:
        """The feed of image ``n`` alone: per-image values of other inputs follow it."""
        follow = per_image_inputs(rebuilt, self.feed)
        others = {name: value[n:n + 1] if name in follow else value for name, value in self.feed.others.items()}
        return Feed(self.feed.input_name, self.feed.images[n:n + 1], others)

    def _custom(self, model: FrozenModel, method) -> np.ndarray:
        images = self.feed.images
        values = np.asarray(method(model, images.copy(), self.classes.copy()), np.float32)
        expected = self.classes.shape + images.shape[1:3]
        if values.shape[:4] != expected or values.ndim not in (4, 5):
            raise OptionError(f"method {method_name(method)!r} returned values of shape {values.shape}; a "
                              f"callable method must return (N, K, H, W) = {expected} or (N, K, H, W, C) values "
                              "for the images and classes it is given")
        return values
