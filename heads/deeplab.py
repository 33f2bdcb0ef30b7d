"""DeepLabV3 and DeepLabV3+ on any contract backbone, from torchvision's ASPP and FCN head.

``num_classes`` counts every label value a mask may hold, background included (VOC: 21);
255 marks pixels to ignore. With a ResNet50 at output stride 8, ``variant="v3"``, 256 ASPP
channels and the auxiliary head on ``c4``, the state dict is key for key torchvision's
``deeplabv3_resnet50(aux_loss=True)``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.segmentation.deeplabv3 import ASPP
from torchvision.models.segmentation.fcn import FCNHead

from backbones import Backbone, FeaturePyramid
from backbones.base import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)

VARIANTS = ("v3", "v3plus")
FEATURE_SOURCES = ("dilated", "fpn")


def deeplabv3_head(in_channels: int, num_classes: int, atrous_rates: Sequence[int], channels: int) -> nn.Sequential:
    """ASPP, a 3x3 conv and the classifier: torchvision's ``DeepLabHead`` with a configurable width."""
    return nn.Sequential(
        ASPP(in_channels, list(atrous_rates), channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, num_classes, 1),
    )


class DeepLabV3PlusHead(nn.Module):
    """ASPP on the coarse feature, then a decoder that fuses a fine (low-level) feature."""

    def __init__(
        self,
        in_channels: int,
        low_level_channels: int,
        num_classes: int,
        atrous_rates: Sequence[int],
        channels: int = 256,
        low_level_projection: int = 48,
    ) -> None:
        super().__init__()
        self.aspp = ASPP(in_channels, list(atrous_rates), channels)
        self.project = nn.Sequential(
            nn.Conv2d(low_level_channels, low_level_projection, 1, bias=False),
            nn.BatchNorm2d(low_level_projection),
            nn.ReLU(),
        )
        self.fuse = nn.Sequential(
            nn.Conv2d(channels + low_level_projection, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        )
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, high: Tensor, low: Tensor) -> Tensor:
        context = F.interpolate(self.aspp(high), size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.fuse(torch.cat([context, self.project(low)], dim=1)))


