"""Non-ResNet torchvision families (MobileNetV3, EfficientNet, ConvNeXt, RegNet) behind the contract.

Each family names the graph nodes that end its stride-4..32 stages; torchvision's
``create_feature_extractor`` returns them, and the channels and strides are read once
from a dry run, never written down.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn
from torchvision import models
from torchvision.models.feature_extraction import create_feature_extractor

from backbones.base import Backbone, FeatureSpec, measure_output_shape
from backbones.weights import BODY_PREFIXES, torchvision_state_dict


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

    Args mirror ``ResNetBackbone``; ``output_stride`` 16 or 8 dilates the last stages
    (``backbones.dilation``). ``norm="frozen_bn"`` turns BatchNorm into FrozenBatchNorm and ``norm="gn"`` into
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
        family = ZOO[name]
        self.name = name
        network = self.initialise(
            family.builder(weights=None),
            weights=weights,
            init=init,
            norm=norm,
            imagenet=lambda: torchvision_state_dict(family.imagenet),
            prefixes=BODY_PREFIXES,
            ignore_unused=("classifier.", "fc."),
        )
        names = [f"c{i}" for i in range(2, 6)]
        self.body = create_feature_extractor(network, return_nodes=dict(zip(family.nodes, names, strict=True)))
        self._stage_prefixes = family.stages
        self._shapes = measure_output_shape(self.body)
        self.dilate_to(output_stride)
        self.freeze_stages(trainable_stages)

    def _after_dilation(self, output_stride: int, shapes: OrderedDict[str, FeatureSpec]) -> None:
        self._shapes = OrderedDict(shapes)

    def stages(self) -> list[list[nn.Module]]:
        modules = dict(self.body.named_modules())
        return [[modules[p] for p in prefixes if p in modules] for prefixes in self._stage_prefixes]

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict(self._shapes)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return OrderedDict(self.body(x))
