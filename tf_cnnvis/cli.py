"""``tf-cnnvis``: the library from a terminal, without writing Python.

Subcommands: ``layers``, ``activations``, ``deconv``, ``deepdream``,
``attribution``, ``sanity``, ``report`` and ``demo``. MODEL is a built-in model name (``vgg16``,
``emotion``), any path :func:`tf_cnnvis.load_model` reads, or an http(s) URL
of a model file, fetched once with the ``wget`` package into a cache folder
(``--cache-dir``, else ``$TF_CNNVIS_CACHE``, else the user's cache folder).

Bad input ends the command with one line on standard error and exit status
1 (2 for a malformed command line); a traceback means a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import sys
import tempfile
import urllib.parse

from tf_cnnvis import arguments
from tf_cnnvis.options import (DEFAULT_MEMORY_BUDGET_MB, DELETION_BASELINES, DELETION_SCORES, INTEGRATION_RULES,
                               RANDOMIZATIONS, SCALINGS, SMOOTHINGS, TARGETS, UNIT_VIEWS, check_attribution_methods,
                               check_sanity_methods)

PROGRAM = "tf-cnnvis"
CACHE_ENV = "TF_CNNVIS_CACHE"
# TensorFlow reads it once, when it makes its first device (see console()).
ALLOCATOR_ENV = "TF_CPU_ALLOCATOR_USE_BFC"
TF_LOG_LEVEL_ENV = "TF_CPP_MIN_LOG_LEVEL"
URL_SCHEMES = ("http://", "https://")

logger = logging.getLogger("tf_cnnvis")


class CommandError(Exception):
    """Bad input found by the command line layer itself (exit status 1)."""


# --------------------------------------------------------------------------- argument parsing

class _Parser(argparse.ArgumentParser):
    """Reports a malformed command line in one line instead of usage + error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_common(parser, model=True, images=True):
    if model:
        parser.add_argument("model", metavar="MODEL",
                            help="built-in name (vgg16, emotion), model path (.keras, .h5, SavedModel "
                                 "folder, frozen .pb, checkpoint .meta) or http(s) URL of a model file")
    if images:
        parser.add_argument("images", metavar="IMAGE", nargs="+",
                            help="image files (PNG, JPEG...) or bundled sample names "
                                 "(astronaut, chelsea, face); all are fed as one batch")
        parser.add_argument("--size", type=arguments.size, metavar="N|HxW",
                            help="resize images to this size (default: the model's fixed input size, "
                                 "else the first image's size)")
        parser.add_argument("--preprocess", default="auto",
                            choices=("auto", "none", "unit", "vgg16", "emotion"),
                            help="how pixels in [0, 255] become model input: none (as is), unit "
                                 "(/255), vgg16 (BGR minus mean), emotion (gray in [-1, 1]); auto: "
                                 "the built-in model's own, else none")
        parser.add_argument("--input-tensor", metavar="NAME",
                            help="the input that takes the images, for models with several inputs")
        parser.add_argument("--outdir", default="./Output", help="PNG folder (default ./Output)")
        parser.add_argument("--logdir", default="./Log", help="TensorBoard folder (default ./Log)")
        parser.add_argument("--no-outdir", action="store_true", help="write no PNG files")
        parser.add_argument("--no-logdir", action="store_true", help="write no TensorBoard events")
        parser.add_argument("--step", type=int, default=0,
                            help="TensorBoard step (e.g. a training epoch), default 0")
        parser.add_argument("--report", action="store_true",
                            help="also build the HTML gallery (OUTDIR/index.html)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help=f"where model URLs are downloaded (default ${CACHE_ENV}, else "
                             "~/.cache/tf_cnnvis)")
    parser.add_argument("--trust-model-code", action="store_true",
                        help="allow a model file that holds code (a Keras Lambda layer, Python or "
                             "file ops); only for files you trust")
    _add_output_options(parser)


def _add_output_options(parser):
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bar and no messages except errors")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log what is done (-vv: debugging detail)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROGRAM, description="See what a convolutional network has learned: "
                     "activations, deconvnet/guided reconstructions and DeepDream, written as PNG "
                     "folders and TensorBoard images.",
                     epilog=f"Start with `{PROGRAM} demo`, then `tensorboard --logdir ./Log`.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    layers = commands.add_parser("layers", help="list the layers a model offers",
                                 description="List every selectable layer: name, kind (relu, pool, "
                                             "conv), op type, output shape and channels.")
    _add_common(layers, images=False)
    layers.set_defaults(run=_run_layers)

    activations = commands.add_parser("activations", help="feature maps of chosen layers",
                                      description="Write a grid of each chosen layer's feature maps "
                                                  "per image.")
    _add_common(activations)
    _add_layer_choice(activations)
    activations.add_argument("--save-channels", action="store_true",
                             help="also write one PNG per channel")
    activations.set_defaults(run=_run_activations)

    deconv = commands.add_parser("deconv", help="reconstruct channels back into image space",
                                 description="Project each channel of the chosen layers back to "
                                             "pixels with deconvnet, guided backprop or the gradient.")
    _add_common(deconv)
    _add_layer_choice(deconv)
    deconv.add_argument("--method", type=arguments.methods, default=["deconvnet"], metavar="M[,M]",
                        help="deconvnet (default), guided, gradient, or several separated by commas")
    deconv.add_argument("--target", choices=TARGETS, default="map",
                        help="map: the whole channel map (default); unit: its strongest unit")
    deconv.add_argument("--unit-view", choices=UNIT_VIEWS, default="field",
                        help="with --target unit: field (default) cuts each unit's reconstruction to its "
                             "receptive field beside the input patch; image draws the whole image")
    deconv.add_argument("--scaling", choices=SCALINGS, default="robust",
                        help="robust (default): zero is mid-grey, the 99.5th percentile of magnitudes is "
                             "black/white; minmax: each picture's range stretched")
    deconv.add_argument("--channels", type=arguments.integers, metavar="LIST",
                        help="channel indices, e.g. 0,3,5-8 (default: all)")
    deconv.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB,
                        help="bounds the batch of reconstructions run at once "
                             f"(default {DEFAULT_MEMORY_BUDGET_MB})")
    deconv.add_argument("--save-channels", action="store_true",
                        help="also write one PNG per channel")
    deconv.set_defaults(run=_run_deconv)

    dream = commands.add_parser("deepdream", help="images that maximize classes or channels",
                                description="Gradient ascent on the input toward classes, channels, "
                                            "or (without --classes) a whole layer: DeepDream.")
    _add_common(dream)
    dream.add_argument("--layer", required=True, help="one layer name (see the layers command)")
    dream.add_argument("--classes", type=arguments.names, metavar="LIST",
                       help="unit/channel indices or label names, comma separated, e.g. 0,3 or "
                            "happy,sad (default: amplify the whole layer from the image)")
    dream.add_argument("--labels", type=arguments.names, metavar="NAMES",
                       help="comma-separated names of the layer's units (default for the emotion "
                            "model: its 7 emotions)")
    dream.add_argument("--start", choices=("noise", "image"),
                       help="start from noise (default with --classes) or from the image")
    dream.add_argument("--iterations", type=int, default=50, help="steps per octave (default 50)")
    dream.add_argument("--octaves", type=int, default=3, help="image pyramid levels (default 3)")
    dream.add_argument("--octave-scale", type=float, default=1.4, help="scale between octaves (1.4)")
    dream.add_argument("--step-size", type=float, default=0.01, help="step per iteration (0.01)")
    dream.add_argument("--jitter", type=int, default=16, help="random roll in pixels (16)")
    dream.add_argument("--normalize", choices=("laplacian", "std", "mean_abs", "none"),
                       default="laplacian", help="gradient normalization (laplacian)")
    dream.add_argument("--param", choices=("pixel", "fourier"), default="pixel",
                       help="optimize pixels (default) or a color-decorrelated Fourier spectrum")
    dream.add_argument("--l2", type=float, default=1e-3, help="L2 penalty weight (0.001)")
    dream.add_argument("--tv", type=float, default=0.0, help="total variation weight (0)")
    dream.add_argument("--denoise", type=float, metavar="WEIGHT",
                       help="TV denoising between octaves (e.g. 2.0; default off)")
    dream.add_argument("--value-range", type=arguments.value_range, metavar="LOW,HIGH",
                       help="the model's input range (default: from the preprocessing or the images)")
    dream.add_argument("--seed", type=int, default=0, help="random seed (0)")
    dream.set_defaults(run=_run_deepdream)

    attribution = commands.add_parser("attribution", help="where in each image the network saw a class",
                                      description="Class attribution maps over each image, one per class: "
                                                  "Grad-CAM family, Score-CAM, gradients (optionally "
                                                  "smoothed), Integrated Gradients, occlusion.")
    _add_common(attribution)
    attribution.add_argument("--method", type=_attribution_methods, default=["gradcam"], metavar="M[,M]",
                             help="gradcam (default), gradcam++, layercam, scorecam, guided_gradcam, saliency, "
                                  "deconvnet, guided, gradient_x_input, integrated_gradients, occlusion; "
                                  "several separated by commas")
    attribution.add_argument("--classes", type=arguments.names, metavar="LIST",
                             help="class indices or label names, comma separated, e.g. 3 or happy,sad "
                                  "(default: each image's top class)")
    attribution.add_argument("--labels", type=arguments.names, metavar="NAMES",
                             help="comma-separated class names (default for the emotion model: its 7 emotions)")
    attribution.add_argument("--layer", help="the layer CAM methods weigh (default: the last layer with "
                                             "spatial extent)")
    attribution.add_argument("--output", help="the layer of class scores (default: the model's output; a "
                                              "softmax's logits are used)")
    attribution.add_argument("--smooth", choices=SMOOTHINGS, help="wrap a gradient method: average (smoothgrad), "
                                                                 "variance (vargrad) or mean square (squaregrad) "
                                                                 "over noisy copies")
    attribution.add_argument("--samples", type=int, default=50, help="noisy copies per image (50)")
    attribution.add_argument("--noise", type=float, default=0.15,
                             help="noise standard deviation as a fraction of the image's range (0.15)")
    attribution.add_argument("--steps", type=int, default=50, help="Integrated Gradients' steps (50)")
    attribution.add_argument("--rule", choices=INTEGRATION_RULES, default="trapezoid",
                             help="Integrated Gradients' quadrature (trapezoid)")
    attribution.add_argument("--patch", type=arguments.size, metavar="N|HxW",
                             help="occlusion's patch (default: an eighth of the image)")
    attribution.add_argument("--stride", type=arguments.size, metavar="N|HxW",
                             help="occlusion's step (default: half the patch)")
    attribution.add_argument("--max-channels", type=int, metavar="N",
                             help="Score-CAM with the N channels of largest variance (default: all)")
    attribution.add_argument("--seed", type=int, default=0, help="random seed of the noise (0)")
    attribution.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB,
                             help=f"bounds the batch run at once (default {DEFAULT_MEMORY_BUDGET_MB})")
    attribution.set_defaults(run=_run_attribution)

    sanity = commands.add_parser("sanity", help="which attribution pictures change when the weights are randomized",
                                 description="Sanity checks: each method's map on the model and on copies whose "
                                             "weights are randomized layer by layer from the output (cascade) and one "
                                             "layer at a time, compared by rank correlation and SSIM; deletion and "
                                             "insertion curves of the original maps. Writes a cascade picture, plots "
                                             "and TensorBoard scalars (one run per method) and prints a table.")
    _add_common(sanity)
    sanity.add_argument("--method", type=_sanity_methods, default=None, metavar="M[,M]",
                        help="deconvnet, guided, gradient (reconstructions of the class score), gradcam, gradcam++, "
                             "layercam, scorecam, guided_gradcam, saliency, gradient_x_input, integrated_gradients, "
                             "occlusion; several separated by commas (default: all)")
    sanity.add_argument("--classes", type=arguments.names, metavar="LIST",
                        help="class indices or label names, comma separated (default: each image's top class)")
    sanity.add_argument("--labels", type=arguments.names, metavar="NAMES",
                        help="comma-separated class names (default for the emotion model: its 7 emotions)")
    sanity.add_argument("--layers", type=arguments.names, metavar="NAME[,NAME]",
                        help="the layers with weights to randomize (default: all of them)")
    sanity.add_argument("--cascade-steps", type=int, metavar="N",
                        help="run only the first N steps of the cascade (default: every layer)")
    sanity.add_argument("--no-independent", action="store_true", help="skip randomizing each layer alone")
    sanity.add_argument("--randomization", choices=RANDOMIZATIONS, default="normal",
                        help="normal: draws with each weight tensor's mean and deviation (default); shuffle: its "
                             "values permuted")
    sanity.add_argument("--seed", type=int, default=0, help="random seed of the weights (0)")
    sanity.add_argument("--no-faithfulness", action="store_true", help="skip the deletion and insertion curves")
    sanity.add_argument("--deletion-steps", type=int, default=100,
                        help="steps of the deletion and insertion curves (100: 1%% of the pixels each)")
    sanity.add_argument("--baseline", choices=DELETION_BASELINES, default="blur",
                        help="what removed pixels become: blur (default), zero or mean")
    sanity.add_argument("--score", choices=DELETION_SCORES, default="probability",
                        help="the class score the curves measure (probability)")
    sanity.add_argument("--layer", help="the layer CAM methods weigh (default: the last layer with spatial extent)")
    sanity.add_argument("--output", help="the layer of class scores (default: the model's output)")
    sanity.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients' steps (50)")
    sanity.add_argument("--memory-budget-mb", type=float, default=DEFAULT_MEMORY_BUDGET_MB,
                        help=f"bounds the batch run at once (default {DEFAULT_MEMORY_BUDGET_MB})")
    sanity.set_defaults(run=_run_sanity)

    report = commands.add_parser("report", help="build the HTML gallery of an output folder",
                                 description="Write OUTDIR/index.html linking every layer, method "
                                             "and image, and one page per layer.")
    report.add_argument("outdir", metavar="OUTDIR", help="a folder written by tf-cnnvis or the "
                                                         "library (path_outdir)")
    report.add_argument("--title", help="page title (default: the folder name)")
    _add_output_options(report)
    report.set_defaults(run=_run_report)

    demo = commands.add_parser("demo", help="the built-in demo: VGG16 on a sample image",
                               description="Activations, deconvnet and guided reconstructions and "
                                           "DeepDream on the built-in pretrained models and bundled "
                                           "public-domain images; no network needed.")
    from tf_cnnvis.demo import add_arguments

    add_arguments(demo)
    _add_output_options(demo)
    demo.set_defaults(run=_run_demo)
    return parser


