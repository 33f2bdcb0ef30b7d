"""Non-ResNet torchvision families (MobileNetV3, EfficientNet, ConvNeXt, RegNet) behind the contract.

Each family names the graph nodes that end its stride-4..32 stages; torchvision's
``create_feature_extractor`` returns them, and the channels and strides are read once
from a dry run, never written down.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

from backbones.base import Backbone, FeatureSpec, apply_norm, resolve_norm
from backbones.weights import BODY_PREFIXES, apply_weights, torchvision_state_dict


@dataclass(frozen=True)
class Family:
    builder: Callable[..., nn.Module]
    imagenet: models.WeightsEnum
    nodes: tuple[str, str, str, str]  # graph nodes ending the stride 4, 8, 16 and 32 stages
    stages: tuple[tuple[str, ...], ...]  # module prefixes of the stem and the four stages


def _features(*groups: tuple[int, ...]) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(f"features.{i}" for i in group) for group in groups)


ZOO: dict[str, Family] = {
    "mobilenet_v3_large": Family(
        models.mobilenet_v3_large,
        models.MobileNet_V3_Large_Weights.IMAGENET1K_V1,
        ("features.3", "features.6", "features.12", "features.16"),
        _features((0,), (1, 2, 3), (4, 5, 6), tuple(range(7, 13)), (13, 14, 15, 16)),
    ),
    "efficientnet_b0": Family(
        models.efficientnet_b0,
        models.EfficientNet_B0_Weights.IMAGENET1K_V1,
        ("features.2", "features.3", "features.5", "features.7"),
        _features((0,), (1, 2), (3,), (4, 5), (6, 7)),
    ),
    "efficientnet_b3": Family(
        models.efficientnet_b3,
        models.EfficientNet_B3_Weights.IMAGENET1K_V1,
        ("features.2", "features.3", "features.5", "features.7"),
        _features((0,), (1, 2), (3,), (4, 5), (6, 7)),
    ),
    "convnext_tiny": Family(
        models.convnext_tiny,
        models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1,
        ("features.1", "features.3", "features.5", "features.7"),
        _features((0,), (1,), (2, 3), (4, 5), (6, 7)),
    ),
    "regnet_y_400mf": Family(
        models.regnet_y_400mf,
        models.RegNet_Y_400MF_Weights.IMAGENET1K_V1,
        ("trunk_output.block1", "trunk_output.block2", "trunk_output.block3", "trunk_output.block4"),
        (("stem",), ("trunk_output.block1",), ("trunk_output.block2",), ("trunk_output.block3",),
         ("trunk_output.block4",)),
    ),
}  # fmt: skip


class TorchvisionBackbone(Backbone):
    """A torchvision classification network cut at its stage ends; outputs ``c2``..``c5``.

    Args mirror ``ResNetBackbone``; these families do not dilate, so ``output_stride``
    must stay 32. ``norm="frozen_bn"`` turns BatchNorm into FrozenBatchNorm and ``norm="gn"`` into
    GroupNorm (ConvNeXt's LayerNorm is left as it is).
    """

    def __init__(
        self,
        name: str,
        *,
        weights: str = "none",
        trainable_stages: int = 5,
        norm: str = "auto",
        output_stride: int = 32,
        init: str | None = None,
    ) -> None:
        super().__init__()
        if name not in ZOO:
            raise ValueError(f"unknown torchvision backbone {name!r}; choose one of {sorted(ZOO)}")
        if output_stride != 32:
            raise ValueError(
                f"{name} cannot dilate, so output_stride={output_stride} is unavailable; use output_stride=32 "
                "(for segmentation: task.backbone_output_stride=32 with task.model.features=fpn or dilated)"
            )
        family = ZOO[name]
        self.name = name
        network = family.builder(weights=None)
        for source in (weights, init or "none"):
            apply_weights(
                network,
                source,
                name=name,
                imagenet=lambda: torchvision_state_dict(family.imagenet),
                prefixes=BODY_PREFIXES,
                ignore_unused=("classifier.", "fc."),
            )
        self.norm = resolve_norm(norm, pretrained=weights != "none" or bool(init))
        network = apply_norm(network, self.norm, name=name)
        names = [f"c{i}" for i in range(2, 6)]
        self.body = create_feature_extractor(network, return_nodes=dict(zip(family.nodes, names, strict=True)))
        self._stage_prefixes = family.stages
        self._shapes = self._measure_shapes()
        self.freeze_stages(trainable_stages)

    def _measure_shapes(self) -> OrderedDict[str, FeatureSpec]:
        was_training = self.body.training
        self.body.eval()
        with torch.no_grad():
            outputs = self.body(torch.zeros(1, 3, 64, 64))
        self.body.train(was_training)
        return OrderedDict(
            (name, FeatureSpec(int(t.shape[1]), 2 ** round(math.log2(64 / t.shape[-1])))) for name, t in outputs.items()
        )

    def stages(self) -> list[list[nn.Module]]:
        modules = dict(self.body.named_modules())
        return [[modules[p] for p in prefixes if p in modules] for prefixes in self._stage_prefixes]

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict(self._shapes)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(self.body(x))
