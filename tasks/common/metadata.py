"""What a checkpoint carries so that a model can be rebuilt and fed without its dataset.

Training stores ``checkpoint["inference"]``: the task, the model's resolved config (backbone
included), the class names, the dataset's own category ids (detection) and the data-side
preprocessing of evaluation images. Everything is plain lists, numbers and strings, so the file
stays loadable with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from backbones.weights import strip_prefix
from tasks.common.checkpoints import read_checkpoint
from tasks.common.errors import UserError

CHECKPOINT_KEY = "inference"
# Pretrained weight sources are not needed once the checkpoint's weights are loaded over them.
NO_WEIGHT_SOURCES = {"weights": "none"}
NO_BACKBONE_SOURCES = {"weights": "none", "init": None}


def inference_metadata(cfg: DictConfig, datamodule: Any, model_arguments: dict) -> dict[str, Any]:
    """The ``inference`` entry of this run's checkpoints, from the data module's metadata (read
    without loading the data)."""
    model = OmegaConf.to_container(cfg.task.model, resolve=True)
    model.update(model_arguments)
    return {
        "task": cfg.task.name,
        "model": model,
        "class_names": list(datamodule.class_names),
        "category_ids": list(getattr(datamodule, "category_ids", [])) or None,
        "preprocessing": datamodule.inference_preprocessing(),
        **getattr(datamodule, "prediction_metadata", dict)(),
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