def _attribution_methods(text: str) -> list[str]:
    """``"gradcam,scorecam"`` -> distinct attribution method names."""
    from tf_cnnvis.errors import OptionError

    try:
        return check_attribution_methods(arguments.names(text))
    except OptionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _sanity_methods(text: str) -> list[str]:
    """``"gradcam,guided"`` -> distinct sanity-check method names."""
    from tf_cnnvis.errors import OptionError

    try:
        return check_sanity_methods(arguments.names(text))
    except OptionError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _add_layer_choice(parser):
    parser.add_argument("--layers", type=arguments.names, default=["r"], metavar="SEL[,SEL]",
                        help="letters r (ReLU), p (pool), c (conv), combined (rp), and/or layer "
                             "names, comma separated (default r)")


# --------------------------------------------------------------------------- models

def default_cache_dir() -> str:
    """``$TF_CNNVIS_CACHE``, else ``$XDG_CACHE_HOME/tf_cnnvis``, else ``~/.cache/tf_cnnvis``."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "tf_cnnvis")


def fetch(url: str, cache_dir: str | None = None, progress: bool = False) -> str:
    """Download a model file once into the cache; return its local path.

    The cached name keeps the URL's file name (the loader needs its
    extension) behind a hash of the whole URL, so two models called
    ``model.h5`` never collide. A download goes to a temporary name first
    and is renamed when complete, so an interrupted one is never used.
    """
    import wget

    from tf_cnnvis.errors import ModelLoadError
    from tf_cnnvis.progress import ProgressBar
    from tf_cnnvis.write import ensure_folder

    folder = ensure_folder(os.path.join(cache_dir or default_cache_dir(), "models"), "cache folder")
    name = os.path.basename(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) or "model"
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "model"
    path = os.path.join(folder, f"{hashlib.sha1(url.encode('utf-8')).hexdigest()[:16]}-{name}")
    if os.path.exists(path):
        logger.info("using cached %s for %s", path, url)
        return path
    partial = f".{os.path.basename(path)}.part"
    bar = ProgressBar(None, f"downloading {name} (KiB)", enabled=None if progress else False)

    def show(current, total, width):  # wget's bar hook; returning "" keeps its stdout quiet
        if bar.total is None and total > 0:
            bar.total = max(1, total // 1024)
        bar.update(max(0, current // 1024 - bar.done))
        return ""

    logger.info("downloading %s to %s", url, path)
    # wget writes its temporary file into the working directory: work inside
    # the cache folder so nothing lands anywhere else.
    with _working_directory(folder):
        try:
            downloaded = wget.download(_unquoted_path(url), out=partial, bar=show)
        except (OSError, ValueError) as error:
            _remove_leftovers(folder, partial)
            reason = error if hasattr(error, "code") else getattr(error, "reason", None) or error
            raise ModelLoadError(f"cannot download model {url!r}: {reason}") from None
        finally:
            bar.close()
        os.replace(downloaded, path)
    return path


def _unquoted_path(url: str) -> str:
    """``url`` with its path unquoted: wget quotes the path itself, so a
    ``%20`` given to it would be sent as ``%2520``."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=urllib.parse.unquote(parts.path)))


