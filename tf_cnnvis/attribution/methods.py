"""The attribution methods: what each puts in the batch and how it combines the results.

=====================  =============================================  ======================
method                 batch items (per image)                        map ``(H, W)`` per class
=====================  =============================================  ======================
gradcam, gradcam++,    the image, once per class; one backward pass   ``relu(sum_k w_k A^k)``
layercam               to the layer                                   upsampled
scorecam               the image masked by each channel's map         ``relu(sum_k w_k A^k)``,
                       (all classes from the same passes)             ``w = softmax(scores)``
guided_gradcam         Grad-CAM's items, and the same in the guided   ``max_c |cam * guided|``
                       graph
saliency, deconvnet,   the image (or ``samples`` noisy copies), once  ``max_c |g|``
guided                 per class
gradient_x_input       as saliency                                    ``sum_c g x``
integrated_gradients   ``steps`` points from the baseline, per class  ``sum_c (x - x') mean g``
occlusion              the image with one patch replaced, per patch   mean score drop of the
                       (all classes from the same passes)             patches covering a pixel
=====================  =============================================  ======================

Every method's items of all images, classes, samples, steps, masks or
patches go through the network together, in chunks the memory budget
allows (:mod:`tf_cnnvis.attribution.batches`).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from tf_cnnvis.attribution import graph_ops
from tf_cnnvis.attribution.batches import chunk_size, in_chunks, run, upsample
from tf_cnnvis.feeds import Feed
from tf_cnnvis.layers import LayerInfo
from tf_cnnvis.load import FrozenModel
from tf_cnnvis.options import GRADIENT_ATTRIBUTIONS
from tf_cnnvis.rebuild import rebuild

logger = logging.getLogger("tf_cnnvis")

GRADIENT_CAMS = ("gradcam", "gradcam++", "layercam")
# The backward rules each input-gradient method runs under.
RULES = {"saliency": "gradient", "gradient_x_input": "gradient", "integrated_gradients": "gradient",
         "deconvnet": "deconvnet", "guided": "guided", "guided_gradcam": "guided"}
# Gradient methods whose map sums the channels (a pixel's contribution); the others take max |value|.
SUMMED = ("gradient_x_input", "integrated_gradients")


@dataclasses.dataclass
class Settings:
    """The methods' options, checked (see ``attribution_visualization``)."""

    smooth: str | None = None
    samples: int = 50
    noise: float = 0.15
    seed: int = 0
    steps: int = 50
    rule: str = "trapezoid"
    baseline: np.ndarray | None = None  # broadcast to (N, H, W, C)
    patch: tuple[int, int] = (8, 8)
    stride: tuple[int, int] = (4, 4)
    max_channels: int | None = None


@dataclasses.dataclass
class Job:
    """One call's work: the model, the images, the classes and where the maps are taken."""

    model: FrozenModel
    feed: Feed
    scores: LayerInfo          # the class scores (N, classes)
    classes: np.ndarray        # (N, K) class indices; graph_ops.TOP_CLASS until known
    layer: LayerInfo | None    # the CAM layer
    settings: Settings
    memory_budget_mb: float
    progress: object           # called with the number of items finished
    logits: np.ndarray | None = None  # (N, classes) on the images themselves

    @property
    def images(self) -> np.ndarray:
        return self.feed.images

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.feed.images.shape[1:]

    def item_feed(self, rebuilt, image_ids: np.ndarray, batch: np.ndarray) -> dict:
        """The session feed for batch items of images ``image_ids``: per-image inputs follow their image."""
        count = self.images.shape[0]
        feed = {self.feed.input_name: batch}
        for name, value in self.feed.others.items():
            placeholder = rebuilt.tensor(name)
            per_image = (value.ndim >= 1 and value.shape[0] == count and placeholder.shape.rank
                         and placeholder.shape[0] is None)
            feed[name] = value[image_ids] if per_image else value
        return feed

    def one_item_feed(self, rebuilt) -> Feed:
        """The feed of the first image alone (what the memory estimate measures on)."""
        ids = np.zeros(1, np.int64)
        feed = self.item_feed(rebuilt, ids, self.images[:1])
        return Feed(self.feed.input_name, feed.pop(self.feed.input_name), feed)

    def resolve(self, chosen: np.ndarray, logits: np.ndarray | None = None):
        """Remember the classes the network chose (and the clean images' logits)."""
        self.classes = np.asarray(chosen, np.int64).reshape(self.classes.shape)
        if logits is not None and self.logits is None:
            self.logits = logits

    def chunk(self, rebuilt, pass_kind: str, limit: int) -> int:
        return chunk_size(rebuilt, self.one_item_feed(rebuilt), self.scores, pass_kind, self.memory_budget_mb, limit)


