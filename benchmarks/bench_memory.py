"""Peak memory of a 4096-channel layer at 224 px: held arrays against streamed pictures.

The net: conv3x3 16 -> pool -> conv3x3 32 -> pool -> conv3x3 64 -> pool ->
conv1x1 4096 (+ ReLU) at 28x28, one 224x224 image, whole-map deconvnet
reconstructions of all 4096 channels. Two modes, each budget in a fresh
process (peak RSS is per process):

  arrays    ``keep_arrays=True`` (the default), nothing written: the call
            returns the ``(N, C, 224, 224, 3)`` float32 array (2.3 GB);
  streamed  ``keep_arrays=False``, the 4096-cell grid PNG and its
            TensorBoard summary written: each chunk is rendered as it is
            computed and nothing else is kept.

Columns: base (resident memory after TensorFlow, the model and the graph
are loaded, before the call), peak (of the whole process), chunk (the
reconstructions per backward pass the budget chose), result (the returned
array), and work = peak - base - result, what the budget bounds.

Run:  python benchmarks/bench_memory.py                       (budgets 256 and 1024 MB, both modes)
      python benchmarks/bench_memory.py --budgets 512 --modes streamed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

SIZE = 224


def wide_graph(channels: int, seed: int = 0):
    """Three small conv blocks, then a 1x1 conv to ``channels`` channels named 'wide'."""
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        h = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="x")
        previous = 3
        for block, width in enumerate((16, 32, 64), start=1):
            kernel = rng.normal(0, (2 / (9 * previous)) ** 0.5, (3, 3, previous, width)).astype(np.float32)
            h = tf.nn.relu(tf.nn.conv2d(h, kernel, 1, "SAME") + 0.05, name=f"relu{block}")
            h = tf.nn.max_pool2d(h, 2, 2, "SAME", name=f"pool{block}")
            previous = width
        kernel = rng.normal(0, (2 / previous) ** 0.5, (1, 1, previous, channels)).astype(np.float32)
        tf.nn.relu(tf.nn.conv2d(h, kernel, 1, "SAME") + 0.05, name="wide")
    return graph


def measure(budget: float, channels: int, mode: str) -> dict:
    """One budget, in this process (run it in a fresh one)."""
    import time

    import tf_cnnvis
    from tf_cnnvis import compute

    from common import image, peak_rss_gb

    graph = wide_graph(channels)
    feed = {"x": image(SIZE)}
    tf_cnnvis.list_layers(graph)  # load and import before measuring the base
    chosen = []
    real_chunk_size = compute.chunk_size

    def recording_chunk_size(*args, **kwargs):
        chosen.append(real_chunk_size(*args, **kwargs))
        return chosen[-1]

    compute.chunk_size = recording_chunk_size
    base = _current_rss_gb()
    streamed = mode == "streamed"
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = tf_cnnvis.deconv_visualization(
            graph, feed, layers=["wide"], memory_budget_mb=budget, keep_arrays=not streamed,
            path_logdir=os.path.join(folder, "log") if streamed else None,
            path_outdir=os.path.join(folder, "out") if streamed else None)
        seconds = time.perf_counter() - start
        grid_mb = os.path.getsize(result.paths[0]) / 2**20 if streamed else 0.0
    held = 0.0 if streamed else result.arrays["wide"]["deconvnet"].nbytes / 2**30
    return {"mode": mode, "budget_mb": budget, "chunk": chosen[0], "base_gb": base, "peak_gb": peak_rss_gb(),
            "result_gb": held, "seconds": seconds, "grid_mb": grid_mb}


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as stream:
        pages = int(stream.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[256, 1024])
    parser.add_argument("--channels", type=int, default=4096)
    parser.add_argument("--modes", nargs="+", choices=["arrays", "streamed"], default=["arrays", "streamed"])
    parser.add_argument("--one", nargs=2, help=argparse.SUPPRESS)  # child process mode: MODE BUDGET
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(float(args.one[1]), args.channels, args.one[0])))
        return
    rows = []
    for mode in args.modes:
        for budget in args.budgets:
            command = [sys.executable, __file__, "--one", mode, str(budget), "--channels", str(args.channels)]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{mode}, budget {budget:g} MB failed:\n{done.stderr[-3000:]}")
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.channels}-channel layer at {SIZE} px, deconvnet whole maps, 1 image")
    print(f"{'mode':>8} | {'budget MB':>9} | {'chunk':>5} | {'base GB':>7} | {'peak GB':>7} | {'result GB':>9} | "
          f"{'work GB':>7} | {'work/budget':>11} | {'grid PNG MB':>11} | {'seconds':>7}")
    for row in rows:
        work = row["peak_gb"] - row["base_gb"] - row["result_gb"]
        print(f"{row['mode']:>8} | {row['budget_mb']:>9g} | {row['chunk']:>5} | {row['base_gb']:>7.2f} | "
              f"{row['peak_gb']:>7.2f} | {row['result_gb']:>9.2f} | {work:>7.2f} | "
              f"{work * 1024 / row['budget_mb']:>11.2f} | {row['grid_mb']:>11.1f} | {row['seconds']:>7.1f}")


if __name__ == "__main__":
    main()
