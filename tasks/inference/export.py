"""``tasks/export.py``: a checkpoint as ``model.onnx`` (dynamic image size), OpenVINO's ``model.xml`` (from the
ONNX graph, dynamic image size) or TorchScript ``model.pt``,
with ``model.json`` beside it (classes, input, normalisation, sizes, preprocessing)."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn

from tasks.common.errors import UserError
from tasks.common.metadata import load_trained_model
from tasks.inference.model_card import MODEL_CARD, model_card
from tasks.inference.openvino_core import openvino_core
from tasks.kinds import task_kind

log = logging.getLogger(__name__)
FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt", "openvino": "model.xml"}


def write_onnx(graph: nn.Module, task: str, path: Path, opset: int) -> None:
    """The TorchScript-based exporter: it traces torchvision's detection graph with the image size,
    the detection count and the mask pasting left dynamic (torchvision's ONNX code paths)."""
    kind = task_kind(task)
    torch.onnx.export(
        graph,
        (kind.example_input(),),
        str(path),
        dynamo=False,
        opset_version=opset,
        input_names=[graph.input_name],
        output_names=list(graph.output_names),
        dynamic_axes=kind.dynamic_axes(graph),
    )


def openvino_model(graph: nn.Module, task: str, folder: Path, opset: int):
    """The ONNX export read by OpenVINO's ONNX front end: an ``openvino.Model``, dynamic sizes kept (the
    ONNX file, written into ``folder``, is removed)."""
    try:
        import openvino  # noqa: F401 - installed, or the message below
    except ImportError as err:
        raise UserError('format=openvino needs the deploy extras: pip install -e ".[deploy]"') from err
    onnx = folder / "openvino-source.onnx"
    write_onnx(graph, task, onnx, opset)
    # read by the ONNX front end directly: convert_model() would first try the file as a torch.export archive
    model = openvino_core().read_model(str(onnx))
    onnx.unlink()
    return model


def save_openvino(model, path: Path) -> None:
    """``model.xml`` + ``model.bin`` with the weights as they are (the converter would halve float32
    ones to float16 by default)."""
    import openvino

    openvino.save_model(model, str(path), compress_to_fp16=False)


def write_openvino(graph: nn.Module, task: str, path: Path, opset: int) -> None:
    save_openvino(openvino_model(graph, task, path.parent, opset), path)


def write_torchscript(graph: nn.Module, task: str, path: Path) -> None:
    torch.jit.trace(graph, (task_kind(task).example_input(),), check_trace=False).save(str(path))


def exported_graph(cfg: DictConfig) -> tuple[nn.Module, nn.Module, dict]:
    """The checkpoint's model, its fixed-signature graph and its metadata, after checking the options."""
    if cfg.format not in FORMATS:
        raise UserError(f"format={cfg.format} is not one of {sorted(FORMATS)}")
    if not cfg.ckpt_path:
        raise UserError("export needs a checkpoint: pass ckpt_path=PATH/TO/best.ckpt")
    model, metadata = load_trained_model(cfg.ckpt_path, cfg.task.name)
    return model, task_kind(metadata["task"]).graph(model), metadata


def write_model_card(output_dir: Path, card: dict) -> None:
    (output_dir / MODEL_CARD).write_text(json.dumps(card, indent=2))


def export(cfg: DictConfig) -> Path:
    """Write the exported model and its ``model.json`` into the run directory; return the model's path."""
    model, graph, metadata = exported_graph(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / FORMATS[cfg.format]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings on Python scalars torchvision keeps dynamic itself
        if cfg.format == "onnx":
            write_onnx(graph, metadata["task"], path, int(cfg.opset))
        elif cfg.format == "openvino":
            write_openvino(graph, metadata["task"], path, int(cfg.opset))
        else:
            write_torchscript(graph, metadata["task"], path)
    write_model_card(output_dir, {**model_card(metadata, model, path.name, graph), "format": cfg.format})
    log.info("%s written to %s (with %s)", cfg.format, path, MODEL_CARD)
    return path
