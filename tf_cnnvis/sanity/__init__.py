"""Sanity and faithfulness checks: which pictures depend on what the model learned.

:func:`sanity_check` randomizes the model's weights layer by layer
(Adebayo et al. 2018) and measures how much each method's map changes;
:func:`deletion_insertion` measures how fast the class score falls when
pixels are removed in the map's order, and rises when they are revealed
(Petsiuk et al. 2018). The parts, in data-flow order:

- :mod:`~tf_cnnvis.sanity.weights`: the layers with weights, and
  randomized copies of a model that reuse its imported graphs;
- :mod:`~tf_cnnvis.sanity.maps`: every method's maps of one model;
- :mod:`~tf_cnnvis.sanity.measures`: Spearman rank correlations and SSIM;
- :mod:`~tf_cnnvis.sanity.faithfulness`: deletion and insertion curves;
- :mod:`~tf_cnnvis.sanity.figures`: line plots and labelled grids;
- :mod:`~tf_cnnvis.sanity.check`: the two entry functions and their outputs.
"""

from tf_cnnvis.sanity.check import SanityResult, deletion_insertion, sanity_check
from tf_cnnvis.sanity.measures import spearman, ssim
from tf_cnnvis.sanity.weights import WeightLayer, randomized_model, weight_layers

__all__ = ["SanityResult", "WeightLayer", "deletion_insertion", "randomized_model", "sanity_check", "spearman",
           "ssim", "weight_layers"]
