"""``tasks/export.py``: a checkpoint exported as it is, or (``quantize=int8``, OpenVINO) quantized with a
calibration set from its training data and scored before and after on the validation split.

The accuracy cost of int8 is measured at every export, never assumed: the float32 and the int8
model run through the task's own validation (the same loader, evaluator and metrics as
``tasks/evaluate.py``), and ``model.json`` records both figures beside the calibration set.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig

from tasks.common.checkpoints import read_checkpoint
from tasks.common.errors import UserError
from tasks.core.runner import build_datamodule, restore_data_state, validation_metrics
from tasks.inference.engines import EngineAsModel, OpenVinoEngine
from tasks.inference.export import FORMATS, export, exported_graph, openvino_model, save_openvino, write_model_card
from tasks.inference.model_card import MODEL_CARD, model_card
from tasks.inference.openvino_core import openvino_core
from tasks.inference.quantize import calibration_inputs, quantization_record, quantize_int8
from tasks.kinds import task_kind

log = logging.getLogger(__name__)
QUANTIZATIONS = ("int8",)


def export_model(cfg: DictConfig) -> Path:
    """The exported model's path: ``export`` as it is, or quantized (``cfg.quantize``)."""
    if not cfg.get("quantize"):
        return export(cfg)
    if cfg.quantize not in QUANTIZATIONS:
        raise UserError(f"quantize={cfg.quantize} is not one of {QUANTIZATIONS} (or null: float32)")
    if cfg.format != "openvino":
        raise UserError(f"quantize={cfg.quantize} is done by OpenVINO's NNCF: pass format=openvino, not {cfg.format}")
    return export_int8(cfg)


def checked_datamodule(cfg: DictConfig, class_names: list[str]) -> L.LightningDataModule:
    """The configured dataset, set up with the checkpoint's recorded split, once it is known to hold the
    checkpoint's classes."""
    datamodule = build_datamodule(cfg)
    restore_data_state(datamodule, read_checkpoint(cfg.ckpt_path))
    if list(datamodule.class_names) != list(class_names):
        raise UserError(
            f"ckpt_path={cfg.ckpt_path} was trained on the classes {class_names}, and the configured dataset has "
            f"{datamodule.class_names}: quantize=int8 calibrates on the training data and scores the validation "
            "split, so pass the dataset options of the training run (e.g. dataset=... dataset.root=...)"
        )
    datamodule.setup()
    return datamodule


def score_engine(cfg: DictConfig, engine: OpenVinoEngine, datamodule: L.LightningDataModule) -> dict[str, float]:
    """The task's validation metrics of an exported model, as ``tasks/evaluate.py`` scores a checkpoint."""
    evaluator = instantiate(cfg.task.evaluator) if cfg.task.get("evaluator") else None
    module = instantiate(cfg.task.module, model=EngineAsModel(engine, len(datamodule.class_names)), evaluator=evaluator)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False, devices=1)
    return validation_metrics(trainer, module, datamodule)


def export_int8(cfg: DictConfig) -> Path:
    """``model.xml`` with int8 convolutions and matrix products, and ``model.json`` recording the
    calibration and the fp32 and int8 metrics on the validation split."""
    model, graph, metadata = exported_graph(cfg)
    task = metadata["task"]
    datamodule = checked_datamodule(cfg, metadata["class_names"])
    training = datamodule.unaugmented("train")
    inputs = calibration_inputs(training, metadata["preprocessing"], int(cfg.calibration_images), task_kind(task))
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FORMATS["openvino"]
    with tempfile.TemporaryDirectory(dir=output_dir) as folder:
        fp32 = float32_openvino(graph, task, Path(folder), int(cfg.opset))
        log.info("calibrating int8 quantization on %d of %d training images", len(inputs), len(training))
        int8 = quantize_int8(fp32, inputs)
        save_openvino(int8, path)
        cap = metadata["model"].get("box_detections_per_img")
        names, metrics = accuracy_metrics(cfg), {}
        for precision, network in (("fp32", fp32), ("int8", int8)):
            scores = score_engine(cfg, OpenVinoEngine(network, task, cap), datamodule)
            metrics[precision] = {name: scores[name] for name in names}
    source = str(getattr(training, "source", cfg.dataset.get("_target_")))
    record = quantization_record(len(inputs), len(training), source, metrics)
    card = {**model_card(metadata, model, path.name, graph), "format": "openvino", "quantization": record}
    write_model_card(output_dir, card)
    for name in names:
        fp, q = metrics["fp32"][name], metrics["int8"][name]
        print(f"validation {name}: fp32 {fp:.4f}  int8 {q:.4f}  (int8 - fp32 {q - fp:+.4f})")
    log.info("int8 OpenVINO model written to %s (with %s)", path, MODEL_CARD)
    return path


def float32_openvino(graph: torch.nn.Module, task: str, folder: Path, opset: int):
    """The float32 OpenVINO model, written to ``folder`` and read back: the ONNX front end shares constant
    nodes between the graph and the bodies of its If operations (torchvision's batched NMS), which NNCF
    cannot walk; a model read from its file has its own constants in each body."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on Python scalars torchvision keeps dynamic itself
        save_openvino(openvino_model(graph, task, folder, opset), folder / "float32.xml")
    return openvino_core().read_model(str(folder / "float32.xml"))


def accuracy_metrics(cfg: DictConfig) -> tuple[str, ...]:
    """The metrics the task shows in its progress bar (detection: map and map_50; segmentation: miou)."""
    return get_class(cfg.task.module._target_).progress_metrics
