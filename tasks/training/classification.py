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
        """Class indices, or class probabilities where MixUp/CutMix mixed the batch."""
        labels = [t["label"] for t in targets]
        if isinstance(labels[0], Tensor) and labels[0].ndim == 1:
            return torch.stack(labels).to(device)
        return torch.tensor([int(label) for label in labels], dtype=torch.long, device=device)

    def training_batch(self, batch: tuple[Tensor, list[dict]]) -> tuple[Tensor, list[dict]]:
        """MixUp/CutMix (when on): mixed images, each target's label a vector of class probabilities."""
        if self.mixer is None:
            return batch
        images, targets = batch
        images, labels = self.mixer(float_images(images), self.labels(targets, images.device))
        return images, [{**target, "label": label} for target, label in zip(targets, labels, strict=True)]

    def losses(self, batch: tuple[Tensor, list[dict]]) -> tuple[dict[str, Tensor], Tensor]:
        images, targets = batch
        return {}, self._loss(self(images), targets)

    def _loss(self, logits: Tensor, targets: list[dict]) -> Tensor:
        labels = self.labels(targets, logits.device)
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)

    def losses_and_predictions(self, batch: tuple[Tensor, list[dict]], batch_idx: int) -> tuple[tuple, Tensor]:
        images, targets = batch
        logits = self(images)
        return ({}, self._loss(logits, targets)), logits

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