@contextlib.contextmanager
def _working_directory(folder: str):
    previous = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(previous)


def _remove_leftovers(folder: str, prefix: str):
    for name in os.listdir(folder):
        if name.startswith(prefix):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))


def resolve_model(spec: str, cache_dir: str | None = None, progress: bool = False,
                  trust_model_code: bool = False):
    """(FrozenModel, built-in entry or None) for a MODEL argument."""
    from tf_cnnvis.load import load_model
    from tf_cnnvis.models import BUILTIN_MODELS

    if spec in BUILTIN_MODELS:
        builtin = BUILTIN_MODELS[spec]
        return load_model(builtin.builder()), spec
    if spec.lower().startswith(URL_SCHEMES):
        return load_model(fetch(spec, cache_dir, progress), trust_model_code=trust_model_code), None
    if not os.path.exists(spec) and "/" not in spec and "." not in spec:
        raise CommandError(f"model {spec!r} is neither a built-in model ({', '.join(BUILTIN_MODELS)}) "
                           "nor an existing path; give a model file, a SavedModel folder or a URL")
    return load_model(spec, trust_model_code=trust_model_code), None


# --------------------------------------------------------------------------- images

def _preprocessing(name: str, builtin: str | None):
    """(preprocess function on RGB [0, 255], value range or None, deprocess or None)."""
    from tf_cnnvis import models

    if name == "auto":
        name = {"vgg16": "vgg16", "emotion": "emotion"}.get(builtin, "none")
    table = {
        "none": (lambda rgb: rgb, (0.0, 255.0), None),
        "unit": (lambda rgb: rgb / 255.0, (0.0, 1.0), None),
        "vgg16": (models.vgg16_preprocess, None, models.vgg16_deprocess),
        "emotion": (models.emotion_preprocess, (-1.0, 1.0), None),
    }
    return table[name]


