"""Gradients of images larger than the network's input, tile by tile.

Tiles of the network's input size are laid at a stride of half a tile, the
last row and column flush with the image border, so every pixel is covered
and every tile runs. Each tile's gradient is weighted by a smooth window and
the sum is divided by the summed weights: overlapping tiles are blended,
never overwritten, and the gradient near a tile border is as strong as in
its middle. With a single tile the gradient is returned untouched.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tf_cnnvis.errors import OptionError

_WINDOW_FLOOR = 0.05  # weight at a tile's edge: keeps border pixels of the image covered


def _starts(length: int, tile: int) -> list[int]:
    if length <= tile:
        return [0]
    stride = max(1, tile // 2)
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def _window(length: int) -> np.ndarray:
    """A raised cosine that is largest in the middle and never zero."""
    position = (np.arange(length) + 0.5) / length
    return _WINDOW_FLOOR + (1 - _WINDOW_FLOOR) * np.sin(np.pi * position) ** 2


@dataclasses.dataclass(frozen=True)
class TilePlan:
    """Where the tiles of one image size go, and how their gradients blend."""

    image_size: tuple[int, int]
    tile_size: tuple[int, int]
    corners: tuple[tuple[int, int], ...]

    @classmethod
    def for_image(cls, image_size, tile_size=None) -> TilePlan:
        height, width = (int(v) for v in image_size)
        if tile_size is None:
            return cls((height, width), (height, width), ((0, 0),))
        tile_h, tile_w = (int(v) for v in tile_size)
        if tile_h <= 0 or tile_w <= 0:
            raise OptionError(f"tile_size={tile_size!r} must be positive")
        if height < tile_h or width < tile_w:
            raise OptionError(f"the image ({height}x{width}) is smaller than the network's input "
                              f"tile ({tile_h}x{tile_w}); give an image at least that large")
        corners = tuple((y, x) for y in _starts(height, tile_h) for x in _starts(width, tile_w))
        return cls((height, width), (tile_h, tile_w), corners)

    @property
    def count(self) -> int:
        return len(self.corners)

    def cut(self, images: np.ndarray) -> np.ndarray:
        """``(N, H, W, C)`` -> tiles ``(N * count, th, tw, C)``, image-major."""
        if self.count == 1:
            return images
        th, tw = self.tile_size
        return np.stack([image[y:y + th, x:x + tw] for image in images for y, x in self.corners])

    def blend(self, tile_values: np.ndarray, count: int) -> np.ndarray:
        """Weighted average of overlapping tile gradients back into ``count`` images."""
        if self.count == 1:
            return tile_values
        th, tw = self.tile_size
        window = (_window(th)[:, None] * _window(tw)[None, :])[..., None].astype(tile_values.dtype)
        height, width = self.image_size
        total = np.zeros((count, height, width, tile_values.shape[-1]), tile_values.dtype)
        weight = np.zeros((height, width, 1), tile_values.dtype)
        for y, x in self.corners:
            weight[y:y + th, x:x + tw] += window
        tiles = tile_values.reshape((count, self.count) + tile_values.shape[1:])
        for index, (y, x) in enumerate(self.corners):
            total[:, y:y + th, x:x + tw] += tiles[:, index] * window
        return total / weight