def attribute(job: Job, methods: list[str]) -> dict[str, np.ndarray]:
    """Every method's maps ``(N, K, H, W)`` (and ``<name>_raw`` values ``(N, K, H, W, C)``)."""
    arrays = {}
    cams = [name for name in methods if name in GRADIENT_CAMS or name == "guided_gradcam"]
    if job.settings.smooth is not None or "integrated_gradients" in methods:
        _clean_forward(job)  # the images' own top classes, before noise or paths change them
    # Otherwise the first method's items are the images themselves: it takes each top class in the graph.
    if cams:
        wanted = [name for name in GRADIENT_CAMS if name in cams or (name == "gradcam" and "guided_gradcam" in cams)]
        computed = gradient_cams(job, wanted)
        arrays.update({name: computed[name] for name in cams if name in computed})
        if "guided_gradcam" in cams:
            arrays["guided_gradcam"], arrays["guided_gradcam_raw"] = guided_gradcam(job, computed["gradcam"])
    for name in methods:
        if name == "scorecam":
            arrays[name] = score_cam(job)
        elif name == "occlusion":
            arrays[name] = occlusion(job)
        elif name in RULES and name != "guided_gradcam":
            variant = variant_name(name, job.settings.smooth)
            arrays[variant], arrays[f"{variant}_raw"] = gradient_attribution(job, name)
            if name == "integrated_gradients" and job.settings.smooth is None:
                arrays[f"{variant}_delta"] = completeness_gap(job, arrays[f"{variant}_raw"])
    if job.logits is None:
        _clean_forward(job)
    return arrays


def variant_name(method: str, smooth: str | None) -> str:
    """The name a method's maps go by: ``saliency``, or ``saliency_smoothgrad`` when smoothed."""
    return f"{method}_{smooth}" if smooth is not None and method in GRADIENT_ATTRIBUTIONS else method


def forward(job: Job, batch: np.ndarray, what: str) -> np.ndarray:
    """The class scores ``(N, classes)`` of one input per image (the images themselves, or their baselines)."""
    rebuilt = rebuild(job.model, "gradient")
    ops = graph_ops.score_ops(rebuilt, job.scores)
    count = batch.shape[0]
    logits = [None] * count

    def one_chunk(begin, end):
        ids = np.arange(begin, end)
        logits[begin:end] = run(rebuilt, ops.logits, job.item_feed(rebuilt, ids, batch[ids]))

    in_chunks(count, job.chunk(rebuilt, "forward", count), what, one_chunk)
    return np.asarray(logits, np.float32)


def _clean_forward(job: Job):
    """The logits of the images themselves, and so their top classes."""
    if job.logits is None:
        job.logits = forward(job, job.images, "the class scores")
        job.classes = np.where(job.classes == graph_ops.TOP_CLASS, job.logits.argmax(axis=1)[:, None], job.classes)


def _pairs(job: Job) -> tuple[np.ndarray, np.ndarray]:
    """(image, class slot) of every (image, class) pair, image-major."""
    count, per_image = job.classes.shape
    return np.repeat(np.arange(count), per_image), np.tile(np.arange(per_image), count)


# --------------------------------------------------------------------------- CAMs

def gradient_cams(job: Job, variants: list[str]) -> dict[str, np.ndarray]:
    """Grad-CAM, Grad-CAM++ and LayerCAM from one forward and backward pass per (image, class)."""
    rebuilt = rebuild(job.model, "gradient")
    ops, cams = graph_ops.gradient_cams(rebuilt, job.scores, job.layer)
    images, slots = _pairs(job)
    total = len(images)
    small: dict[str, np.ndarray] = {}
    chosen = np.empty(total, np.int64)
    logits: dict[int, np.ndarray] = {}

    def one_chunk(begin, end):
        ids = images[begin:end]
        feed = job.item_feed(rebuilt, ids, job.images[ids])
        feed[ops.index] = job.classes[ids, slots[begin:end]].astype(np.int32)
        values, chosen[begin:end], scores = run(rebuilt, [{name: cams[name] for name in variants}, ops.chosen,
                                                          ops.logits], feed)
        for name, value in values.items():
            small.setdefault(name, np.zeros((total,) + value.shape[1:], np.float32))[begin:end] = value
        logits.update(zip(ids.tolist(), scores))
        job.progress(end - begin)

    in_chunks(total, job.chunk(rebuilt, "backward", total), f"CAMs of layer {job.layer.name!r}", one_chunk)
    job.resolve(chosen, np.stack([logits[n] for n in range(job.images.shape[0])]))
    height, width = job.shape[:2]
    return {name: upsample(value, height, width).reshape(job.classes.shape + (height, width))
            for name, value in small.items()}


