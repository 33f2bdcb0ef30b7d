"""Prediction on new images, export to ONNX and TorchScript, and parity between the engines."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from backbones.base import IMAGENET_MEAN
from tasks.common.errors import UserError
from tasks.common.metadata import load_trained_model
from tasks.inference.export import export
from tasks.inference.inputs import find_images, prepare, resizer
from tasks.inference.predict import predict
from tasks.kinds import task_kind
from tests.support import EXPORT_TASKS, compose_config, run_script


def _save(path: Path, pixels: np.ndarray, **options) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **options)


def mixed_folder(folder: Path, source: Path) -> dict[str, tuple[int, int]]:
    """Copies of a shapes image in every mode and orientation, with clutter and a broken file;
    returns each readable image's upright (height, width)."""
    rgb = np.array(Image.open(source).convert("RGB"))
    height, width = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb[:, : width - 16])  # not square, so that a rotation shows
    height, width = rgb.shape[:2]
    _save(folder / "upright.png", rgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated 90 degrees clockwise, i.e. as upright.png
    _save(folder / "sideways.png", np.ascontiguousarray(np.rot90(rgb, 1)), exif=exif)
    gray = rgb.mean(axis=2).astype(np.uint8)
    _save(folder / "gray.png", gray)
    _save(folder / "sixteen_bit.png", gray.astype(np.uint16) * 257)  # mode I;16
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.gif")
    _save(folder / "palette.png", rgb)  # its overlay would have the GIF's name
    _save(folder / "rgba.png", np.dstack([rgb, np.full((height, width), 200, np.uint8)]))
    _save(folder / "sub" / "photo.jpg", rgb, quality=95)
    (folder / "notes.txt").write_text("not an image")
    _save(folder / ".hidden.png", rgb)
    (folder / "broken.jpg").write_bytes((folder / "sub" / "photo.jpg").read_bytes()[:200])
    names = ["upright.png", "sideways.png", "gray.png", "sixteen_bit.png", "palette.gif", "palette.png", "rgba.png"]
    names.append("sub/photo.jpg")
    return {name: (height, width) for name in names}


def _config(name: str, overrides: list[str], output_dir: Path):
    # the dataset root the composed config names does not exist: prediction must not read it
    return compose_config([*overrides, "dataset.root=/nonexistent"], output_dir, name)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["detection", "instance_segmentation"])
def test_predict_on_mixed_images(task: str, checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path) -> None:
    sizes = mixed_folder(tmp_path / "in", next((shapes_root / "val2017").iterdir()))
    out = tmp_path / "out"
    overrides = [f"task={task}", f"ckpt_path={checkpoints[task]}", f"input={tmp_path / 'in'}", "score_threshold=0.0"]
    rows = predict(_config("predict", overrides, out))
    assert rows == json.loads((out / "predictions.json").read_text())
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.*"))
    # a GIF's overlay is a PNG; the PNG of the same stem, which comes after it, keeps its suffix in the name
    overlay_of = {name: name.replace(".gif", ".png").replace("palette.png", "palette_png.png") for name in sizes}
    overlay_of["palette.gif"] = "palette.png"
    assert overlays == sorted(overlay_of.values())  # one per readable image; clutter, hidden and broken skipped
    for name, (height, width) in sizes.items():
        assert Image.open(out / "overlays" / overlay_of[name]).size == (width, height)  # upright
    _, metadata = load_trained_model(checkpoints[task])
    names, ids = metadata["class_names"], metadata["category_ids"]
    assert {row["file_name"] for row in rows} <= set(sizes) and rows
    for row in rows:
        height, width = sizes[row["file_name"]]
        x, y, w, h = row["bbox"]
        assert min(x, y) >= 0 and x + w <= width + 1e-3 and y + h <= height + 1e-3
        assert row["category_name"] == names[ids.index(row["category_id"])]
        if task == "instance_segmentation":
            assert row["segmentation"]["size"] == [height, width]
            assert mask_utils.decode(row["segmentation"]).shape == (height, width)
    # the sideways file, shown upright, is upright.png: the same detections
    by_file = {name: [r for r in rows if r["file_name"] == name] for name in ("upright.png", "sideways.png")}
    assert len(by_file["upright.png"]) == len(by_file["sideways.png"]) > 0
    for a, b in zip(by_file["upright.png"], by_file["sideways.png"], strict=True):
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-3) and a["category_id"] == b["category_id"]