def _input_shape(model, input_tensor):
    """(height, width, channels) of the image input, None where open."""
    from tf_cnnvis.graph import as_tensor_name
    from tf_cnnvis.rebuild import rebuild

    graph = rebuild(model, "gradient").graph
    name = model.inputs[0]
    if input_tensor is not None:
        name = model.input_aliases.get(input_tensor, as_tensor_name(input_tensor))
    try:
        shape = graph.get_tensor_by_name(name).shape
    except (KeyError, ValueError):
        return None, None, None
    if shape.rank != 4:
        return None, None, None
    return tuple(shape.as_list()[1:])


def load_images(paths, model, builtin, args):
    """The IMAGE arguments as one model-ready batch ``(N, H, W, C)``."""
    import numpy as np

    from tf_cnnvis.models import read_image

    height, width, channels = _input_shape(model, getattr(args, "input_tensor", None))
    size = args.size
    if size is not None and height is not None and width is not None and size != (height, width):
        raise CommandError(f"--size {size[0]}x{size[1]} does not fit the model, whose input is "
                           f"{height}x{width}; leave --size out")
    if size is None and height is not None and width is not None:
        size = (height, width)
    pictures = []
    for path in paths:  # without a size, the first picture's size is everyone's
        pictures.append(read_image(path, size))
        size = size or pictures[0].shape[:2]
    batch = np.stack(pictures)
    preprocess, _, _ = _preprocessing(args.preprocess, builtin)
    batch = np.asarray(preprocess(batch), np.float32)
    if channels == 1 and batch.shape[-1] == 3:  # a grayscale model fed colour files
        batch = (batch[..., 0] * 0.299 + batch[..., 1] * 0.587 + batch[..., 2] * 0.114)[..., None]
    return batch


