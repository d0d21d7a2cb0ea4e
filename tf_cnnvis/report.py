"""An HTML gallery of an output folder, browsable from disk without a server.

``build_gallery(outdir)`` writes ``<outdir>/index.html``, which links every
layer, method and image, and one page per layer, ``<outdir>/<layer>/index.html``,
with its grids and per-channel pictures. It reads only the folder layout
the entry functions write::

    <layer>/activations/[image_NNN/]grid_activation.png
    <layer>/deconvolution/<method>[_unit]/[image_NNN/]grid_image.png
    <layer or input>/attribution/<method>/[image_NNN/]overlay_class_<name>.png, map_..., grid_attribution.png
    <layer>/.../channels/channel_NNNN.png

and shows any other PNG under a layer folder too, grouped by its folder, so
new kinds of output appear without changes here. The input images
(``input_NNN.png`` at the top of the folder) come first. A grid that carries
its layout (:func:`tf_cnnvis.write.grid_text`) gets each cell labelled with
its channel, on the page and on hover, and one click opens that channel at
full size: its own PNG where one was saved, else the cell enlarged from the
grid. Links are relative, so the gallery keeps working when the folder is
moved or zipped.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import re
import urllib.parse

from tf_cnnvis.errors import OutputError
from tf_cnnvis.write import read_grid_text, write_atomic

logger = logging.getLogger("tf_cnnvis")

PAGE_NAME = "index.html"
_IMAGE_FOLDER = re.compile(r"image_\d+$")
_INPUT_FILE = re.compile(r"input_\d+\.png$")
_CHANNELS_FOLDER = "channels"
# A channel opened from a grid is enlarged to about this many pixels on its longer side.
ZOOM_SIDE = 512

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1, h2, h3 { font-weight: 600; }
a { color: #0645ad; }
nav { margin-bottom: 1em; }
ul.sections { margin: 0.2em 0 1em 0; }
figure { display: inline-block; margin: 0.4em; vertical-align: top; text-align: center; }
figcaption { font-size: 0.8em; color: #555; }
img { image-rendering: pixelated; background: #ddd; }
img.grid { max-width: 100%; min-width: 256px; display: block; }
img.thumb { height: 256px; image-rendering: auto; }
img.input { height: 256px; image-rendering: auto; }
img.channel { width: 128px; }
section { border-top: 1px solid #ccc; margin-top: 1em; }
div.cells { position: relative; display: inline-block; }
a.cell { position: absolute; box-sizing: border-box; border: 1px solid transparent; text-decoration: none; }
a.cell:hover { border-color: #f60; }
a.cell span { position: absolute; left: 1px; top: 1px; font-size: 10px; line-height: 1; padding: 1px 2px;
              color: #000; background: rgba(255, 255, 255, 0.75); }
div.zoom { display: none; }
div.zoom:target { display: block; position: fixed; inset: 0; background: rgba(0, 0, 0, 0.8); z-index: 10;
                  padding: 2em; overflow: auto; color: #fff; }
div.zoom a { color: #fff; }
div.zoom div.pixels { image-rendering: pixelated; background-repeat: no-repeat; margin-top: 0.5em; }
"""


@dataclasses.dataclass
class ImageSet:
    """The pictures of one section for one input image."""

    image: str  # "image_000", or "" when a single image was given
    grids: list[str] = dataclasses.field(default_factory=list)      # paths relative to the layer folder
    channels: list[str] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Section:
    """One method (``activations``, ``deconvolution/guided``...) of one layer."""

    name: str
    images: dict[str, ImageSet] = dataclasses.field(default_factory=dict)

    @property
    def anchor(self) -> str:
        return _anchor(self.name)


@dataclasses.dataclass
class LayerPage:
    path: str  # the layer's folder on disk
    sections: dict[str, Section] = dataclasses.field(default_factory=dict)
    first_written: float = 0.0

    @property
    def folder(self) -> str:
        return os.path.basename(self.path)


def build_gallery(outdir: str, title: str | None = None) -> str:
    """Write the gallery pages for ``outdir``; return the path of its index.html.

    Raises:
        OutputError: ``outdir`` is not a folder or holds no PNG written by
            tf_cnnvis.
    """
    if not os.path.isdir(outdir):
        raise OutputError(f"output folder {outdir!r} does not exist; give the path_outdir of a "
                          "visualization (default ./Output)")
    outdir = os.path.abspath(outdir)
    layers, loose = scan(outdir)
    if not layers and not loose:
        raise OutputError(f"output folder {outdir!r} holds no PNG pictures; run a visualization "
                          "with path_outdir pointing there first")
    title = title or f"tf_cnnvis: {os.path.basename(outdir) or outdir}"
    inputs = [name for name in loose if _INPUT_FILE.match(name)]
    for layer in layers:
        write_atomic(os.path.join(outdir, layer.folder, PAGE_NAME),
                     _layer_page(layer, title, inputs).encode("utf-8"))
    index = os.path.join(outdir, PAGE_NAME)
    write_atomic(index, _index_page(layers, loose, title).encode("utf-8"))
    logger.info("gallery of %d layers written to %s", len(layers), index)
    return index


