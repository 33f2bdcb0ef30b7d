"""Fine-tuning check (prints figures; not a test): does a detection backbone help segmentation?

    python -m tasks.benchmarks.finetune_from_detection --detection-ckpt outputs/detection/<run>/checkpoints/best.ckpt

Trains the default segmentation task on the built-in shapes twice with the same small step
budget and seed: once from scratch, once with ``backbone.init=<detection checkpoint>``
(the ResNet body of a ``make train`` run), then prints both validation mIoUs. Both runs use
trainable BatchNorm so that only the starting weights differ.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from tasks.benchmarks.runs import timed_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--detection-ckpt", required=True, type=Path)
    parser.add_argument("--backbone", default="resnet18", help="the detection run's backbone (make train: resnet18)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--backbone-lr-mult", type=float, default=1.0)
    args = parser.parse_args()
    if not args.detection_ckpt.is_file():
        raise SystemExit(f"{args.detection_ckpt} not found: run `make train` and pass its checkpoints/best.ckpt")
    common = [
        "task=segmentation",
        f"backbone={args.backbone}",
        f"trainer.max_steps={args.steps}",
        "trainer.enable_progress_bar=false",
        "backbone.norm=bn",
        "trainer.check_val_every_n_epoch=1000",
    ]
    finetune = [
        f"backbone.init={args.detection_ckpt.resolve()}",
        f"task.module.backbone_lr_mult={args.backbone_lr_mult}",
    ]
    with tempfile.TemporaryDirectory() as tmp:
        scratch, scratch_time = timed_run(common, Path(tmp) / "scratch")
        tuned, tuned_time = timed_run([*common, *finetune], Path(tmp) / "finetune")
    print(f"\nsegmentation on shapes, {args.backbone}, {args.steps} steps each, same seed and recipe")
    print(
        f"  from scratch:                 miou {scratch['miou']:.4f}  pixel_acc {scratch['pixel_acc']:.4f}  "
        f"({scratch_time:.0f} s)"
    )
    print(
        f"  backbone from detection ckpt: miou {tuned['miou']:.4f}  pixel_acc {tuned['pixel_acc']:.4f}  "
        f"({tuned_time:.0f} s)"
    )


if __name__ == "__main__":
    main()
