"""Fuzz the model loaders: mutated model files of every kind, tallied by outcome.

    python benchmarks/fuzz_models.py [--cases 10000] [--seed 0] [--workers 2] [--timeout 30]

Builds small seed models (frozen .pb and .pbtxt, a TF1 checkpoint, a
SavedModel, .keras, Keras 3 and Keras 2 style .h5), mutates them (see
``tests/model_fuzz.py``) and runs each case in a worker process:
``tf_cnnvis.load_model(path)`` and, when that works,
``activation_visualization`` on an 8x8 image (every third case also
``deconv_visualization`` of channel 0). A case succeeds, or raises a
library error; anything else is a bug: another exception, a crash, a hang
past ``--timeout``, a file written outside the case's folders or a partial
file left in them. Prints the tally by outcome and by kind, and every bug
with the command that replays it. Exits 1 when there is a bug.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

import model_fuzz  # noqa: E402
from common import cpu_model, table  # noqa: E402



def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10000, help="mutated cases to run")
    parser.add_argument("--seed", type=int, default=0, help="the same seed gives the same cases")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--timeout", type=float, default=model_fuzz.DEFAULT_TIMEOUT,
                        help="seconds a case may take before it counts as a hang")
    parser.add_argument("--seeds-dir", help="keep the seed models here (reused when present)")
    parser.add_argument("--json", help="write every case's result to this file")
    args = parser.parse_args()

    import tensorflow as tf

    print(f"{args.cases} cases, seed {args.seed}, {args.workers} workers, {args.timeout:.0f} s per case; "
          f"{cpu_model()}, {os.cpu_count()} CPU cores, TensorFlow {tf.__version__}", flush=True)
    done = collections.Counter()
    lock = threading.Lock()
    began = time.perf_counter()

    def progress(result):
        with lock:
            done["cases"] += 1
            done["bugs"] += model_fuzz.is_bug(result["outcome"])
            if done["cases"] % 500 == 0:
                seconds = time.perf_counter() - began
                print(f"  {done['cases']} cases, {done['bugs']} bugs, {seconds:.0f} s "
                      f"({done['cases'] / seconds:.1f} cases/s)", flush=True)

    with tempfile.TemporaryDirectory() as scratch:
        results = model_fuzz.fuzz(args.cases, args.seed, scratch, workers=args.workers, timeout=args.timeout,
                                  seeds_dir=args.seeds_dir, on_result=progress)
    seconds = time.perf_counter() - began
    clean = [result for result in results if result["index"] < 0]
    results = [result for result in results if result["index"] >= 0]
    overall, by_kind = model_fuzz.tally(results)
    outcomes = sorted(overall, key=lambda outcome: (model_fuzz.is_bug(outcome), -overall[outcome]))

    print(f"\nunchanged seed models: {sum(r['outcome'] == 'ok' for r in clean)} of {len(clean)} ok")
    print(f"\nby outcome ({len(results)} cases):\n")
    table([(outcome, overall[outcome], f"{100 * overall[outcome] / len(results):.1f}%",
            "BUG" if model_fuzz.is_bug(outcome) else "") for outcome in outcomes],
          ["outcome", "cases", "share", ""])
    print("\nby kind:\n")
    table([(kind, sum(by_kind.get(kind, {}).values()), *(by_kind.get(kind, {}).get(o, 0) for o in outcomes))
           for kind in model_fuzz.KINDS], ["kind", "cases", *outcomes])
    slowest = max(results, key=lambda result: result.get("seconds", 0))
    bugs = [result for result in results + clean if model_fuzz.is_bug(result["outcome"])]
    print(f"\n{len(bugs)} bugs; {seconds:.0f} s wall ({len(results) / seconds:.1f} cases/s); slowest case "
          f"{slowest.get('seconds', 0):.1f} s ({slowest['label'][:100]})")
    if bugs:
        print(f"\nreplay one with: python tests/model_fuzz.py --replay INDEX --seed {args.seed}\n")
        print(model_fuzz.bug_report(bugs))
    if args.json:
        with open(args.json, "w") as stream:
            json.dump(clean + results, stream)
    sys.exit(1 if bugs else 0)


if __name__ == "__main__":
    main()
