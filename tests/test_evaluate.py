"""tasks/evaluate.py on a Mask R-CNN checkpoint: box and mask stats equal pycocotools run directly on the
written predictions.json and segmentations.json; 2 DDP processes give the same numbers as one."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from tasks.data.formats.coco import load_coco
from tasks.data.shapes import ShapesSpec, ensure_shapes
from tasks.metrics.coco_eval import COCO_STAT_NAMES
from tasks.runner import evaluate, train
from tests.coco_folder import pycocotools_stats
from tests.conftest import CPU_DDP, TINY_DETECTION, TINY_SHAPES, compose_config, run_script, shapes_overrides

MASK_STAT_NAMES = tuple(f"mask_{name}" for name in COCO_STAT_NAMES)
TINY_MASKS = ["task=instance_segmentation", "task.model.mask_layers=[32,32]", "task.model.mask_predictor_channels=32"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], Path]:
    """A 3-step checkpoint, the overrides it was trained with (scores thresholded at 0 so it predicts)
    and its data."""
    tmp = tmp_path_factory.mktemp("evaluate")
    # 7 validation images: two ranks get 4 each, so the sampler repeats one image
    spec = ShapesSpec(**{**TINY_SHAPES.__dict__, "num_val": 7})
    root = ensure_shapes(tmp / "shapes7", spec)
    overrides = [
        *TINY_MASKS,
        "backbone=resnet18",
        *TINY_DETECTION,
        *shapes_overrides(root),
        "dataset.num_val=7",
        "dataset.val_batch_size=2",
        "task.model.box_score_thresh=0.0",
        "trainer.enable_progress_bar=false",
    ]
    train(compose_config([*overrides, "trainer.max_steps=3"], tmp / "train"))
    return Path(_checkpoint(tmp / "train")), overrides, root


def _checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["checkpoint"]


def _outputs(run_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    read = lambda name: json.loads((run_dir / name).read_text())  # noqa: E731
    return read("metrics.json"), read("predictions.json"), read("segmentations.json")


@pytest.fixture(scope="module")
def one_process(trained, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, list[dict], list[dict], str]:
    checkpoint, overrides, _ = trained
    run_dir = tmp_path_factory.mktemp("eval-one")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluate(compose_config([*overrides, f"ckpt_path={checkpoint}"], run_dir))
    return (*_outputs(run_dir), out.getvalue())


def test_box_and_mask_stats_equal_pycocotools_on_the_written_files(trained, one_process) -> None:
    metrics, predictions, segmentations, stdout = one_process
    assert len(predictions) == len(segmentations) > 0
    assert {"image_id", "category_id", "bbox", "score"} <= set(predictions[0])
    assert set(segmentations[0]["segmentation"]) == {"size", "counts"}  # RLE, counts as a string
    for name in ("circle", "square", "triangle", "cross"):
        assert name in stdout and {"ap", "mask_ap"} <= set(metrics["per_class"][name])
    assert metrics["loss"] > 0 and "loss_mask" in metrics  # validation loss, same loop as mAP
    # a few steps leave the stats near zero: tests/test_coco_eval.py compares non-trivial ones
    coco_gt = load_coco(trained[2] / "annotations" / "instances_val2017.json")
    for names, rows, iou_type in ((COCO_STAT_NAMES, predictions, "bbox"), (MASK_STAT_NAMES, segmentations, "segm")):
        for name, value in zip(names, pycocotools_stats(coco_gt, rows, iou_type), strict=True):
            assert metrics[name] == pytest.approx(value, abs=1e-9), name


def test_two_ddp_processes_match_one(trained, one_process, tmp_path: Path) -> None:
    checkpoint, overrides, _ = trained
    single, single_predictions, single_masks, _ = one_process
    run_dir = tmp_path / "two"
    result = run_script("evaluate.py", [*overrides, *CPU_DDP, f"ckpt_path={checkpoint}", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    double, double_predictions, double_masks = _outputs(run_dir)
    for name in (*COCO_STAT_NAMES, *MASK_STAT_NAMES):
        assert double[name] == pytest.approx(single[name], abs=1e-6), name
    # the repeated image is counted once
    assert len(double_predictions) == len(single_predictions) == len(double_masks) == len(single_masks)
    # batches are composed differently across ranks, so scores agree to float precision, not bit for bit
    for image_id in {r["image_id"] for r in single_predictions}:
        ones = sorted(r["score"] for r in single_predictions if r["image_id"] == image_id)
        twos = sorted(r["score"] for r in double_predictions if r["image_id"] == image_id)
        assert twos == pytest.approx(ones, abs=1e-4)
