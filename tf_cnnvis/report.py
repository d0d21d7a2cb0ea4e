"""An HTML gallery of an output folder, browsable from disk without a server.

``build_gallery(outdir)`` writes ``<outdir>/index.html``, which links every
layer, method and image, and one page per layer, ``<outdir>/<layer>/index.html``,
with its grids and per-channel pictures. It reads only the folder layout
the entry functions write::

    <layer>/activations/[image_NNN/]grid_activation.png
    <layer>/deconvolution/<method>[_unit]/[image_NNN/]grid_image.png
    <layer>/.../channels/channel_NNNN.png

and shows any other PNG under a layer folder too, grouped by its folder, so
new kinds of output appear without changes here. Links are relative, so the
gallery keeps working when the folder is moved or zipped.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import re
import urllib.parse

from tf_cnnvis.errors import OutputError
from tf_cnnvis.write import write_atomic

logger = logging.getLogger("tf_cnnvis")

PAGE_NAME = "index.html"
_IMAGE_FOLDER = re.compile(r"image_\d+$")
_CHANNELS_FOLDER = "channels"

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1, h2, h3 { font-weight: 600; }
a { color: #0645ad; }
nav { margin-bottom: 1em; }
ul.sections { margin: 0.2em 0 1em 0; }
figure { display: inline-block; margin: 0.4em; vertical-align: top; text-align: center; }
figcaption { font-size: 0.8em; color: #555; }
img { image-rendering: pixelated; background: #ddd; }
img.grid { max-width: 100%; min-width: 256px; }
img.thumb { height: 96px; image-rendering: auto; }
img.channel { width: 96px; }
section { border-top: 1px solid #ccc; margin-top: 1em; }
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
    folder: str
    sections: dict[str, Section] = dataclasses.field(default_factory=dict)
    first_written: float = 0.0


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
    for layer in layers:
        write_atomic(os.path.join(outdir, layer.folder, PAGE_NAME),
                     _layer_page(layer, title).encode("utf-8"))
    index = os.path.join(outdir, PAGE_NAME)
    write_atomic(index, _index_page(layers, loose, title).encode("utf-8"))
    logger.info("gallery of %d layers written to %s", len(layers), index)
    return index


def scan(outdir: str) -> tuple[list[LayerPage], list[str]]:
    """The layer folders of ``outdir`` (in the order they were written) and loose PNGs."""
    layers, loose = [], []
    for entry in sorted(os.scandir(outdir), key=lambda item: item.name):
        if entry.is_file() and entry.name.lower().endswith(".png"):
            loose.append(entry.name)
        elif entry.is_dir() and not entry.name.startswith("."):
            page = _scan_layer(entry.path)
            if page.sections:
                layers.append(page)
    layers.sort(key=lambda page: (page.first_written, page.folder))
    return layers, loose


def _scan_layer(folder: str) -> LayerPage:
    page = LayerPage(folder=os.path.basename(folder), first_written=float("inf"))
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
    lines = [f"<h1>{html.escape(title)}</h1>",
             f"<p>{len(layers)} layer(s). Each layer page shows its grids and per-channel "
             "pictures.</p>"]
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


def _layer_page(layer: LayerPage, title: str) -> str:
    index = _href("..", PAGE_NAME)
    lines = [f"<nav><a href=\"{index}\">&larr; all layers</a></nav>",
             f"<h1>{html.escape(layer.folder)}</h1>", "<ul class=\"sections\">"]
    for section in layer.sections.values():
        lines.append(f"<li><a href=\"#{section.anchor}\">{html.escape(section.name)}</a></li>")
    lines.append("</ul>")
    for section in layer.sections.values():
        lines.append(f"<section id=\"{section.anchor}\"><h2>{html.escape(section.name)}</h2>")
        for image_set in section.images.values():
            if image_set.image:
                lines.append(f"<h3 id=\"{_anchor(section.name, image_set.image)}\">"
                             f"{html.escape(image_set.image)}</h3>")
            for grid in image_set.grids:
                lines.append(_figure(grid, "grid", os.path.basename(grid)))
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


def _channel_label(path: str) -> str:
    match = re.search(r"(\d+)\.png$", path)
    return f"channel {int(match.group(1))}" if match else os.path.basename(path)
