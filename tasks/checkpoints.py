"""Checkpoint files: written atomically, checked before a run resumes from one."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from backbones.weights import first_line
from tasks.errors import UserError

RESUME_HINT = "pass a .ckpt written by a previous run of this task (outputs/<task>/<run>/checkpoints/last.ckpt)"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file in the target folder, fsync it, then rename it
    over the target: a process killed at any moment leaves the previous checkpoint intact and
    loadable (a rename within one folder is atomic). Remote paths (``s3://`` ...) use Lightning's
    own writer."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if "://" in str(path) or storage_options is not None:
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        _fsync_folder(path.parent)


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (a power cut could otherwise undo it)."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


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


def latest_checkpoint(callbacks: list) -> str | None:
    """The most recently written checkpoint of any checkpoint callback, or None."""
    paths = [
        Path(p)
        for cb in callbacks
        if isinstance(cb, ModelCheckpoint)
        for p in (cb.last_model_path, cb.best_model_path)
        if p and Path(p).is_file()
    ]
    return str(max(paths, key=lambda p: p.stat().st_mtime)) if paths else None
