"""Top activations at dataset scale: scan speed against ``model.predict``, and flat memory.

    python benchmarks/bench_top_activations.py [--images 10000] [--repeats 3] [--jit]

1. Images per second of the scan (``top_activations`` with no reconstructions
   and nothing written) against Keras ``model.predict`` over the same array
   with the same batch size, on the digits CNN of ``examples/train_digits.py``.
   The two alternate, best of ``--repeats`` each (the machine may be shared).
2. Peak resident memory of a fresh process that scans 1,000 and then one that
   scans 10,000 images streamed from a generator (the dataset is never in
   memory as a whole): it must stay flat.
3. For information: a full call (scan, deconvnet reconstructions of every
   kept unit, PNGs, HTML pages and the .h5 file) on 1,000 images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, os.path.join(HERE, ".."))

import numpy as np  # noqa: E402

LAYERS = ["conv1", "conv2", "conv3"]


def digits_stream(count: int, batch: int = 64, seed: int = 0):
    """``count`` distinct images (digits with fresh noise), one batch at a time."""
    import train_digits

    x_train, _, _, _ = train_digits.load_data()
    rng = np.random.default_rng(seed)
    for begin in range(0, count, batch):
        size = min(batch, count - begin)
        picks = x_train[rng.integers(0, len(x_train), size)]
        yield (picks + rng.normal(0, 0.05, picks.shape)).astype(np.float32)


def trained_model():
    import train_digits

    x_train, y_train, _, _ = train_digits.load_data()
    model = train_digits.build_model()
    model.fit(x_train, y_train, epochs=3, batch_size=32, verbose=0)
    return model


def memory_child(count: int, jit: bool):
    from tf_cnnvis.top_activations import top_activations

    model = trained_model()
    began = time.perf_counter()
    result = top_activations(model, digits_stream(count), LAYERS, k=9, batch_size=64, reconstruct=False,
                             path_outdir=None, jit_compile=jit)
    seconds = time.perf_counter() - began
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"count": result.count, "peak_mb": peak_mb, "seconds": seconds,
                      "kept_images": int(len(result.image_index))}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--jit", action="store_true", help="scan with jit_compile=True")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.jit)
        return

    from tf_cnnvis.top_activations import top_activations

    model = trained_model()
    data = np.concatenate(list(digits_stream(args.images)))
    print(f"digits CNN, {len(data)} images of {data.shape[1:]}, batch {args.batch_size}, "
          f"layers {LAYERS}, jit_compile={args.jit}, {os.cpu_count()} CPUs")

    def predict():
        model.predict(data, batch_size=args.batch_size, verbose=0)

    def scan():
        top_activations(model, data, LAYERS, k=9, batch_size=args.batch_size, reconstruct=False,
                        path_outdir=None, jit_compile=args.jit)

    predict(), scan()  # warm up: tracing and compilation are not throughput
    best = {"predict": np.inf, "scan": np.inf}
    for _ in range(args.repeats):
        for name, run in (("predict", predict), ("scan", scan)):
            began = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - began)
    rates = {name: len(data) / seconds for name, seconds in best.items()}
    print(f"model.predict     {rates['predict']:8.0f} images/s")
    print(f"top-k scan        {rates['scan']:8.0f} images/s")
    print(f"scan / predict    {rates['scan'] / rates['predict']:8.2f}   (target >= 0.8)")

    peaks = {}
    for count in (1000, args.images):
        command = [sys.executable, os.path.abspath(__file__), "--memory-child", str(count)]
        if args.jit:
            command.append("--jit")
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        peaks[count] = json.loads(output.strip().splitlines()[-1])
        print(f"peak RSS scanning {count:6d} streamed images: {peaks[count]['peak_mb']:7.0f} MB "
              f"({peaks[count]['kept_images']} images kept, {peaks[count]['seconds']:.1f} s)")
    small, large = peaks[1000]["peak_mb"], peaks[args.images]["peak_mb"]
    print(f"peak RSS {args.images} / 1000 images: {large / small:.3f}  (+{large - small:.0f} MB)")

    with tempfile.TemporaryDirectory() as folder:
        began = time.perf_counter()
        result = top_activations(model, data[:1000], LAYERS, k=9, batch_size=args.batch_size,
                                 path_outdir=folder, jit_compile=args.jit)
        seconds = time.perf_counter() - began
    channels = sum(len(tops.channels) for tops in result.layers.values())
    print(f"full call on 1000 images ({channels} channels x 9: reconstructions, "
          f"{len(result.paths)} files): {seconds:.1f} s")


if __name__ == "__main__":
    main()
