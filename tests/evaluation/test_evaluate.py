"""tasks/evaluate.py on a Mask R-CNN checkpoint: box and mask stats equal pycocotools run directly on the
written predictions.json and segmentations.json; 2 DDP processes give the same numbers as one."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from tasks.core.runner import evaluate
from tasks.data.formats.coco import load_coco
from tasks.evaluation.coco_eval import COCO_STAT_NAMES
from tasks.evaluation.error_analysis import error_analysis
from tests.support import CPU_DDP, compose_config, pycocotools_stats, run_script

MASK_STAT_NAMES = tuple(f"mask_{name}" for name in COCO_STAT_NAMES)


def _checkpoint(run: Path) -> str:
    return json.loads((run / "metrics.json").read_text())["checkpoint"]


def _outputs(run_dir: Path) -> tuple[dict, list[dict], list[dict]]:
    read = lambda name: json.loads((run_dir / name).read_text())  # noqa: E731
    return read("metrics.json"), read("predictions.json"), read("segmentations.json")


@pytest.fixture(scope="module")
def one_process(
    trained_mask_rcnn, tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict, list[dict], list[dict], str]:
    checkpoint, overrides, _ = trained_mask_rcnn
    run_dir = tmp_path_factory.mktemp("eval-one")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        evaluate(compose_config([*overrides, f"ckpt_path={checkpoint}"], run_dir))
    return (*_outputs(run_dir), out.getvalue())


@pytest.mark.slow
def test_box_and_mask_stats_equal_pycocotools_on_the_written_files(trained_mask_rcnn, one_process) -> None:
    metrics, predictions, segmentations, stdout = one_process
    assert len(predictions) == len(segmentations) > 0
    assert {"image_id", "category_id", "bbox", "score"} <= set(predictions[0])
    assert set(segmentations[0]["segmentation"]) == {"size", "counts"}  # RLE, counts as a string
    for name in ("circle", "square", "triangle", "cross"):
        assert name in stdout and {"ap", "mask_ap"} <= set(metrics["per_class"][name])
    assert metrics["loss"] > 0 and "loss_mask" in metrics  # validation loss, same loop as mAP
    assert metrics["map_50"] > 0.3 and metrics["mask_map_50"] > 0.3  # a model that detects
    coco_gt = load_coco(trained_mask_rcnn[2] / "annotations" / "instances_train2017.json")
    for names, rows, iou_type in ((COCO_STAT_NAMES, predictions, "bbox"), (MASK_STAT_NAMES, segmentations, "segm")):
        for name, value in zip(names, pycocotools_stats(coco_gt, rows, iou_type), strict=True):
            assert metrics[name] == pytest.approx(value, abs=1e-9), name


@pytest.mark.distributed
def test_two_ddp_processes_match_one(trained_mask_rcnn, one_process, tmp_path: Path) -> None:
    checkpoint, overrides, _ = trained_mask_rcnn
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


@pytest.mark.slow
def test_the_plots_hold_what_the_written_predictions_give(trained_mask_rcnn, one_process, tmp_path: Path) -> None:
    """evaluate.py's charts: the confusion matrix recomputed from predictions.json, the PR curves' AP50
    equal to the per-class table's, the per-class chart's numbers those of metrics.json."""
    checkpoint, overrides, root = trained_mask_rcnn
    metrics, predictions, _, _ = one_process
    run_dir = tmp_path / "plots"
    with contextlib.redirect_stdout(io.StringIO()):
        evaluate(compose_config([*overrides, f"ckpt_path={checkpoint}", "plots=true"], run_dir))
    read = lambda name: json.loads((run_dir / "plots" / name).read_text())  # noqa: E731
    coco_gt = load_coco(root / "annotations" / "instances_train2017.json")
    category_ids = sorted(coco_gt.getCatIds())
    names = [coco_gt.cats[c]["name"] for c in category_ids]
    by_image = {image_id: [r for r in predictions if r["image_id"] == image_id] for image_id in coco_gt.getImgIds()}
    scalars, matrix = error_analysis(coco_gt, by_image, category_ids, names)
    assert read("confusion_matrix.json") == json.loads(json.dumps(matrix))
    assert sum(map(sum, matrix["matrix"])) > 0
    assert {name: metrics[name] for name in scalars} == pytest.approx(scalars, abs=1e-12)
    curves = read("pr_curves.json")  # each class's curve at IoU 0.5: its area is that class's AP50 by pycocotools
    assert set(curves["precision"]) == set(metrics["per_class"])
    for name, precision in curves["precision"].items():
        with contextlib.redirect_stdout(io.StringIO()):
            alone = COCOeval(coco_gt, coco_gt.loadRes(predictions), "bbox")
            alone.params.catIds = [category_ids[names.index(name)]]
            alone.evaluate()
            alone.accumulate()
            alone.summarize()
        assert len(precision) == len(curves["recall"]) == 101 and alone.stats[1] > 0.1
        assert float(np.mean(precision)) == pytest.approx(alone.stats[1], abs=1e-9), name
    assert read("per_class.json") == metrics["per_class"]
    for name in ("confusion_matrix", "pr_curves", "per_class"):
        assert (run_dir / "plots" / f"{name}.png").stat().st_size > 1000