@pytest.mark.slow
def test_predict_semantic_segmentation_writes_masks(checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path):
    sizes = mixed_folder(tmp_path / "in", next((shapes_root / "val2017").iterdir()))
    out = tmp_path / "out"
    rows = predict(
        _config(
            "predict",
            ["task=segmentation", f"ckpt_path={checkpoints['segmentation']}", f"input={tmp_path / 'in'}"],
            out,
        )
    )
    assert sorted(row["file_name"] for row in rows) == sorted(sizes)
    for row in rows:
        height, width = sizes[row["file_name"]]
        mask = Image.open(out / row["mask_file"])
        assert mask.mode == "P" and mask.size == (width, height)
        counts = np.bincount(np.asarray(mask).ravel())
        assert sum(row["class_fractions"].values()) == pytest.approx(1.0, abs=1e-4)
        assert len(row["class_fractions"]) == np.count_nonzero(counts)
    assert (out / "overlays" / "sideways.png").is_file()
    upright, sideways = (np.asarray(Image.open(out / "masks" / n)) for n in ("upright.png", "sideways.png"))
    assert np.array_equal(upright, sideways)


@pytest.mark.slow
def test_predict_classification_writes_the_top_classes(
    checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path
) -> None:
    """One row per readable image: the ``top_k`` classes by softmax probability, as the model computes
    them on the image sized as validation sizes it (shorter side, centre crop)."""
    sizes = mixed_folder(tmp_path / "in", next((shapes_root / "val2017").iterdir()))
    out = tmp_path / "out"
    overrides = ["task=classification", f"ckpt_path={checkpoints['classification']}", f"input={tmp_path / 'in'}"]
    rows = predict(_config("predict", [*overrides, "top_k=2"], out))
    assert sorted(row["file_name"] for row in rows) == sorted(sizes)
    model, metadata = load_trained_model(checkpoints["classification"])
    resize = resizer(metadata["preprocessing"])
    for row in rows:
        _, model_input = prepare(tmp_path / "in" / row["file_name"], resize)
        assert tuple(model_input.shape[1:]) == (32, 32)  # the evaluation crop
        with torch.no_grad():
            probabilities = torch.softmax(model(model_input[None])[0], 0)
        scores, indices = probabilities.topk(2)
        assert [c["class_id"] for c in row["top_k"]] == indices.tolist()
        assert [c["class_name"] for c in row["top_k"]] == [metadata["class_names"][i] for i in indices.tolist()]
        assert np.allclose([c["score"] for c in row["top_k"]], scores.tolist(), atol=1e-5)
    overlays = sorted(p.relative_to(out / "overlays").as_posix() for p in (out / "overlays").rglob("*.*"))
    assert len(overlays) == len(sizes)
    assert Image.open(out / "overlays" / "sideways.png").size == Image.open(tmp_path / "in" / "upright.png").size


def _mixed_sizes(folder: Path, sources: list[Path]) -> None:
    """Shapes images cut to sizes that a batch pads to one another, in an order that mixes them."""
    sizes = [(64, 64), (64, 64), (32, 64), (64, 64), (64, 32), (64, 32), (64, 32), (32, 64), (48, 40), (64, 64)]
    for k, (height, width) in enumerate(sizes):
        rgb = np.array(Image.open(sources[k % len(sources)]).convert("RGB"))[:height, :width]
        _save(folder / f"image_{k:02d}.png", np.ascontiguousarray(rgb))


