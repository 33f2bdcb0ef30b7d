"""Panoptic segmentation end to end: training scores PQ, evaluate.py gives the same figures, predict.py
writes COCO panoptic PNGs and segments whose PQ is the evaluation's, and two DDP processes score as one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.common.errors import UserError
from tasks.data.formats.coco_panoptic import read_segment_ids
from tasks.evaluation.panoptic import Segment, image_counts, panoptic_quality, total_counts
from tasks.inference.export import export
from tests.support import CPU_DDP, TINY_PANOPTIC, compose_config, run_script, shapes_overrides

SCORES = ("pq", "sq", "rq", "pq_things", "pq_stuff")


def _args(root: Path, tmp_path: Path) -> list[str]:
    return [
        *TINY_PANOPTIC,
        *shapes_overrides(root),
        "trainer.max_epochs=3",  # 12 steps at AdamW 3e-3 without warm-up find some stuff
        "task.module.scheduler.warmup_steps=1",
        "task.module.optimizer.lr=0.003",
        "trainer.enable_progress_bar=false",
        f"paths.log_dir={tmp_path / 'outputs'}",
    ]


def _train(args: list[str], tmp_path: Path) -> dict:
    result = run_script("train.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "panoptic_segmentation").iterdir()
    return json.loads((run / "metrics.json").read_text())


def _evaluate(root: Path, checkpoint: str, folder: Path) -> dict:
    result = run_script(
        "evaluate.py", [*TINY_PANOPTIC, *shapes_overrides(root), f"ckpt_path={checkpoint}", f"hydra.run.dir={folder}"]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((folder / "metrics.json").read_text())


def _pq_of_predictions(root: Path, rows: list[dict], folder: Path) -> dict:
    """PQ of predict.py's PNGs and segments against the validation json, computed here."""
    truth = json.loads((root / "annotations/panoptic_val2017.json").read_text())
    is_thing = {c["id"]: bool(c["isthing"]) for c in truth["categories"]}
    by_file = {row["file_name"]: row for row in rows}
    counts = []
    for annotation in truth["annotations"]:
        row = by_file[annotation["file_name"]]
        truth_ids = read_segment_ids(root / "annotations/panoptic_val2017" / annotation["file_name"])
        predicted = read_segment_ids(folder / row["panoptic_file"])
        counts.append(
            image_counts(
                truth_ids,
                {s["id"]: Segment(s["category_id"], bool(s["iscrowd"])) for s in annotation["segments_info"]},
                predicted,
                {s["id"]: Segment(s["category_id"]) for s in row["segments_info"]},
            )
        )
    return panoptic_quality(total_counts(counts), is_thing)


@pytest.mark.slow
def test_train_evaluate_and_predict_agree_on_pq(shapes_panoptic_root: Path, tmp_path: Path) -> None:
    metrics = _train(_args(shapes_panoptic_root, tmp_path), tmp_path)
    assert set(SCORES) <= set(metrics) and metrics["images"] == 8
    assert metrics["pq_stuff"] > 0
    evaluated = _evaluate(shapes_panoptic_root, metrics["checkpoint"], tmp_path / "eval")
    for name in SCORES:
        assert evaluated[name] == pytest.approx(metrics[name], abs=1e-9), name
    folder = tmp_path / "predict"
    args = [
        "task=panoptic_segmentation",
        f"ckpt_path={metrics['checkpoint']}",
        f"input={shapes_panoptic_root / 'val2017'}",
    ]
    result = run_script("predict.py", [*args, f"hydra.run.dir={folder}"])
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((folder / "predictions.json").read_text())
    assert len(rows) == 8 and len(list((folder / "overlays").iterdir())) == 8
    for row in rows:  # each listed segment is in its PNG with its area, and nothing else is
        ids = read_segment_ids(folder / row["panoptic_file"])
        assert sorted(set(np.unique(ids).tolist()) - {0}) == sorted(s["id"] for s in row["segments_info"])
        for segment in row["segments_info"]:
            assert (ids == segment["id"]).sum() == segment["area"]
            assert segment["isthing"] == (segment["category_id"] <= 4)
    # predict's CPU engine folds BatchNorm: the same model to float rounding, so PQ to a pixel or so
    recomputed = _pq_of_predictions(shapes_panoptic_root, rows, folder)
    for name in SCORES:
        assert recomputed[name] == pytest.approx(evaluated[name], abs=5e-3), name
    refused = compose_config(
        ["task=panoptic_segmentation", f"ckpt_path={metrics['checkpoint']}"], tmp_path / "x", "export"
    )
    with pytest.raises(
        UserError, match="panoptic_segmentation model cannot be exported: its merge .* predict with engine=torch"
    ):
        export(refused)


@pytest.mark.slow
def test_the_doctor_checks_panoptic_data(shapes_panoptic_root: Path, tmp_path: Path) -> None:
    args = ["task=panoptic_segmentation", *shapes_overrides(shapes_panoptic_root), f"hydra.run.dir={tmp_path}"]
    report = run_script("check_dataset.py", args)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "3 stuff classes: ['sky', 'ground', 'water']" in report.stdout and "ready to train" in report.stdout
    (shapes_panoptic_root / "annotations/panoptic_val2017" / "000000000017.png").rename(tmp_path / "moved.png")
    try:
        broken = run_script("check_dataset.py", args)
    finally:
        (tmp_path / "moved.png").rename(shapes_panoptic_root / "annotations/panoptic_val2017" / "000000000017.png")
    assert broken.returncode == 1 and "000000000017.png is missing" in broken.stdout


@pytest.mark.distributed
def test_two_ddp_processes_score_pq_as_one(shapes_panoptic_root: Path, tmp_path: Path) -> None:
    metrics = _train([*_args(shapes_panoptic_root, tmp_path), *CPU_DDP], tmp_path)
    alone = _evaluate(shapes_panoptic_root, metrics["checkpoint"], tmp_path / "eval")
    assert metrics["images"] == alone["images"] == 8 and alone["sq"] > 0  # some segments matched
    for name in SCORES:
        assert metrics[name] == pytest.approx(alone[name], abs=1e-9), name
