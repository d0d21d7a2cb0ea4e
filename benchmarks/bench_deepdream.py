"""DeepDream speed, each figure compared with another measured in the same run.

1. Time per iteration against the floor: one plain forward + backward pass
   of the same batch through the same graph (target: within 1.2x).
2. N classes in one batch against the same N classes one call each.
3. The original tf_cnnvis schedule (four classes per batch, one network run
   per tile) against ours (every class and every tile in one batch) on the
   same model, tiles and iteration count.

Run: ``python benchmarks/bench_deepdream.py`` (add ``--quick`` for fewer
rounds). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tf_cnnvis import load, models, rebuild
from tf_cnnvis.deepdream import deepdream_visualization, normalize, objectives
from tf_cnnvis.deepdream.render import NetworkObjective
from tf_cnnvis.deepdream.tiling import TilePlan
from tf_cnnvis.feeds import resolve_feed
from tf_cnnvis.layers import select_layers

OFF = dict(path_logdir=None, path_outdir=None)


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def interleaved(rounds, first, second):
    """Median times of two functions run alternately, so machine load hits both alike."""
    times = [(timed(first), timed(second)) for _ in range(rounds)]
    return float(np.median([t[0] for t in times])), float(np.median([t[1] for t in times]))


def iteration_vs_floor(rounds, frozen, images, layer, classes, kind, **options):
    """Median seconds of one DeepDream iteration and of one forward + backward pass.

    Iterations are timed by the progress callback inside one call (setup
    excluded); the floor runs the same objective ops on a batch of the same
    size, alternating with the DeepDream calls.
    """
    rebuilt = rebuild.rebuild(frozen, "gradient")
    info = select_layers(rebuilt.graph, frozen, [layer])[0]
    feed = resolve_feed(frozen, rebuilt.graph, images)
    ops = objectives.build(rebuilt, feed.input_name, info.tensor, kind)
    noise = np.random.default_rng(0).normal(0, 0.1 * images.std(), (len(classes),) + images.shape[1:])
    batch = (images + noise).astype(np.float32)  # inputs like those the optimizer feeds
    feed_dict = {ops.index: np.asarray(classes, np.int32), **feed.with_images(batch)}
    stamps, dream, base = [], [], []

    def dream_once():
        stamps.clear()
        deepdream_visualization(frozen, images, layer, classes, iterations=6, octaves=1,
                                progress=lambda _: stamps.append(time.perf_counter()), **OFF, **options)
        dream.extend(np.diff(stamps))

    dream_once()  # warm up
    dream.clear()
    for _ in range(rounds):
        dream_once()
        base.extend(timed(lambda: rebuilt.session.run([ops.values, ops.gradient], feed_dict))
                    for _ in range(5))
    return float(np.median(dream)), float(np.median(base))


def original_schedule(objective: NetworkObjective, images, targets, iterations, group=4):
    """The original's loop: four classes per batch, one network run per tile."""
    plan = TilePlan.for_image(images.shape[1:3], objective.tile_size)
    th, tw = plan.tile_size
    images = images.copy()
    for begin in range(0, len(targets), group):
        part = slice(begin, begin + group)
        for _ in range(iterations):
            tiles = np.zeros_like(images[part])
            for y, x in plan.corners:
                _, grad = objective(images[part, y:y + th, x:x + tw], targets[part])
                tiles[:, y:y + th, x:x + tw] += grad
            images[part] = np.clip(images[part] + 0.01 * normalize.std(tiles), -1, 1)
    return images


def ours_schedule(objective: NetworkObjective, images, targets, iterations):
    images = images.copy()
    for _ in range(iterations):
        _, grad = objective(images, targets)
        images = np.clip(images + 0.01 * normalize.std(grad), -1, 1)
    return images


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    rounds = 2 if args.quick else 6
    rows = []

    emotion = load.load_model(models.emotion_model())
    face = models.emotion_preprocess(models.sample_image("face"))[None]
    classes = list(range(7))

    # 1. per iteration against the forward+backward floor
    iteration, base = iteration_vs_floor(rounds, emotion, face, "predictions", classes, "unit", tile_size=64)
    rows.append(("emotion, 7 classes, 64x64: one iteration vs one forward+backward",
                 f"{iteration * 1e3:.1f} ms", f"{base * 1e3:.1f} ms", iteration / base))
    vgg = load.load_model(models.vgg16())
    cat = models.vgg16_preprocess(models.sample_image("chelsea", 128))[None]
    iteration, base = iteration_vs_floor(max(1, rounds // 2), vgg, cat, "block4_conv3", [0, 1, 2, 3],
                                         "channel")
    rows.append(("VGG16 block4_conv3, 4 channels, 128x128: one iteration vs one forward+backward",
                 f"{iteration * 1e3:.0f} ms", f"{base * 1e3:.0f} ms", iteration / base))

    # 2. N classes batched against N calls of one class
    iterations = 20
    batched, one_by_one = interleaved(rounds, lambda: deepdream_visualization(
        emotion, face, "predictions", classes, iterations=iterations, octaves=1, tile_size=64, **OFF),
        lambda: [deepdream_visualization(emotion, face, "predictions", [k], iterations=iterations,
                                         octaves=1, tile_size=64, **OFF) for k in classes])
    rows.append((f"7 classes x {iterations} iterations: one call per class vs all in one batch",
                 f"{one_by_one:.2f} s", f"{batched:.2f} s", one_by_one / batched))

    # 3. the original schedule against ours, same tiles and work
    rebuilt = rebuild.rebuild(emotion, "gradient")
    info = select_layers(rebuilt.graph, emotion, ["predictions"])[0]
    feed = resolve_feed(emotion, rebuilt.graph, face)
    ops = objectives.build(rebuilt, feed.input_name, info.tensor, "unit")
    objective = NetworkObjective(rebuilt, feed, ops, info, (-1, 1), (64, 64))
    large = np.random.default_rng(0).uniform(-0.1, 0.1, (7, 160, 160, 1)).astype(np.float32)
    targets = np.arange(7)
    tiles = TilePlan.for_image((160, 160), (64, 64)).count
    original_schedule(objective, large, targets, 1)  # warm up
    ours_schedule(objective, large, targets, 1)
    old, new = interleaved(rounds, lambda: original_schedule(objective, large, targets, 3),
                           lambda: ours_schedule(objective, large, targets, 3))
    rows.append((f"7 classes, 160x160 on the 64x64 model ({tiles} tiles), 3 iterations: "
                 "original schedule vs ours", f"{old:.2f} s", f"{new:.2f} s", old / new))

    print("| measurement | A | B | A / B |")
    print("|---|---|---|---|")
    for name, first, second, ratio in rows:
        print(f"| {name} | {first} | {second} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
