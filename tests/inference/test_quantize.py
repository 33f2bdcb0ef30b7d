"""int8 export: the calibration set, NNCF's quantization, what model.json records, and the refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import openvino
import pytest
import torch
from pycocotools.coco import COCO

from tasks.common.errors import UserError
from tasks.core.deploy import export_model
from tasks.core.runner import build_datamodule, evaluate
from tasks.inference import engines
from tasks.inference.engines import OpenVinoEngine
from tasks.inference.inputs import prepare, resizer
from tasks.inference.predict import predict
from tasks.inference.quantize import calibration_inputs, calibration_positions
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
    inputs = calibration_inputs(training, preprocessing, 3, semantic=False)
    positions = calibration_positions(len(training), 3)
    index = training.index
    for array, position in zip(inputs, positions, strict=True):
        _, expected = prepare(training.image_root / index.file_name(position), resizer(preprocessing))
        assert array.dtype == np.float32 and array.shape == tuple(expected.shape)
        np.testing.assert_array_equal(array, expected.numpy())
    semantic = calibration_inputs(training, preprocessing, 1, semantic=True)
    assert semantic[0].shape == (1, *inputs[0].shape)


def _export_int8(task: str, checkpoint: Path, shapes_root: Path, voc_root: Path, output: Path, count: int = 4):
    overrides = [*export_training_overrides(task, shapes_root, voc_root), f"ckpt_path={checkpoint}"]
    overrides += ["format=openvino", "quantize=int8", f"calibration_images={count}", "trainer.limit_val_batches=2"]
    return export_model(compose_config(overrides, output, "export"))


def _op_types(model) -> set[str]:
    return {op.get_type_name() for op in model.get_ops()}


@pytest.mark.slow
@pytest.mark.parametrize("task", EXPORT_TASKS)
def test_int8_export_records_calibration_and_scores_fp32_as_evaluate_does(
    task: str, checkpoints: dict[str, Path], shapes_root: Path, shapes_voc_root: Path, tmp_path: Path
) -> None:
    path = _export_int8(task, checkpoints[task], shapes_root, shapes_voc_root, tmp_path / "int8")
    card = json.loads((tmp_path / "int8" / "model.json").read_text())
    record = card["quantization"]
    assert card["format"] == "openvino" and card["file"] == path.name == "model.xml"
    assert record["precision"] == "int8" and record["tool"].startswith("nncf ")
    config = compose_config(export_training_overrides(task, shapes_root, shapes_voc_root), tmp_path / "data")
    datamodule = build_datamodule(config)
    datamodule.setup()
    assert record["calibration"]["images"] == 4
    assert record["calibration"]["of"] == len(datamodule.unaugmented("train"))
    # the file holds quantized convolutions: NNCF's quantize/dequantize pairs
    quantized = openvino.Core().read_model(str(path))
    assert "FakeQuantize" in _op_types(quantized)
    # the fp32 figures are the checkpoint's own, scored by evaluate.py on the same validation batches
    expected = evaluate(
        compose_config(
            [*export_training_overrides(task, shapes_root, shapes_voc_root), f"ckpt_path={checkpoints[task]}"]
            + ["trainer.limit_val_batches=2"],
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
    checkpoints: dict[str, Path], shapes_root: Path, shapes_voc_root: Path, tmp_path: Path
) -> None:
    """predict.py with the int8 model.xml, re-scored by pycocotools, gives the map_50 model.json records:
    the figure describes the deployed file, through the path users run."""
    overrides = [*export_training_overrides("detection", shapes_root, shapes_voc_root)]
    overrides += [f"ckpt_path={checkpoints['detection']}", "format=openvino", "quantize=int8", "calibration_images=4"]
    path = export_model(compose_config(overrides, tmp_path / "int8", "export"))
    recorded = json.loads((tmp_path / "int8" / "model.json").read_text())["quantization"]["validation"]["int8"]
    images = shapes_root / "val2017"
    options = ["task=detection", "engine=openvino", f"openvino_path={path}", f"input={images}", "score_threshold=0.0"]
    rows = predict(compose_config([*options, "dataset.root=/nonexistent"], tmp_path / "predict", "predict"))
    coco_gt = COCO(str(shapes_root / "annotations" / "instances_val2017.json"))
    image_ids = {image["file_name"]: image["id"] for image in coco_gt.dataset["images"]}
    results = [{**row, "image_id": image_ids[row["file_name"]]} for row in rows]
    assert pycocotools_stats(coco_gt, results)[1] == pytest.approx(recorded["map_50"], abs=1e-9)
