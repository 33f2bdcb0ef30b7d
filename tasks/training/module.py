"""What every task's LightningModule shares: optimizer and schedule (with the learning rate scaled
to the real total batch), the evaluator built once the data is ready, and a check that the
validation loss is not orders of magnitude off the training loss; a guard against non-finite
losses and checkpoints."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.rank_zero import rank_prefixed_message
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tasks.common.metadata import CHECKPOINT_KEY as INFERENCE_KEY
from tasks.evaluation.evaluation import Evaluation
from tasks.training.checkpointing import latest_checkpoint
from tasks.training.nonfinite import NonFiniteLossError, describe_batch, has_nonfinite, nonfinite_tensors
from tasks.training.time_budget import budget_left

OptimizerFactory = Callable[[Iterable], Optimizer]
SchedulerFactory = Callable[..., LRScheduler]
# a validation loss this many times the training loss is not overfitting but a broken eval mode
LOSS_RATIO_WARNING = 100.0


def scaled_lr(lr: float, reference_batch: int | None, total_batch: int) -> tuple[float, str]:
    """The linear scaling rule: ``lr x total_batch / reference_batch``, and how it was computed."""
    if not reference_batch:
        return lr, f"lr {lr:g} (no reference batch: not scaled to the total batch {total_batch})"
    scaled = lr * total_batch / reference_batch
    return scaled, f"lr {scaled:g} = {lr:g} x {total_batch} / {reference_batch}"


def training_length(trainer: L.Trainer) -> str:
    """Which limit ends training, in optimizer steps (what the learning-rate schedule spans)."""
    total = trainer.estimated_stepping_batches  # loads the training data when epochs count
    epochs, steps = trainer.max_epochs, trainer.max_steps
    if not math.isfinite(total):
        return "training ends at trainer.max_time (no epoch or step limit): the time budget plans the steps"
    if epochs is None or epochs < 0:  # Lightning counts steps only; the data may not be loaded yet
        return f"training ends after {total} optimizer steps, at trainer.max_steps={steps} (no epoch limit)"
    per_epoch = math.ceil(trainer.num_training_batches / trainer.accumulate_grad_batches)
    if steps is not None and steps >= 0 and steps <= epochs * per_epoch:
        limit, other = f"trainer.max_steps={steps}", f"trainer.max_epochs={epochs}"
    else:
        limit, other = f"trainer.max_epochs={epochs} ({per_epoch} steps an epoch)", f"trainer.max_steps={steps}"
    return f"training ends after {total} optimizer steps, at {limit}; {other} does not end it first"


# a schedule's length while only a time budget ends training, until the budget's plan sizes it
PROVISIONAL_STEPS = 1_000_000


def schedule_length(trainer: L.Trainer) -> int:
    """Optimizer steps the learning-rate schedule spans: those the epoch or step limit allows, or, where
    only ``trainer.max_time`` ends training, a provisional length that ``TimeBudget`` replaces once it
    has timed the first steps (``tasks.training.time_budget``)."""
    total = trainer.estimated_stepping_batches
    if math.isfinite(total):
        return int(total)
    if budget_left(trainer) is None:  # pragma: no cover - Lightning refuses a run with no limit at all
        raise ValueError("training has no end: set trainer.max_epochs, trainer.max_steps or trainer.max_time")
    return PROVISIONAL_STEPS


def float_images(images: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
    """uint8 images from the loader (a batch tensor, or a list of CHW images) as float in [0, 1]; the
    models normalise them inside. Float images pass as they are."""
    if isinstance(images, Tensor):
        return images.float().div_(255) if images.dtype == torch.uint8 else images
    return [float_images(image) for image in images]


class TaskModule(L.LightningModule):
    """Base of the task modules.

    Args:
        model: the network.
        optimizer: partial optimizer, called with parameter groups (``parameter_groups``).
        scheduler: partial scheduler, called with the optimizer and ``total_steps``; stepped every step.
        evaluator: the validation metrics, or a function that builds them from the data module's
            ``evaluation_inputs()`` (ground truth, category ids, class names) once the data is set up.
        lr_reference_batch: the total batch the optimizer's lr is meant for; the lr is multiplied by
            (batch_size x devices x num_nodes x accumulate_grad_batches) / lr_reference_batch.
            None uses the lr as given.
        channels_last: keep the model in channels-last memory format (faster convolutions on
            tensor cores and recent CPUs).
        skip_nonfinite_batches: how many batches with a NaN/inf loss (or loss component) to skip,
            each with a warning, before the run stops at the next one. 0: stop at the first.
        inference: what rebuilds and feeds the model without its dataset (class names,
            preprocessing, model config: ``tasks.common.metadata``); every checkpoint stores it.
        prediction_dir: validation writes each image's prediction here (``write_predictions``:
            segmentation's palette PNGs); None writes none.
    """

    progress_metrics: tuple[str, ...] = ()  # shown in the progress bar

    def __init__(
        self,
        model: nn.Module,
        *,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        evaluator: Any = None,
        lr_reference_batch: int | None = None,
        channels_last: bool = False,
        skip_nonfinite_batches: int = 0,
        inference: dict | None = None,
        prediction_dir: Path | None = None,
    ) -> None:
        super().__init__()
        if prediction_dir is not None and type(self).write_predictions is TaskModule.write_predictions:
            raise ValueError(
                f"{type(self).__name__} writes no per-image prediction files (save_masks=true is for segmentation): "
                "its predictions are in the evaluator's files (predictions.json)"
            )
        self.inference, self.prediction_dir = inference, prediction_dir
        self.model = model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        built = evaluator is None or hasattr(evaluator, "compute")
        self.evaluator, self._evaluator_factory = (evaluator, None) if built else (None, evaluator)
        self.lr_reference_batch = lr_reference_batch
        self.channels_last = channels_last
        self.skip_nonfinite_batches, self._skipped_nonfinite = skip_nonfinite_batches, 0
        self._buffers_before_batch: list[Tensor] = []  # restored when a batch is skipped
        self.last_evaluation: Evaluation | None = None
        self._train_loss = (0.0, 0)  # running sum and count since the last validation
        self._val_loss = (0.0, 0)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        if self.evaluator is None and self._evaluator_factory is not None:
            # the evaluator needs the validation split's ground truth: known once the data is set up
            self.evaluator = self._evaluator_factory(**self.trainer.datamodule.evaluation_inputs())

    def on_train_start(self) -> None:
        # the loops are restored from a checkpoint by now, and the epoch loop has not started: a run
        # resumed with another batch size or world size counts the batches left in its own layout
        align = getattr(self.trainer.datamodule, "align_trainer", None)
        if align is not None:
            align()

    # -- losses ------------------------------------------------------------------------------
    recorded_component: str | None = None  # the loss compared with val/loss (None: the total)

    def losses(self, batch: Any) -> tuple[dict[str, Tensor], Tensor] | None:  # pragma: no cover - abstract
        """The loss components of ``batch`` (logged as ``train/<name>``) and the total minimised, in the
        model's current mode; None where that mode computes none (an exported detector in eval mode).
        The one loss of training and of precise BN (``tasks.training.precise_bn``)."""
        raise NotImplementedError

    def training_batch(self, batch: Any) -> Any:
        """The batch as training sees it (classification mixes images here); validation and precise BN
        take the loader's batch."""
        return batch

    def losses_and_predictions(self, batch: Any, batch_idx: int) -> tuple[tuple[dict, Tensor] | None, Any]:
        """Validation in one pass: the losses as ``losses`` gives them (None: none) and the predictions
        the evaluator's ``update`` takes with the batch's targets."""  # pragma: no cover - abstract
        raise NotImplementedError

    def write_predictions(self, predictions: Any, targets: list[dict]) -> None:
        """Write one validation batch's predictions under ``prediction_dir`` (tasks that write files)."""
        raise NotImplementedError

    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        """The one training step of every task: losses, the non-finite guard, logging and the record."""
        images, targets = batch
        losses, total = self.losses(self.training_batch(batch))
        if not self.losses_are_finite({**losses, "loss": total}, targets):
            return None  # skipped: Lightning runs no backward and no optimizer step
        batch_size = len(images)
        if losses:
            self.log_dict({f"train/{name}": value for name, value in losses.items()}, batch_size=batch_size)
        self.log("train/loss", total, prog_bar=True, batch_size=batch_size)
        self.record_train_loss(losses[self.recorded_component] if self.recorded_component else total)
        return total

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The one validation step of every task: losses and predictions, the loss logged, the predictions
        scored (and written with ``prediction_dir``)."""
        images, targets = batch
        losses, predictions = self.losses_and_predictions(batch, batch_idx)
        if losses is not None:
            components, total = losses
            self.log_validation_loss(total, len(images), components)
        if self.evaluator is not None:
            self.evaluator.update(predictions, targets)
        if self.prediction_dir is not None:
            self.write_predictions(predictions, targets)

    def log_validation_loss(self, total: Tensor, batch_size: int, components: dict[str, Tensor] | None = None) -> None:
        """``val/loss`` (and ``val/<component>``) of one validation batch, averaged over the processes,
        and its record for the check against the training loss."""
        if components:
            self.log_dict({f"val/{name}": v for name, v in components.items()}, batch_size=batch_size, sync_dist=True)
        self.log("val/loss", total, batch_size=batch_size, sync_dist=True)
        self.record_val_loss(total, batch_size)

    def record_train_loss(self, loss: Tensor) -> None:
        total, count = self._train_loss
        self._train_loss = (total + float(loss.detach()), count + 1)

    def record_val_loss(self, loss: Tensor, weight: int = 1) -> None:
        total, count = self._val_loss
        self._val_loss = (total + float(loss.detach()) * weight, count + weight)

    def on_validation_epoch_start(self) -> None:
        self._val_loss = (0.0, 0)
        if self.evaluator is not None:
            self.evaluator.reset()

    def on_validation_epoch_end(self) -> None:
        """Score the epoch (on rank 0, shared with every process) and log the scalars."""
        self.check_loss_scale()
        if self.evaluator is None:
            return
        self.last_evaluation = self.evaluator.compute()  # full precision here; logging rounds to float32
        for name, value in self.last_evaluation.scalars.items():
            self.log(f"val/{name}", value, prog_bar=name in self.progress_metrics, sync_dist=True)

    def check_loss_scale(self) -> None:
        """Warn when the validation loss dwarfs the training loss: eval-mode normalisation is off."""
        (train_sum, train_count), (val_sum, val_count) = self._train_loss, self._val_loss
        if not (train_count and val_count) or self.trainer.sanity_checking:
            return
        train, val = train_sum / train_count, val_sum / val_count
        self._train_loss = (0.0, 0)
        if not math.isfinite(val) or val > LOSS_RATIO_WARNING * max(train, 1e-12):
            rank_zero_warn(
                f"validation loss {val:.4g} is {val / max(train, 1e-12):.3g} times the training loss {train:.4g}. "
                "In eval mode BatchNorm normalises with its running statistics, which few images per device "
                "estimate badly when training from scratch: use backbone.norm=gn (GroupNorm), "
                "trainer.sync_batchnorm=true across devices, larger batches, or pretrained weights with frozen "
                "statistics (backbone.weights=imagenet)"
            )

    # -- non-finite losses ------------------------------------------------------------------
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """With skips allowed, keep a copy of every buffer: the forward pass updates BatchNorm's
        running statistics before the loss is known, and a skipped batch must leave them as they were."""
        if self._skipped_nonfinite < self.skip_nonfinite_batches:
            self._buffers_before_batch = [buffer.detach().clone() for buffer in self.buffers()]

    def _restore_buffers(self) -> None:
        with torch.no_grad():
            for buffer, saved in zip(self.buffers(), self._buffers_before_batch, strict=True):
                buffer.copy_(saved)

    def losses_are_finite(self, losses: dict[str, Tensor], targets: list[dict]) -> bool:
        """False: skip this batch (no backward, no optimizer step; buffers the forward pass changed are
        restored). Raises once the skips are used up.

        Every process takes the same decision, so that DDP never waits for a process that skipped.
        """
        local = has_nonfinite(losses)
        if not self.trainer.strategy.reduce_boolean_decision(local, all=False):
            return True
        where = f"step {self.global_step} (epoch {self.current_epoch}, batch {self.trainer.fit_loop.batch_idx})"
        what = describe_batch(losses, targets) if local else "on another process"
        if self._skipped_nonfinite < self.skip_nonfinite_batches:
            self._skipped_nonfinite += 1
            self._restore_buffers()  # parameters are untouched: no backward, no optimizer step
            rank_zero_warn(
                f"non-finite loss at {where}: {what}; batch skipped "
                f"({self._skipped_nonfinite} of skip_nonfinite_batches={self.skip_nonfinite_batches})"
            )
            return False
        message = (
            f"non-finite loss at {where}: {what}. Training stopped before this batch changed the weights; "
            f"last good checkpoint: {latest_checkpoint(self.trainer.callbacks) or 'none written yet'}. "
            "Lower task.module.optimizer.lr, set trainer.gradient_clip_val, check those images' "
            "annotations (python tasks/check_dataset.py), or tolerate a few with skip_nonfinite_batches=N"
        )
        raise NonFiniteLossError(
            rank_prefixed_message(message, self.global_rank) if self.trainer.world_size > 1 else message
        )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        bad = nonfinite_tensors(checkpoint["state_dict"])
        if bad:
            last = latest_checkpoint(self.trainer.callbacks) or "none written yet"
            raise NonFiniteLossError(
                f"not writing a checkpoint at step {self.global_step}: {len(bad)} weight tensors hold NaN/inf "
                f"({', '.join(bad[:3])}); last good checkpoint: {last}"
            )
        if self.inference is not None:
            checkpoint[INFERENCE_KEY] = self.inference

    # -- optimisation ------------------------------------------------------------------------
    def parameter_groups(self) -> list[dict]:
        """Trainable parameters in groups; ``lr_mult`` scales a group's learning rate."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr_mult": 1.0}]

    def total_batch(self) -> tuple[int, str]:
        """Images per optimizer step over every process, and how that number comes about."""
        trainer = self._trainer
        if trainer is None:  # not fitting (e.g. inspecting the optimizer): one process, no accumulation
            return 1, "no trainer"
        batch_size = int(getattr(trainer.datamodule, "batch_size", 1) or 1)
        devices, accumulate = trainer.world_size, trainer.accumulate_grad_batches
        return (
            batch_size * devices * accumulate,
            f"{batch_size} images x {devices} processes x {accumulate} accumulated",
        )

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory([g for g in self.parameter_groups() if g["params"]])
        total, how = self.total_batch()
        lr, explanation = scaled_lr(optimizer.defaults["lr"], self.lr_reference_batch, total)
        rank_zero_info(f"{explanation} (total batch: {how})")
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_mult", 1.0)
        if self._trainer is not None:
            rank_zero_info(training_length(self._trainer))
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer, total_steps=schedule_length(self.trainer))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def to_memory_format(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images