def scan(outdir: str) -> tuple[list[LayerPage], list[str]]:
    """The layer folders of ``outdir`` (in the order they were written) and its top-level PNGs
    (the input images first)."""
    layers, loose = [], []
    for entry in sorted(os.scandir(outdir), key=lambda item: (not _INPUT_FILE.match(item.name), item.name)):
        if entry.is_file() and entry.name.lower().endswith(".png"):
            loose.append(entry.name)
        elif entry.is_dir() and not entry.name.startswith("."):
            page = _scan_layer(entry.path)
            if page.sections:
                layers.append(page)
    layers.sort(key=lambda page: (page.first_written, page.folder))
    return layers, loose


def _scan_layer(folder: str) -> LayerPage:
    page = LayerPage(path=folder, first_written=float("inf"))
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        pngs = sorted(name for name in files if name.lower().endswith(".png") and not name.startswith("."))
        if not pngs:
            continue
        relative = os.path.relpath(root, folder)
        parts = [] if relative == "." else relative.split(os.sep)
        is_channels = bool(parts) and parts[-1] == _CHANNELS_FOLDER
        if is_channels:
            parts = parts[:-1]
        image = parts.pop() if parts and _IMAGE_FOLDER.match(parts[-1]) else ""
        name = "/".join(parts) or "pictures"
        section = page.sections.setdefault(name, Section(name))
        image_set = section.images.setdefault(image, ImageSet(image))
        prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
        paths = [prefix + png for png in pngs]
        (image_set.channels if is_channels else image_set.grids).extend(paths)
        page.first_written = min(page.first_written,
                                 min(os.path.getmtime(os.path.join(root, png)) for png in pngs))
    for section in page.sections.values():
        section.images = dict(sorted(section.images.items()))
    return page


# --------------------------------------------------------------------------- HTML

