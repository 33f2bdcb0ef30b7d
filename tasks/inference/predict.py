"""``tasks/predict.py``: a trained model on new images, with no dataset needed.

Writes into the run directory ``predictions.json`` (one row per detection, or per image for
semantic segmentation), ``overlays/<name>`` (one picture per input image, same relative path) and,
for semantic segmentation, ``masks/<name>.png`` (VOC palette PNGs of class indices).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig

from tasks.errors import UserError
from tasks.inference import outputs
from tasks.inference.engines import ENGINES, OnnxRuntimeEngine, TorchEngine
from tasks.inference.graphs import is_semantic
from tasks.inference.inputs import find_images, prepare, resizer
from tasks.inference.metadata import load_trained_model, read_model_card
from tasks.segmentation.module import save_palette_png

log = logging.getLogger(__name__)


def build_engine(cfg: DictConfig) -> tuple[object, dict]:
    """The engine ``cfg.engine`` names, and the metadata (classes, preprocessing) of its model."""
    if cfg.engine == "torch":
        if not cfg.ckpt_path:
            raise UserError("engine=torch needs a checkpoint: pass ckpt_path=PATH/TO/best.ckpt")
        model, metadata = load_trained_model(cfg.ckpt_path, cfg.task.name)
        return TorchEngine(model, metadata["task"], cfg.device, compile=bool(cfg.compile)), metadata
    if cfg.engine == "onnxruntime":
        if not cfg.onnx_path:
            raise UserError("engine=onnxruntime needs an exported model: pass onnx_path=PATH/TO/model.onnx")
        metadata = read_model_card(cfg.onnx_path, cfg.task.name)
        return OnnxRuntimeEngine(cfg.onnx_path, metadata["task"]), metadata
    raise UserError(f"engine={cfg.engine} is not one of {ENGINES}")


def batched(items: Sequence, size: int) -> Iterator[Sequence]:
    if size < 1:
        raise UserError(f"batch_size={size} must be at least 1")
    for start in range(0, len(items), size):
        yield items[start : start + size]


class PredictionWriter:
    """Turns one image's engine output into rows, an overlay and (semantic) a mask file."""

    def __init__(self, output_dir: Path, metadata: dict, score_threshold: float, mask_threshold: float) -> None:
        self.output_dir, self.metadata = output_dir, metadata
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.semantic = is_semantic(metadata["task"])
        self.written: set[Path] = set()  # output names relative to the run directory

    def __call__(self, relative: Path, image, model_input, found: dict) -> list[dict]:
        names = self.metadata["class_names"]
        overlay = self.output_dir / self._unique(Path("overlays") / outputs.overlay_name(relative), relative)
        if self.semantic:
            mask = outputs.semantic_mask(found["logits"], image)
            mask_file = self._unique(Path("masks") / relative.with_suffix(".png"), relative)
            save_palette_png(mask, self.output_dir / mask_file)
            outputs.save_picture(outputs.draw_semantic(image, mask, len(names)), overlay)
            return [outputs.semantic_row(mask, relative.as_posix(), mask_file.as_posix(), names)]
        detections = outputs.kept_detections(found, model_input, image, self.score_threshold)
        outputs.save_picture(outputs.draw_detections(image, detections, names, self.mask_threshold), overlay)
        category_ids = self.metadata.get("category_ids")
        return outputs.detection_rows(detections, relative.as_posix(), names, category_ids, self.mask_threshold)

    def _unique(self, name: Path, relative: Path) -> Path:
        """``name``, or for a second image that maps onto it (a.gif and a.png both give a.png) the
        name with the input's suffix in the stem (a_gif.png)."""
        if name in self.written:
            name = name.with_name(f"{name.stem}_{relative.suffix.lstrip('.').lower()}{name.suffix}")
        self.written.add(name)
        (self.output_dir / name).parent.mkdir(parents=True, exist_ok=True)
        return name


def predict(cfg: DictConfig) -> list[dict]:
    """Run ``cfg.engine`` on every image of ``cfg.input``; unreadable files are reported and skipped."""
    engine, metadata = build_engine(cfg)
    files, base = find_images(cfg.input)
    output_dir = Path(cfg.paths.output_dir)
    write = PredictionWriter(output_dir, metadata, cfg.score_threshold, cfg.mask_threshold)
    resize = resizer(metadata["preprocessing"])
    rows, unreadable = [], []
    for chunk in batched(files, int(cfg.batch_size)):
        loaded = []
        for path in chunk:
            try:
                loaded.append((path, *prepare(path, resize, int(cfg.max_pixels))))
            except Exception as err:  # noqa: BLE001 - any decoder failure: report the file, go on with the rest
                unreadable.append(f"{path}: {err}")
                log.warning("skipped %s: %s", path, err)
        if not loaded:
            continue
        for (path, image, model_input), found in zip(loaded, engine([m for _, _, m in loaded]), strict=True):
            rows += write(path.relative_to(base), image, model_input, found)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "predictions.json").write_text(json.dumps(rows))
    done = len(files) - len(unreadable)
    log.info(
        "%d images: %d rows written to %s, overlays in %s",
        done,
        len(rows),
        output_dir / "predictions.json",
        output_dir / "overlays",
    )
    if unreadable:
        log.warning("%d files could not be read and were skipped:\n  %s", len(unreadable), "\n  ".join(unreadable))
    if not done:
        raise UserError(f"input={cfg.input}: none of the {len(files)} files could be read")
    return rows
