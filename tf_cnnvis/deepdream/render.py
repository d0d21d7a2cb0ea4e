"""The optimization loop: octaves of gradient ascent on a batch of images.

Every class (or channel) is one batch item, and every tile of every item
goes through the network in the same run, chunked by a memory budget. Per
octave the image is enlarged by ``octave_scale``; DeepDream's "detail"
scheme carries what was added at the smaller size onto the start image at
the larger size, so a user's picture keeps its content.

One iteration: transform (roll jitter, or Lucid's robustness transforms) ->
network gradient (tiled) -> back through the transform -> normalize ->
add the L2 and TV directions -> step (pixels, or Adam in the Fourier
domain) -> optional bilateral filter. Between octaves: optional TV
denoising.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tensorflow as tf

from tf_cnnvis import compute
from tf_cnnvis.deepdream import normalize, regularizers, transforms
from tf_cnnvis.deepdream.objectives import ObjectiveOps
from tf_cnnvis.deepdream.param import FourierImage, PixelImage
from tf_cnnvis.deepdream.tiling import TilePlan
from tf_cnnvis.errors import OptionError
from tf_cnnvis.feeds import Feed
from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.options import DEFAULT_MEMORY_BUDGET_MB, check_integer
from tf_cnnvis.rebuild import RebuiltGraph

logger = logging.getLogger("tf_cnnvis")

PARAMS = ("pixel", "fourier")
START = ("noise", "image")
NOISE_AMPLITUDE = 0.1  # start noise, in the unit range: a faint texture around mid-gray
MIN_OCTAVE_SIDE = 16


@dataclasses.dataclass(frozen=True)
class DreamSettings:
    """Every knob of the optimizer; defaults follow the seed projects (DESIGN.md section 3)."""

    iterations: int = 50
    octaves: int = 3
    octave_scale: float = 1.4
    step_size: float = 0.01
    jitter: int = 16
    normalize: str | None = "laplacian"
    laplacian_levels: int = 4
    l2: float = 1e-3
    tv: float = 0.0
    bilateral: bool = False
    bilateral_range: float = regularizers.BILATERAL_RANGE_SIGMA
    denoise: float | None = None
    param: str = "pixel"
    transforms: object = None
    learning_rate: float = 0.05
    seed: int = 0

    def check(self) -> DreamSettings:
        positive_ints = {"iterations": self.iterations, "octaves": self.octaves,
                         "laplacian_levels": self.laplacian_levels}
        for name, value in positive_ints.items():
            check_integer(name, value, 1)
        check_integer("jitter", self.jitter, 0, "pixels")
        if not self.octave_scale >= 1:
            raise OptionError(f"octave_scale={self.octave_scale!r} must be >= 1")
        for name in ("step_size", "learning_rate", "bilateral_range"):
            if not getattr(self, name) > 0:
                raise OptionError(f"{name}={getattr(self, name)!r} must be positive")
        for name in ("l2", "tv"):
            if not getattr(self, name) >= 0:
                raise OptionError(f"{name}={getattr(self, name)!r} must be >= 0 (0 switches it off)")
        if self.denoise is not None and not self.denoise > 0:
            raise OptionError(f"denoise={self.denoise!r} must be None (off) or a positive weight "
                              f"(the seed's is {regularizers.DENOISE_WEIGHT})")
        if self.param not in PARAMS:
            raise OptionError(f"param={self.param!r} is not one of {', '.join(map(repr, PARAMS))}")
        normalize.get(self.normalize)
        self.transform_list()
        if self.bilateral and self.param != "pixel":
            logger.warning("bilateral=True filters pixels and is skipped for param=%r", self.param)
        return self

    def transform_list(self):
        """The robustness transforms, or None for plain roll jitter."""
        chosen = self.transforms
        if chosen is None:
            return transforms.standard_transforms() if self.param == "fourier" else None
        if chosen is False or chosen == "none":
            return None
        if chosen == "standard":
            return transforms.standard_transforms()
        if isinstance(chosen, (list, tuple)) and all(callable(item) for item in chosen):
            return list(chosen)
        raise OptionError(f"transforms={chosen!r} must be None (default), 'standard', 'none' or a "
                          "list of functions (images, rng) -> images from tf_cnnvis.deepdream.transforms")


class NetworkObjective:
    """Objective values and unit-range gradients for a batch of unit-range images.

    Images in ``[-1, 1]`` map linearly onto the model's ``value_range``.
    Images larger than ``tile_size`` are cut into tiles; all tiles of all
    items share the network batch, chunked by ``memory_budget_mb``. Where
    the graph takes any size (``tile_size`` is only the size the model was
    built for), a smaller image is fed whole.
    """

    def __init__(self, rebuilt: RebuiltGraph, feed: Feed, ops: ObjectiveOps, layer: LayerInfo,
                 value_range, tile_size=None, memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB):
        self.rebuilt, self.feed, self.ops, self.layer = rebuilt, feed, ops, layer
        low, high = (float(v) for v in value_range)
        self.center, self.half = (low + high) / 2, (high - low) / 2
        self.tile_size = tile_size
        self.fixed_size = all(d is not None for d in rebuilt.tensor(feed.input_name).shape.as_list()[1:3])
        self.memory_budget_mb = memory_budget_mb
        self._chunks: dict[tuple, int] = {}
        self.network_runs = 0

    def _plan(self, size) -> TilePlan:
        tile = self.tile_size
        if tile is not None and not self.fixed_size:
            tile = tuple(min(t, s) for t, s in zip(tile, size))
        return TilePlan.for_image(size, tile)

    def to_model(self, images: np.ndarray) -> np.ndarray:
        return (self.center + self.half * images).astype(self.feed.images.dtype)

    def to_unit(self, images: np.ndarray) -> np.ndarray:
        return ((images - self.center) / self.half).astype(np.float32)

    def _chunk(self, item_shape, limit: int) -> int:
        if item_shape not in self._chunks:
            self._chunks[item_shape] = compute.chunk_size(
                self.rebuilt, self.feed, self.layer, item_shape, self.memory_budget_mb, limit=1 << 30)
        return max(1, min(self._chunks[item_shape], limit))

    def _run(self, fetches, inputs: np.ndarray, targets: np.ndarray):
        chunk = self._chunk(inputs.shape[1:], len(inputs))
        results = []
        for begin in range(0, len(inputs), chunk):
            feed_dict = {self.ops.index: targets[begin:begin + chunk],
                         **self.feed.with_images(self.to_model(inputs[begin:begin + chunk]))}
            results.append(compute.run(self.rebuilt, fetches, feed_dict))
            self.network_runs += 1
        return results

    def __call__(self, images: np.ndarray, targets: np.ndarray):
        """(values per item averaged over its tiles, gradient w.r.t. the unit image)."""
        plan = self._plan(images.shape[1:3])
        tiles = plan.cut(images)
        tile_targets = np.repeat(np.asarray(targets, np.int32), plan.count)
        results = self._run([self.ops.values, self.ops.gradient], tiles, tile_targets)
        values = np.concatenate([r[0] for r in results]).reshape(len(images), plan.count).mean(axis=1)
        gradient = np.concatenate([r[1] for r in results]).astype(np.float32) * self.half
        return values, plan.blend(gradient, len(images))

    def values(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Objective values only (a forward pass), averaged over tiles."""
        plan = self._plan(images.shape[1:3])
        tiles = plan.cut(images)
        tile_targets = np.repeat(np.asarray(targets, np.int32), plan.count)
        results = self._run(self.ops.values, tiles, tile_targets)
        return np.concatenate(results).reshape(len(images), plan.count).mean(axis=1)