def score_cam(job: Job) -> np.ndarray:
    """Score-CAM: each channel's upsampled, min-max scaled map masks the image; softmax of the scores weighs it.

    The score of the baseline (a zero image) is the same for every channel
    of a class, so it cancels in the softmax and is not computed.
    With ``max_channels`` only the channels of largest variance over the
    positions are used (Faster-Score-CAM).
    """
    rebuilt = rebuild(job.model, "gradient")
    ops = graph_ops.score_ops(rebuilt, job.scores)
    count = job.images.shape[0]
    maps, logits = [None] * count, [None] * count

    def maps_and_scores(begin, end):
        ids = np.arange(begin, end)
        maps[begin:end], logits[begin:end] = run(rebuilt, [rebuilt.tensor(job.layer.tensor), ops.logits],
                                                 job.item_feed(rebuilt, ids, job.images[ids]))

    in_chunks(count, job.chunk(rebuilt, "forward", count), f"layer {job.layer.name!r}", maps_and_scores)
    logits = np.asarray(logits, np.float32)
    job.resolve(np.where(job.classes == graph_ops.TOP_CLASS, logits.argmax(axis=1)[:, None], job.classes), logits)
    maps = np.asarray(maps, np.float32)  # (N, h, w, C)
    kept = []
    for n in range(count):
        channels = np.arange(maps.shape[-1])
        limit = job.settings.max_channels
        if limit is not None and limit < len(channels):
            variance = maps[n].reshape(-1, maps.shape[-1]).var(axis=0)
            channels = np.sort(np.argsort(-variance, kind="stable")[:limit])
        kept.append(channels)
    images = np.concatenate([np.full(len(channels), n) for n, channels in enumerate(kept)])
    channels = np.concatenate(kept)
    scores = np.zeros((len(images), job.classes.shape[1]), np.float64)
    height, width = job.shape[:2]

    def one_chunk(begin, end):
        ids = images[begin:end]
        masks = upsample(maps[ids, :, :, channels[begin:end]], height, width)  # (items, H, W)
        low = masks.min(axis=(1, 2), keepdims=True)
        span = masks.max(axis=(1, 2), keepdims=True) - low
        masks = np.where(span > 0, (masks - low) / np.where(span > 0, span, 1), 0).astype(np.float32)
        batch = job.images[ids] * masks[..., None]
        scored = run(rebuilt, ops.logits, job.item_feed(rebuilt, ids, batch))
        scores[begin:end] = np.take_along_axis(scored, job.classes[ids], axis=1)
        job.progress(end - begin)

    in_chunks(len(images), job.chunk(rebuilt, "forward", len(images)), "Score-CAM's masked images", one_chunk)
    result = np.zeros(job.classes.shape + maps.shape[1:3], np.float32)
    for n in range(count):
        mine = images == n
        weights = _softmax(scores[mine], axis=0)  # (channels, K)
        result[n] = np.maximum(np.einsum("hwc,ck->khw", maps[n][..., channels[mine]].astype(np.float64), weights), 0)
    return upsample(result, height, width)


def _softmax(values: np.ndarray, axis: int) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=axis, keepdims=True))
    return shifted / shifted.sum(axis=axis, keepdims=True)


