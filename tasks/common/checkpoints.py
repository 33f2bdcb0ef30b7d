"""Checkpoint files: written atomically, checked before a run resumes from one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from backbones.weights import first_line
from tasks.common.errors import UserError

RESUME_HINT = "pass a .ckpt written by a previous run of this task (outputs/<task>/<run>/checkpoints/last.ckpt)"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint's contents (tensors memory-mapped, nothing executed), or a
    :class:`UserError` naming the file when it is missing, truncated or not a checkpoint."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"ckpt_path={path} does not exist: {RESUME_HINT}")
    try:
        content = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # torch raises RuntimeError, UnpicklingError, EOFError ... by fault
        reason = first_line(err)
        raise UserError(
            f"ckpt_path={path} cannot be read ({reason}): the file is truncated or not a torch checkpoint. "
            f"Resume from the run's other checkpoint (last.ckpt or best.ckpt), or {RESUME_HINT}"
        ) from err
    if not isinstance(content, dict) or "state_dict" not in content or "global_step" not in content:
        raise UserError(
            f"ckpt_path={path} is not a training checkpoint of this project (it holds no model state and "
            "step): to start a backbone from a weight file, use backbone.init=PATH instead"
        )
    return content


def checkpoint_path(path: str | Path | None) -> str | None:
    """``ckpt_path`` as given, with a leading ``~`` expanded (Lightning and the checks read it as is)."""
    return str(Path(path).expanduser()) if path else None


def check_checkpoint_fits(content: dict[str, Any], module: nn.Module, path: str | Path) -> None:
    """Refuse, naming the file, a checkpoint whose tensors are not those of ``module``."""
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in content["state_dict"].items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    reshaped = sorted(name for name in expected.keys() & found.keys() if expected[name] != found[name])
    if not (missing or unexpected or reshaped):
        return
    details = "; ".join(
        f"{label} ({len(names)}): {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
        for label, names in (("missing", missing), ("unexpected", unexpected), ("other shape", reshaped))
        if names
    )
    raise UserError(
        f"ckpt_path={path} does not fit the model this config builds ({details}). Pass the "
        "task/backbone/dataset overrides used for training: they are in the run's .hydra/overrides.yaml"
    )
