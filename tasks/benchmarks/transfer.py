"""Does classification pre-training help detection? (prints figures; not a test)

    python -m tasks.benchmarks.transfer [--classification-ckpt outputs/classification/<run>/checkpoints/best.ckpt]

Without a checkpoint it first runs the default classification task (``python tasks/train.py
task=classification``: ResNet18 on the built-in shapes_cls). Then it trains detection on the
built-in shapes twice with the same steps, seed and recipe: from scratch, and with
``backbone.init=<classification checkpoint>``. Both detection runs train BatchNorm, so that only
the starting weights differ. It prints map_50 (and map) of both on the 200 validation images.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tasks.benchmarks.finetune_from_detection import run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classification-ckpt", type=Path, help="a task=classification best.ckpt (ResNet18)")
    parser.add_argument("--steps", type=int, default=250, help="detection steps of each run")
    args = parser.parse_args()
    quiet = ["trainer.enable_progress_bar=false"]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.classification_ckpt
        if checkpoint is None:
            metrics, seconds = run(["task=classification", *quiet], Path(tmp) / "classification")
            checkpoint = Path(tmp) / "classification" / "checkpoints" / "best.ckpt"
            print(f"classification pre-training: top1 {metrics['top1']:.4f} ({seconds:.0f} s)")
        elif not checkpoint.is_file():
            raise SystemExit(f"{checkpoint} not found: run python tasks/train.py task=classification first")
        common = [
            "task=detection",
            "backbone=resnet18",
            "backbone.norm=bn",
            f"trainer.max_steps={args.steps}",
            "trainer.check_val_every_n_epoch=1000",  # one validation, at the end
            *quiet,
        ]
        scratch, scratch_time = run(common, Path(tmp) / "scratch")
        pretrained, pretrained_time = run([*common, f"backbone.init={checkpoint.resolve()}"], Path(tmp) / "pretrained")
    print(f"\ndetection on shapes, resnet18, {args.steps} steps each, same seed and recipe")
    for name, metrics, seconds in (
        ("from scratch", scratch, scratch_time),
        ("classification-pretrained", pretrained, pretrained_time),
    ):
        print(f"  {name:<26} map_50 {metrics['map_50']:.4f}  map {metrics['map']:.4f}  ({seconds:.0f} s)")
    print(f"map_50_scratch={scratch['map_50']:.4f} map_50_pretrained={pretrained['map_50']:.4f}")


if __name__ == "__main__":
    main()