def guided_gradcam(job: Job, cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM (upsampled) times the guided backprop of the class score: (map, values)."""
    guided = np.zeros(job.classes.shape + job.shape, np.float32)

    def sink(ids, class_slots, _, gradients):
        guided[ids, class_slots] = gradients

    _input_gradients(job, "guided", lambda ids, _: job.images[ids], "guided backprop", 1, sink)
    values = cam[..., None] * guided
    return np.abs(values).max(axis=-1), values


# --------------------------------------------------------------------------- input gradients

def _input_gradients(job: Job, rules: str, inputs, what: str, repeats: int, sink):
    """The gradient of each (image, class, repeat) item's class score w.r.t. its input, under ``rules``.

    Items run image-major, then class, then repeat. ``inputs(image_ids,
    repeat_ids)`` builds a chunk's batch; ``sink(image_ids, class_slots,
    repeat_ids, gradients)`` takes each chunk's gradients in that order.
    """
    rebuilt = rebuild(job.model, rules)
    ops, gradient = graph_ops.input_gradient(rebuilt, job.scores, job.feed.input_name)
    images, slots = _pairs(job)
    images, slots = np.repeat(images, repeats), np.repeat(slots, repeats)
    repeat_ids = np.tile(np.arange(repeats), len(images) // repeats)
    total = len(images)
    chosen = np.empty(total, np.int64)
    logits: dict[int, np.ndarray] = {}

    def one_chunk(begin, end):
        ids, class_slots, repeat = images[begin:end], slots[begin:end], repeat_ids[begin:end]
        feed = job.item_feed(rebuilt, ids, inputs(ids, repeat))
        feed[ops.index] = job.classes[ids, class_slots].astype(np.int32)
        gradients, chosen[begin:end], scores = run(rebuilt, [gradient, ops.chosen, ops.logits], feed)
        if job.logits is None:  # the items are the images themselves (no noise, no path)
            logits.update(zip(ids.tolist(), scores))
        sink(ids, class_slots, repeat, gradients)
        job.progress(end - begin)

    in_chunks(total, job.chunk(rebuilt, "backward", total), what, one_chunk)
    if job.logits is None:
        job.resolve(chosen[::repeats], np.stack([logits[n] for n in range(job.images.shape[0])]))


def integration_points(steps: int, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions along the path in [0, 1], weights summing to 1) of Integrated Gradients' quadrature."""
    if rule == "trapezoid":
        positions = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2
        return positions, weights
    offset = {"riemann_right": 1.0, "riemann_left": 0.0, "riemann_middle": 0.5}[rule]
    return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)


def noise_sample(seed: int, image: int, sample: int, shape) -> np.ndarray:
    """Standard normal noise of ``sample`` of ``image``: the same for every class, chunk size and call."""
    return np.random.default_rng((seed, image, sample)).standard_normal(shape, dtype=np.float32)


def gradient_attribution(job: Job, method: str) -> tuple[np.ndarray, np.ndarray]:
    """A gradient method, smoothed or not: (map ``(N, K, H, W)``, values ``(N, K, H, W, C)``).

    Per item value ``v``: saliency ``|g|``; deconvnet and guided ``g``
    under their rules; gradient x input ``g x``; Integrated Gradients
    ``(x - x') sum_t w_t g(x' + a_t (x - x'))``. SmoothGrad averages ``v``
    over noisy copies ``x + sigma z`` (``z`` from :func:`noise_sample`,
    ``sigma = noise (max x - min x)`` per image), SquareGrad averages
    ``v^2``, VarGrad takes its variance. The map sums the channels for
    gradient x input and Integrated Gradients (a pixel's contribution) and
    takes ``max |v|`` over them for the others.
    """
    settings = job.settings
    smooth = settings.smooth
    samples = settings.samples if smooth else 1
    sigma = settings.noise * (job.images.max(axis=(1, 2, 3)) - job.images.min(axis=(1, 2, 3)))
    integrate = method == "integrated_gradients"
    positions, weights = integration_points(settings.steps, settings.rule) if integrate else ([1.0], [1.0])
    steps = len(positions)
    baseline = settings.baseline
    last = {}

    def noisy(image: int, sample: int) -> np.ndarray:
        x = job.images[image]
        if not smooth or sigma[image] == 0:
            return x
        if last.get("key") != (image, sample):  # one sample's points on the path share its noise
            last.update(key=(image, sample), value=x + sigma[image] * noise_sample(settings.seed, image, sample,
                                                                                  x.shape))
        return last["value"]

    def inputs(ids, repeat):
        batch = np.empty((len(ids),) + job.shape, np.float32)
        for item, (image, number) in enumerate(zip(ids.tolist(), repeat.tolist())):
            sample, step = divmod(number, steps)
            x = noisy(image, sample)
            batch[item] = baseline[image] + positions[step] * (x - baseline[image]) if integrate else x
        return batch

    shape = job.classes.shape + job.shape
    total = np.zeros(shape, np.float64)
    squares = np.zeros(shape, np.float64) if smooth in ("vargrad", "squaregrad") else None
    partial: dict[tuple, np.ndarray] = {}

    def value(image, sample, gradient):
        if method == "saliency":
            return np.abs(gradient)
        if method == "gradient_x_input":
            return gradient * noisy(image, sample)
        if integrate:
            return gradient * (noisy(image, sample) - baseline[image])
        return gradient

    def sink(ids, class_slots, repeat, gradients):
        for image, slot, number, gradient in zip(ids.tolist(), class_slots.tolist(), repeat.tolist(), gradients):
            sample, step = divmod(number, steps)
            key = (image, slot, sample)
            accumulated = partial.pop(key, 0.0) + weights[step] * gradient.astype(np.float64)
            if step < steps - 1:
                partial[key] = accumulated
                continue
            item = value(image, sample, accumulated)
            total[image, slot] += item
            if squares is not None:
                squares[image, slot] += item * item

    _input_gradients(job, RULES[method], inputs, f"{method} gradients", samples * steps, sink)
    mean = total / samples
    if smooth == "squaregrad":
        values = squares / samples
    elif smooth == "vargrad":
        values = np.maximum(squares / samples - mean * mean, 0)
    else:
        values = mean
    values = values.astype(np.float32)
    reduced = values.sum(axis=-1) if method in SUMMED else np.abs(values).max(axis=-1)
    return reduced, values


