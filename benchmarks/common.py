"""Shared pieces of the benchmarks: the reference net, timing and memory helpers."""

from __future__ import annotations

import os
import platform
import resource
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

BLOCK_CHANNELS = (32, 64, 64, 128, 128)


def five_block_graph(seed: int = 0) -> tf.Graph:
    """The reference net: 5 x (conv3x3 + bias + ReLU + maxpool 2x2), 32/64/64/128/128 channels.

    A TF1-style graph with a placeholder ``x``, the way the original
    tf_cnnvis was used; weights are He-initialized constants.
    """
    rng = np.random.default_rng(seed)
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [None, None, None, 3], name="x")
        h, previous = x, 3
        for block, channels in enumerate(BLOCK_CHANNELS, start=1):
            kernel = rng.normal(0, np.sqrt(2 / (9 * previous)), (3, 3, previous, channels)).astype(np.float32)
            bias = rng.normal(0, 0.05, channels).astype(np.float32)
            h = tf.nn.conv2d(h, kernel, 1, "SAME", name=f"conv{block}") + bias
            h = tf.nn.relu(h, name=f"relu{block}")
            h = tf.nn.max_pool2d(h, 2, 2, "SAME", name=f"pool{block}")
            previous = channels
    return graph


def image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 1, (1, size, size, 3)).astype(np.float32)


def timed(function, repeat: int = 1):
    """(best seconds over ``repeat`` runs, last result)."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def cpu_model() -> str:
    """The CPU's model name, which the benchmarks print: ratios move between CPUs."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_gb() -> float:
    """Peak resident memory of this process so far, in GB.

    Linux's ``VmHWM``, the high-water mark of this program's own memory:
    ``getrusage``'s ``ru_maxrss`` keeps the parent's peak across fork and
    exec, so a memory case run in a fresh process from a large benchmark
    process would report the parent's size (9.8 GB for a case that peaks
    at 2.2 GB).
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def table(rows, headers):
    widths = [max(len(str(h)), *(len(str(row[i])) for row in rows)) for i, h in enumerate(headers)]
    line = " | ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-|-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)))
