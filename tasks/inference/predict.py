"""``tasks/predict.py``: a trained model on new images, with no dataset needed.

Writes into the run directory ``predictions.json`` (one row per detection, or per image for
semantic segmentation), ``overlays/<name>`` (one picture per input image, same relative path) and,
for semantic segmentation, ``masks/<name>.png`` (VOC palette PNGs of class indices).
"""

from __future__ import annotations

import itertools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from tasks.common.errors import UserError
from tasks.common.metadata import load_trained_model
from tasks.data.formats.palette import save_palette_png
from tasks.evaluation import drawing
from tasks.evaluation.predictions import (
    capped_message,
    count_capped,
    detection_cap,
    rescale_to_original,
    set_detection_cap,
)
from tasks.evaluation.slicing import Slicing, predict_images_sliced, slicing_settings
from tasks.inference import outputs
from tasks.inference.engines import ENGINES, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine
from tasks.inference.graphs import is_semantic
from tasks.inference.inputs import find_images, prepare, resizer
from tasks.inference.model_card import read_model_card

log = logging.getLogger(__name__)


def build_engine(cfg: DictConfig) -> tuple[object, dict]:
    """The engine ``cfg.engine`` names, and the metadata (classes, preprocessing) of its model."""
    if cfg.engine == "torch":
        if not cfg.ckpt_path:
            raise UserError("engine=torch needs a checkpoint: pass ckpt_path=PATH/TO/best.ckpt")
        model, metadata = load_trained_model(cfg.ckpt_path, cfg.task.name)
        if cfg.get("box_detections_per_img") and detection_cap(model) is not None:
            set_detection_cap(model, cfg.box_detections_per_img)
        return TorchEngine(model, metadata["task"], cfg.device, compile=bool(cfg.compile)), metadata
    if cfg.engine in EXPORTED:
        option, example, engine = EXPORTED[cfg.engine]
        path = cfg.get(option)
        if not path:
            raise UserError(f"engine={cfg.engine} needs an exported model: pass {option}=PATH/TO/{example}")
        metadata = read_model_card(path, cfg.task.name)
        cap = metadata["model"].get("box_detections_per_img")
        if cfg.get("box_detections_per_img"):
            raise UserError(
                f"box_detections_per_img is fixed in an exported model (this one keeps {cap}): "
                "use engine=torch ckpt_path=... to change it"
            )
        options = {"precision": cfg.get("openvino_precision", "fp32")} if cfg.engine == "openvino" else {}
        return engine(path, metadata["task"], cap, **options), metadata
    raise UserError(f"engine={cfg.engine} is not one of {ENGINES}")


# the engines of exported models: their path option, its file, the engine
EXPORTED = {
    "onnxruntime": ("onnx_path", "model.onnx", OnnxRuntimeEngine),
    "openvino": ("openvino_path", "model.xml", OpenVinoEngine),
}


Loaded = tuple[Path, np.ndarray, Tensor]  # a file, its decoded image and the model's input made from it


def same_size_batches(loaded: Iterable[Loaded], size: int) -> Iterator[list[Loaded]]:
    """Consecutive images in batches of at most ``size`` whose model inputs have one shape: images of
    other sizes would be padded to a common one, and the padding changes the features (and so the
    predictions) near an image's border. A file's predictions never depend on its neighbours."""
    if size < 1:
        raise UserError(f"batch_size={size} must be at least 1")
    batch: list[Loaded] = []
    for item in loaded:
        if batch and (len(batch) == size or item[2].shape != batch[0][2].shape):
            yield batch
            batch = []
        batch.append(item)
    if batch:
        yield batch


def load_images(files: Sequence[Path], resize, max_pixels: int, unreadable: list[str]) -> Iterator[Loaded]:
    """Each readable file decoded and prepared, one at a time; the others are reported in ``unreadable``."""
    for path in files:
        try:
            yield (path, *prepare(path, resize, max_pixels))
        except Exception as err:  # noqa: BLE001 - any decoder failure: report the file, go on with the rest
            unreadable.append(f"{path}: {err}")
            log.warning("skipped %s: %s", path, err)


