"""What a checkpoint carries so that a model can be rebuilt and fed without its dataset.

Training stores ``checkpoint["inference"]``: the task, the model's resolved config (backbone
included), the class names, the dataset's own category ids (detection) and the data-side
preprocessing of evaluation images. Everything is plain lists, numbers and strings, so the file
stays loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from backbones.weights import strip_prefix
from tasks.checkpoints import read_checkpoint
from tasks.errors import UserError

CHECKPOINT_KEY = "inference"
# Pretrained weight sources are not needed once the checkpoint's weights are loaded over them.
NO_WEIGHT_SOURCES = {"weights": "none"}
NO_BACKBONE_SOURCES = {"weights": "none", "init": None}


def inference_metadata(cfg: DictConfig, datamodule: L.LightningDataModule, model_arguments: dict) -> dict[str, Any]:
    """The ``inference`` entry of this run's checkpoints (read without loading the data)."""
    model = OmegaConf.to_container(cfg.task.model, resolve=True)
    model.update(model_arguments)
    return {
        "task": cfg.task.name,
        "model": model,
        "class_names": list(datamodule.class_names),
        "category_ids": list(getattr(datamodule, "category_ids", [])) or None,
        "preprocessing": datamodule.inference_preprocessing(),
    }


def build_model(metadata: dict[str, Any]) -> nn.Module:
    """The checkpoint's architecture in eval mode, with no pretrained weights fetched (offline)."""
    config = dict(metadata["model"])
    config.update({k: v for k, v in NO_WEIGHT_SOURCES.items() if k in config})
    if isinstance(config.get("backbone"), dict):
        backbone = dict(config["backbone"])
        backbone.update({k: v for k, v in NO_BACKBONE_SOURCES.items() if k in backbone})
        config["backbone"] = backbone
    return instantiate(config).eval()


def load_trained_model(path: str | Path, task: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The trained model of checkpoint ``path`` and its inference metadata; ``task``, when given,
    must be the checkpoint's."""
    content = read_checkpoint(path)
    metadata = content.get(CHECKPOINT_KEY)
    if not metadata:
        raise UserError(
            f"ckpt_path={path} holds no inference metadata (class names, preprocessing): it was written by an "
            "older version of this project. Train again, or resume that run: every checkpoint it writes from then "
            "on carries them"
        )
    if task is not None and task != metadata["task"]:
        raise UserError(
            f"ckpt_path={path} is a {metadata['task']} checkpoint, not {task}: pass task={metadata['task']}"
        )
    model = build_model(metadata)
    model.load_state_dict(strip_prefix(content["state_dict"], "model."))
    return model, metadata


MODEL_CARD = "model.json"


def model_card(metadata: dict[str, Any], model: nn.Module, file_name: str, graph: nn.Module) -> dict[str, Any]:
    """``model.json`` beside an exported file: everything needed to feed it and read its outputs."""
    transform = getattr(model, "transform", None)  # detectors normalise and resize inside
    if transform is not None:
        mean, std = list(transform.image_mean), list(transform.image_std)
        sizes = {"min_size": list(transform.min_size), "max_size": transform.max_size}
    else:
        mean, std, sizes = model.image_mean.flatten().tolist(), model.image_std.flatten().tolist(), None
    mean, std = [round(v, 6) for v in mean], [round(v, 6) for v in std]  # float32 buffers: 0.485 not 0.48500001
    one_image = graph.input_name == "image"
    return {
        "task": metadata["task"],
        "file": file_name,
        "class_names": metadata["class_names"],
        "category_ids": metadata.get("category_ids"),
        "input": {
            "name": graph.input_name,
            "shape": ["3", "height", "width"] if one_image else ["batch", "3", "height", "width"],
            "dtype": "float32",
            "colour": "RGB",
            "range": [0.0, 1.0],
        },
        "outputs": list(graph.output_names),
        "normalisation": {"mean": mean, "std": std, "where": "inside the model"},
        "resize_inside_model": sizes,
        "preprocessing": metadata["preprocessing"],  # data side, before the model
        "model": metadata["model"],
    }


def read_model_card(exported: str | Path, task: str | None = None) -> dict[str, Any]:
    """The ``model.json`` written beside an exported model, checked against ``task`` when given."""
    path = Path(exported).with_name(MODEL_CARD)
    if not path.is_file():
        raise UserError(
            f"{path} is missing: predict reads class names and preprocessing from the model.json that "
            f"tasks/export.py writes beside {Path(exported).name}; keep the two files together"
        )
    card = json.loads(path.read_text())
    if task is not None and task != card["task"]:
        raise UserError(f"{exported} is a {card['task']} model, not {task}: pass task={card['task']}")
    return card
