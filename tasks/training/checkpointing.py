"""Checkpointing during training: files written atomically, Lightning's checkpoint callback kept
across resumes, step checkpoints between validations, and validations (so checkpoints) only between
optimizer steps."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from tasks.common.errors import UserError


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


def align_validation_to_accumulation(trainer: L.Trainer) -> None:
    """Validate (and so checkpoint) only between optimizer steps: a checkpoint written while
    ``accumulate_grad_batches`` > 1 holds a partly accumulated gradient would lose that gradient on
    resume. ``val_check_interval`` counts batches: it is rounded down to a multiple of the batches
    per step (the last batch of an epoch always steps)."""
    accumulate, every = trainer.accumulate_grad_batches, trainer.val_check_batch
    if accumulate <= 1 or every is None or not math.isfinite(every):
        return
    if trainer.check_val_every_n_epoch is None and trainer.num_training_batches % accumulate:
        raise UserError(
            "trainer.check_val_every_n_epoch=null counts validation batches across epochs, and an epoch of "
            f"{trainer.num_training_batches} batches is not a multiple of "
            f"trainer.accumulate_grad_batches={accumulate}: "
            "validations would fall inside accumulation windows, whose gradient a checkpoint cannot hold. "
            "Set trainer.check_val_every_n_epoch=1, or an epoch length that is a multiple of the accumulation"
        )
    if every % accumulate == 0 or every >= trainer.num_training_batches:
        return
    rounded = max(accumulate, int(every) - int(every) % accumulate)
    trainer.val_check_batch = rounded
    rank_zero_info(
        f"validation every {rounded} training batches instead of {int(every)} (trainer.val_check_interval="
        f"{trainer.val_check_interval}): a multiple of trainer.accumulate_grad_batches={accumulate}, so that its "
        "checkpoints fall between optimizer steps"
    )


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that keeps best-model tracking when a run resumes into another folder,
    and checkpoints at validations that fall between optimizer steps only
    (``align_validation_to_accumulation``; step checkpoints count optimizer steps already).

    Lightning restores the best score only when the checkpoint folder is unchanged. When it
    changed (a resumed run given its own directory), the previous best checkpoint is copied
    into the new folder and the tracking state is carried over to that copy; nothing is
    written or deleted in the old folder.
    """

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        super().on_train_start(trainer, module)
        align_validation_to_accumulation(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous, best = state_dict.get("dirpath"), state_dict.get("best_model_path")
        if best and not Path(best).is_file():  # deleted or moved since: the run starts a new best
            rank_zero_warn(
                f"best checkpoint so far ({best}, {self.monitor}={state_dict.get('best_model_score')}) is gone: "
                "this run's validations choose a new best.ckpt, and its final scores are of that one"
            )
            forgotten = dict(best_model_path="", kth_best_model_path="", best_k_models={}, best_model_score=None)
            state_dict = {**state_dict, **forgotten}
            best = ""
        if self.dirpath is None or previous in (None, self.dirpath):
            super().load_state_dict(state_dict)
            return
        carried = {**state_dict, "dirpath": self.dirpath, "last_model_path": ""}
        if best:
            copy = str(Path(self.dirpath) / Path(best).name)
            score = state_dict["best_model_score"]
            if rank_zero_only.rank == 0 and not Path(copy).exists():
                Path(self.dirpath).mkdir(parents=True, exist_ok=True)
                shutil.copy2(best, copy)
                rank_zero_info(f"best checkpoint so far ({best}, {self.monitor}={score}) carried over to {copy}")
            carried.update(best_model_path=copy, kth_best_model_path=copy, best_k_models={copy: score})
        super().load_state_dict(carried)

    def save_as_best(self, trainer: L.Trainer, score: float | None) -> str:
        """Write the current weights as the best checkpoint with ``score`` (a run that never validated
        during training validates its final weights after it), tracked as if a validation had chosen it."""
        path = str(Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}")
        self.best_model_path = self.kth_best_model_path = path
        self.best_model_score = torch.tensor(score) if score is not None else None
        self.best_k_models = {path: self.best_model_score}
        trainer.save_checkpoint(path)
        return path


class StepCheckpoint(RunCheckpoint):
    """``last.ckpt`` every ``every_n_train_steps`` optimizer steps, between validations.

    Lightning also writes a "last" checkpoint when training ends if this callback wrote none; it
    holds the loops' state after the end, and a run resumed from it skips an epoch and a step. The
    validation checkpoint already wrote ``last.ckpt`` by then, so this one does not.
    """

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        return
