"""The panoptic merge's score threshold, chosen on a held-out split and reported on validation (prints
figures; not a test).

    python -m tasks.benchmarks.panoptic_merge --checkpoint outputs/panoptic_segmentation/<run>/checkpoints/best.ckpt

The checkpoint of the built-in main run (``python tasks/train.py task=panoptic_segmentation``) is scored
at each threshold on a tuning split that is neither trained on nor reported: 200 shapes over stuff drawn
with another seed (the same distribution, other images). The threshold with the best PQ there is then
scored on the validation split, beside every other threshold's validation PQ for reference.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tasks.benchmarks.machine import cpu_description
from tasks.benchmarks.runs import timed_run, tune_on_held_out
from tasks.core.runner import evaluate

THRESHOLDS = (0.2, 0.3, 0.4, 0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--tuning-images", type=int, default=200)
    parser.add_argument("--tuning-seed", type=int, default=1)
    args = parser.parse_args()
    task = ["task=panoptic_segmentation", "trainer.enable_progress_bar=false"]
    candidates = {str(t): [f"task.model.score_threshold={t}"] for t in THRESHOLDS}
    with tempfile.TemporaryDirectory() as tmp:
        tuning = [f"dataset.root={tmp}/tuning", f"dataset.seed={args.tuning_seed}", "dataset.num_train=1",
                  f"dataset.num_val={args.tuning_images}"]  # fmt: skip
        chosen, tuned = tune_on_held_out(Path(args.checkpoint), task, tuning, candidates, "pq", Path(tmp))
        validation = {}
        for name, extra in candidates.items():
            metrics, _ = timed_run([*task, *extra, f"ckpt_path={args.checkpoint}"], Path(tmp) / f"val_{name}", evaluate)
            validation[name] = metrics
    print(f"\nmachine: {cpu_description()}")
    print(f"command: python -m tasks.benchmarks.panoptic_merge --checkpoint {args.checkpoint}")
    print(f"tuning split: {args.tuning_images} images drawn with seed {args.tuning_seed}; validation: the run's own")
    for name in candidates:
        marker = "  <- chosen on the tuning split" if name == chosen else ""
        val = validation[name]
        print(f"  score_threshold {name}: tuning pq {tuned[name]:.3f}   validation pq {val['pq']:.3f} "
              f"(things {val['pq_things']:.3f}, stuff {val['pq_stuff']:.3f}){marker}")  # fmt: skip
    print(f"chosen_threshold={chosen} validation_pq={validation[chosen]['pq']:.4f}")


if __name__ == "__main__":
    main()