def _feed(args, images):
    return {args.input_tensor: images} if args.input_tensor else images


def _folders(args):
    outdir = None if args.no_outdir else args.outdir
    logdir = None if args.no_logdir else args.logdir
    return outdir, logdir


# --------------------------------------------------------------------------- commands

def _model(args):
    return resolve_model(args.model, args.cache_dir, progress=not args.quiet,
                         trust_model_code=args.trust_model_code)


def _model_and_images(args):
    """(FrozenModel, built-in name or None, image batch) for a visualizing subcommand."""
    model, builtin = _model(args)
    return model, builtin, load_images(args.images, model, builtin, args)

def _run_layers(args, out):
    from tf_cnnvis.visualize import list_layers

    model, _ = _model(args)
    table = list_layers(model)
    out.write(f"{'name':40s} {'kind':6s} {'op type':22s} {'shape':18s} channels\n")
    for row in table:
        out.write(f"{row}\n")
    return 0


def _run_activations(args, out):
    from tf_cnnvis.visualize import activation_visualization

    model, builtin, images = _model_and_images(args)
    outdir, logdir = _folders(args)
    result = activation_visualization(model, _feed(args, images), args.input_tensor, args.layers,
                                      logdir, outdir, step=args.step, save_channels=args.save_channels,
                                      progress=not args.quiet)
    return _finish(result, args, out, outdir, logdir)


