"""Peak memory of a 4096-channel layer at 224 px under different ``memory_budget_mb``.

The net: conv3x3 16 -> pool -> conv3x3 32 -> pool -> conv3x3 64 -> pool ->
conv1x1 4096 (+ ReLU) at 28x28, one 224x224 image, whole-map deconvnet
reconstructions of all 4096 channels. Each budget runs in a fresh process
(peak RSS is per process), which reports:

  base     resident memory after TensorFlow, the model and the graph are
           loaded, before the call;
  peak     peak resident memory of the whole process;
  chunk    the number of reconstructions per backward pass the budget chose;
  result   the size of the returned ``(N, C, 224, 224, 3)`` float32 array,
           which the call must hold whatever the budget.

``peak - base - result`` is what the budget actually bounds (the working
memory of the backward passes plus rendering); the ratio column compares
it with the budget. ``--write`` also renders the 4096-cell grid to disk.

Run:  python benchmarks/bench_memory.py                   (budgets 256, 1024, 4096 MB)
      python benchmarks/bench_memory.py --budgets 512 --channels 4096 --write
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


def measure(budget: float, channels: int, write: bool) -> dict:
    """One budget, in this process (run it in a fresh one)."""
    import time

    from common import image, peak_rss_gb

    import tf_cnnvis
    from tf_cnnvis import compute

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
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        result = tf_cnnvis.deconv_visualization(
            graph, feed, layers=["wide"], memory_budget_mb=budget, path_logdir=None,
            path_outdir=os.path.join(folder, "out") if write else None)
        seconds = time.perf_counter() - start
    array = result.arrays["wide"]["deconvnet"]
    return {"budget_mb": budget, "chunk": chosen[0], "base_gb": base, "peak_gb": peak_rss_gb(),
            "result_gb": array.nbytes / 2**30, "seconds": seconds, "shape": list(array.shape)}


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as stream:
        pages = int(stream.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**30


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--channels", type=int, default=4096)
    parser.add_argument("--write", action="store_true", help="also write the grid PNG")
    parser.add_argument("--one", type=float, help=argparse.SUPPRESS)  # child process mode
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.channels, args.write)))
        return
    rows = []
    for budget in args.budgets:
        command = [sys.executable, __file__, "--one", str(budget), "--channels", str(args.channels)]
        command += ["--write"] if args.write else []
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"budget {budget:g} MB failed:\n{done.stderr[-3000:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(f"{args.channels}-channel layer at {SIZE} px, deconvnet whole maps, 1 image"
          f"{', grid PNG written' if args.write else ''}")
    print(f"{'budget MB':>9} | {'chunk':>5} | {'base GB':>7} | {'peak GB':>7} | {'result GB':>9} | "
          f"{'work GB':>7} | {'work/budget':>11} | {'seconds':>7}")
    for row in rows:
        work = row["peak_gb"] - row["base_gb"] - row["result_gb"]
        print(f"{row['budget_mb']:>9g} | {row['chunk']:>5} | {row['base_gb']:>7.2f} | {row['peak_gb']:>7.2f} | "
              f"{row['result_gb']:>9.2f} | {work:>7.2f} | {work * 1024 / row['budget_mb']:>11.2f} | "
              f"{row['seconds']:>7.1f}")


if __name__ == "__main__":
    main()