def completeness_gap(job: Job, values: np.ndarray) -> np.ndarray:
    """``sum(attributions) - (f(x) - f(x'))`` per image and class: Integrated Gradients' integration error."""
    _clean_forward(job)
    start = forward(job, job.settings.baseline, "the baselines' class scores")
    gained = np.take_along_axis(job.logits - start, job.classes, axis=1)
    return (values.sum(axis=(2, 3, 4), dtype=np.float64) - gained).astype(np.float32)


# --------------------------------------------------------------------------- occlusion

def patch_positions(size: int, patch: int, stride: int) -> np.ndarray:
    """Start of each patch along one axis: every ``stride``, and one flush with the end so all is covered."""
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return np.asarray(starts)


def occlusion(job: Job) -> np.ndarray:
    """Each pixel: the mean drop of the class score over the patches (replaced by the baseline) covering it."""
    settings = job.settings
    rebuilt = rebuild(job.model, "gradient")
    ops = graph_ops.score_ops(rebuilt, job.scores)
    _clean_forward(job)
    height, width = job.shape[:2]
    (patch_h, patch_w), (stride_h, stride_w) = settings.patch, settings.stride
    corners = [(y, x) for y in patch_positions(height, patch_h, stride_h)
               for x in patch_positions(width, patch_w, stride_w)]
    count = job.images.shape[0]
    images = np.repeat(np.arange(count), len(corners))
    where = np.tile(np.arange(len(corners)), count)
    reference = np.take_along_axis(job.logits, job.classes, axis=1)  # (N, K)
    drops = np.zeros(job.classes.shape + (height, width), np.float64)
    covered = np.zeros((height, width), np.float64)
    for y, x in corners:
        covered[y:y + patch_h, x:x + patch_w] += 1

    def one_chunk(begin, end):
        ids = images[begin:end]
        batch = job.images[ids].copy()
        for item, (image, corner) in enumerate(zip(ids, where[begin:end])):
            y, x = corners[corner]
            batch[item, y:y + patch_h, x:x + patch_w] = settings.baseline[image, y:y + patch_h, x:x + patch_w]
        logits = run(rebuilt, ops.logits, job.item_feed(rebuilt, ids, batch))
        drop = reference[ids] - np.take_along_axis(logits, job.classes[ids], axis=1)
        for item, (image, corner) in enumerate(zip(ids, where[begin:end])):
            y, x = corners[corner]
            drops[image, :, y:y + patch_h, x:x + patch_w] += drop[item][:, None, None]
        job.progress(end - begin)

    in_chunks(len(images), job.chunk(rebuilt, "forward", len(images)), "occluded images", one_chunk)
    return (drops / covered).astype(np.float32)
