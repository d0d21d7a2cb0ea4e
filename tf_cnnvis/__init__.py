"""tf_cnnvis: see what a convolutional network has learned.

Three entry functions take a model (Keras model, graph, session, saved model
or a path to one) and a feed dict, and write grid images to a folder and to
TensorBoard:

- :func:`activation_visualization`: feature maps of chosen layers.
- :func:`deconv_visualization`: each channel projected back to pixels
  (deconvnet, guided backprop or gradient; whole map or strongest unit).
- :func:`deepdream_visualization`: images that maximize classes or channels.
- :func:`attribution_visualization`: where in each image the network saw a
  class (Grad-CAM family, Score-CAM, gradients, Integrated Gradients, occlusion).
- :func:`sanity_check` and :func:`deletion_insertion`: which of those pictures
  change when the weights are randomized, and point at what the class needs.

The public names load their modules on first use, so ``import tf_cnnvis``
(and the ``tf-cnnvis --help`` command) does not start TensorFlow until a
function that needs it is touched. The exceptions load at once: they are
plain Python classes, and ``except tf_cnnvis.TfCnnvisError`` must not pay
for TensorFlow.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING

from tf_cnnvis.errors import (
    FeedError,
    LayerNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    OutOfMemoryError,
    OutputError,
    ReceptiveFieldError,
    TfCnnvisError,
    UnsupportedOpError,
    UntrustedModelError,
)

__version__ = "2.0.0"

logging.getLogger("tf_cnnvis").addHandler(logging.NullHandler())

# Public name -> the module that defines it.
_LAZY = {
    "VisualizationCallback": "tf_cnnvis.callbacks",
    "attribution_visualization": "tf_cnnvis.attribution",
    "deepdream_visualization": "tf_cnnvis.deepdream",
    "SanityResult": "tf_cnnvis.sanity",
    "deletion_insertion": "tf_cnnvis.sanity",
    "sanity_check": "tf_cnnvis.sanity",
    "LayerInfo": "tf_cnnvis.layers",
    "FrozenModel": "tf_cnnvis.load",
    "load_model": "tf_cnnvis.load",
    "load_top_activations": "tf_cnnvis.top_activations",
    "render_top_activations": "tf_cnnvis.top_activations",
    "top_activations": "tf_cnnvis.top_activations",
    "VisualizationResult": "tf_cnnvis.render",
    "activation_visualization": "tf_cnnvis.visualize",
    "deconv_visualization": "tf_cnnvis.visualize",
    "list_layers": "tf_cnnvis.visualize",
    "utils": "tf_cnnvis.utils",
}

__all__ = sorted([
    "FeedError", "LayerNotFoundError", "ModelLoadError", "ModelNotFoundError", "OptionError",
    "OutOfMemoryError", "OutputError", "ReceptiveFieldError", "TfCnnvisError", "UnsupportedOpError",
    "UntrustedModelError", *_LAZY,
])


def __getattr__(name: str):
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'tf_cnnvis' has no attribute {name!r}")
    module = importlib.import_module(module_name)
    value = module if module_name == f"tf_cnnvis.{name}" else getattr(module, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static tools and editors see
    from tf_cnnvis import utils
    from tf_cnnvis.attribution import attribution_visualization
    from tf_cnnvis.callbacks import VisualizationCallback
    from tf_cnnvis.deepdream import deepdream_visualization
    from tf_cnnvis.layers import LayerInfo
    from tf_cnnvis.load import FrozenModel, load_model
    from tf_cnnvis.render import VisualizationResult
    from tf_cnnvis.sanity import SanityResult, deletion_insertion, sanity_check
    from tf_cnnvis.top_activations import load_top_activations, render_top_activations, top_activations
    from tf_cnnvis.visualize import activation_visualization, deconv_visualization, list_layers
