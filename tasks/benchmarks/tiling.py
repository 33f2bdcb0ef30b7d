"""Large images, small objects (prints figures; not a test): tiles against whole images.

    python -m tasks.benchmarks.tiling [--image-size 1024 --tile 256 --steps 300]

Generates the shapes in the YOLO layout as large images crowded with small objects (12-40 px),
then trains the same detector twice with the same seed, steps and batch: on whole images brought
to ``--tile`` pixels (objects shrink to a few pixels), and on ``--tile`` pixel tiles at full
resolution with sliced inference for validation. Both fit their anchors to what they see
(``anchor_sizes=auto``) and score the same validation images, on the original pixels.

Whether slicing should add the whole-image pass (``slicing.full_image``) is chosen on a held-out tuning
split (``--num-val`` images drawn with another seed, neither trained on nor reported), then the choice is
scored on the validation split.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from tasks.benchmarks.machine import cpu_description
from tasks.benchmarks.runs import timed_run, tune_on_held_out
from tasks.core.runner import evaluate
from tasks.data.shapes import ShapesSpec, ensure_shapes

SHOWN = ("map_50", "map", "map_small", "mar_100")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--tile", type=int, default=256, help="tile size, and the whole-image run's input size")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-train", type=int, default=32)
    parser.add_argument("--num-val", type=int, default=8)
    parser.add_argument("--objects", type=int, nargs=2, default=(10, 25), metavar=("MIN", "MAX"))
    args = parser.parse_args()
    spec = ShapesSpec(
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=args.image_size,
        min_objects=args.objects[0],
        max_objects=args.objects[1],
        min_object_size=12,
        max_object_size=40,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_shapes(Path(tmp) / "large", spec, layout="yolo")
        common = [
            "task=detection",
            "dataset=yolo",
            f"dataset.root={root}",
            "dataset.num_workers=0",
            "dataset.resize_longest=null",
            f"dataset.batch_size={args.batch_size}",
            "dataset.val_batch_size=1",
            "backbone=resnet18",
            "task.model.anchor_sizes=auto",
            f"task.model.min_size={args.tile}",
            f"task.model.max_size={args.tile}",
            "task.model.fpn_norm=bn",
            # the shapes recipe's light heads (the defaults are sized for COCO on a GPU)
            "task.model.fpn_channels=128",
            "task.model.representation_size=512",
            "task.model.rpn_pre_nms_top_n_train=1000",
            "task.model.rpn_post_nms_top_n_train=500",
            "task.model.rpn_pre_nms_top_n_test=1000",
            "task.model.rpn_post_nms_top_n_test=300",
            "task.model.box_batch_size_per_image=128",
            "task.module.optimizer.name=adamw",
            "task.module.optimizer.lr=0.001",
            "task.module.scheduler.warmup_steps=50",
            "task.module.scheduler.decay=cosine",
            f"trainer.max_steps={args.steps}",
            "trainer.max_epochs=-1",
            "trainer.check_val_every_n_epoch=100000",  # one validation, of the final weights
            "trainer.enable_progress_bar=false",
        ]
        tiles = [f"dataset.tile.size={args.tile}", "dataset.tile.overlap=0.2", "dataset.tile.keep_empty=0.1"]
        whole, whole_time = timed_run(common, Path(tmp) / "whole")
        tiled, tiled_time = timed_run([*common, *tiles], Path(tmp) / "tiles")  # sliced with the whole image
        # slicing.full_image chosen on held-out images, then the choice scored on validation
        checkpoint = Path(tmp) / "tiles" / "checkpoints" / "best.ckpt"
        tuning_root = ensure_shapes(Path(tmp) / "tuning", replace(spec, seed=spec.seed + 1, num_train=1), layout="yolo")
        full_image = {"true": ["slicing.full_image=true"], "false": ["slicing.full_image=false"]}
        tuning = [f"dataset.root={tuning_root}"]
        chosen, tuned = tune_on_held_out(checkpoint, [*common, *tiles], tuning, full_image, "map_50", Path(tmp))
        tiles_only, tiles_only_time = timed_run(
            [*common, *tiles, f"ckpt_path={checkpoint}", "slicing.full_image=false"], Path(tmp) / "eval", evaluate
        )
    print(f"\nmachine: {cpu_description()}")
    print(
        f"command: python -m tasks.benchmarks.tiling --image-size {args.image_size} --tile {args.tile} "
        f"--steps {args.steps} --batch-size {args.batch_size}"
    )
    print(
        f"data: {args.num_train} train / {args.num_val} val images of {args.image_size} px, "
        f"{args.objects[0]}-{args.objects[1]} objects of 12-40 px each; Faster R-CNN R18-FPN (light heads), "
        f"{args.steps} steps of {args.batch_size}, same seed"
    )
    rows = (
        ("whole images", whole, f"{whole_time:.0f} s, training and validation"),
        ("tiles, sliced", tiled, f"{tiled_time:.0f} s, training and validation (tiles + the whole image)"),
        ("  tiles only", tiles_only, f"{tiles_only_time:.0f} s, validation of the same weights on tiles only"),
    )
    for name, metrics, note in rows:
        figures = "  ".join(f"{key} {metrics[key]:.3f}" for key in SHOWN)
        print(f"  {name:15s} {figures}  ({note})")
    tuned_figures = ", ".join(f"full_image={name}: map_50 {value:.3f}" for name, value in tuned.items())
    print(
        f"on {args.num_val} held-out tuning images (seed {spec.seed + 1}): {tuned_figures}; chosen full_image={chosen}"
    )
    chosen_val = tiled if chosen == "true" else tiles_only
    ratio = chosen_val["map_50"] / max(whole["map_50"], 1e-9)
    print(
        f"tiles_vs_whole_map50={ratio:.2f}x (tiles with full_image={chosen}, chosen on the tuning split) "
        f"map_small: {chosen_val['map_small']:.3f} vs {whole['map_small']:.3f}"
    )


if __name__ == "__main__":
    main()