class DeepLab(nn.Module):
    """Backbone, DeepLab head and optional auxiliary FCN head; logits come back at input size.

    ``forward`` takes images in [0, 1] and normalises them itself; it returns
    ``{"out": logits}`` plus ``"aux"`` when the auxiliary head exists.
    """

    def __init__(
        self,
        backbone: Backbone,
        classifier: nn.Module,
        aux_classifier: nn.Module | None,
        *,
        num_classes: int,
        high_level: str,
        low_level: str | None = None,
        aux_level: str | None = None,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.aux_classifier = aux_classifier
        self.num_classes = num_classes
        self.high_level, self.low_level, self.aux_level = high_level, low_level, aux_level
        self.register_buffer("image_mean", torch.tensor(image_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(image_std).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        size = images.shape[-2:]
        features = self.backbone((images - self.image_mean) / self.image_std)
        if self.low_level is None:
            logits = self.classifier(features[self.high_level])
        else:
            logits = self.classifier(features[self.high_level], features[self.low_level])
        # float32 logits whatever the autocast: the masks are decoded (upsampled, argmax) from them
        result = OrderedDict(out=F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False))
        if self.aux_classifier is not None:
            aux = self.aux_classifier(features[self.aux_level])
            result["aux"] = F.interpolate(aux.float(), size=size, mode="bilinear", align_corners=False)
        return result


def build_deeplab(
    backbone: Backbone,
    *,
    num_classes: int,
    variant: str = "v3",
    features: str = "dilated",
    output_stride: int | None = None,
    high_level: str | None = None,
    low_level: str | None = None,
    aux_level: str | None = "c4",
    atrous_rates: Sequence[int] = (12, 24, 36),
    channels: int = 256,
    fpn_channels: int = 256,
    fpn_norm: str = "auto",
) -> DeepLab:
    """Build DeepLabV3 (``variant="v3"``) or V3+ (``"v3plus"``) reading channels from the backbone contract.

    ``features="dilated"`` uses the backbone's own outputs, dilated to ``output_stride`` (8 or 16;
    None: as given) whatever the family: defaults ``c5`` for ASPP, ``c2`` for the V3+ decoder. A
    backbone that cannot be dilated gets a FPN instead, with a warning.
    ``features="fpn"`` puts a FPN (``fpn_channels`` wide, ``fpn_norm``) on an undilated backbone:
    defaults ``p4`` and ``p2``; the FPN builds only the levels the heads read.
    ``aux_level`` feeds the auxiliary FCN head (None: no auxiliary head); it names a
    backbone output (``c4``) or, with a FPN, a pyramid level.
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r} must be one of {VARIANTS}")
    if features not in FEATURE_SOURCES:
        raise ValueError(f"features={features!r} must be one of {FEATURE_SOURCES}")
    features = _feature_source(backbone, features, output_stride)
    name = getattr(backbone, "name", type(backbone).__name__)
    deepest = max(spec.stride for spec in backbone.output_shape().values())
    log.info(
        "DeepLab %s reads %s",
        variant,
        f"{name} at output stride {deepest}" if features == "dilated" else f"a FPN on {name}",
    )
    high_level, low_level, aux_level = _levels(features, variant, high_level, low_level, aux_level)
    needed = [level for level in (high_level, low_level, aux_level) if level]
    if features == "fpn":  # only the levels the heads read: an unused level's conv would stall DDP
        backbone = FeaturePyramid(
            backbone, out_channels=fpn_channels, norm=fpn_norm, extra_blocks="none", out_levels=sorted(set(needed))
        )
    shapes = backbone.output_shape()
    missing = [name for name in needed if name not in shapes]
    if missing:
        raise ValueError(f"the backbone has no feature {missing}; it returns {list(shapes)}")
    high = shapes[high_level].channels
    if variant == "v3":
        classifier: nn.Module = deeplabv3_head(high, num_classes, atrous_rates, channels)
    else:
        classifier = DeepLabV3PlusHead(high, shapes[low_level].channels, num_classes, atrous_rates, channels)
    aux = FCNHead(shapes[aux_level].channels, num_classes) if aux_level else None
    return DeepLab(
        backbone,
        classifier,
        aux,
        num_classes=num_classes,
        high_level=high_level,
        low_level=low_level,
        aux_level=aux_level,
    )


def _feature_source(backbone: Backbone, features: str, output_stride: int | None) -> str:
    """``features``, after dilating the backbone to ``output_stride``; a backbone that cannot reach it
    gets a FPN instead (with a warning). A FPN needs an undilated backbone."""
    name = getattr(backbone, "name", type(backbone).__name__)
    if features == "dilated" and output_stride is not None:
        reached = backbone.dilate_to(output_stride)
        if reached > output_stride:
            log.warning(
                "DeepLab: %s cannot reach output stride %d; ASPP reads a FPN on it instead", name, output_stride
            )
            features = "fpn"
    if features == "fpn":
        strides = [s.stride for s in backbone.output_shape().values()]
        if len(set(strides)) != len(strides):
            raise ValueError(
                f"features=fpn needs an undilated backbone (its strides are {strides}): set backbone.output_stride=32"
            )
    return features


def _levels(
    features: str, variant: str, high: str | None, low: str | None, aux: str | None
) -> tuple[str, str | None, str | None]:
    """The maps ASPP, the V3+ decoder (None for V3) and the auxiliary head read: backbone outputs
    (``c5``, ``c2``, ``c4``) or, with a FPN, pyramid levels (``p4``, ``p2``, ``p5``)."""
    if features == "fpn":
        high, low, aux = high or "p4", low or "p2", "p5" if aux == "c4" else aux
    else:
        high, low = high or "c5", low or "c2"
    return high, (low if variant == "v3plus" else None), aux
