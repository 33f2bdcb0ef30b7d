"""``model.json``: what an exported model needs beside it to be fed and read (classes, input,
normalisation, preprocessing)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from tasks.common.errors import UserError
from tasks.kinds import task_kind

MODEL_CARD = "model.json"


def model_card(metadata: dict[str, Any], model: nn.Module, file_name: str, graph: nn.Module) -> dict[str, Any]:
    """``model.json`` beside an exported file: everything needed to feed it and read its outputs."""
    kind = task_kind(metadata["task"])
    mean, std, sizes = kind.input_normalisation(model)
    mean, std = [round(v, 6) for v in mean], [round(v, 6) for v in std]  # float32 buffers: 0.485 not 0.48500001
    return {
        "task": metadata["task"],
        "file": file_name,
        "class_names": metadata["class_names"],
        "category_ids": metadata.get("category_ids"),
        "input": {
            "name": graph.input_name,
            "shape": ["batch", "3", "height", "width"] if kind.batched else ["3", "height", "width"],
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
