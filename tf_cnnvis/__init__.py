"""tf_cnnvis: see what a convolutional network has learned.

Three entry functions take a model (Keras model, graph, session, saved model
or a path to one) and a feed dict, and write grid images to a folder and to
TensorBoard:

- :func:`activation_visualization`: feature maps of chosen layers.
- :func:`deconv_visualization`: each channel projected back to pixels
  (deconvnet, guided backprop or gradient; whole map or strongest unit).
- :func:`deepdream_visualization`: images that maximize classes or channels.
"""

import logging

from tf_cnnvis import utils
from tf_cnnvis.callbacks import VisualizationCallback
from tf_cnnvis.errors import (
    FeedError,
    LayerNotFoundError,
    ModelLoadError,
    ModelNotFoundError,
    OptionError,
    OutOfMemoryError,
    OutputError,
    TfCnnvisError,
    UntrustedModelError,
)
from tf_cnnvis.deepdream import deepdream_visualization
from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.load import FrozenModel, load_model
from tf_cnnvis.top_activations import load_top_activations, render_top_activations, top_activations
from tf_cnnvis.visualize import (
    VisualizationResult,
    activation_visualization,
    deconv_visualization,
    list_layers,
)

__version__ = "2.0.0"

logging.getLogger("tf_cnnvis").addHandler(logging.NullHandler())

__all__ = [
    "FeedError", "FrozenModel", "LayerInfo", "LayerNotFoundError", "ModelLoadError",
    "ModelNotFoundError", "OptionError", "OutOfMemoryError", "OutputError", "TfCnnvisError",
    "UntrustedModelError", "VisualizationCallback",
    "VisualizationResult", "activation_visualization", "deconv_visualization",
    "deepdream_visualization", "list_layers", "load_model", "load_top_activations",
    "render_top_activations", "top_activations", "utils",
]
