"""Top activations at dataset scale: scan speed against ``model.predict``, and flat memory.

    python benchmarks/bench_top_activations.py [--model digits|vgg16] [--images N] [--repeats 3] [--jit]

1. Images per second of the scan (``top_activations`` with no reconstructions
   and nothing written) against Keras ``model.predict`` over the same array
   with the same batch size. The two alternate, ``--repeats`` times each
   (the machine may be shared); the ratio is taken on the best run of each,
   and printed on the medians too. Models: the digits CNN of
   ``examples/train_digits.py`` (16 px, trained for 3 epochs; layers
   conv1-conv3), or VGG16 at 224 px (``keras.applications.VGG16``,
   ``weights=None``, no classifier; the last convolution of each block).
2. Peak resident memory of a fresh process that scans the smaller and then
   one that scans the larger of ``--memory-sizes`` images streamed from a
   generator (the dataset is never in memory as a whole): it must stay flat.
   VGG16 keeps the top 2 of 4 channels per layer there, so that the kept
   images do not hide the stream.
3. For information, digits only: a full call (scan, deconvnet
   reconstructions of every kept unit, PNGs, HTML pages and the .h5 file)
   on 1,000 images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

from common import cpu_model, peak_rss_gb  # noqa: E402

MODELS = {
    # name: (layers, default images, default batch size, default memory sizes, memory test's options)
    "digits": (["conv1", "conv2", "conv3"], 10000, 64, (1000, 10000), {"k": 9}),
    # 1472 channels x 9 would keep every image of a short run; 4 channels x 2 keep at most 40.
    "vgg16": (["block1_conv2", "block2_conv2", "block3_conv3", "block4_conv3", "block5_conv3"], 64, 16,
              (32, 128), {"k": 2, "channels": [0, 1, 2, 3]}),
}



def digits_stream(count: int, batch: int = 64, seed: int = 0):
    """``count`` distinct images (digits with fresh noise), one batch at a time."""
    import train_digits

    x_train, _, _, _ = train_digits.load_data()
    rng = np.random.default_rng(seed)
    for begin in range(0, count, batch):
        size = min(batch, count - begin)
        picks = x_train[rng.integers(0, len(x_train), size)]
        yield (picks + rng.normal(0, 0.05, picks.shape)).astype(np.float32)


def vgg16_stream(count: int, batch: int = 16, seed: int = 0):
    """``count`` random 224 px images in VGG16's input range (mean-subtracted BGR), a batch at a time."""
    rng = np.random.default_rng(seed)
    for begin in range(0, count, batch):
        size = min(batch, count - begin)
        yield rng.uniform(-120, 135, (size, 224, 224, 3)).astype(np.float32)


def build(name: str):
    if name == "vgg16":
        import keras

        keras.utils.set_random_seed(0)
        return keras.applications.VGG16(weights=None, include_top=False, input_shape=(224, 224, 3))
    import train_digits

    x_train, y_train, _, _ = train_digits.load_data()
    model = train_digits.build_model()
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    return model


def stream(name: str, count: int, batch: int):
    return (vgg16_stream if name == "vgg16" else digits_stream)(count, batch)


def memory_child(name: str, count: int, batch: int, jit: bool):
    from tf_cnnvis.top_activations import top_activations

    model = build(name)
    layers, options = MODELS[name][0], MODELS[name][4]
    began = time.perf_counter()
    result = top_activations(model, stream(name, count, batch), layers, batch_size=batch, reconstruct=False,
                             path_outdir=None, jit_compile=jit, **options)
    seconds = time.perf_counter() - began
    peak_mb = peak_rss_gb() * 1024
    print(json.dumps({"count": result.count, "peak_mb": peak_mb, "seconds": seconds,
                      "kept_images": int(len(result.image_index))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="digits")
    parser.add_argument("--images", type=int, help="images in the speed test (digits 10000, vgg16 64)")
    parser.add_argument("--batch-size", type=int, help="digits 64, vgg16 16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-sizes", help="two image counts for the memory test (digits 1000,10000; "
                                               "vgg16 32,128); 0 skips it")
    parser.add_argument("--jit", action="store_true", help="scan with jit_compile=True")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    layers, default_images, default_batch, default_sizes, memory_options = MODELS[args.model]
    batch = args.batch_size or default_batch
    if args.memory_child:
        memory_child(args.model, args.memory_child, batch, args.jit)
        return

    import tensorflow as tf

    from tf_cnnvis.top_activations import top_activations

    model = build(args.model)
    data = np.concatenate(list(stream(args.model, args.images or default_images, batch)))
    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs; TensorFlow {tf.__version__}")
    print(f"{args.model}, {len(data)} images of {data.shape[1:]}, batch {batch}, layers {layers}, "
          f"jit_compile={args.jit}")

    def predict():
        model.predict(data, batch_size=batch, verbose=0)

    def scan():
        top_activations(model, data, layers, k=9, batch_size=batch, reconstruct=False, path_outdir=None,
                        jit_compile=args.jit)

    predict(), scan()  # warm up: tracing and compilation are not throughput
    times = {"predict": [], "scan": []}
    for _ in range(args.repeats):
        for name, run in (("predict", predict), ("scan", scan)):
            began = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - began)
    best = {name: len(data) / min(seconds) for name, seconds in times.items()}
    median = {name: len(data) / float(np.median(seconds)) for name, seconds in times.items()}
    print(f"model.predict     {best['predict']:9.2f} images/s  (median {median['predict']:.2f})")
    print(f"top-k scan        {best['scan']:9.2f} images/s  (median {median['scan']:.2f})")
    print(f"scan / predict    {best['scan'] / best['predict']:9.2f}   "
          f"(medians {median['scan'] / median['predict']:.2f}; target >= 0.8)")

    sizes = default_sizes if args.memory_sizes is None else tuple(
        int(size) for size in args.memory_sizes.split(",") if int(size) > 0)
    peaks = {}
    if sizes:
        print(f"memory test: {memory_options}")
    for count in sizes:
        command = [sys.executable, os.path.abspath(__file__), "--model", args.model, "--batch-size", str(batch),
                   "--memory-child", str(count)]
        if args.jit:
            command.append("--jit")
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[count] = json.loads(output.strip().splitlines()[-1])
        print(f"peak RSS scanning {count:6d} streamed images: {peaks[count]['peak_mb']:7.0f} MB "
              f"({peaks[count]['kept_images']} images kept, {peaks[count]['seconds']:.1f} s)")
    if len(sizes) == 2:
        small, large = (peaks[count]["peak_mb"] for count in sizes)
        print(f"peak RSS {sizes[1]} / {sizes[0]} images: {large / small:.3f}  (+{large - small:.0f} MB)")

    if args.model == "digits":
        with tempfile.TemporaryDirectory() as folder:
            began = time.perf_counter()
            result = top_activations(model, data[:1000], layers, k=9, batch_size=batch, path_outdir=folder,
                                     jit_compile=args.jit)
            seconds = time.perf_counter() - began
        channels = sum(len(tops.channels) for tops in result.layers.values())
        print(f"full call on 1000 images ({channels} channels x 9: reconstructions, "
              f"{len(result.paths)} files): {seconds:.1f} s")


if __name__ == "__main__":
    main()
