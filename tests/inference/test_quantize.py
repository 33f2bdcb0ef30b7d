"""int8 export: the calibration set, NNCF's quantization, what model.json records, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from torchvision.ops import box_convert, box_iou

from tasks.common.errors import UserError
from tasks.core.deploy import export_model
from tasks.core.runner import build_datamodule, evaluate
from tasks.inference import engines
from tasks.inference.engines import OpenVinoEngine
from tasks.inference.inputs import prepare, resizer
from tasks.inference.openvino_core import openvino_core
from tasks.inference.predict import predict
from tasks.inference.quantize import calibration_inputs, calibration_positions
from tasks.kinds import task_kind
from tests.support import (
    EXPORT_TASKS,
    compose_config,
    export_training_overrides,
    pycocotools_stats,
    shapes_overrides,
)


def test_calibration_positions_spread_over_the_split() -> None:
    assert calibration_positions(10, 4) == [0, 3, 6, 9]
    assert calibration_positions(3, 300) == [0, 1, 2]  # a small split: every image
    with pytest.raises(UserError, match="calibration_images=0"):
        calibration_positions(10, 0)
    with pytest.raises(UserError, match="no image"):
        calibration_positions(0, 5)


@pytest.mark.parametrize("resize_longest", [None, 48])
def test_calibration_images_are_prepared_as_predict_prepares_the_file(
    shapes_root: Path, tmp_path: Path, resize_longest: int | None
) -> None:
    """The ranges NNCF records are those of the inputs the deployed model gets from predict.py."""
    overrides = ["task=detection", *shapes_overrides(shapes_root), f"dataset.resize_longest={resize_longest or 'null'}"]
    datamodule = build_datamodule(compose_config(overrides, tmp_path))
    datamodule.setup()
    training = datamodule.unaugmented("train")
    preprocessing = datamodule.inference_preprocessing()
    inputs = calibration_inputs(training, preprocessing, 3, task_kind("detection"))
    positions = calibration_positions(len(training), 3)
    index = training.index
    for array, position in zip(inputs, positions, strict=True):
        _, expected = prepare(training.image_root / index.file_name(position), resizer(preprocessing))
        assert array.dtype == np.float32 and array.shape == tuple(expected.shape)
        np.testing.assert_array_equal(array, expected.numpy())
    semantic = calibration_inputs(training, preprocessing, 1, task_kind("segmentation"))
    assert semantic[0].shape == (1, *inputs[0].shape)


@pytest.fixture(scope="module")
def int8_exports(
    checkpoints: dict[str, Path], shapes_root: Path, shapes_voc_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """Each task's checkpoint exported to int8, calibrated on 4 training images and scored on the whole
    (tiny) validation split."""
    exported = {}
    for task in EXPORT_TASKS:
        overrides = [*export_training_overrides(task, shapes_root, shapes_voc_root), f"ckpt_path={checkpoints[task]}"]
        overrides += ["format=openvino", "quantize=int8", "calibration_images=4"]
        exported[task] = export_model(compose_config(overrides, tmp_path_factory.mktemp(f"int8_{task}"), "export"))
    return exported


def _op_types(model) -> set[str]:
    return {op.get_type_name() for op in model.get_ops()}


@pytest.mark.slow
@pytest.mark.parametrize("task", EXPORT_TASKS)
def test_int8_export_records_calibration_and_scores_fp32_as_evaluate_does(
    task: str,
    int8_exports: dict[str, Path],
    checkpoints: dict[str, Path],
    shapes_root: Path,
    shapes_voc_root: Path,
    tmp_path: Path,
) -> None:
    path = int8_exports[task]
    card = json.loads((path.parent / "model.json").read_text())
    record = card["quantization"]
    assert card["format"] == "openvino" and card["file"] == path.name == "model.xml"
    assert record["precision"] == "int8" and record["tool"].startswith("nncf ")
    config = compose_config(export_training_overrides(task, shapes_root, shapes_voc_root), tmp_path / "data")
    datamodule = build_datamodule(config)
    datamodule.setup()
    assert record["calibration"]["images"] == 4
    assert record["calibration"]["of"] == len(datamodule.unaugmented("train"))
    # the file holds quantized convolutions: NNCF's quantize/dequantize pairs
    quantized = openvino_core().read_model(str(path))
    assert "FakeQuantize" in _op_types(quantized)
    # the fp32 figures are the checkpoint's own, scored by evaluate.py on the same validation batches
    expected = evaluate(
        compose_config(
            [*export_training_overrides(task, shapes_root, shapes_voc_root), f"ckpt_path={checkpoints[task]}"],
            tmp_path / "evaluate",
        )
    )
    fp32, int8 = record["validation"]["fp32"], record["validation"]["int8"]
    assert fp32.keys() == int8.keys() and fp32
    for name, value in fp32.items():
        assert value == pytest.approx(expected[name], abs=1e-4), name  # equal here; rounding may differ elsewhere


@pytest.mark.slow
def test_int8_export_refuses_a_dataset_of_other_classes(
    checkpoints: dict[str, Path], shapes_root: Path, shapes_voc_root: Path, tmp_path: Path
) -> None:
    # the shapes in VOC layout read as PASCAL VOC: the 20 VOC classes
    overrides = ["task=detection", "dataset=voc", f"dataset.root={shapes_voc_root}"]
    overrides += [f"ckpt_path={checkpoints['detection']}", "format=openvino", "quantize=int8"]
    with pytest.raises(UserError, match="was trained on the classes"):
        export_model(compose_config(overrides, tmp_path, "export"))


@pytest.mark.parametrize(
    ("options", "message"),
    [(["format=onnx", "quantize=int8"], "pass format=openvino"), (["format=openvino", "quantize=int4"], "int4")],
)
def test_quantize_options_are_checked_first(options: list[str], message: str, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=message):
        export_model(compose_config(["ckpt_path=/nonexistent.ckpt", *options], tmp_path, "export"))


def _tiny_openvino_model():
    from openvino import opset13 as ops

    image = ops.parameter([1, 3, 8, 8], np.float32, name="images")
    logits = ops.convolution(image, np.ones((2, 3, 1, 1), np.float32), [1, 1], [0, 0], [0, 0], [1, 1])
    logits.output(0).get_tensor().set_names({"logits"})
    return openvino.Model([logits], [image])


def test_bf16_is_refused_where_the_cpu_has_no_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(engines, "openvino_capabilities", lambda: ["FP32", "INT8"])
    with pytest.raises(UserError, match="native bf16"):
        OpenVinoEngine(_tiny_openvino_model(), "segmentation", precision="bf16")
    with pytest.raises(UserError, match="precision=fp16"):
        OpenVinoEngine(_tiny_openvino_model(), "segmentation", precision="fp16")


@pytest.mark.skipif("BF16" not in engines.openvino_capabilities(), reason="n/a: this CPU has no native bf16")
def test_bf16_engine_computes_in_bf16() -> None:
    model = _tiny_openvino_model()
    fp32, bf16 = (OpenVinoEngine(model, "segmentation", precision=p) for p in ("fp32", "bf16"))
    assert fp32.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.f32
    assert bf16.compiled.get_property("INFERENCE_PRECISION_HINT") == openvino.Type.bf16
    image = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    exact = image.sum(1, keepdim=True).expand(1, 2, 8, 8)
    assert torch.allclose(fp32._run(image)["logits"], exact, atol=1e-6)
    rounded = (bf16._run(image)["logits"] - exact).abs().max()
    assert 1e-4 < rounded < 2e-2 * exact.max()  # bf16's 8-bit mantissa: about 3 significant digits


@pytest.mark.slow
def test_the_int8_file_predicts_what_its_recorded_map_scores(
    int8_exports: dict[str, Path], shapes_root: Path, tmp_path: Path
) -> None:
    """predict.py with the int8 model.xml, re-scored by pycocotools, gives the map_50 model.json records:
    the figure describes the deployed file, through the path users run."""
    path = int8_exports["detection"]
    recorded = json.loads((path.parent / "model.json").read_text())["quantization"]["validation"]["int8"]
    images = shapes_root / "val2017"
    options = ["task=detection", "engine=openvino", f"openvino_path={path}", f"input={images}", "score_threshold=0.0"]
    rows = predict(compose_config([*options, "dataset.root=/nonexistent"], tmp_path / "predict", "predict"))
    coco_gt = COCO(str(shapes_root / "annotations" / "instances_val2017.json"))
    image_ids = {image["file_name"]: image["id"] for image in coco_gt.dataset["images"]}
    results = [{**row, "image_id": image_ids[row["file_name"]]} for row in rows]
    assert pycocotools_stats(coco_gt, results)[1] == pytest.approx(recorded["map_50"], abs=1e-9)


@pytest.mark.slow
@pytest.mark.skipif("BF16" not in engines.openvino_capabilities(), reason="n/a: this CPU has no native bf16")
@pytest.mark.parametrize("task", EXPORT_TASKS)
def test_each_task_predicts_through_the_bf16_engine(
    task: str, checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path
) -> None:
    """Every task's export runs through ``openvino_precision=bf16`` with predictions close to float32's
    (measured on this tiny model: 80 of 80 and 78 of 80 top detections found again, pixels agreeing at
    99.88% or more)."""
    exported = export_model(
        compose_config([f"task={task}", f"ckpt_path={checkpoints[task]}", "format=openvino"], tmp_path / "e", "export")
    )
    images = shapes_root / "val2017"
    common = [f"task={task}", "engine=openvino", f"openvino_path={exported}", f"input={images}", "dataset.root=/x"]
    runs = {
        precision: predict(
            compose_config(
                [*common, f"openvino_precision={precision}", "score_threshold=0.0"], tmp_path / precision, "predict"
            )
        )
        for precision in ("fp32", "bf16")
    }
    fp32, bf16 = runs["fp32"], runs["bf16"]
    if task == "segmentation":
        for a, b in zip(fp32, bf16, strict=True):
            masks = [
                np.asarray(Image.open(tmp_path / run / row["mask_file"])) for run, row in (("fp32", a), ("bf16", b))
            ]
            assert (masks[0] == masks[1]).mean() >= 0.99, a["file_name"]
        return
    if task == "classification":
        tops = [[row["top_k"][0] for row in run] for run in (fp32, bf16)]
        assert sum(a["class_id"] == b["class_id"] for a, b in zip(*tops, strict=True)) >= 0.9 * len(fp32)
        assert max(abs(a["score"] - b["score"]) for a, b in zip(*tops, strict=True)) <= 0.05
        return
    assert fp32 != bf16  # bf16 rounding moves scores: the option reached the engine
    found, total = 0, 0
    for name in {row["file_name"] for row in fp32}:
        top = sorted((r for r in fp32 if r["file_name"] == name), key=lambda r: -r["score"])[:10]
        others = [r for r in bf16 if r["file_name"] == name]
        for row in top:
            total += 1
            same = [o for o in others if o["category_id"] == row["category_id"]]
            if same and float(box_iou(_xyxy([row]), _xyxy(same)).max()) >= 0.5:
                found += 1
    assert found >= 0.9 * total  # each image's 10 best float32 detections, nearly all found again


def _xyxy(rows: list[dict]) -> torch.Tensor:
    return box_convert(torch.tensor([row["bbox"] for row in rows], dtype=torch.float64), "xywh", "xyxy")


@pytest.mark.slow
def test_int8_keeps_the_accuracy_of_a_checkpoint_that_detects(trained_mask_rcnn, tmp_path: Path) -> None:
    """The tiny checkpoints above score about 0: here a Mask R-CNN that detects (map_50 over 0.3), exported
    to int8 on 15 calibration images, loses at most 0.05 of its box and mask map_50."""
    checkpoint, overrides, _ = trained_mask_rcnn
    export = [*overrides, f"ckpt_path={checkpoint}", "format=openvino", "quantize=int8", "calibration_images=15"]
    path = export_model(compose_config(export, tmp_path, "export"))
    validation = json.loads((path.parent / "model.json").read_text())["quantization"]["validation"]
    fp32, int8 = validation["fp32"], validation["int8"]
    assert fp32["map_50"] > 0.3 and fp32["mask_map_50"] > 0.3
    for name in ("map_50", "mask_map_50"):
        assert int8[name] >= fp32[name] - 0.05, (name, fp32[name], int8[name])
