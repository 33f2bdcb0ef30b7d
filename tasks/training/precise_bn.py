"""Precise BatchNorm statistics (detectron2's PreciseBN), and a warning when eval mode and train mode
disagree.

BatchNorm trained on small batches keeps running statistics that lag behind the weights: each
step's statistics enter the running average with a momentum of 0.1, and the weights have moved
since, so a model trained from scratch can score far lower in eval mode than its weights allow.
Before each validation during training (so also before the best checkpoint is written), this callback
recomputes the statistics with the current weights as the plain average over ``num_batches``
training batches, averaged over DDP processes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from tasks.data.loader import SeededBatches
from tasks.data.sampling import derive_seed


def trainable_batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """BatchNorm layers whose statistics training updates (frozen BatchNorm is another class)."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_statistics(model: nn.Module, forward: Callable[[object], object], batches: Iterable) -> int:
    """Running mean and variance of every trainable BatchNorm of ``model`` that ``forward`` reaches, as
    the plain average of its batch statistics over ``batches`` (``forward`` runs one, ``model`` in train
    mode); returns the number of batches used. Layers the forward never runs through (a stage after the
    features a head reads) keep their statistics; weights are untouched; each layer's momentum is restored."""
    layers = trainable_batchnorms(model)
    saved = [{name: buffer.clone() for name, buffer in layer.named_buffers()} for layer in layers]
    momenta = [layer.momentum for layer in layers]
    reached: set[int] = set()
    hooks = [layer.register_forward_pre_hook(lambda layer, _: reached.add(id(layer))) for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None  # a cumulative average: every batch counts the same
    count = 0
    try:
        for batch in batches:
            forward(batch)
            count += 1
    finally:
        for hook in hooks:
            hook.remove()
        for layer, momentum, buffers in zip(layers, momenta, saved, strict=True):
            layer.momentum = momentum
            if id(layer) not in reached:  # its reset statistics would normalise with mean 0, variance 1
                for name, buffer in layer.named_buffers():
                    buffer.copy_(buffers[name])
    return count


def total_loss(module: L.LightningModule, batch: object) -> torch.Tensor | None:
    """The task module's total loss on ``batch`` in its current mode (None where that mode has none)."""
    losses = module.losses(batch)
    return None if losses is None else losses[1]


class PreciseBatchNorm(L.Callback):
    """``enabled``: true, false, or ``auto``: on where BatchNorm trains on fewer than
    ``below_batch_size`` images per process. ``num_batches`` training batches (drawn with ``seed``
    and the step, so that a resumed run draws the same ones) recompute the statistics before each
    validation during training. Whether on or not, the first of those batches' loss is computed in
    eval and in train mode; a ratio over ``warn_ratio`` is warned about once."""

    def __init__(
        self, enabled: bool | str = "auto", num_batches: int = 20, below_batch_size: int = 16, warn_ratio: float = 2.0,
        seed: int = 0,
    ) -> None:  # fmt: skip
        if enabled not in (True, False, "auto"):
            raise ValueError(f"callbacks.precise_bn.enabled={enabled!r} must be true, false or auto")
        self.enabled, self.num_batches, self.below_batch_size = enabled, num_batches, below_batch_size
        self.warn_ratio, self.seed = warn_ratio, seed
        self._warned = False

    def active(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if not trainable_batchnorms(pl_module) or self.enabled is False:
            return False
        return self.enabled is True or trainer.datamodule.batch_size < self.below_batch_size

    def _batches(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Iterator:
        """``num_batches`` training batches drawn with the seed and the step (a resumed run draws the same
        ones, each sample augmented from its own seed). A last, smaller batch
        is left out where the data module leaves it out of training (a batch of one that ASPP's pooled
        branch cannot normalise)."""
        datamodule = trainer.datamodule
        dataset, size = datamodule.train_set, datamodule.batch_size
        rng = np.random.default_rng(derive_seed(self.seed, trainer.global_step, trainer.global_rank))
        order = rng.permutation(len(dataset))[: self.num_batches * size]
        reader = SeededBatches(dataset)
        for start in range(0, len(order), size):
            chosen = order[start : start + size]
            if len(chosen) < size and datamodule.drop_last_batch:
                return
            keys = [(int(i), derive_seed(self.seed, trainer.global_step, int(i))) for i in chosen]
            yield trainer.strategy.batch_to_device(datamodule.collate_fn(reader[keys]))

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # at the epoch's start, not the validation's: an EMA callback (listed before) has swapped in the
        # averaged weights by then, and the statistics are recomputed for the weights validation scores
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        modes = {module: module.training for module in pl_module.modules()}
        try:
            with torch.random.fork_rng(devices=[pl_module.device.index] if pl_module.device.type == "cuda" else []):
                if self.active(trainer, pl_module):
                    self._recompute(trainer, pl_module)
                self._compare_modes(trainer, pl_module)
        finally:
            for module, training in modes.items():
                module.training = training

    def _recompute(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pl_module.train()
        count = recompute_statistics(pl_module, pl_module.losses, self._batches(trainer, pl_module))
        for layer in trainable_batchnorms(pl_module):  # every process ends with the same statistics
            for name in ("running_mean", "running_var"):
                buffer = getattr(layer, name)
                buffer.copy_(trainer.strategy.reduce(buffer.clone(), reduce_op="mean"))
        rank_zero_info(f"BatchNorm statistics recomputed over {count} training batches (precise BN)")

    def _compare_modes(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """One training batch's loss with running statistics against batch statistics: a training
        batch, because train mode must be able to normalise it (validation batches may hold one image)."""
        if self._warned or not trainable_batchnorms(pl_module):
            return
        batch = next(self._batches(trainer, pl_module), None)
        if batch is None:
            return
        buffers = {name: value.clone() for name, value in pl_module.named_buffers()}
        with torch.no_grad():
            pl_module.eval()
            eval_loss = total_loss(pl_module, batch)
            pl_module.train()
            train_loss = total_loss(pl_module, batch)
        for name, value in pl_module.named_buffers():  # train mode moved the running statistics
            value.copy_(buffers[name])
        if eval_loss is None or not torch.isfinite(eval_loss) or float(train_loss) <= 0:
            return
        ratio = float(eval_loss) / float(train_loss)
        if ratio > self.warn_ratio:
            self._warned = True
            rank_zero_warn(
                f"on a training batch the loss with BatchNorm's running statistics (eval mode, "
                f"{float(eval_loss):.3f}) is {ratio:.1f} times the loss with the batch's own statistics "
                f"({float(train_loss):.3f}): the running statistics lag behind the weights. Recompute them "
                "(callbacks.precise_bn.enabled=true), train larger batches, or use GroupNorm (backbone.norm=gn)"
            )