def _run_deconv(args, out):
    from tf_cnnvis.visualize import deconv_visualization

    model, builtin, images = _model_and_images(args)
    outdir, logdir = _folders(args)
    result = deconv_visualization(model, _feed(args, images), args.input_tensor, args.layers,
                                  logdir, outdir, method=args.method, target=args.target,
                                  channels=args.channels, step=args.step,
                                  save_channels=args.save_channels,
                                  memory_budget_mb=args.memory_budget_mb, progress=not args.quiet,
                                  scaling=args.scaling, unit_view=args.unit_view,
                                  deprocess=_preprocessing(args.preprocess, builtin)[2])
    return _finish(result, args, out, outdir, logdir)


def _labels_and_classes(args, builtin):
    """--labels (the emotion model's own by default) and --classes, indices as ints."""
    from tf_cnnvis.models import EMOTION_LABELS

    labels = args.labels
    if labels is None and builtin == "emotion":
        labels = list(EMOTION_LABELS)
    classes = None
    if args.classes is not None:
        classes = [int(item) if item.isdigit() else item for item in args.classes]
    return labels, classes


def _run_deepdream(args, out):
    from tf_cnnvis.deepdream import deepdream_visualization
    from tf_cnnvis.progress import progress_bar

    model, builtin, images = _model_and_images(args)
    _, value_range, deprocess = _preprocessing(args.preprocess, builtin)
    labels, classes = _labels_and_classes(args, builtin)
    outdir, logdir = _folders(args)
    with progress_bar(not args.quiet, args.iterations * args.octaves, "deepdream") as bar:
        result = deepdream_visualization(
            model, _feed(args, images), args.layer, classes, args.input_tensor, logdir, outdir,
            labels=labels, start=args.start, value_range=args.value_range or value_range,
            deprocess=deprocess, iterations=args.iterations, octaves=args.octaves,
            octave_scale=args.octave_scale, step_size=args.step_size, jitter=args.jitter,
            normalize=args.normalize, l2=args.l2, tv=args.tv, denoise=args.denoise,
            param=args.param, seed=args.seed, step=args.step, progress=bar.update)
    return _finish(result, args, out, outdir, logdir)


