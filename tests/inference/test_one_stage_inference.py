"""RetinaNet and FCOS checkpoints through predict.py and the ONNX export: the same detections from the
PyTorch engine and from ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.core.runner import train
from tasks.inference.export import export
from tasks.inference.predict import predict
from tests.support import compose_config, shapes_overrides, tiny_detection_for


def _rows_by_file(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["file_name"], []).append(row)
    return grouped


def _config(name: str, overrides: list[str], output_dir: Path):
    return compose_config([*overrides, "dataset.root=/nonexistent"], output_dir, name)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["retinanet", "fcos"])
def test_onnx_export_and_onnxruntime_parity(model: str, shapes_root: Path, tmp_path: Path) -> None:
    overrides = ["backbone=resnet18", *tiny_detection_for(model), *shapes_overrides(shapes_root)]
    overrides.append("task.model.box_score_thresh=0.0")  # focal-loss scores start near 0.01
    train(compose_config([*overrides, "trainer.max_steps=3", "trainer.limit_val_batches=1"], tmp_path / "run"))
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    images = tmp_path / "in"
    images.mkdir()
    for k, source in enumerate(sorted((shapes_root / "val2017").iterdir())[:3]):
        pixels = np.array(Image.open(source).convert("RGB"))
        Image.fromarray(np.ascontiguousarray(pixels[: 64 - 8 * k])).save(images / f"{k}.png")  # three sizes
    export_dir = tmp_path / "export"
    export(_config("export", [f"model={model}", f"ckpt_path={checkpoint}", "format=onnx"], export_dir))
    common = [f"model={model}", f"input={images}", "score_threshold=0.0", "batch_size=1"]
    eager = predict(_config("predict", [*common, f"ckpt_path={checkpoint}"], tmp_path / "eager"))
    onnx_path = export_dir / "model.onnx"
    onnx = predict(_config("predict", [*common, "engine=onnxruntime", f"onnx_path={onnx_path}"], tmp_path / "ort"))
    eager_rows, onnx_rows = _rows_by_file(eager), _rows_by_file(onnx)
    assert eager_rows.keys() == onnx_rows.keys() and len(eager_rows) == 3
    for name, expected in eager_rows.items():
        got = onnx_rows[name]
        assert len(got) == len(expected) > 0, name
        assert [r["category_id"] for r in got] == [r["category_id"] for r in expected]
        assert np.abs(np.array([r["bbox"] for r in got]) - np.array([r["bbox"] for r in expected])).max() <= 0.01
        assert np.allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-4)
