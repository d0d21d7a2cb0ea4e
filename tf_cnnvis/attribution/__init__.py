"""Class attribution maps: where in a picture the network saw class k.

:func:`attribution_visualization` is the entry function (the fourth, beside
activations, reconstructions and DeepDream). Its parts, in data-flow order:

- :mod:`~tf_cnnvis.attribution.graph_ops`: the class scores (a softmax's
  logits), the CAM layer, and the ops added once per rebuilt graph;
- :mod:`~tf_cnnvis.attribution.batches`: chunks sized by the memory budget,
  out-of-memory halving, bilinear resizing;
- :mod:`~tf_cnnvis.attribution.methods`: each method's batch items and how
  their results combine (Grad-CAM family, Score-CAM, gradients with
  SmoothGrad/VarGrad/SquareGrad, Integrated Gradients, occlusion);
- :mod:`~tf_cnnvis.attribution.pictures`: overlays, maps and grids.
"""

from tf_cnnvis.attribution.visualize import attribution_visualization

__all__ = ["attribution_visualization"]