@pytest.mark.slow
@pytest.mark.parametrize("task", EXPORT_TASKS)
def test_predictions_do_not_depend_on_the_batch(
    task: str, checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path
) -> None:
    """An image's predictions are the same whichever images share its batch: a batch only holds
    images of one size, which no other image's padding reaches."""
    _mixed_sizes(tmp_path / "in", sorted((shapes_root / "val2017").iterdir()))
    base = [f"task={task}", f"ckpt_path={checkpoints[task]}", f"input={tmp_path / 'in'}", "score_threshold=0.0"]
    alone = predict(_config("predict", [*base, "batch_size=1"], tmp_path / "alone"))
    batched = predict(_config("predict", [*base, "batch_size=4"], tmp_path / "batched"))
    if task == "segmentation":
        for name in {row["file_name"] for row in alone}:
            masks = [np.asarray(Image.open(tmp_path / run / "masks" / name)) for run in ("alone", "batched")]
            assert np.array_equal(*masks), name
        return
    if task == "classification":
        _assert_same_top_classes(alone, batched, atol=1e-5)
        return
    assert len(alone) > 20  # detections to compare
    one, four = _rows_by_file(alone), _rows_by_file(batched)
    assert sorted(one) == sorted(four)
    for name in one:
        assert len(one[name]) == len(four[name]), name
        for a, b in zip(one[name], four[name], strict=True):  # in the same order: by score
            assert a["category_id"] == b["category_id"], name
            assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3) and a["score"] == pytest.approx(b["score"], abs=1e-5)


