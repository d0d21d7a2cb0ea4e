"""``sanity_check`` and ``deletion_insertion``: which pictures depend on what the model learned.

The same path as the other entry functions: load -> rebuild -> resolve the
feed, the class scores and the classes -> compute every method's maps on
the model and on randomized copies of it (:mod:`tf_cnnvis.sanity.maps`,
:mod:`tf_cnnvis.sanity.weights`) -> measure (:mod:`~tf_cnnvis.sanity.measures`,
:mod:`~tf_cnnvis.sanity.faithfulness`) -> draw (:mod:`~tf_cnnvis.sanity.figures`)
-> write PNGs, TensorBoard images and scalars.

Every option and name is checked, and the original maps computed, before
the first file is written.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os

import numpy as np

from tf_cnnvis import compute
from tf_cnnvis.attribution import graph_ops
from tf_cnnvis.attribution.batches import in_chunks
from tf_cnnvis.attribution.visualize import class_names, class_targets
from tf_cnnvis.errors import OptionError
from tf_cnnvis.feeds import Feed
from tf_cnnvis.layers import LayerInfo, layer_table, select_layers
from tf_cnnvis.options import (DEFAULT_MEMORY_BUDGET_MB, METHODS, RANDOMIZATIONS, check_channels, check_integer,
                               check_memory_budget, check_sanity_methods)
from tf_cnnvis.progress import progress_bar
from tf_cnnvis.rebuild import rebuild
from tf_cnnvis.render import VisualizationResult, Writer, display_image, image_parts
from tf_cnnvis.sanity import figures
from tf_cnnvis.sanity.faithfulness import (Curves, baseline_images, check_baseline, check_score, check_steps,
                                           ranking, score_curves)
from tf_cnnvis.sanity.maps import MapMaker, check_attribution_options, method_name, per_image_inputs
from tf_cnnvis.sanity.measures import MEASURES, Reference, display_normalize, reduce_maps
from tf_cnnvis.sanity.weights import Randomizer, select_weight_layers
from tf_cnnvis.write import SummaryWriter, safe_names

logger = logging.getLogger("tf_cnnvis")

# A method passes when its maps change early in the cascade: the mean over
# the cascade's steps of its Spearman correlation (absolute maps) with the
# original, and of its SSIM, are both below this. A map that stays alike
# until the first layers are randomized (guided backprop, Adebayo et al.'s
# finding) fails, though it changes at the very end.
PASS_THRESHOLD = 0.5
FOLDER = "sanity"
# The writer's "layer": every picture goes to the folder FOLDER.
_FOLDER_LAYER = LayerInfo(name=FOLDER, kind="sanity", op_type="", shape=(), channels=None, tensor="")
MEASURE_TITLES = {"spearman_abs": "Spearman rank correlation, absolute maps",
                  "spearman_signed": "Spearman rank correlation, signed maps",
                  "ssim": "SSIM of the displayed maps"}


@dataclasses.dataclass
class SanityResult(VisualizationResult):
    """What a sanity check measured, drew and wrote. Always truthy.

    Attributes (besides those of :class:`~tf_cnnvis.VisualizationResult`):
        methods: the methods' names, in the order given.
        randomized: the layers of the cascade, from the output toward the
            input: step ``s`` has the first ``s`` of them randomized.
        classes: ``(N, K)`` the class indices of each image.
        cascade: ``{method: {measure: (steps + 1,)}}`` the similarity of
            each step's maps with the original ones, mean over images and
            classes; step 0 is the original (1 by definition).
        independent: ``{method: {measure: (layers,)}}`` with one layer alone
            randomized, the layers in the cascade's order.
        faithfulness: ``{method: {"fractions", "deletion", "insertion",
            "deletion_auc", "insertion_auc"}}``: mean curves over images and
            classes and their areas.
        figures: ``{name: RGB uint8 array}``, the pictures (written, or
            drawn when first asked for).

    ``arrays`` holds the details: ``"maps"`` and ``"abs_maps"`` ``{method:
    (steps + 1, N, K, H, W)}`` (signed and absolute), ``"independent_maps"``
    ``{method: (layers, N, K, H, W)}``, ``"cascade"`` ``{method: {measure:
    (steps + 1, N, K)}}`` and ``"independent"`` (``(layers, N, K)``) per
    image and class, ``"deletion"``
    and ``"insertion"`` ``{method: (N, K, points)}``, ``"fractions"``,
    ``"classes"``, ``"class_names"`` and ``"scores"`` (the class scores of
    the images).
    """

    methods: list = dataclasses.field(default_factory=list)
    randomized: list = dataclasses.field(default_factory=list)
    classes: np.ndarray | None = None
    cascade: dict = dataclasses.field(default_factory=dict)
    independent: dict = dataclasses.field(default_factory=dict)
    faithfulness: dict = dataclasses.field(default_factory=dict)
    _figures: dict | None = dataclasses.field(default=None, repr=False)
    _painter: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def figures(self) -> dict:
        """``{name: RGB uint8 array}``: the pictures (drawn on first use when none were written)."""
        if self._figures is None:
            self._figures = self._painter() if self._painter is not None else {}
        return self._figures

    def passed(self, threshold: float = PASS_THRESHOLD) -> dict[str, bool]:
        """Per method: did its maps change with the weights, early in the cascade?

        True when the mean over the cascade's steps (1 to S, the original
        left out) of the Spearman correlation of the absolute maps and of
        the SSIM are both below ``threshold``.
        """
        return {name: bool(values["spearman_abs"][1:].mean() < threshold and values["ssim"][1:].mean() < threshold)
                for name, values in self.cascade.items()}

    def summary(self) -> list[dict]:
        """One row per method: the similarities over the cascade and at its end, the verdict and the areas.

        Keys: ``<measure>_mean`` (mean over the cascade's steps),
        ``<measure>_last`` (every chosen layer randomized), ``passed``,
        ``deletion_auc``, ``insertion_auc``.
        """
        verdicts = self.passed() if self.cascade else {}
        rows = []
        for name in self.methods:
            row = {"method": name}
            if name in self.cascade:
                for measure in MEASURES:
                    values = self.cascade[name][measure]
                    row[f"{measure}_mean"] = float(values[1:].mean()) if len(values) > 1 else float("nan")
                row.update({f"{measure}_last": float(self.cascade[name][measure][-1]) for measure in MEASURES})
                row["passed"] = verdicts[name]
            if name in self.faithfulness:
                row["deletion_auc"] = self.faithfulness[name]["deletion_auc"]
                row["insertion_auc"] = self.faithfulness[name]["insertion_auc"]
            rows.append(row)
        return rows

    def table(self) -> str:
        """:meth:`summary` as a Markdown table."""
        rows = self.summary()
        titles = {"spearman_abs_mean": "Spearman abs, mean", "spearman_signed_mean": "Spearman signed, mean",
                  "ssim_mean": "SSIM, mean", "spearman_abs_last": "Spearman abs, all", "ssim_last": "SSIM, all",
                  "passed": "changes", "deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC"}
        columns = ["method"] + [key for key in titles if any(key in row for row in rows)]
        lines = ["| " + " | ".join(titles.get(column, column) for column in columns) + " |",
                 "|" + "---|" * len(columns)]
        for row in rows:
            cells = []
            for column in columns:
                value = row.get(column, "")
                cells.append(("yes" if value else "no") if isinstance(value, bool)
                             else f"{value:.2f}" if isinstance(value, float) else str(value))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


@dataclasses.dataclass
class _Setup:
    """What both entry functions resolve before any work: the model, feed, classes and methods."""

    model: object
    feed: Feed
    scores: LayerInfo
    classes: np.ndarray
    class_names: list
    logits: np.ndarray
    maker: MapMaker

    def folders(self) -> list[str]:
        """Every layer name of the model: output folders are named over them all, as by the other entry functions."""
        rebuilt = rebuild(self.model, "gradient")
        return rebuilt.cached(("sanity layer names",), lambda: [info.name for info in layer_table(rebuilt.graph,
                                                                                                     self.model)])


def _setup(graph_or_path, value_feed_dict, methods, classes, input_tensor, sess_graph_path, labels, output,
           target_layer, target_channel, attribution_options, memory_budget_mb, trust_model_code) -> _Setup:
    """Check everything that needs the model (``methods`` already checked) and resolve it."""
    attribution_options = check_attribution_options(attribution_options)
    check_memory_budget(memory_budget_mb)
    targets = class_targets(graph_or_path, value_feed_dict, classes, input_tensor, sess_graph_path, labels, output,
                            trust_model_code, "a sanity check")
    model, rebuilt, feed, scores, chosen = targets.model, targets.rebuilt, targets.feed, targets.scores, targets.classes
    images = feed.images
    logits = _class_scores(rebuilt, feed, scores, images, memory_budget_mb)
    chosen = np.where(chosen == graph_ops.TOP_CLASS, logits.argmax(axis=1)[:, None], chosen)
    target = None
    if target_layer is not None:
        if not any(isinstance(method, str) and method in METHODS for method in methods):
            raise OptionError(f"target_layer={target_layer!r} is used by the reconstructions ({', '.join(METHODS)}), "
                              "none of which is among the methods")
        if not isinstance(target_layer, str) or not target_layer:
            raise OptionError(f"target_layer={target_layer!r} must name one layer (see tf_cnnvis.list_layers)")
        target = select_layers(rebuilt.graph, model, [target_layer])[0]
        if target.channels is None:
            raise OptionError(f"layer {target.name!r} has output shape {target.shape}: reconstructions need a "
                              "layer of shape (N, H, W, C) or (N, C)")
        if target_channel is None or isinstance(target_channel, (list, tuple)):
            raise OptionError(f"target_channel={target_channel!r}: with target_layer give one channel index "
                              f"(0..{target.channels - 1} for layer {target.name!r})")
        target_channel = check_channels(target_channel, target.channels, target.name)[0]
    elif target_channel is not None:
        raise OptionError(f"target_channel={target_channel!r} needs target_layer (the layer whose channel the "
                          "reconstructions show); without it they show each image's class score")
    names = class_names(chosen, targets.labels)
    maker = MapMaker(methods=methods, feed=feed, classes=chosen, scores=scores, output=output, target_layer=target,
                     target_channel=target_channel, attribution_options=attribution_options,
                     memory_budget_mb=memory_budget_mb)
    return _Setup(model, feed, scores, chosen, names, logits, maker)


def _class_scores(rebuilt, feed: Feed, scores: LayerInfo, images: np.ndarray, memory_budget_mb: float) -> np.ndarray:
    """The class scores ``(N, classes)`` of the images."""
    tensor = rebuilt.tensor(scores.tensor)
    count = images.shape[0]
    logits = [None] * count
    follow = per_image_inputs(rebuilt, feed)

    def one_chunk(begin, end):
        fed = {feed.input_name: images[begin:end]}
        fed.update({name: value[begin:end] if name in follow else value for name, value in feed.others.items()})
        logits[begin:end] = compute.run(rebuilt, tensor, fed)

    one = Feed(feed.input_name, images[:1], {name: value[:1] if name in follow else value
                                             for name, value in feed.others.items()})
    in_chunks(count, compute.chunk_size(rebuilt, one, scores, images.shape[1:], memory_budget_mb, count),
              "the class scores", one_chunk)
    return np.asarray(logits, np.float32)


def _writer(path_outdir, path_logdir, step, result, setup: _Setup) -> Writer:
    """The call's writer (its folders made here: bad ones fail before the pictures are drawn)."""
    names = setup.folders() if path_outdir is not None else []
    return Writer(path_outdir, path_logdir, step, result, [_FOLDER_LAYER], names)


def _check_flag(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise OptionError(f"{name}={value!r} must be True or False")
    return value


def sanity_check(graph_or_path=None, value_feed_dict=None, methods=None, classes=None, layers=None,
                 input_tensor=None, path_logdir="./Log", path_outdir="./Output", *, sess_graph_path=None,
                 labels=None, output=None, steps=None, independent=True, randomization="normal", seed=0,
                 faithfulness=True, deletion_steps=100, baseline="blur", score="probability", target_layer=None,
                 target_channel=None, attribution_options=None, deprocess=None, step=0,
                 memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB, progress=False, trust_model_code=False) -> SanityResult:
    """Model randomization tests (Adebayo et al. 2018): does each method's map change with the weights?

    Cascading randomization replaces the weights of one layer after the
    other, from the output toward the input; independent randomization
    replaces one layer's weights alone. After each step every method's map
    is compared with the original one (Spearman rank correlation of the
    absolute and of the signed maps, SSIM of the displayed maps; mean over
    images and classes). A map that stays alike while the network becomes
    random shows the image, not what the model learned. With
    ``faithfulness`` the original maps also get deletion and insertion
    curves (:func:`deletion_insertion`).

    The randomized copies are made on the frozen graph; their weights are
    assigned into the graphs already imported for the original (no
    re-import): a cascade of S steps costs about S + 1 calls of each
    method. The user's model, graph and session are never changed.

    Args:
        graph_or_path, value_feed_dict, input_tensor, path_logdir,
            path_outdir, sess_graph_path, step, deprocess, memory_budget_mb,
            trust_model_code: as in :func:`tf_cnnvis.attribution_visualization`.
        methods: names from ``'deconvnet'``, ``'guided'``, ``'gradient'``
            (reconstructions of the class score, or of ``target_channel`` of
            ``target_layer``), ``'gradcam'``, ``'gradcam++'``, ``'layercam'``,
            ``'scorecam'``, ``'guided_gradcam'``, ``'saliency'``,
            ``'gradient_x_input'``, ``'integrated_gradients'``,
            ``'occlusion'``, and callables ``method(model, images, classes)``
            returning ``(N, K, H, W)`` or ``(N, K, H, W, C)`` values (``model``
            is a FrozenModel any tf_cnnvis function accepts); default all names.
        classes: as in attribution_visualization; default each image's top
            class on the original model (kept for the randomized ones).
        layers: names of layers with weights to randomize (default all of
            them; see :func:`tf_cnnvis.sanity.weight_layers`). The cascade
            goes through them from the output toward the input.
        labels, output: as in attribution_visualization.
        steps: run only the first ``steps`` steps of the cascade (default all).
        independent: also randomize each layer alone (default True).
        randomization: ``'normal'`` (draws with each weight tensor's mean and
            standard deviation) or ``'shuffle'`` (its values permuted).
        seed: the random draws' seed.
        faithfulness, deletion_steps, baseline, score: deletion and insertion
            curves of the original maps (see :func:`deletion_insertion`).
        target_layer, target_channel: the reconstructions show this channel
            of this layer instead of the class score.
        attribution_options: keyword options passed to
            attribution_visualization (``layer``, ``smooth``, ``samples``,
            ``steps``, ``patch``...).
        progress: ``True`` shows a progress bar; a callable receives the
            number of maps finished.

    Returns:
        A :class:`SanityResult`; ``result.table()`` is the summary as
        Markdown. Files: ``sanity/[image_NNN/]cascade.png`` and
        ``independent.png`` (rows: methods; columns: the input, the original
        map, each step), ``sanity/similarity_cascade.png``,
        ``similarity_independent.png`` and ``deletion_insertion.png``;
        TensorBoard gets the same pictures under ``sanity/...`` and, in one
        run (sub-folder) per method, the scalars ``sanity/cascade/<measure>``
        (step: the number of layers randomized), ``sanity/independent/<measure>``
        (step: the layer's place in the cascade), ``faithfulness/deletion``
        and ``faithfulness/insertion`` (step: percent of pixels) and their
        areas ``faithfulness/*_auc`` (at ``step``).
    """
    methods = check_sanity_methods(methods)
    if not isinstance(randomization, str) or randomization not in RANDOMIZATIONS:
        raise OptionError(f"randomization={randomization!r} is not one of {', '.join(map(repr, RANDOMIZATIONS))}")
    check_integer("seed", seed)
    check_integer("step", step)
    if steps is not None:
        check_integer("steps", steps, 1, "cascade steps: layers randomized from the output toward the input")
    _check_flag("independent", independent)
    _check_flag("faithfulness", faithfulness)
    if faithfulness:
        check_steps(deletion_steps)
        baseline = check_baseline(baseline)
        check_score(score)
    setup = _setup(graph_or_path, value_feed_dict, methods, classes, input_tensor, sess_graph_path, labels, output,
                   target_layer, target_channel, attribution_options, memory_budget_mb, trust_model_code)
    chosen = select_weight_layers(setup.model, layers)
    if steps is not None and steps > len(chosen):
        raise OptionError(f"steps={steps} is more than the {len(chosen)} layer(s) with weights to randomize "
                          f"({', '.join(layer.name for layer in chosen)}); give at most {len(chosen)}")
    cascade_layers = chosen[:steps] if steps is not None else chosen
    if faithfulness:
        baselines = baseline_images(baseline, setup.feed.images)
    maker = setup.maker
    names = maker.names
    total = len(names) * (1 + len(cascade_layers) + (len(chosen) if independent else 0))
    bar = progress_bar(progress, total, "sanity check")
    try:
        original = maker(setup.model, bar.update)  # the methods' own errors come before any file
        result = SanityResult("sanity", methods=names, randomized=[layer.name for layer in cascade_layers],
                              classes=setup.classes.copy())
        writer = _writer(path_outdir, path_logdir, step, result, setup)
        randomizer = Randomizer(setup.model, seed, randomization)
        spatial = 2  # (N, K) before (H, W)
        reduced = {name: reduce_maps(original[name], spatial) for name in names}
        references = {name: Reference(*reduced[name]) for name in names}
        maps = {name: [reduced[name]] for name in names}
        cascade_scores = {name: {measure: [np.ones(setup.classes.shape)] for measure in MEASURES} for name in names}
        previous, randomized = setup.model, []

        def randomize(layers):  # the copy with ``layers`` randomized, its weights assigned where they changed
            nonlocal previous, randomized
            model = randomizer.model_with(layers)
            maker.switch(previous, model, randomizer.changes(randomized, layers))
            previous, randomized = model, list(layers)
            return model

        for depth in range(1, len(cascade_layers) + 1):
            values = maker(randomize(cascade_layers[:depth]), bar.update)
            for name in names:
                pair = reduce_maps(values[name], spatial)
                maps[name].append(pair)
                for measure, value in references[name].compare(*pair).items():
                    cascade_scores[name][measure].append(value)
            logger.info("sanity check: %d of %d layer(s) randomized (%s)", depth, len(cascade_layers),
                        cascade_layers[depth - 1].name)
        independent_scores, independent_maps = {}, {}
        if independent:
            independent_scores = {name: {measure: [] for measure in MEASURES} for name in names}
            independent_maps = {name: [] for name in names}
            for layer in chosen:
                values = maker(randomize([layer]), bar.update)
                for name in names:
                    pair = reduce_maps(values[name], spatial)
                    independent_maps[name].append(pair[0].astype(np.float32))
                    for measure, value in references[name].compare(*pair).items():
                        independent_scores[name][measure].append(value)
    finally:
        bar.close()
    arrays = result.arrays
    arrays["maps"] = {name: np.stack([pair[0] for pair in maps[name]]).astype(np.float32) for name in names}
    arrays["abs_maps"] = {name: np.stack([pair[1] for pair in maps[name]]).astype(np.float32) for name in names}
    arrays["cascade"] = {name: {measure: np.stack(values) for measure, values in table.items()}
                         for name, table in cascade_scores.items()}
    result.cascade = {name: {measure: values.mean(axis=(1, 2)) for measure, values in table.items()}
                      for name, table in arrays["cascade"].items()}
    if independent:
        arrays["independent_maps"] = {name: np.stack(values) for name, values in independent_maps.items()}
        arrays["independent"] = {name: {measure: np.stack(values) for measure, values in table.items()}
                                 for name, table in independent_scores.items()}
        result.independent = {name: {measure: values.mean(axis=(1, 2)) for measure, values in table.items()}
                              for name, table in arrays["independent"].items()}
    arrays.update(classes=setup.classes.copy(), class_names=setup.class_names, scores=setup.logits)
    if faithfulness:
        curves = _faithfulness(setup, {name: reduced[name] for name in names}, [], baselines, deletion_steps,
                               score, memory_budget_mb)
        _keep_curves(result, curves)
    result._painter = functools.partial(_draw, result, setup, chosen if independent else [], deprocess)
    _write(result, writer, setup, path_logdir, step)
    for row in result.summary():
        logger.info("sanity check: %s", row)
    return result


def deletion_insertion(graph_or_path=None, value_feed_dict=None, methods=None, classes=None, input_tensor=None,
                       path_logdir="./Log", path_outdir="./Output", *, maps=None, sess_graph_path=None, labels=None,
                       output=None, steps=100, baseline="blur", score="probability", target_layer=None,
                       target_channel=None, attribution_options=None, deprocess=None, step=0,
                       memory_budget_mb=DEFAULT_MEMORY_BUDGET_MB, progress=False,
                       trust_model_code=False) -> SanityResult:
    """Deletion and insertion curves (Petsiuk et al. 2018) of each method's maps.

    Pixels are removed from the image (deletion) or revealed on the
    baseline (insertion) in the order of the map, about ``1/steps`` of them
    per step, and the class score is measured after each step; every
    step of an image is one batch through the network (chunked by the
    memory budget). See :mod:`tf_cnnvis.sanity.faithfulness` for the order.

    Args:
        methods, classes, labels, output, target_layer, target_channel,
            attribution_options and the rest: as in :func:`sanity_check`.
            ``methods=None`` with ``maps`` given evaluates only those.
        maps: ``{name: (N, K, H, W)}`` (or ``(N, H, W)`` for one class per
            image) maps computed elsewhere, ranked by their values.
        steps: the curve's steps (default 100: 1% of the pixels each).
        baseline: ``'blur'`` (default: each image blurred by a Gaussian of
            standard deviation ``max(2, min(H, W) / 20)`` pixels), ``'zero'``,
            ``'mean'`` (each image's mean colour), a number or an array
            broadcastable to the images.
        score: ``'probability'`` (default: the softmax of the class scores)
            or ``'logit'``.

    Returns:
        A :class:`SanityResult` of kind ``"faithfulness"`` whose
        ``faithfulness`` holds each method's mean curves and areas (the
        per-image curves in ``arrays["deletion"]`` and ``arrays["insertion"]``);
        written: ``sanity/deletion_insertion.png`` and TensorBoard scalars
        per method.
    """
    check_steps(steps, "steps")
    baseline = check_baseline(baseline)
    check_score(score)
    check_integer("step", step)
    if maps is not None and (not isinstance(maps, dict) or not maps):
        raise OptionError(f"maps={maps!r:.80} must be a non-empty dict {{name: maps (N, K, H, W)}}")
    methods = [] if methods is None and maps is not None else check_sanity_methods(methods)
    setup = _setup(graph_or_path, value_feed_dict, methods, classes, input_tensor, sess_graph_path, labels,
                   output, target_layer, target_channel, attribution_options, memory_budget_mb, trust_model_code)
    given = _given_maps(maps, setup)
    baselines = baseline_images(baseline, setup.feed.images)
    names = setup.maker.names + list(given)
    if len(set(names)) != len(names):
        raise OptionError(f"maps names {sorted(set(given) & set(setup.maker.names))} are also methods; rename them")
    bar = progress_bar(progress, len(setup.maker.names), "maps")
    try:
        original = setup.maker(setup.model, bar.update) if setup.maker.methods else {}
    finally:
        bar.close()
    result = SanityResult("faithfulness", methods=names, classes=setup.classes.copy())
    writer = _writer(path_outdir, path_logdir, step, result, setup)
    reduced = {name: reduce_maps(values, 2) for name, values in original.items()}
    reduced.update({name: (values, np.abs(values)) for name, values in given.items()})
    curves = _faithfulness(setup, reduced, list(given), baselines, steps, score, memory_budget_mb, progress)
    _keep_curves(result, curves)
    result.arrays.update(classes=setup.classes.copy(), class_names=setup.class_names, scores=setup.logits)
    result._painter = functools.partial(_draw, result, setup, [], deprocess)
    _write(result, writer, setup, path_logdir, step)
    return result


def _given_maps(maps, setup: _Setup) -> dict[str, np.ndarray]:
    """The caller's maps as ``(N, K, H, W)`` float64, refused when they do not fit the images and classes."""
    if maps is None:
        return {}
    expected = setup.classes.shape + setup.feed.images.shape[1:3]
    result = {}
    for name, values in maps.items():
        if not isinstance(name, str) or not name:
            raise OptionError(f"maps key {name!r} must be a non-empty name")
        array = np.asarray(values, np.float64)
        if array.ndim == 3 and setup.classes.shape[1] == 1:
            array = array[:, None]
        if array.shape != expected:
            raise OptionError(f"maps[{name!r}] has shape {np.shape(values)}; give (N, K, H, W) = {expected} "
                              "for the images and classes")
        if not np.all(np.isfinite(array)):
            raise OptionError(f"maps[{name!r}] holds NaN or infinite values")
        result[name] = array
    return result


def _faithfulness(setup: _Setup, reduced: dict, given: list, baselines, steps: int, score: str,
                  memory_budget_mb: float, progress=False) -> dict[str, Curves]:
    ranks = {name: ranking(signed, absolute, name, given=name in given or _is_custom(setup, name))
             for name, (signed, absolute) in reduced.items()}
    rebuilt = rebuild(setup.model, "gradient")
    count = len(ranks) * setup.classes.size * 2 * (min(steps, setup.feed.images.shape[1] * setup.feed.images.shape[2])
                                                  + 1)
    bar = progress_bar(progress, count, "deletion and insertion")
    try:
        return score_curves(rebuilt, setup.feed, setup.scores, setup.classes, ranks, baselines, steps, score,
                            memory_budget_mb, bar.update)
    finally:
        bar.close()


def _is_custom(setup: _Setup, name: str) -> bool:
    return any(callable(method) and method_name(method) == name for method in setup.maker.methods)


def _keep_curves(result: SanityResult, curves: dict[str, Curves]):
    result.faithfulness = {name: curve.mean() for name, curve in curves.items()}
    result.arrays["deletion"] = {name: curve.deletion for name, curve in curves.items()}
    result.arrays["insertion"] = {name: curve.insertion for name, curve in curves.items()}
    if curves:
        result.arrays["fractions"] = next(iter(curves.values())).fractions


# --------------------------------------------------------------------------- pictures

def _draw(result: SanityResult, setup: _Setup, independent_layers, deprocess) -> dict[str, np.ndarray]:
    """The figures: cascade and independent pictures, similarity and deletion/insertion plots."""
    drawn = {}
    images = setup.feed.images
    count, per_image = setup.classes.shape
    shown = {name: display_normalize(values) for name, values in result.arrays.get("abs_maps", {}).items()}
    if shown:
        columns = ["input", "original"] + [f"+ {name}" for name in result.randomized]
        for n in range(count):
            picture = display_image(images[n], deprocess)
            for k in range(per_image):
                rows = [(name, [picture] + [figures.map_picture(shown[name][s, n, k]) for s in range(len(columns) - 1)])
                        for name in result.methods]
                drawn[_figure_name("cascade", n, k, setup)] = figures.labelled_grid(rows, columns)
    if independent_layers and "independent_maps" in result.arrays:
        columns = ["input", "original"] + [layer.name for layer in independent_layers]
        abs_independent = {name: display_normalize(np.abs(values)) for name, values in
                           result.arrays["independent_maps"].items()}
        for n in range(count):
            picture = display_image(images[n], deprocess)
            for k in range(per_image):
                rows = [(name, [picture, figures.map_picture(shown[name][0, n, k])]
                         + [figures.map_picture(values[n, k]) for values in abs_independent[name]])
                        for name in result.methods]
                drawn[_figure_name("independent", n, k, setup)] = figures.labelled_grid(rows, columns)
    if result.cascade:
        ticks = (np.arange(len(result.randomized) + 1), ["original"] + result.randomized)
        drawn["similarity_cascade"] = _similarity_plots(result.cascade, ticks,
                                                                 "layers randomized, from the output (cascade)")
    if result.independent:
        names = [layer.name for layer in independent_layers]
        ticks = (np.arange(1, len(names) + 1), names)
        drawn["similarity_independent"] = _similarity_plots(
            {name: {m: values for m, values in table.items()} for name, table in result.independent.items()}, ticks,
            "the one layer randomized (independent)", start=1)
    if result.faithfulness:
        panels = []
        for kind in ("deletion", "insertion"):
            series = [(f"{name} ({values[kind + '_auc']:.3f})", values["fractions"] * 100, values[kind])
                      for name, values in result.faithfulness.items()]
            title = f"{kind.capitalize()} (area under the curve in brackets)"
            panels.append(figures.line_plot(series, title, "% of pixels " + ("removed" if kind == "deletion"
                                                                             else "revealed"),
                                            "class score", y_range=None, size=(620, 380)))
        drawn["deletion_insertion"] = figures.side_by_side(panels, gap=12)
    return drawn


def _figure_name(kind: str, n: int, k: int, setup: _Setup) -> str:
    """``cascade``, or ``image_NNN/cascade`` with several images (``_class_<name>`` added with several classes)."""
    name = kind + (f"_class_{setup.class_names[n][k]}" if setup.classes.shape[1] > 1 else "")
    return "/".join(list(image_parts(n, setup.classes.shape[0])) + [name])


def _similarity_plots(table: dict, ticks, x_label: str, start: int = 0) -> np.ndarray:
    panels = []
    for index, measure in enumerate(MEASURES):
        series = [(name, np.arange(start, start + len(values[measure])), values[measure])
                  for name, values in table.items()]
        panels.append(figures.line_plot(series, MEASURE_TITLES[measure], x_label, measure.replace("_", " "),
                                        x_ticks=ticks, y_range=(-1.0 if measure != "ssim" else -0.2, 1.05),
                                        size=(520, 400), legend=index == len(MEASURES) - 1))
    return figures.side_by_side(panels, gap=12)


# --------------------------------------------------------------------------- files and TensorBoard

def _write(result: SanityResult, writer: Writer, setup: _Setup, path_logdir, step: int):
    if not writer.enabled:
        return
    for name, picture in result.figures.items():
        *parts, stem = name.split("/")
        # Names of classes in file names come from labels: made safe like layer folders.
        stem = safe_names([stem])[stem]
        writer.image(_FOLDER_LAYER, tuple(parts), f"{stem}.png", picture, f"{FOLDER}/{name}")
    writer.inputs(setup.feed.images)
    writer.flush()
    if path_logdir is None:
        return
    # One run per method; "gradcam++" becomes the folder "gradcam_plus_plus".
    folders = safe_names([name.replace("+", "_plus") for name in result.methods])
    runs = {name: folders[name.replace("+", "_plus")] for name in result.methods}
    for name in result.methods:
        summary = SummaryWriter.for_logdir(os.path.join(os.path.abspath(path_logdir), runs[name]))
        if name in result.cascade:
            for depth in range(len(result.randomized) + 1):
                summary.add_scalars({f"sanity/cascade/{measure}": result.cascade[name][measure][depth]
                                     for measure in MEASURES}, depth)
        if name in result.independent:
            for place in range(len(result.independent[name][MEASURES[0]])):
                summary.add_scalars({f"sanity/independent/{measure}": result.independent[name][measure][place]
                                     for measure in MEASURES}, place + 1)
        if name in result.faithfulness:
            values = result.faithfulness[name]
            for point, fraction in enumerate(values["fractions"]):
                summary.add_scalars({"faithfulness/deletion": values["deletion"][point],
                                     "faithfulness/insertion": values["insertion"][point]},
                                    int(round(100 * fraction)))
            summary.add_scalars({"faithfulness/deletion_auc": values["deletion_auc"],
                                 "faithfulness/insertion_auc": values["insertion_auc"]}, step)
