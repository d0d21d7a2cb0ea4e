"""Attribution maps on ResNet50: ours against the floor and against tf-keras-vis 0.8.7.

For each method, in a process of its own (so that its peak RSS is its own),
on ``keras.applications.ResNet50(weights=None)`` at 224 px and the same
images (the bundled pictures, flipped and cropped), each image's top class:

  ours   ``attribution_visualization`` on the model frozen once
         (``tf_cnnvis.load_model``), as for many calls on unchanged weights,
         maps as arrays; a first call on one image (freezing and importing,
         timed as "first call") comes before. For Grad-CAM and Grad-CAM++
         also the call given the Keras model (its weights copied in every
         call) and the call that writes the pictures;
  floor  the same forward and backward passes in one plain batched
         TensorFlow program, nothing written: the frozen graph imported as
         it is (no rules), TensorFlow's default session options, the batch
         items built inside the graph; and the Keras model in a
         ``tf.function``. The faster of the two is the floor;
  peer   tf-keras-vis 0.8.7 (``pip install tf-keras-vis==0.8.7``), scores on
         the logits (``ReplaceToLinear``), its own defaults otherwise.

Methods (items per image): Grad-CAM and Grad-CAM++ on 16 images (one
forward and one backward pass to ``conv5_block3_out`` each), Score-CAM on 1
image (2048 masked forward passes), SmoothGrad on 8 images (50 noisy copies,
forward and backward to the input), Integrated Gradients on 8 images (64
steps; tf-keras-vis has none). Ours and the floor alternate ``--repeat``
times; the best time counts.

Run:  python benchmarks/bench_attribution.py                   (all; about 25 min on 2 cores)
      python benchmarks/bench_attribution.py --quick           (a few minutes: fewer images, copies,
                                                                steps and channels)
      python benchmarks/bench_attribution.py --methods gradcam,scorecam --no-peer
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from common import cpu_model, peak_rss_gb, table  # noqa: E402

LAYER = "conv5_block3_out"
SIZE = 224
# method: (images, items per image)
FULL = {"gradcam": (16, 1), "gradcam++": (16, 1), "scorecam": (1, 2048), "smoothgrad": (8, 50),
        "integrated_gradients": (8, 64)}
QUICK = {"gradcam": (4, 1), "gradcam++": (4, 1), "scorecam": (1, 128), "smoothgrad": (2, 8),
         "integrated_gradients": (2, 8)}
NO_PEER = {"integrated_gradients"}
FLOOR_BATCH = 16  # items per run of the floor for the methods of many items



# --------------------------------------------------------------------------- one method, in its own process

def resnet50():
    import keras

    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(weights=None, input_shape=(SIZE, SIZE, 3))


def pictures(count: int) -> np.ndarray:
    """``count`` distinct ResNet inputs from the bundled pictures (crops and flips)."""
    import keras

    from tf_cnnvis import models

    result = []
    for index in range(count):
        name = ("astronaut", "chelsea", "face")[index % 3]
        big = models.sample_image(name, SIZE + 32 * (index // 6 + 1))
        offset = (index // 3) % 2 * 16
        picture = big[offset:offset + SIZE, offset:offset + SIZE]
        result.append(picture[:, ::-1] if index % 2 else picture)
    return keras.applications.resnet.preprocess_input(np.stack(result).astype(np.float32))


def our_call(model, images, method, count, outdir=None):
    """``attribution_visualization`` for ``method``; writing PNG and TensorBoard files to ``outdir`` if given."""
    import tf_cnnvis

    options = {"gradcam": dict(method="gradcam"), "gradcam++": dict(method="gradcam++"),
               "scorecam": dict(method="scorecam", max_channels=None if count >= 2048 else count),
               "smoothgrad": dict(method="saliency", smooth="smoothgrad", samples=count, noise=0.15),
               "integrated_gradients": dict(method="integrated_gradients", steps=count)}[method]
    folders = dict(path_outdir=os.path.join(outdir, "Output"), path_logdir=os.path.join(outdir, "Log")) if outdir \
        else dict(path_outdir=None, path_logdir=None)
    return lambda: tf_cnnvis.attribution_visualization(model, images, layer=LAYER if "cam" in method else None,
                                                       **folders, **options)


class PlainGraph:
    """The frozen ResNet50 imported as it is, behind ``build(x)`` (batch items made in the graph)."""

    def __init__(self, frozen, build):
        import tensorflow as tf

        self.graph = tf.Graph()
        with self.graph.as_default():
            self.x = tf.compat.v1.placeholder(tf.float32, [None, SIZE, SIZE, 3])
            self.extra = {}
            items = build(self.x, self.extra)
            tf.import_graph_def(frozen.graph_def, input_map={frozen.inputs[0]: items}, name="net")
            self.items = items
            softmax = self.graph.get_tensor_by_name("net/" + frozen.keras_layers["predictions"])
            self.logits = softmax.op.inputs[0]
            self.maps = self.graph.get_tensor_by_name("net/" + frozen.keras_layers[LAYER])
        self.session = tf.compat.v1.Session(graph=self.graph)  # TensorFlow's default options

    def add(self, build):
        with self.graph.as_default():
            return build(self)


def floors(model, images, method, count):
    """{name: function running the floor once}: the plain graph and the Keras tf.function."""
    import keras
    import tensorflow as tf

    from tf_cnnvis.load import load_model

    frozen = load_model(model)
    dense = model.get_layer("predictions")
    features = keras.Model(model.inputs, [model.get_layer(LAYER).output, model.get_layer("avg_pool").output])

    def keras_logits(x):
        maps, pooled = features(x, training=False)
        return maps, tf.matmul(pooled, dense.kernel) + dense.bias

    def top_score(logits):
        return tf.reduce_max(logits, axis=1)

    def cam_of(maps, g, plus):
        if not plus:
            return tf.nn.relu(tf.reduce_sum(tf.reduce_mean(g, axis=[1, 2], keepdims=True) * maps, axis=3))
        squared = tf.square(g)
        alpha = tf.math.divide_no_nan(squared, 2 * squared + tf.reduce_sum(maps, [1, 2], keepdims=True) * squared * g)
        weights = tf.reduce_sum(alpha * tf.nn.relu(g), axis=[1, 2], keepdims=True)
        return tf.nn.relu(tf.reduce_sum(weights * maps, axis=3))

    if method in ("gradcam", "gradcam++"):
        plus = method == "gradcam++"
        plain = PlainGraph(frozen, lambda x, extra: x)
        cam = plain.add(lambda p: tf.image.resize(
            cam_of(p.maps, tf.gradients(tf.reduce_sum(top_score(p.logits)), p.maps)[0], plus)[..., None], (SIZE, SIZE)))

        @tf.function
        def keras_cam(x):
            with tf.GradientTape() as tape:
                maps, logits = keras_logits(x)
                score = top_score(logits)
            return tf.image.resize(cam_of(maps, tape.gradient(score, maps), plus)[..., None], (SIZE, SIZE))

        return {"plain graph": lambda warm=False: plain.session.run(cam, {plain.x: images}),
                "keras tf.function": lambda warm=False: keras_cam(images).numpy()}

    if method == "scorecam":
        image = images[:1]

        def masked(x, extra):
            extra["maps"] = tf.compat.v1.placeholder(tf.float32, [1, None, None, None])  # (1, h, w, B)
            up = tf.transpose(tf.image.resize(extra["maps"], (SIZE, SIZE)), [3, 1, 2, 0])  # (B, H, W, 1)
            low = tf.reduce_min(up, axis=[1, 2, 3], keepdims=True)
            span = tf.reduce_max(up, axis=[1, 2, 3], keepdims=True) - low
            return x * tf.math.divide_no_nan(up - low, span)

        plain = PlainGraph(frozen, masked)
        channels = count

        def run_plain(warm=False):
            limit = FLOOR_BATCH * 2 if warm else channels  # warming up: the first batch only
            maps, logits = plain.session.run([plain.maps, plain.logits], {plain.items: image})
            top = int(logits[0].argmax())
            scores = []
            for begin in range(0, limit, FLOOR_BATCH * 2):
                chunk = maps[..., begin:begin + FLOOR_BATCH * 2]
                scores.append(plain.session.run(plain.logits, {plain.x: image, plain.extra["maps"]: chunk})[:, top])
            weights = tf.nn.softmax(np.concatenate(scores)).numpy()
            return np.maximum((maps[0, ..., :limit] * weights).sum(-1), 0)

        @tf.function
        def keras_scores(chunk):
            up = tf.transpose(tf.image.resize(chunk, (SIZE, SIZE)), [3, 1, 2, 0])
            low = tf.reduce_min(up, axis=[1, 2, 3], keepdims=True)
            span = tf.reduce_max(up, axis=[1, 2, 3], keepdims=True) - low
            return keras_logits(image * tf.math.divide_no_nan(up - low, span))[1]

        def run_keras(warm=False):
            limit = FLOOR_BATCH * 2 if warm else channels
            maps, logits = keras_logits(image)
            maps = maps.numpy()
            top = int(logits.numpy()[0].argmax())
            scores = [keras_scores(tf.constant(maps[..., begin:begin + FLOOR_BATCH * 2])).numpy()[:, top]
                      for begin in range(0, limit, FLOOR_BATCH * 2)]
            weights = tf.nn.softmax(np.concatenate(scores)).numpy()
            return np.maximum((maps[0, ..., :limit] * weights).sum(-1), 0)

        return {"plain graph": run_plain, "keras tf.function": run_keras}

    # Gradients with respect to the input: SmoothGrad (noisy copies) and Integrated Gradients (path points).
    smooth = method == "smoothgrad"
    n = len(images)
    items = np.repeat(np.arange(n), count)
    positions = np.tile(np.linspace(0, 1, count, dtype=np.float32), n)
    sigma = (0.15 * (images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3)))).astype(np.float32)

    def batch_items(x, extra):
        extra["pick"] = tf.compat.v1.placeholder(tf.int32, [None])
        extra["scale"] = tf.compat.v1.placeholder(tf.float32, [None])
        picked = tf.gather(x, extra["pick"])
        if smooth:
            return picked + extra["scale"][:, None, None, None] * tf.random.normal(tf.shape(picked))
        return extra["scale"][:, None, None, None] * picked

    plain = PlainGraph(frozen, batch_items)
    with plain.graph.as_default():
        plain_classes = tf.compat.v1.placeholder(tf.int32, [None])
        score = tf.gather(plain.logits, plain_classes, axis=1, batch_dims=1)
        plain_gradient = tf.gradients(tf.reduce_sum(score), plain.items)[0]

    def run_plain(warm=False):
        top = plain.session.run(plain.logits, {plain.items: images}).argmax(axis=1)
        total = np.zeros(images.shape, np.float64)
        for begin in range(0, FLOOR_BATCH if warm else len(items), FLOOR_BATCH):
            pick = items[begin:begin + FLOOR_BATCH]
            scale = sigma[pick] if smooth else positions[begin:begin + FLOOR_BATCH]
            grads = plain.session.run(plain_gradient, {plain.x: images, plain.extra["pick"]: pick,
                                                       plain.extra["scale"]: scale, plain_classes: top[pick]})
            np.add.at(total, pick, np.abs(grads) if smooth else grads)
        if not smooth:  # the baselines' scores, for the integration error, as ours computes them
            plain.session.run(plain.logits, {plain.items: np.zeros_like(images)})
        return total

    @tf.function
    def keras_gradients(x, classes):
        with tf.GradientTape() as tape:
            tape.watch(x)
            score = tf.gather(keras_logits(x)[1], classes, axis=1, batch_dims=1)
        return tape.gradient(score, x)

    def run_keras(warm=False):
        top = keras_logits(images)[1].numpy().argmax(axis=1)
        total = np.zeros(images.shape, np.float64)
        for begin in range(0, FLOOR_BATCH if warm else len(items), FLOOR_BATCH):
            pick = items[begin:begin + FLOOR_BATCH]
            x = images[pick]
            if smooth:
                x = x + sigma[pick, None, None, None] * np.random.default_rng(begin).standard_normal(
                    x.shape, dtype=np.float32)
            else:
                x = positions[begin:begin + FLOOR_BATCH, None, None, None] * x
            grads = keras_gradients(tf.constant(x), tf.constant(top[pick], tf.int32)).numpy()
            np.add.at(total, pick, np.abs(grads) if smooth else grads)
        if not smooth:
            keras_logits(np.zeros_like(images))
        return total

    return {"plain graph": run_plain, "keras tf.function": run_keras}


def peer_call(model, images, method, count):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.saliency import Saliency
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    top = model.predict(images, verbose=0).argmax(axis=1)
    score = CategoricalScore(list(top))
    if method == "smoothgrad":
        return lambda: Saliency(model, model_modifier=ReplaceToLinear(), clone=True)(
            score, images, smooth_samples=count, smooth_noise=0.15)
    kind = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "scorecam": Scorecam}[method]
    options = {"max_N": count} if method == "scorecam" and count < 2048 else {}
    return lambda: kind(model, model_modifier=ReplaceToLinear(), clone=True)(
        score, images, penultimate_layer=LAYER, **options)


def run_case(method: str, images_count: int, count: int, repeat: int, peer: bool) -> dict:
    import tf_cnnvis

    model = resnet50()
    images = pictures(images_count)
    result = {"method": method, "images": images_count, "count": count}
    began = time.perf_counter()
    frozen = tf_cnnvis.load_model(model)
    tf_cnnvis.attribution_visualization(frozen, images[:1], layer=LAYER, path_outdir=None, path_logdir=None)
    result["first_call_s"] = time.perf_counter() - began  # freezing and importing ResNet50
    # The model frozen once, as for many calls on unchanged weights; the arrays only, as the others give.
    ours = our_call(frozen, images, method, count)
    began = time.perf_counter()
    ours()
    times = {"ours": [time.perf_counter() - began]}
    result["ours_peak_rss_gb"] = peak_rss_gb()  # before the floor and the peer add their own copies
    plain = floors(model, images, method, count)
    for function in plain.values():  # build kernels and traces once (one batch), as for ours
        function(warm=True)
    times.update({name: [] for name in plain})
    for index in range(repeat):
        if index:
            began = time.perf_counter()
            ours()
            times["ours"].append(time.perf_counter() - began)
        for name, function in plain.items():
            began = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - began)
    result.update({f"{name}_s": min(values) for name, values in times.items()})
    result["floor_s"] = min(min(times[name]) for name in plain)
    result["floor_kind"] = min(plain, key=lambda name: min(times[name]))
    if method in ("gradcam", "gradcam++"):  # what a call adds beyond the passes (the same for every method)
        with tempfile.TemporaryDirectory() as outdir:
            for key, function in (("keras_model_s", our_call(model, images, method, count)),
                                  ("written_s", our_call(frozen, images, method, count, outdir))):
                function()
                began = time.perf_counter()
                function()
                result[key] = time.perf_counter() - began
    if peer and method not in NO_PEER:
        function = peer_call(model, images, method, count)
        if method != "scorecam":
            function()  # its first call traces; Score-CAM's is too slow to run twice
        began = time.perf_counter()
        function()
        result["peer_s"] = time.perf_counter() - began
    return result


# --------------------------------------------------------------------------- the table

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(FULL), help=f"comma separated, from {', '.join(FULL)}")
    parser.add_argument("--quick", action="store_true", help="fewer images, copies, steps and channels")
    parser.add_argument("--no-peer", dest="peer", action="store_false", help="leave tf-keras-vis out")
    parser.add_argument("--repeat", type=int, default=2, help="timed calls of ours and of the floor (best counts)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--case-images", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--case-count", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.case:
        print(json.dumps(run_case(args.case, args.case_images, args.case_count, args.repeat, args.peer)))
        return

    sizes = QUICK if args.quick else FULL
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
    unknown = [name for name in methods if name not in FULL]
    if unknown:
        parser.error(f"unknown method {unknown[0]!r}; choose from {', '.join(FULL)}")
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; ResNet50 (weights=None), {SIZE} px, layer {LAYER}")
    rows = []
    for method in methods:
        images, count = sizes[method]
        command = [sys.executable, os.path.abspath(__file__), "--case", method, "--case-images", str(images),
                   "--case-count", str(count), "--repeat", str(args.repeat)] + ([] if args.peer else ["--no-peer"])
        began = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{method}: failed\n{done.stderr[-3000:]}")
            continue
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"{method}: done in {time.perf_counter() - began:.0f} s: " + json.dumps(
            {key: round(value, 3) if isinstance(value, float) else value for key, value in row.items()}), flush=True)

    def per_second(row, key):
        return f"{row['images'] / row[key]:.3g}" if key in row else "-"

    def seconds(row, key):
        return f"{row[key]:.2f}" if key in row else "-"

    headers = ["method", "images x items", "ours img/s", "floor img/s", "peer img/s", "ours / floor",
               "peer / ours", "peer / floor", "floor", "ours peak RSS GB", "first call s", "Keras model s",
               "written s"]
    table([[row["method"], f"{row['images']} x {row['count']}", per_second(row, "ours_s"),
            per_second(row, "floor_s"), per_second(row, "peer_s"), f"{row['ours_s'] / row['floor_s']:.2f}x",
            f"{row['peer_s'] / row['ours_s']:.1f}x" if "peer_s" in row else "-",
            f"{row['peer_s'] / row['floor_s']:.1f}x" if "peer_s" in row else "-", row["floor_kind"],
            f"{row['ours_peak_rss_gb']:.2f}", f"{row['first_call_s']:.1f}", seconds(row, "keras_model_s"),
            seconds(row, "written_s")] for row in rows], headers)
    print("\nours: the model frozen once (tf_cnnvis.load_model), maps as arrays. ours / floor: its time over "
          "the floor's (1.00x: as fast as the plain batched program); peer / ours: tf-keras-vis's time over "
          "ours; peer / floor: the most any library could gain over tf-keras-vis on this work. Peak RSS: the "
          "whole process after our calls (ResNet50 in Keras, its frozen graph and our "
          "imported copy included). First call: freezing and importing ResNet50 and a Grad-CAM of one image. "
          "Keras model: the same call given the Keras model, whose current weights are copied in every call. "
          "Written: with the PNG and TensorBoard pictures.")


if __name__ == "__main__":
    main()