@pytest.mark.slow
def test_output_names_are_unique_whatever_the_case(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """x.JPG, x.Jpg and x.jpg are three images: each gets its own overlay (and mask), also on a file
    system that ignores case."""
    pixels = np.full((40, 56, 3), 120, np.uint8)
    for k, name in enumerate(("x.JPG", "x.Jpg", "x.jpg", "x_jpg.jpg")):
        pixels[:, : 8 * (k + 1)] = 30 * k  # each file its own content
        _save(tmp_path / "in" / name, pixels, format="PNG")
    base = ["task=segmentation", f"ckpt_path={checkpoints['segmentation']}", f"input={tmp_path / 'in'}"]
    rows = predict(_config("predict", base, tmp_path / "out"))
    for folder in ("overlays", "masks"):
        names = [p.name for p in (tmp_path / "out" / folder).iterdir()]
        assert len(names) == 4 and len({name.lower() for name in names}) == 4, names
    assert len({row["mask_file"].lower() for row in rows}) == 4
    written = {row["file_name"]: np.asarray(Image.open(tmp_path / "out" / row["mask_file"])) for row in rows}
    assert {name: mask.shape for name, mask in written.items()} == {name: (40, 56) for name in written}


def test_inputs_by_file_folder_and_glob(tmp_path: Path) -> None:
    for name in ("a.jpg", "b.PNG", "sub/c.png", ".d.png", ".cache/e.png", "f.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    names = lambda found: [p.relative_to(base).as_posix() for p in found]  # noqa: E731
    found, base = find_images(str(tmp_path))
    assert names(found) == ["a.jpg", "b.PNG", "sub/c.png"]
    found, base = find_images(str(tmp_path / "**" / "*.png"))
    # a glob's case is the platform's: b.PNG matches *.png only where names ignore case (Windows)
    assert base == tmp_path
    assert names(found) == (["b.PNG", "sub/c.png"] if os.path.normcase("A") == "a" else ["sub/c.png"])
    found, base = find_images(str(tmp_path / "a.jpg"))
    assert names(found) == ["a.jpg"]
    with pytest.raises(UserError, match="names no image file"):
        find_images(str(tmp_path / "*.bmp"))


# export formats and the engines that run them, with equal outputs to the eager model (the tolerances below)
EXPORTED_ENGINES = [("onnx", "onnxruntime", "onnx_path"), ("openvino", "openvino", "openvino_path")]


def _rows_by_file(rows: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for row in rows:
        grouped.setdefault(row["file_name"], []).append(row)
    return grouped


def _assert_same_top_classes(expected: list[dict], got: list[dict], atol: float) -> None:
    """Classification rows: one per image, the same files, classes and order, scores within ``atol``."""
    assert [r["file_name"] for r in got] == [r["file_name"] for r in expected] and expected
    for a, b in zip(expected, got, strict=True):
        assert [c["class_id"] for c in a["top_k"]] == [c["class_id"] for c in b["top_k"]], a["file_name"]
        assert np.allclose([c["score"] for c in a["top_k"]], [c["score"] for c in b["top_k"]], atol=atol)


@pytest.mark.slow
@pytest.mark.parametrize("task", EXPORT_TASKS)
@pytest.mark.parametrize(("fmt", "engine", "option"), EXPORTED_ENGINES)
def test_export_and_exported_engine_parity(
    task: str, fmt: str, engine: str, option: str, checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path
) -> None:
    images = tmp_path / "in"
    for k, source in enumerate(sorted((shapes_root / "val2017").iterdir())[:3]):
        pixels = np.array(Image.open(source).convert("RGB"))
        _save(images / f"{k}.png", np.ascontiguousarray(pixels[: 64 - 8 * k]))  # three sizes: one graph
    _save(images / "blank.png", np.zeros((48, 72, 3), np.uint8))
    export_dir = tmp_path / "export"
    exported = export(
        _config("export", [f"task={task}", f"ckpt_path={checkpoints[task]}", f"format={fmt}"], export_dir)
    )
    card = json.loads((export_dir / "model.json").read_text())
    _, metadata = load_trained_model(checkpoints[task])
    assert card["class_names"] == metadata["class_names"] and card["normalisation"]["mean"] == list(IMAGENET_MEAN)
    common = [f"task={task}", f"input={images}", "score_threshold=0.0", "batch_size=1"]
    eager = predict(_config("predict", [*common, f"ckpt_path={checkpoints[task]}"], tmp_path / "eager"))
    assert card["format"] == fmt and card["file"] == exported.name
    onnx = predict(_config("predict", [*common, f"engine={engine}", f"{option}={exported}"], tmp_path / "ort"))
    if task == "segmentation":
        assert [r["file_name"] for r in eager] == [r["file_name"] for r in onnx]
        for row in eager:
            a, b = (np.asarray(Image.open(tmp_path / run / row["mask_file"])) for run in ("eager", "ort"))
            assert (a == b).mean() >= 0.999
        return
    if task == "classification":
        _assert_same_top_classes(eager, onnx, atol=1e-4)
        return
    eager_rows, onnx_rows = _rows_by_file(eager), _rows_by_file(onnx)
    assert eager_rows.keys() == onnx_rows.keys() and eager
    for name, expected in eager_rows.items():
        got = onnx_rows[name]
        assert len(got) == len(expected), name  # same count
        assert [r["category_id"] for r in got] == [r["category_id"] for r in expected]
        assert np.abs(np.array([r["bbox"] for r in got]) - np.array([r["bbox"] for r in expected])).max() <= 0.01
        assert np.allclose([r["score"] for r in got], [r["score"] for r in expected], atol=1e-4)
        if task == "instance_segmentation":
            decoded = [
                (mask_utils.decode(g["segmentation"]), mask_utils.decode(e["segmentation"]))
                for g, e in zip(got, expected, strict=True)
            ]
            differing = sum(int((a != b).sum()) for a, b in decoded)
            assert differing <= 1e-4 * sum(a.size for a, _ in decoded), differing


@pytest.mark.slow
@pytest.mark.parametrize("task", ["instance_segmentation", "segmentation", "classification"])
def test_torchscript_export_runs_at_other_sizes(task: str, checkpoints: dict[str, Path], tmp_path: Path) -> None:
    path = export(_config("export", [f"task={task}", f"ckpt_path={checkpoints[task]}", "format=torchscript"], tmp_path))
    assert path.name == "model.pt" and json.loads((tmp_path / "model.json").read_text())["format"] == "torchscript"
    scripted = torch.jit.load(str(path))
    model, metadata = load_trained_model(checkpoints[task])
    kind = task_kind(metadata["task"])
    graph = kind.graph(model)
    image = torch.rand(3, 72, 40, generator=torch.Generator().manual_seed(1))  # not the traced 256x256
    example = image[None] if kind.batched else image
    with torch.no_grad():
        expected, got = graph(example), scripted(example)
    as_tuple = lambda outputs: outputs if isinstance(outputs, tuple) else (outputs,)  # noqa: E731
    for a, b in zip(as_tuple(expected), as_tuple(got), strict=True):
        assert a.shape == b.shape and torch.allclose(a.float(), b.float(), atol=1e-4)


@pytest.mark.slow
def test_export_then_predict_command_with_onnxruntime(checkpoints: dict[str, Path], shapes_root: Path, tmp_path):
    onnx = export(_config("export", ["task=detection", f"ckpt_path={checkpoints['detection']}"], tmp_path / "e"))
    images = shapes_root / "val2017"
    args = [
        "task=detection",
        "engine=onnxruntime",
        f"onnx_path={onnx}",
        f"input={images}",
        f"hydra.run.dir={tmp_path / 'p'}",
    ]
    result = run_script("predict.py", args)
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(list((tmp_path / "p" / "overlays").iterdir())) == len(list(images.iterdir()))
    with pytest.raises(UserError, match="is a detection model, not segmentation: pass task=detection"):
        predict(_config("predict", [*args[1:-1], "task=segmentation"], tmp_path / "wrong"))
    onnx.with_name("model.json").unlink()
    with pytest.raises(UserError, match="model.json that tasks/export.py writes"):
        predict(_config("predict", args[:-1], tmp_path / "no_card"))


@pytest.mark.slow
def test_checkpoint_carries_what_prediction_needs(checkpoints: dict[str, Path]) -> None:
    model, metadata = load_trained_model(checkpoints["detection"])
    assert not model.training and metadata["task"] == "detection"
    assert metadata["class_names"] == ["circle", "square", "triangle", "cross"]
    assert metadata["model"]["backbone"]["name"] == "resnet18" and metadata["model"]["num_classes"] == 4
    with pytest.raises(UserError, match="is a detection checkpoint, not segmentation"):
        load_trained_model(checkpoints["detection"], "segmentation")


@pytest.mark.slow
def test_compiled_cpu_engine_predicts_the_same(checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path) -> None:
    # predict compile=true: the trunk compiled by inductor (frozen weights) gives the eager engine's detections
    common = ["task=detection", f"ckpt_path={checkpoints['detection']}", "score_threshold=0.0", "batch_size=2"]
    images = tmp_path / "in"
    images.mkdir()
    for source in sorted((shapes_root / "val2017").iterdir())[:2]:
        shutil.copy(source, images / source.name)
    eager = predict(_config("predict", [*common, f"input={images}"], tmp_path / "eager"))
    compiled = predict(_config("predict", [*common, f"input={images}", "compile=true"], tmp_path / "compiled"))
    eager_rows, compiled_rows = _rows_by_file(eager), _rows_by_file(compiled)
    assert eager_rows.keys() == compiled_rows.keys() and eager
    for name, expected in eager_rows.items():
        got = compiled_rows[name]
        assert len(got) == len(expected)
        assert np.abs(np.array([r["bbox"] for r in got]) - np.array([r["bbox"] for r in expected])).max() <= 0.01


@pytest.mark.slow
def test_checkpoint_without_inference_metadata_is_refused_with_the_fix(checkpoints: dict[str, Path], tmp_path: Path):
    content = torch.load(checkpoints["detection"], map_location="cpu", weights_only=True)
    del content["inference"]
    older = tmp_path / "older.ckpt"
    torch.save(content, older)
    with pytest.raises(UserError, match=f"ckpt_path={older} holds no inference metadata.*Train again, or resume"):
        load_trained_model(older)


@pytest.mark.slow
def test_detection_cap_is_a_predict_option_and_reaching_it_is_logged(
    checkpoints: dict[str, Path], shapes_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    images = sorted((shapes_root / "val2017").iterdir())[:3]
    base = [
        "task=detection",
        f"ckpt_path={checkpoints['detection']}",
        f"input={images[0].parent}",
        "score_threshold=0.0",
    ]
    # 50 proposals x 4 classes: at most 200 detections, under a cap of 300
    wide = predict(_config("predict", [*base, "box_detections_per_img=300"], tmp_path / "wide"))
    per_image = {name: len(rows) for name, rows in _rows_by_file(wide).items()}
    assert min(per_image.values()) > 3  # an untrained detector keeps many low-scored boxes
    assert "reached the cap" not in caplog.text
    capped = predict(_config("predict", [*base, "box_detections_per_img=3"], tmp_path / "capped"))
    assert {name: len(rows) for name, rows in _rows_by_file(capped).items()} == dict.fromkeys(per_image, 3)
    assert f"{len(per_image)} of {len(per_image)} images reached the cap of 3 detections" in caplog.text