def _run_attribution(args, out):
    from tf_cnnvis.attribution import attribution_visualization

    model, builtin, images = _model_and_images(args)
    _, _, deprocess = _preprocessing(args.preprocess, builtin)
    labels, classes = _labels_and_classes(args, builtin)
    outdir, logdir = _folders(args)
    result = attribution_visualization(
        model, _feed(args, images), classes, args.method, args.layer, args.input_tensor, logdir, outdir,
        labels=labels, output=args.output, smooth=args.smooth, samples=args.samples, noise=args.noise,
        seed=args.seed, steps=args.steps, rule=args.rule, patch=args.patch, stride=args.stride,
        max_channels=args.max_channels, deprocess=deprocess, step=args.step,
        memory_budget_mb=args.memory_budget_mb, progress=not args.quiet)
    return _finish(result, args, out, outdir, logdir)


def _run_sanity(args, out):
    from tf_cnnvis.sanity import sanity_check

    model, builtin, images = _model_and_images(args)
    _, _, deprocess = _preprocessing(args.preprocess, builtin)
    labels, classes = _labels_and_classes(args, builtin)
    outdir, logdir = _folders(args)
    options = {"steps": args.ig_steps}
    if args.layer is not None:
        options["layer"] = args.layer
    result = sanity_check(
        model, _feed(args, images), args.method, classes, args.layers, args.input_tensor, logdir, outdir,
        labels=labels, output=args.output, steps=args.cascade_steps, independent=not args.no_independent,
        randomization=args.randomization, seed=args.seed, faithfulness=not args.no_faithfulness,
        deletion_steps=args.deletion_steps, baseline=args.baseline, score=args.score, attribution_options=options,
        deprocess=deprocess, step=args.step, memory_budget_mb=args.memory_budget_mb, progress=not args.quiet)
    index = None
    if args.report and outdir is not None:
        from tf_cnnvis.report import build_gallery

        index = build_gallery(outdir)
    if not args.quiet:
        out.write(f"{len(result.randomized)} layer(s) randomized, from the output: {', '.join(result.randomized)}\n"
                  f"{result.table()}\nmean: over the cascade's steps; all: every layer randomized; changes: both "
                  "means below 0.5 (the map follows the weights)\n")
        if outdir is not None:
            out.write(f"{len(result.paths)} PNG file(s) in {os.path.abspath(outdir)}\n")
        if index:
            out.write(f"gallery: {index}\n")
        if logdir is not None:
            out.write(f"TensorBoard (Scalars: one run per method): tensorboard --logdir "
                      f"{_quote(os.path.abspath(logdir))}\n")
    return 0


def _run_report(args, out):
    from tf_cnnvis.report import build_gallery

    index = build_gallery(args.outdir, title=args.title)
    if not args.quiet:
        out.write(f"gallery: {index}\n")
    return 0


def _run_demo(args, out):
    from tf_cnnvis.demo import run_from_arguments

    return run_from_arguments(args, out)


