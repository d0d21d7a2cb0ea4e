"""Pictures: PNG grids and HTML pages of each channel's top images.

Per channel: the top-k receptive-field crops, their reconstructions and the
full images with the field boxed; an HTML page per layer and one that
links the layers.
"""

from __future__ import annotations

import html
import math
import os

import numpy as np

from tf_cnnvis.top_activations.results import LayerTops, TopActivations
from tf_cnnvis.top_activations.storage import load_top_activations
from tf_cnnvis.utils import convert_into_grid, image_normalization
from tf_cnnvis.write import encode_png, ensure_folder, inside, safe_names, write_atomic

_BOX_COLOR = (255, 40, 40)
_OUTSIDE = 128  # gray for the part of a receptive field that lies outside the image
_MIN_TILE = 64  # small images are enlarged (nearest neighbour) to at least this many pixels


def render_top_activations(result, path_outdir: str) -> list[str]:
    """Draw PNGs and HTML pages for a result (or the path of its .h5 file)."""
    if isinstance(result, (str, os.PathLike)):
        result = load_top_activations(os.fspath(result))
    ensure_folder(path_outdir, "output folder")
    folders = safe_names(list(result.layers))
    slot_of = {int(index): slot for slot, index in enumerate(result.image_index)}
    paths = []
    for name, tops in result.layers.items():
        layer_dir = (folders[name], "top_activations")
        rows = []
        for row, channel in enumerate(tops.channels):
            pictures = _channel_pictures(result, tops, row, slot_of)
            files = {}
            for what, picture in pictures.items():
                path = inside(path_outdir, *layer_dir, f"channel_{channel:04d}", f"{what}.png")
                paths.append(write_atomic(path, encode_png(picture)))
                files[what] = f"channel_{channel:04d}/{what}.png"
            rows.append((int(channel), files, tops.scores[row], tops.image_index[row]))
        page = inside(path_outdir, *layer_dir, "index.html")
        paths.append(write_atomic(page, _layer_page(name, tops, result, rows).encode("utf-8")))
    index = inside(path_outdir, "top_activations.html")
    links = "".join(f'<li><a href="{html.escape(folders[name])}/top_activations/index.html">'
                    f"{html.escape(name)}</a> ({len(tops.channels)} channels)</li>"
                    for name, tops in result.layers.items())
    paths.append(write_atomic(index, _page("Top activations", f"<p>{result.count} images scanned, top "
                                           f"{result.k} per channel.</p><ul>{links}</ul>").encode("utf-8")))
    return paths


def _zoom_of(size) -> int:
    return max(1, math.ceil(_MIN_TILE / max(size)))


def _enlarge(picture: np.ndarray, zoom: int) -> np.ndarray:
    return picture if zoom == 1 else picture.repeat(zoom, axis=0).repeat(zoom, axis=1)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def _channel_pictures(result, tops: LayerTops, row: int, slot_of) -> dict[str, np.ndarray]:
    """uint8 grids: field crops, their reconstructions, full images with the field boxed."""
    filled = [r for r in range(tops.scores.shape[1]) if tops.image_index[row, r] >= 0]
    images = [result.images[slot_of[int(tops.image_index[row, r])]] for r in filled]
    if not images:
        return {}
    height, width = images[0].shape[:2]
    size = tuple(tops.field_size) if tops.boxes is not None else (height, width)
    crop_zoom, full_zoom = _zoom_of(size), _zoom_of((height, width))
    crops, boxed, recons = [], [], []
    for r, image in zip(filled, images):
        if tops.boxes is not None:
            y0, x0, y1, x1 = (int(v) for v in tops.boxes[row, r])
        else:
            y0, x0, y1, x1 = 0, 0, height, width
        crops.append(_enlarge(cut(image, y0, x0, size, fill=_OUTSIDE), crop_zoom))
        boxed.append(_draw_box(_enlarge(_as_rgb(image), full_zoom), (y0, x0, y1, x1), full_zoom))
        if tops.reconstructions is not None:
            inside_mask = cut(np.ones((height, width, 1), bool), y0, x0, size, fill=False)
            recons.append(_enlarge(_show_reconstruction(tops.reconstructions[row, r], inside_mask), crop_zoom))
    pictures = {"crops": convert_into_grid(np.stack(crops)), "images": convert_into_grid(np.stack(boxed))}
    if recons:
        pictures["reconstructions"] = convert_into_grid(np.stack(recons))
    return pictures


def _show_reconstruction(values: np.ndarray, inside_mask: np.ndarray) -> np.ndarray:
    """Min-max scale the part of a reconstruction inside the image; gray outside."""
    values = values.astype(np.float64)
    mask = np.broadcast_to(inside_mask, values.shape)
    shown = np.full(values.shape, _OUTSIDE, np.uint8)
    if mask.any():
        shown[mask] = image_normalization(values[mask])
    return shown


def _draw_box(image: np.ndarray, box, zoom: int) -> np.ndarray:
    """The (enlarged) image with the clipped box outlined, 1 or 2 pixels wide."""
    image = image.copy()
    height, width = image.shape[:2]
    y0, x0, y1, x1 = (v * zoom for v in box)
    y0, x0 = max(y0, 0), max(x0, 0)
    y1, x1 = min(y1, height), min(x1, width)
    if y1 <= y0 or x1 <= x0:
        return image
    line = max(1, min(height, width) // 100)
    color = np.array(_BOX_COLOR, np.uint8)
    image[y0:y0 + line, x0:x1] = color
    image[y1 - line:y1, x0:x1] = color
    image[y0:y1, x0:x0 + line] = color
    image[y0:y1, x1 - line:x1] = color
    return image


def _page(title: str, body: str) -> str:
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            "<style>body{font-family:sans-serif} td{vertical-align:top;padding:4px} "
            "img{image-rendering:pixelated;max-width:360px} .s{font-size:small;color:#555}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>{body}</body></html>")


def _layer_page(name: str, tops: LayerTops, result: TopActivations, rows) -> str:
    field = ("" if tops.field_size is None else
             f" Receptive field {tops.field_size[0]}x{tops.field_size[1]} px, stride "
             f"{tops.field_jump[0]}x{tops.field_jump[1]} px.")
    header = ("<tr><th>channel</th><th>receptive-field crops</th><th>reconstructions "
              f"({html.escape(result.method)})</th><th>images</th></tr>")
    lines = []
    for channel, files, scores, indices in rows:
        cells = "".join(f'<td><img src="{html.escape(files[what])}" alt="{what}"></td>' if what in files
                        else "<td></td>" for what in ("crops", "reconstructions", "images"))
        detail = ", ".join(f"#{int(i)}: {s:.3g}" for s, i in zip(scores, indices) if i >= 0)
        lines.append(f"<tr><td>{channel}<div class='s'>{html.escape(detail)}</div></td>{cells}</tr>")
    body = (f"<p>Top {result.k} of {result.count} images per channel, by the strongest unit.{field}</p>"
            f"<p><a href='../../top_activations.html'>all layers</a></p>"
            f"<table>{header}{''.join(lines)}</table>")
    return _page(f"Top activations: {name}", body)


def cut(image: np.ndarray, y0: int, x0: int, size, fill) -> np.ndarray:
    """``image[y0:y0+h, x0:x0+w]`` with ``fill`` where the window leaves the image."""
    height, width = size
    out = np.full((height, width) + image.shape[2:], fill, image.dtype)
    sy0, sx0 = max(y0, 0), max(x0, 0)
    sy1, sx1 = min(y0 + height, image.shape[0]), min(x0 + width, image.shape[1])
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[sy0:sy1, sx0:sx1]
    return out

