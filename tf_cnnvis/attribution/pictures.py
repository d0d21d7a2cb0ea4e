"""Attribution maps as pictures: over the image, alone, and in a grid of images x classes.

Each map is shown as its positive part (the evidence for the class; the
signed values are in the result's arrays) scaled by its own maximum
through the viridis colour map, with a colour bar beside the overlay and
the scale in the TensorBoard description. A map with nothing positive is
shown as zero, never stretched, and says so (a log warning and the
description)::

    <layer or input>/attribution/<method>/[image_NNN/]overlay_<class>.png
    <layer or input>/attribution/<method>/[image_NNN/]map_<class>.png
    <layer or input>/attribution/<method>/grid_attribution.png    rows: images, columns: classes
"""

from __future__ import annotations

import logging

import numpy as np

from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.render import (Writer, colour_map, colour_overlay, display_image, image_parts, positive_scale,
                              with_colour_bar)
from tf_cnnvis.write import safe_names

logger = logging.getLogger("tf_cnnvis")

GRID_PADDING = 2


def write_maps(writer: Writer, layer: LayerInfo, variant: str, maps: np.ndarray, images: np.ndarray,
               classes: np.ndarray, names, deprocess, opacity: float):
    """Write one method's maps ``(N, K, H, W)`` of ``images`` for ``classes`` ``(N, K)`` named ``names``."""
    count, per_image = classes.shape
    what = f"{layer.name}/attribution/{variant}"
    cells, scales, empty = [], [], []
    for n in range(count):
        picture = display_image(images[n], deprocess)
        files = safe_names([f"class_{name}" for name in names[n]])
        parts = ("attribution", variant) + image_parts(n, count)
        for k in range(per_image):
            shown, top = positive_scale(maps[n, k])
            low = float(np.nanmin(maps[n, k])) if maps[n, k].size else 0.0
            label = f"class {names[n][k]}" + (f" ({classes[n, k]})" if names[n][k] != str(classes[n, k]) else "")
            where = f"image {n}, {label}" if count > 1 else label
            description = _scale_note(variant, where, top, low)
            if top == 0:
                empty.append(where)
            overlay = colour_overlay(picture, shown, opacity)
            cells.append(overlay)
            scales.append(f"{where}: 0 to {top:.4g}")
            file = files[f"class_{names[n][k]}"]
            tag = what + "/" + "/".join(image_parts(n, count) + (file,))
            writer.image(layer, parts, f"overlay_{file}.png", with_colour_bar(overlay), tag, description)
            writer.image(layer, parts, f"map_{file}.png", colour_map(shown), f"{tag}/map", description)
    if empty:
        logger.warning("%s: the map of %s is zero everywhere (no evidence for the class there); shown as zero",
                       what, "; ".join(empty))
    grid = with_colour_bar(_grid(cells, count, per_image))
    writer.image(layer, ("attribution", variant), "grid_attribution.png", grid, what,
                 f"{variant}: rows are images, columns classes; each map scaled from 0 (dark blue) to its own "
                 f"maximum (yellow): " + "; ".join(scales))
    writer.flush()


def _scale_note(variant: str, where: str, top: float, low: float) -> str:
    if top == 0:
        why = "it has no positive value" + (f" (lowest {low:.4g})" if low < 0 else "")
        return f"{variant}, {where}: zero everywhere, shown as zero ({why}): no evidence for this class here"
    note = f"{variant}, {where}: colour scale from 0 (dark blue) to {top:.4g} (yellow)"
    return note + (f"; negative values down to {low:.4g} are shown as 0" if low < 0 else "")


def _grid(cells: list[np.ndarray], rows: int, columns: int) -> np.ndarray:
    """Pictures of one size in ``rows`` x ``columns``, separated by white."""
    height, width = cells[0].shape[:2]
    grid = np.full((rows * height + (rows - 1) * GRID_PADDING, columns * width + (columns - 1) * GRID_PADDING, 3),
                   255, np.uint8)
    for index, cell in enumerate(cells):
        row, column = divmod(index, columns)
        y, x = row * (height + GRID_PADDING), column * (width + GRID_PADDING)
        grid[y:y + height, x:x + width] = cell
    return grid
