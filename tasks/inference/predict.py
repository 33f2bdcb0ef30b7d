"""``tasks/predict.py``: a trained model on new images, with no dataset needed.

Writes into the run directory ``predictions.json`` (one row per detection, or per image for
segmentation and classification), ``overlays/<name>`` (one picture per input image, same relative
path) and what the task kind adds (semantic segmentation: ``masks/<name>.png``, VOC palette PNGs of
class indices; panoptic: ``panoptic/<name>.png``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from heads.protocol import detection_cap
from tasks.common.errors import UserError
from tasks.common.metadata import load_trained_model
from tasks.evaluation.predictions import capped_message
from tasks.evaluation.slicing import Slicing, predict_images_sliced, slicing_settings
from tasks.inference.engines import ENGINES, OnnxRuntimeEngine, OpenVinoEngine, TorchEngine
from tasks.inference.inputs import find_images, prepare, resizer
from tasks.inference.model_card import read_model_card
from tasks.kinds import task_kind
from tasks.kinds.base import PredictedImage, PredictOptions
from tasks.kinds.files import PredictionFiles

log = logging.getLogger(__name__)


def build_engine(cfg: DictConfig) -> tuple[object, dict]:
    """The engine ``cfg.engine`` names, and the metadata (classes, preprocessing) of its model."""
    if cfg.engine == "torch":
        if not cfg.ckpt_path:
            raise UserError("engine=torch needs a checkpoint: pass ckpt_path=PATH/TO/best.ckpt")
        model, metadata = load_trained_model(cfg.ckpt_path, cfg.task.name)
        if cfg.get("box_detections_per_img") and detection_cap(model) is not None:
            model.detections_per_img = int(cfg.box_detections_per_img)
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


def prediction_slicing(options: DictConfig | None, metadata: dict) -> Slicing | None:
    """``slicing`` as configured; its size null: the tile size the model was trained on, if any."""
    if options is None:
        return None
    options = {k: v for k, v in OmegaConf.to_container(options, resolve=True).items() if k != "_target_"}
    if options.get("size") is None:
        options["size"] = metadata["preprocessing"].get("tile_size")
    slicing = slicing_settings(**options)
    task_kind(metadata["task"]).check_slicing(slicing)
    return slicing


def predict(cfg: DictConfig) -> list[dict]:
    """Run ``cfg.engine`` on every image of ``cfg.input``; unreadable files are reported and skipped."""
    engine, metadata = build_engine(cfg)
    files, base = find_images(cfg.input)
    output_dir = Path(cfg.paths.output_dir)
    kind, written = task_kind(metadata["task"]), PredictionFiles(output_dir)
    options = PredictOptions(float(cfg.score_threshold), float(cfg.mask_threshold), int(cfg.get("top_k", 5)))
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
        capped += kind.count_capped(found_all, cap)
        for (path, image, model_input), found in zip(batch, found_all, strict=True):
            item = PredictedImage(path.relative_to(base), image, model_input, found)
            rows += kind.write(written, item, metadata, options)
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
