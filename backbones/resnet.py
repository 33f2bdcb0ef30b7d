"""ResNet family from torchvision behind the backbone contract."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision import models

from backbones.base import Backbone, FeatureSpec
from backbones.dilation import OUTPUT_STRIDES
from backbones.weights import torchvision_state_dict

# name -> (torchvision builder, the ImageNet weights detection models start from)
RESNETS: dict[str, tuple[Callable[..., models.ResNet], models.WeightsEnum]] = {
    "resnet18": (models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1),
    "resnet34": (models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1),
    "resnet50": (models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1),
    "resnet101": (models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1),
    "resnet152": (models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1),
    "resnext50_32x4d": (models.resnext50_32x4d, models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1),
    "resnext101_32x8d": (models.resnext101_32x8d, models.ResNeXt101_32X8D_Weights.IMAGENET1K_V1),
    "wide_resnet50_2": (models.wide_resnet50_2, models.Wide_ResNet50_2_Weights.IMAGENET1K_V1),
}

STAGES = ("c2", "c3", "c4", "c5")  # outputs of layer1..layer4, strides 4..32
_LAYER_OF_STAGE = {"c2": "layer1", "c3": "layer2", "c4": "layer3", "c5": "layer4"}
# Prefixes under which a ResNet body sits in checkpoints this loader understands: a detector's,
# a segmenter's, a classifier's (torchvision's keys, under ``model.`` in this project's checkpoints).
_KNOWN_PREFIXES = ("body.", "backbone.body.", "model.backbone.body.", "backbone.", "model.backbone.", "model.")


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, returning stages ``c2``..``c5``.

    Args:
        name: one of ``RESNETS``.
        weights: ``"none"`` (random init), ``"imagenet"`` (torchvision's weights enum),
            or the path of a state-dict file.
        trainable_stages: how many stages, counted from the deepest, receive gradients
            (0..5; 5 trains the stem too). Frozen stages also keep their norm statistics.
        norm: ``"frozen_bn"``, ``"bn"``, ``"gn"`` (GroupNorm, for training from scratch at a few
            images per device), or ``"auto"``: frozen statistics when starting from weights,
            trainable BatchNorm from scratch.
        output_stride: 32, or 16/8 by dilating the last stages instead of striding (any depth).
        out_features: which stages ``forward`` returns.
        init: a checkpoint to start from, loaded after ``weights``: one of this project
            (classification, detection or segmentation), or a torchvision classification or segmentation
            state dict. Keys are remapped; the log lists what loaded and what did not.
    """

    def __init__(
        self,
        name: str = "resnet50",
        *,
        weights: str = "none",
        trainable_stages: int = 5,
        norm: str = "auto",
        output_stride: int = 32,
        out_features: Sequence[str] = STAGES,
        init: str | None = None,
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(RESNETS)}")
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride={output_stride} must be one of {OUTPUT_STRIDES}")
        unknown = [f for f in out_features if f not in STAGES]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be a non-empty subset of {STAGES}")
        builder, imagenet = RESNETS[name]
        net = builder(weights=None)
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self._out_features = [s for s in STAGES if s in out_features]
        self._output_stride = 32
        self.dilate_to(output_stride)  # torchvision's rule, basic blocks included
        self.initialise(
            self,
            weights=weights,
            init=init,
            norm=norm,
            imagenet=lambda: torchvision_state_dict(imagenet),
            prefixes=_KNOWN_PREFIXES,
            ignore_unused=("fc.",),
        )
        self.freeze_stages(trainable_stages)

    def _after_dilation(self, output_stride: int, shapes: OrderedDict[str, FeatureSpec]) -> None:
        self._output_stride = output_stride

    def stop_after(self, feature: str) -> None:
        if feature not in self._out_features:
            raise ValueError(f"{feature!r} is not an output of {self.name}: {self._out_features}")
        self._out_features = self._out_features[: self._out_features.index(feature) + 1]

    def stages(self) -> list[list[nn.Module]]:
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        shapes = OrderedDict()
        for i, stage in enumerate(STAGES):
            if stage in self._out_features:
                channels = _block_out_channels(getattr(self, _LAYER_OF_STAGE[stage])[-1])
                shapes[stage] = FeatureSpec(channels, min(4 * 2**i, self._output_stride))
        return shapes

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outputs: OrderedDict[str, Tensor] = OrderedDict()
        for stage in STAGES:
            x = getattr(self, _LAYER_OF_STAGE[stage])(x)
            if stage in self._out_features:
                outputs[stage] = x
            if stage == self._out_features[-1]:
                break
        return outputs


def _block_out_channels(block: nn.Module) -> int:
    last_norm = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_norm.num_features if hasattr(last_norm, "num_features") else last_norm.weight.numel()