def octave_sizes(size, octaves: int, scale: float, min_side: int) -> list[tuple[int, int]]:
    """Image sizes from smallest to ``size``; octaves below ``min_side`` are left out."""
    height, width = size
    sizes = []
    for octave in range(octaves):
        factor = scale ** (octaves - 1 - octave)
        candidate = (max(1, round(height / factor)), max(1, round(width / factor)))
        if min(candidate) >= min_side or octave == octaves - 1:
            if not sizes or sizes[-1] != candidate:
                sizes.append(candidate)
    if len(sizes) < octaves:
        logger.info("using %d of %d octaves: smaller ones would be under %d pixels", len(sizes),
                    octaves, min_side)
    return sizes


def resize(images: np.ndarray, size) -> np.ndarray:
    if tuple(images.shape[1:3]) == tuple(size):
        return images
    return tf.image.resize(images, size, method="bilinear").numpy().astype(np.float32)


@dataclasses.dataclass
class RenderOutcome:
    images: np.ndarray  # unit range, (K, H, W, C)
    start_values: np.ndarray
    final_values: np.ndarray


def render(objective: NetworkObjective, start: np.ndarray, targets, settings: DreamSettings,
           start_is_noise: bool, min_side: int = MIN_OCTAVE_SIDE, progress=None) -> RenderOutcome:
    """Optimize ``start`` (unit range, one item per target) toward ``targets``."""
    settings.check()
    targets = np.asarray(targets, np.int32)
    rng = np.random.default_rng(settings.seed)
    normalizer = normalize.get(settings.normalize)
    transform_list = settings.transform_list()
    sizes = octave_sizes(start.shape[1:3], settings.octaves, settings.octave_scale, min_side)
    start_values = objective.values(start, targets)
    detail = None
    image = start
    for octave, size in enumerate(sizes):
        base = resize(start, size)
        image = base if detail is None else base + resize(detail, size)
        if settings.param == "pixel":
            param = PixelImage(image)
        elif start_is_noise and detail is None:
            param = FourierImage(image.shape, rng, learning_rate=settings.learning_rate)
            base = param.image()
        else:
            param = FourierImage(image.shape, rng, images=image, learning_rate=settings.learning_rate)
        jitter = (transforms.Roll(settings.jitter, rng) if transform_list is None
                  else transforms.TapeTransform(transform_list, rng))
        for iteration in range(settings.iterations):
            current = param.image()
            values, gradient = objective(jitter.apply(current), targets)
            direction = normalizer(jitter.undo(gradient), settings.laplacian_levels)
            if settings.l2:
                direction = direction + settings.l2 * regularizers.l2_direction(current)
            if settings.tv:
                direction = direction + settings.tv * regularizers.tv_direction(current)
            param.ascend(direction.astype(np.float32), settings.step_size)
            if settings.bilateral and settings.param == "pixel":
                sigma = regularizers.falling_sigma(iteration, settings.iterations)
                param.set_image(regularizers.bilateral(param.image(), sigma, settings.bilateral_range))
            if progress is not None:
                progress(1)
        image = param.image()
        logger.info("octave %d/%d (%dx%d): objective %s", octave + 1, len(sizes), size[0], size[1],
                    np.array2string(values, precision=3, max_line_width=200))
        if settings.denoise and octave < len(sizes) - 1:
            image = regularizers.tv_denoise(image, settings.denoise)
        detail = image - base
    final_values = objective.values(image, targets)
    return RenderOutcome(images=image, start_values=start_values, final_values=final_values)


def noise(shape, seed: int) -> np.ndarray:
    """Seeded start noise in the unit range."""
    rng = np.random.default_rng(seed)
    return rng.uniform(-NOISE_AMPLITUDE, NOISE_AMPLITUDE, shape).astype(np.float32)

