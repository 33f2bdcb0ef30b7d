"""tasks/evaluate.py: metrics and COCO results json that pycocotools scores identically; 2 DDP
processes give the same numbers as one."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
from pycocotools.cocoeval import COCOeval

from tasks.data.coco import load_coco
from tasks.data.shapes import ShapesSpec, ensure_shapes
from tasks.metrics.coco_eval import COCO_STAT_NAMES
from tests.conftest import CPU_DDP, TINY_DETECTION, TINY_SHAPES, run_script, shapes_overrides


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A 2-step checkpoint and the overrides it was trained with (scores thresholded at 0 so it predicts)."""
    tmp = tmp_path_factory.mktemp("evaluate")
    # 7 validation images: two ranks get 4 each, so the sampler repeats one image
    spec = ShapesSpec(**{**TINY_SHAPES.__dict__, "num_val": 7})
    root = ensure_shapes(tmp / "shapes7", spec)
    overrides = [
        "backbone=resnet18",
        *TINY_DETECTION,
        *shapes_overrides(root),
        "dataset.num_val=7",
        "dataset.val_batch_size=2",
        "task.model.box_score_thresh=0.0",
    ]
    result = run_script("train.py", [*overrides, "trainer.max_steps=2", f"hydra.run.dir={tmp / 'train'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return Path(json.loads((tmp / "train" / "metrics.json").read_text())["checkpoint"]), overrides


def _evaluate(trained, run_dir: Path, *extra: str) -> tuple[dict, list[dict], str]:
    checkpoint, overrides = trained
    result = run_script("evaluate.py", [*overrides, f"ckpt_path={checkpoint}", f"hydra.run.dir={run_dir}", *extra])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return metrics, json.loads((run_dir / "predictions.json").read_text()), result.stdout


def test_evaluate_writes_metrics_table_and_predictions_pycocotools_agrees(trained, tmp_path: Path) -> None:
    metrics, predictions, stdout = _evaluate(trained, tmp_path / "eval")
    assert len(predictions) > 0 and {"image_id", "category_id", "bbox", "score"} <= set(predictions[0])
    for name in ("circle", "square", "triangle", "cross"):
        assert name in stdout
    assert metrics["loss"] > 0 and "loss_classifier" in metrics  # validation loss, same loop as mAP
    root = Path(next(o.split("=", 1)[1] for o in trained[1] if o.startswith("dataset.root=")))
    coco_gt = load_coco(root / "annotations" / "instances_val2017.json")
    with contextlib.redirect_stdout(io.StringIO()):
        evaluation = COCOeval(coco_gt, coco_gt.loadRes(predictions), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    for name, value in zip(COCO_STAT_NAMES, evaluation.stats, strict=True):
        assert metrics[name] == pytest.approx(value, abs=1e-9), name


def test_two_ddp_processes_match_one(trained, tmp_path: Path) -> None:
    single, single_predictions, _ = _evaluate(trained, tmp_path / "one")
    double, double_predictions, _ = _evaluate(trained, tmp_path / "two", *CPU_DDP)
    for name in COCO_STAT_NAMES:
        assert double[name] == pytest.approx(single[name], abs=1e-12), name
    assert len(double_predictions) == len(single_predictions)  # the repeated image is counted once
    # batches are composed differently across ranks, so scores agree to float precision, not bit for bit
    for image_id in {r["image_id"] for r in single_predictions}:
        ones = sorted(r["score"] for r in single_predictions if r["image_id"] == image_id)
        twos = sorted(r["score"] for r in double_predictions if r["image_id"] == image_id)
        assert twos == pytest.approx(ones, abs=1e-4)
