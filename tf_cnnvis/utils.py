"""The original tf_cnnvis helpers, kept for code that imports them from here.

They live in :mod:`tf_cnnvis.render`, with the rest of how pictures are made.
"""

from tf_cnnvis.render import convert_into_grid, image_normalization, normalize_each
from tf_cnnvis.write import grid_layout

__all__ = ["convert_into_grid", "grid_layout", "image_normalization", "normalize_each"]
