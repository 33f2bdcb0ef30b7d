"""LightningModule for image classification: cross-entropy with label smoothing, mixup and cutmix
from ``torchvision.transforms.v2``, top-1/top-k accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.transforms import v2

from tasks.training.module import TaskModule, float_images

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def batch_mixer(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> v2.Transform | None:
    """torchvision's MixUp and CutMix, one of them (chosen at random) per batch when both are on."""
    mixers = []
    if mixup_alpha > 0:
        mixers.append(v2.MixUp(alpha=mixup_alpha, num_classes=num_classes))
    if cutmix_alpha > 0:
        mixers.append(v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes))
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


class ClassificationModule(TaskModule):
    """Trains a model that returns logits for images in [0, 1].

    Args (besides those of :class:`tasks.training.module.TaskModule`):
        label_smoothing: cross-entropy's label smoothing (0.1 in torchvision's recipe).
        mixup_alpha, cutmix_alpha: Beta parameters of MixUp and CutMix (0: off); with both on,
            each training batch gets one of them. Their draws come from torch's generator, which
            is seeded per batch, so a resumed run mixes as the uninterrupted one did.
        norm_weight_decay: weight decay of normalisation layers' parameters (torchvision's recipe:
            0); None: the optimizer's.
    """

    progress_metrics = ("top1",)

    def __init__(
        self,
        model: nn.Module,
        *,
        label_smoothing: float = 0.0,
        mixup_alpha: float = 0.0,
        cutmix_alpha: float = 0.0,
        norm_weight_decay: float | None = None,
        **options,
    ) -> None:
        super().__init__(model, **options)
        self.label_smoothing, self.norm_weight_decay = label_smoothing, norm_weight_decay
        self.mixer = batch_mixer(model.num_classes, mixup_alpha, cutmix_alpha)

    def forward(self, images: Tensor) -> Tensor:
        return self.model(self.to_memory_format(float_images(images)))

    @staticmethod
    def labels(targets: list[dict], device: torch.device) -> Tensor:
        return torch.tensor([int(t["label"]) for t in targets], dtype=torch.long, device=device)

    def batch_loss(self, batch: tuple[Tensor, list[dict]]) -> Tensor:
        """The cross-entropy on ``batch`` in the model's current mode (no mixing)."""
        images, targets = batch
        return F.cross_entropy(self(images).float(), self.labels(targets, images.device))

    def training_losses(self, batch: tuple[Tensor, list[dict]]) -> tuple[dict[str, Tensor], Tensor]:
        images, targets = batch
        images, labels = float_images(images), self.labels(targets, images.device)
        if self.mixer is not None:
            images, labels = self.mixer(images, labels)  # labels become class probabilities
        return {}, F.cross_entropy(self(images), labels, label_smoothing=self.label_smoothing)

    def validation_step(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> None:
        images, targets = batch
        logits = self(images)
        loss = F.cross_entropy(logits.float(), self.labels(targets, images.device))
        self.log_validation_loss(loss, len(images))
        if self.evaluator is not None:
            self.evaluator.update(logits, targets)

    def parameter_groups(self) -> list[dict]:
        if self.norm_weight_decay is None:
            return super().parameter_groups()
        norm_ids = {
            id(p) for m in self.model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(recurse=False)
        }
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        return [
            {"params": [p for p in trainable if id(p) not in norm_ids], "lr_mult": 1.0},
            {
                "params": [p for p in trainable if id(p) in norm_ids],
                "lr_mult": 1.0,
                "weight_decay": self.norm_weight_decay,
            },
        ]