class PredictionWriter:
    """Turns one image's engine output into rows, an overlay and (semantic) a mask file."""

    def __init__(self, output_dir: Path, metadata: dict, score_threshold: float, mask_threshold: float) -> None:
        self.output_dir, self.metadata = output_dir, metadata
        self.score_threshold, self.mask_threshold = score_threshold, mask_threshold
        self.semantic = is_semantic(metadata["task"])
        self.written: set[str] = set()  # output names relative to the run directory, lower case

    def __call__(self, relative: Path, image, model_input, found: dict) -> list[dict]:
        names = self.metadata["class_names"]
        overlay = self.output_dir / self._unique(Path("overlays") / outputs.overlay_name(relative), relative)
        if self.semantic:
            mask = drawing.semantic_mask(found["logits"], image)
            mask_file = self._unique(Path("masks") / relative.with_suffix(".png"), relative)
            save_palette_png(mask, self.output_dir / mask_file)
            outputs.save_picture(drawing.draw_semantic(image, mask, len(names)), overlay)
            return [outputs.semantic_row(mask, relative.as_posix(), mask_file.as_posix(), names)]
        if "panoptic" in found:
            return [self._panoptic(relative, image, model_input, found, overlay)]
        detections = outputs.kept_detections(found, model_input, image, self.score_threshold)
        outputs.save_picture(drawing.draw_detections(image, detections, names, self.mask_threshold), overlay)
        category_ids = self.metadata.get("category_ids")
        return outputs.detection_rows(detections, relative.as_posix(), names, category_ids, self.mask_threshold)

    def _panoptic(self, relative: Path, image, model_input, found: dict, overlay: Path) -> dict:
        """The segment map as a COCO panoptic PNG, its overlay, and its ``segments_info`` row (the merge
        chose the segments: ``score_threshold`` does not apply)."""
        found = dict(found)
        rescale_to_original([found], [model_input], [{"orig_size": image.shape[:2]}])
        panoptic = found["panoptic"].numpy()
        things = self.metadata["class_names"]
        names = [*things, *self.metadata.get("stuff_names", [])]
        category_ids = [*(self.metadata.get("category_ids") or range(1, len(things) + 1))]
        category_ids += self.metadata.get("stuff_category_ids") or range(len(things) + 1, len(names) + 1)
        png = self._unique(Path("panoptic") / relative.with_suffix(".png"), relative)
        outputs.save_panoptic_png(panoptic, self.output_dir / png)
        labels, scores = found["segment_labels"], found["segment_scores"]
        picture = drawing.draw_panoptic(image, found["panoptic"], labels, names, len(things), scores)
        outputs.save_picture(picture, overlay)
        return outputs.panoptic_row(
            panoptic,
            labels.tolist(),
            scores.tolist(),
            relative.as_posix(),
            png.as_posix(),
            names,
            category_ids,
            len(things),
        )

    def _unique(self, name: Path, relative: Path) -> Path:
        """``name``, or for another image that maps onto it (a.gif and a.png both give a.png; x.JPG and
        x.jpg both give x.jpg) the name with the input's suffix in the stem (a_gif.png), then a count
        (x_jpg_2.jpg). Names are compared ignoring case, as some file systems do."""
        suffix = relative.suffix.lstrip(".").lower()
        candidates = (name.with_name(f"{name.stem}{tail}{name.suffix}") for tail in _tails(suffix))
        name = next(c for c in candidates if c.as_posix().lower() not in self.written)
        self.written.add(name.as_posix().lower())
        (self.output_dir / name).parent.mkdir(parents=True, exist_ok=True)
        return name


def _tails(suffix: str) -> Iterator[str]:
    yield ""
    yield f"_{suffix}"
    yield from (f"_{suffix}_{count}" for count in itertools.count(2))


def prediction_slicing(options: DictConfig | None, metadata: dict) -> Slicing | None:
    """``slicing`` as configured; its size null: the tile size the model was trained on, if any."""
    if options is None:
        return None
    options = {k: v for k, v in OmegaConf.to_container(options, resolve=True).items() if k != "_target_"}
    if options.get("size") is None:
        options["size"] = metadata["preprocessing"].get("tile_size")
    slicing = slicing_settings(**options)
    if slicing is not None and metadata["task"] != "detection":
        raise UserError(f"sliced inference merges boxes: task {metadata['task']} needs slicing.size=0")
    return slicing


def predict(cfg: DictConfig) -> list[dict]:
    """Run ``cfg.engine`` on every image of ``cfg.input``; unreadable files are reported and skipped."""
    engine, metadata = build_engine(cfg)
    files, base = find_images(cfg.input)
    output_dir = Path(cfg.paths.output_dir)
    write = PredictionWriter(output_dir, metadata, cfg.score_threshold, cfg.mask_threshold)
    slicing = prediction_slicing(cfg.get("slicing"), metadata)
    resize = None if slicing is not None else resizer(metadata["preprocessing"])  # sliced: full resolution
    rows, unreadable, capped = [], [], 0
    cap = engine.detection_cap
    if slicing is not None:
        log.info(
            "sliced inference: tiles of %d px, overlap %s, merged by %s", slicing.size, slicing.overlap, slicing.merge
        )
    loaded = load_images(files, resize, int(cfg.max_pixels), unreadable)
    for batch in same_size_batches(loaded, int(cfg.batch_size)):
        inputs = [m for _, _, m in batch]
        found_all = engine(inputs) if slicing is None else predict_images_sliced(engine, inputs, slicing, cap)
        capped += 0 if write.semantic else count_capped(found_all, cap)
        for (path, image, model_input), found in zip(batch, found_all, strict=True):
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
    if capped:
        log.warning(capped_message(capped, done, cap, "box_detections_per_img=N (engine=torch)"))
    if unreadable:
        log.warning("%d files could not be read and were skipped:\n  %s", len(unreadable), "\n  ".join(unreadable))
    if not done:
        raise UserError(f"input={cfg.input}: none of the {len(files)} files could be read")
    return rows