def _anchor(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", "-".join(part for part in parts if part)).strip("-") or "top"


def _href(*parts: str) -> str:
    return "/".join(urllib.parse.quote(part) for part in parts if part)


def _page(title: str, body: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _index_page(layers: list[LayerPage], loose: list[str], title: str) -> str:
    inputs = [name for name in loose if _INPUT_FILE.match(name)]
    loose = [name for name in loose if name not in inputs]
    lines = [f"<h1>{html.escape(title)}</h1>", _inputs(inputs),
             f"<p>{len(layers)} layer(s). Each layer page shows its grids, every cell labelled with its "
             "channel; click a cell to see it at full size.</p>"]
    for layer in layers:
        page = _href(layer.folder, PAGE_NAME)
        lines.append(f"<section id=\"{_anchor('layer', layer.folder)}\">")
        lines.append(f"<h2><a href=\"{page}\">{html.escape(layer.folder)}</a></h2>")
        lines.append("<ul class=\"sections\">")
        for section in layer.sections.values():
            links = [f"<a href=\"{page}#{section.anchor}\">{html.escape(section.name)}</a>"]
            images = [name for name in section.images if name]
            if images:
                links.append(": " + ", ".join(
                    f"<a href=\"{page}#{_anchor(section.name, name)}\">{html.escape(name)}</a>"
                    for name in images))
            lines.append(f"<li>{''.join(links)}</li>")
        lines.append("</ul>")
        for section in layer.sections.values():
            first = next((s for s in section.images.values() if s.grids or s.channels), None)
            if first is None:
                continue
            picture = (first.grids or first.channels)[0]
            lines.append(f"<figure><a href=\"{page}#{section.anchor}\"><img class=\"thumb\" "
                         f"src=\"{_href(layer.folder, *picture.split('/'))}\" "
                         f"alt=\"{html.escape(layer.folder)} {html.escape(section.name)}\"></a>"
                         f"<figcaption>{html.escape(section.name)}</figcaption></figure>")
        lines.append("</section>")
    if loose:
        lines.append("<section id=\"other\"><h2>Other pictures</h2>")
        for name in loose:
            lines.append(f"<figure><a href=\"{_href(name)}\"><img class=\"grid\" src=\"{_href(name)}\" "
                         f"alt=\"{html.escape(name)}\"></a><figcaption>{html.escape(name)}"
                         "</figcaption></figure>")
        lines.append("</section>")
    return _page(title, "\n".join(lines))


def _inputs(names: list[str], prefix: str = "") -> str:
    """The input images, first on every page."""
    if not names:
        return ""
    figures = "".join(f"<figure><a href=\"{_href(prefix, name)}\"><img class=\"input\" "
                      f"src=\"{_href(prefix, name)}\" alt=\"{html.escape(name)}\"></a>"
                      f"<figcaption>{html.escape(name)}</figcaption></figure>" for name in names)
    return f"<section id=\"inputs\"><h2>Input</h2>{figures}</section>"


def _layer_page(layer: LayerPage, title: str, inputs: list[str] = ()) -> str:
    index = _href("..", PAGE_NAME)
    lines = [f"<nav><a href=\"{index}\">&larr; all layers</a></nav>",
             f"<h1>{html.escape(layer.folder)}</h1>", _inputs(list(inputs), ".."), "<ul class=\"sections\">"]
    for section in layer.sections.values():
        lines.append(f"<li><a href=\"#{section.anchor}\">{html.escape(section.name)}</a></li>")
    lines.append("</ul>")
    for section in layer.sections.values():
        lines.append(f"<section id=\"{section.anchor}\"><h2>{html.escape(section.name)}</h2>")
        for image_set in section.images.values():
            if image_set.image:
                lines.append(f"<h3 id=\"{_anchor(section.name, image_set.image)}\">"
                             f"{html.escape(image_set.image)}</h3>")
            channel_files = {_channel_number(path): path for path in image_set.channels}
            for grid in image_set.grids:
                lines.append(_grid_figure(layer, grid, channel_files))
            if image_set.channels:
                lines.append(f"<p>{len(image_set.channels)} channel picture(s)</p><div>")
                lines.extend(_figure(path, "channel", _channel_label(path))
                             for path in image_set.channels)
                lines.append("</div>")
        lines.append("</section>")
    return _page(f"{layer.folder} | {title}", "\n".join(lines))


def _figure(relative: str, css_class: str, caption: str) -> str:
    href = _href(*relative.split("/"))
    return (f"<figure><a href=\"{href}\"><img class=\"{css_class}\" src=\"{href}\" "
            f"alt=\"{html.escape(relative)}\"></a><figcaption>{html.escape(caption)}</figcaption></figure>")


def _channel_number(path: str) -> str | None:
    match = re.search(r"channel_(\d+)\.png$", path)
    return str(int(match.group(1))) if match else None


def _channel_label(path: str) -> str:
    number = _channel_number(path)
    return f"channel {number}" if number is not None else os.path.basename(path)


def _grid_figure(layer: LayerPage, relative: str, channel_files: dict) -> str:
    """A grid with every cell labelled and linked, when the grid carries its layout."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(os.path.join(layer.path, *relative.split("/"))) as picture:
            layout, (width, height) = read_grid_text(picture.info), picture.size
    except (OSError, UnidentifiedImageError):
        layout = None
    if layout is None:
        return _figure(relative, "grid", os.path.basename(relative))
    href = _href(*relative.split("/"))
    (cell_height, cell_width), padding, columns = layout["cell"], layout["padding"], layout["columns"]
    scale = max(1, ZOOM_SIDE // max(cell_height, cell_width, 1))
    cells, zooms = [], []
    for index, label in enumerate(layout["labels"]):
        row, column = divmod(index, columns)
        x, y = column * (cell_width + padding), row * (cell_height + padding)
        zoom_id = _anchor("zoom", relative, str(index))
        target = _href(*channel_files[label].split("/")) if label in channel_files else f"#{zoom_id}"
        name = f"channel {label}" if label.isdigit() else label
        box = (f"left:{100 * x / width:.4f}%;top:{100 * y / height:.4f}%;"
               f"width:{100 * cell_width / width:.4f}%;height:{100 * cell_height / height:.4f}%")
        cells.append(f"<a class=\"cell\" href=\"{target}\" title=\"{html.escape(name)}\" "
                     f"data-label=\"{html.escape(label)}\" style=\"{box}\"><span>{html.escape(label)}</span></a>")
        if label not in channel_files:
            pixels = (f"width:{cell_width * scale}px;height:{cell_height * scale}px;background-image:url('{href}');"
                      f"background-size:{width * scale}px {height * scale}px;"
                      f"background-position:-{x * scale}px -{y * scale}px")
            zooms.append(f"<div class=\"zoom\" id=\"{zoom_id}\"><a href=\"#\">&times; close</a> "
                         f"{html.escape(name)}<div class=\"pixels\" style=\"{pixels}\"></div></div>")
    return (f"<figure><div class=\"cells\"><a href=\"{href}\"><img class=\"grid\" src=\"{href}\" "
            f"alt=\"{html.escape(relative)}\"></a>{''.join(cells)}</div>"
            f"<figcaption>{html.escape(os.path.basename(relative))}</figcaption></figure>" + "".join(zooms))
