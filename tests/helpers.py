"""Callbacks that tests inject into real runs (``+callbacks.NAME._target_=tests.helpers.X``)."""

from __future__ import annotations

import lightning as L
import torch


class SpoilWeightsAfterResume(L.Callback):
    """On a resumed run only, add large noise to every weight: validations after the resume are
    then far worse than those before, as when a run diverges after an interruption."""

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_step == 0:
            return
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 3)


class NanBoxLossOnRank(L.Callback):
    """On one DDP process only, make torchvision's box regression loss NaN on training call ``call``
    (1-based), as when one process meets a bad batch."""

    def __init__(self, rank: int, call: int) -> None:
        self.rank, self.call = rank, call

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.global_rank != self.rank:
            return
        import torchvision.models.detection.roi_heads as roi_heads

        original, count, call = roi_heads.fastrcnn_loss, [0], self.call

        def loss(*args, **kwargs):
            classifier, box = original(*args, **kwargs)
            if torch.is_grad_enabled():
                count[0] += 1
                box = box * float("nan") if count[0] == call else box
            return classifier, box

        roi_heads.fastrcnn_loss = loss


class Crash(RuntimeError):
    """A run stopped from inside, as a crash would stop it."""


class CrashAtStep(L.Callback):
    """Raises ``Crash`` once ``step`` optimizer steps are done, after the checkpoint callbacks of
    that step ran (an in-process stand-in for ``KillAtStep``)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            raise Crash(f"stopped after step {self.step}")


class RecordTrainedImages(L.Callback):
    """Appends, after every training batch, the epoch, the optimizer step reached and the batch's
    image ids to ``trained_rank<R>.jsonl`` in the run directory: which images a run trained on."""

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        import json
        from pathlib import Path

        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, "ids": [t["image_id"] for t in batch[1]]}
        with (Path(trainer.default_root_dir) / f"trained_rank{trainer.global_rank}.jsonl").open("a") as file:
            file.write(json.dumps(row) + "\n")


def _state(module: L.LightningModule) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.state_dict().items()}


class StateAroundBatch(L.Callback):
    """Saves every parameter and buffer from before and after training batch ``batch`` (0-based) to
    ``around_bad_batch.pt`` in the run directory; ``inf_activation``: also make the network's first
    convolution output inf on that batch, as an overflowing activation would."""

    def __init__(self, batch: int, inf_activation: bool = False) -> None:
        self.batch, self.inf_activation = batch, inf_activation
        self.before: dict[str, torch.Tensor] = {}
        self.hook = None

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        if batch_idx != self.batch:
            return
        self.before = _state(module)
        if self.inf_activation:
            first = next(m for m in module.modules() if isinstance(m, torch.nn.Conv2d))
            self.hook = first.register_forward_hook(lambda _, inputs, output: torch.full_like(output, float("inf")))

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if batch_idx != self.batch:
            return
        if self.hook is not None:
            self.hook.remove()
        from pathlib import Path

        torch.save(
            {"before": self.before, "after": _state(module)}, Path(trainer.default_root_dir) / "around_bad_batch.pt"
        )


class ParametersAtStop(L.Callback):
    """When the run stops on an exception, saves the parameters it had before its last training
    batch and those it has now to ``parameters_at_stop.pt`` in the run directory."""

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch, batch_idx: int) -> None:
        self.before = {name: p.detach().clone() for name, p in module.named_parameters()}

    def on_exception(self, trainer: L.Trainer, module: L.LightningModule, exception: BaseException) -> None:
        from pathlib import Path

        now = {name: p.detach().clone() for name, p in module.named_parameters()}
        torch.save({"before": self.before, "at_stop": now}, Path(trainer.default_root_dir) / "parameters_at_stop.pt")
