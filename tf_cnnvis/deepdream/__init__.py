"""DeepDream and activation maximization (the third entry function).

Split after Lucid's ``optvis``: :mod:`.objectives` (what to maximize),
:mod:`.param` (pixels or a color-decorrelated Fourier spectrum),
:mod:`.transforms` (jitter, pad, scale, rotate), :mod:`.normalize`
(gradient normalization), :mod:`.regularizers` (L2, TV, bilateral, TV
denoising), :mod:`.tiling` (large images) and :mod:`.render` (the octave
loop). :func:`deepdream_visualization` ties them to the core's loader, feed
resolver and writers.
"""

from tf_cnnvis.deepdream.render import DreamSettings
from tf_cnnvis.deepdream.visualize import deepdream_visualization

__all__ = ["DreamSettings", "deepdream_visualization"]
