"""Command line: argument types that turn text into option values.

Shared by ``tf-cnnvis`` and the demo's options. Each raises
``argparse.ArgumentTypeError`` with the text and an example of what is
accepted, so argparse reports a malformed command line in one line, before
TensorFlow loads.
"""

from __future__ import annotations

import argparse
import re

from tf_cnnvis.errors import OptionError
from tf_cnnvis.options import check_methods


def integers(text: str) -> list[int]:
    """``"0,3,5-8"`` -> ``[0, 3, 5, 6, 7, 8]``."""
    numbers = []
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a list of indices; give e.g. 0,3,5-8")
        first, last = int(match.group(1)), int(match.group(2) or match.group(1))
        if last < first:
            raise argparse.ArgumentTypeError(f"range {part!r} runs backwards; give e.g. 5-8")
        numbers.extend(range(first, last + 1))
    if not numbers:
        raise argparse.ArgumentTypeError(f"{text!r} holds no index")
    return numbers


def names(text: str) -> list[str]:
    """``"a, b"`` -> ``["a", "b"]``; at least one."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{text!r} holds no name; give one or more, separated by commas")
    return items


def methods(text: str) -> list[str]:
    """``"deconvnet,guided"`` -> distinct method names."""
    try:
        return check_methods(names(text))
    except OptionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def size(text: str) -> tuple[int, int]:
    """``"224"`` or ``"160x240"`` -> ``(height, width)``."""
    match = re.fullmatch(r"(\d+)(?:[x,](\d+))?", text.strip())
    if not match or int(match.group(1)) == 0 or (match.group(2) and int(match.group(2)) == 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; give N or HxW, e.g. 224 or 160x240")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def value_range(text: str) -> tuple[float, float]:
    """``"-1,1"`` -> ``(low, high)`` with low < high."""
    try:
        low, high = (float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a range; give LOW,HIGH e.g. -1,1") from None
    if not high > low:
        raise argparse.ArgumentTypeError(f"range {text!r} must have LOW < HIGH")
    return low, high