def _finish(result, args, out, outdir, logdir):
    index = None
    if args.report and outdir is not None:
        from tf_cnnvis.report import build_gallery

        index = build_gallery(outdir)
    if not args.quiet:
        out.write(f"{len(result.paths)} PNG file(s) for {len(result.layers)} layer(s)"
                  + (f" in {os.path.abspath(outdir)}" if outdir is not None else "") + "\n")
        if index:
            out.write(f"gallery: {index}\n")
        if logdir is not None:
            out.write(f"TensorBoard: tensorboard --logdir {_quote(os.path.abspath(logdir))}\n")
    return 0


def _quote(path: str) -> str:
    import shlex

    return shlex.quote(path)


# --------------------------------------------------------------------------- entry point

def _load_tensorflow_quietly(args):
    """Load TensorFlow with its C++ start-up lines (oneDNN, CUDA, CPU features) kept off the terminal.

    TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` once, when it loads, and some
    lines are written before it reads it, straight to file descriptor 2:
    those are held back during the import and shown only if the import
    fails. A level already in the environment wins, and ``--verbose``
    leaves TensorFlow's own lines on.
    """
    if (args.command == "report" or getattr(args, "verbose", 0) or "tensorflow" in sys.modules
            or TF_LOG_LEVEL_ENV in os.environ):
        return
    os.environ[TF_LOG_LEVEL_ENV] = "3"
    with _descriptor_held_back(2, sys.stderr):
        import tensorflow  # noqa: F401


@contextlib.contextmanager
def _descriptor_held_back(descriptor: int, stream):
    """Send what is written to ``descriptor`` to a temporary file; replay it on ``stream`` on error."""
    stream.flush()
    saved = os.dup(descriptor)
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), descriptor)
            try:
                yield
            except BaseException:
                os.dup2(saved, descriptor)
                held.seek(0)
                stream.write(held.read().decode("utf-8", "replace"))
                raise
    finally:
        os.dup2(saved, descriptor)
        os.close(saved)


def _configure_logging(args) -> logging.Handler:
    """Show the library's messages on standard error for this command; returns the handler."""
    level = logging.WARNING
    if getattr(args, "quiet", False):
        level = logging.ERROR
    elif getattr(args, "verbose", 0) >= 2:
        level = logging.DEBUG
    elif getattr(args, "verbose", 0) == 1:
        level = logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROGRAM}: %(message)s"))
    handler.setLevel(level)
    library = logging.getLogger("tf_cnnvis")
    library.addHandler(handler)
    return handler


def main(argv=None) -> int:
    """Run one command; return the exit status (the console script exits with it).

    Arguments are checked before TensorFlow loads, so ``--help`` and a
    malformed command line answer at once.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _load_tensorflow_quietly(args)
    library = logging.getLogger("tf_cnnvis")
    previous_level = library.level
    handler = _configure_logging(args)
    library.setLevel(handler.level)
    from tf_cnnvis.errors import TfCnnvisError

    try:
        return args.run(args, sys.stdout)
    except (TfCnnvisError, CommandError, ImportError, OSError) as error:
        message = " ".join(str(error).split()) or type(error).__name__
        sys.stderr.write(f"{PROGRAM} {args.command}: error: {message}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"\n{PROGRAM} {args.command}: interrupted\n")
        return 130
    finally:
        # The handler holds this call's standard error; a later call (or a
        # test that swapped the stream) must not find it still attached.
        library.removeHandler(handler)
        library.setLevel(previous_level)


def console():
    """The ``tf-cnnvis`` program: :func:`main` in a process of its own.

    The process belongs to the command, so it picks TensorFlow's pooling
    (BFC) allocator for the CPU: it keeps freed buffers for the next
    ``session.run`` where the default one hands large buffers back and gets
    fresh pages from the system every time. Reconstructions ran about 1.25x
    faster with it on a 2-core CPU (benchmarks/bench_deconv.py --allocator).
    ``TF_CPU_ALLOCATOR_USE_BFC=false`` in the environment keeps the default.
    Code that imports tf_cnnvis chooses for its own process: the library
    leaves the setting alone.
    """
    os.environ.setdefault(ALLOCATOR_ENV, "true")
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console()
