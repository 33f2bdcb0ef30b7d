"""Image classification on any contract backbone: global pooling (average by default) and a linear classifier.

The classifier's state dict holds the backbone's own keys, not nested under ``backbone.``:
with a torchvision ResNet it is key for key torchvision's classification model
(``conv1.weight`` ... ``layer4.2.bn3.running_var``, ``fc.weight``, ``fc.bias``), so
torchvision's ImageNet files load as they are and torchvision reads this model's weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from backbones import Backbone
from backbones.base import IMAGENET_MEAN, IMAGENET_STD
from backbones.resnet import RESNETS
from backbones.weights import WeightsError, apply_weights, torchvision_state_dict

log = logging.getLogger(__name__)

# Global pooling of the classified map. "avg" is torchvision's (ImageNet); "max" keeps the strongest
# response of each channel, which learns much faster when a small object sits anywhere on clutter.
POOLS = {"avg": nn.AdaptiveAvgPool2d, "max": nn.AdaptiveMaxPool2d}


class ImageClassifier(nn.Module):
    """``backbone`` -> the ``feature`` map -> global ``pool`` (average or max) -> dropout -> ``fc``.

    ``forward`` takes images in [0, 1] (normalised inside) and returns logits.
    """

    def __init__(
        self,
        backbone: Backbone,
        num_classes: int,
        *,
        feature: str | None = None,
        pool: str = "avg",
        dropout: float = 0.0,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        shapes = backbone.output_shape()
        self.feature = feature or next(reversed(shapes))  # the deepest map by default
        if self.feature not in shapes:
            raise ValueError(f"feature={self.feature!r} is not an output of the backbone: {list(shapes)}")
        if pool not in POOLS:
            raise ValueError(f"task.model.pool={pool!r} must be one of {list(POOLS)}")
        backbone.stop_after(self.feature)
        self.backbone = backbone
        self.pool = POOLS[pool](1)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.fc = nn.Linear(shapes[self.feature].channels, num_classes)
        self.num_classes = num_classes
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)
        clashes = set(self._modules) & set(backbone._modules)
        if clashes - {"backbone"}:
            raise ValueError(f"backbone module names {sorted(clashes)} clash with the classifier's own")
        self.register_state_dict_post_hook(_unnest_backbone)
        self.register_load_state_dict_pre_hook(_nest_backbone)
        self._leave_out_unread()

    def _leave_out_unread(self) -> None:
        """Parameters that do not feed the classified map (the stages after it) would never get a
        gradient, which DDP takes for an error: they leave training (saved, loaded, not updated)."""
        trainable = [(name, p) for name, p in self.backbone.named_parameters() if p.requires_grad]
        if not trainable or torch.is_inference_mode_enabled():  # built to infer: nothing will train
            return
        side = max(64, 2 * self.backbone.size_divisibility)
        training = self.backbone.training
        self.backbone.eval()  # no running statistics touched
        try:
            with torch.enable_grad():  # also when the model is built under no_grad
                feature = self.backbone(torch.zeros(1, 3, side, side))[self.feature]
                grads = torch.autograd.grad(feature.sum(), [p for _, p in trainable], allow_unused=True)
        finally:
            self.backbone.train(training)
        unread = [(name, p) for (name, p), grad in zip(trainable, grads, strict=True) if grad is None]
        for _, parameter in unread:
            parameter.requires_grad_(False)
        if unread:
            modules = sorted({name.split(".")[0] for name, _ in unread})
            log.info(
                "classifier reads %s: %d tensors of %s do not feed it and are not trained",
                self.feature,
                len(unread),
                ", ".join(modules),
            )

    def forward(self, images: Tensor) -> Tensor:
        features = self.backbone((images - self.image_mean) / self.image_std)[self.feature]
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))


def _unnest_backbone(module: ImageClassifier, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    """State dict hook: ``<prefix>backbone.conv1.weight`` saved as ``<prefix>conv1.weight``."""
    nested = prefix + "backbone."
    own = [key for key in state_dict if key.startswith(prefix)]  # this module's entries, in order
    for key in own:
        value = state_dict.pop(key)
        state_dict[prefix + key[len(nested) :] if key.startswith(nested) else key] = value


def _nest_backbone(module: ImageClassifier, state_dict: dict, prefix: str, *args) -> None:
    """Load hook, the inverse: every key not of the classifier's own modules belongs to the backbone
    (keys already under ``backbone.`` are taken as they are)."""
    head = tuple(f"{prefix}{name}." for name in module._modules)
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(head)]:
        state_dict[f"{prefix}backbone.{key[len(prefix) :]}"] = state_dict.pop(key)


def imagenet_classifier_state_dict(backbone: Backbone) -> dict[str, Tensor]:
    """torchvision's ImageNet classification weights (classifier included) for ``backbone``."""
    name = getattr(backbone, "name", None)
    if name not in RESNETS:
        raise WeightsError(
            f"task.model.weights=imagenet knows torchvision's ResNet classifiers ({sorted(RESNETS)}), not {name}; "
            "set backbone.weights=imagenet to start the backbone alone from ImageNet weights"
        )
    return torchvision_state_dict(RESNETS[name][1], instead="set task.model.weights=none")


def build_classifier(
    backbone: Backbone,
    *,
    num_classes: int,
    feature: str | None = None,
    pool: str = "avg",
    dropout: float = 0.0,
    weights: str = "none",
) -> ImageClassifier:
    """A classifier on ``backbone`` (channels of ``feature`` read from its contract).

    ``weights``: ``"none"``, ``"imagenet"`` (torchvision's ResNet classifier, ``fc`` included when
    ``num_classes`` is 1000) or the path of a whole classifier's state dict (torchvision's or this
    project's checkpoint); a classifier of another class count loads all but ``fc``.
    """
    model = ImageClassifier(backbone, num_classes, feature=feature, pool=pool, dropout=dropout)
    apply_weights(
        model,
        weights,
        name=f"classifier on {getattr(backbone, 'name', type(backbone).__name__)}",
        imagenet=lambda: imagenet_classifier_state_dict(backbone),
        prefixes=("model.",),
        ignore_unused=("fc.",),
    )
    return model
