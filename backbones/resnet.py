"""ResNet family from torchvision behind the backbone contract."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import Tensor, nn
from torchvision import models
from torchvision.ops import FrozenBatchNorm2d

from backbones.base import Backbone, FeatureSpec
from backbones.weights import WeightsError, load_state_dict_file, match_state_dict, torchvision_state_dict

log = logging.getLogger(__name__)

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
_DILATION = {32: [False, False, False], 16: [False, False, True], 8: [False, True, True]}
NORMS = ("auto", "frozen_bn", "bn")
# Prefixes under which a ResNet body sits in checkpoints this loader understands.
_KNOWN_PREFIXES = ("body.", "backbone.body.", "model.backbone.body.", "backbone.")


class ResNetBackbone(Backbone):
    """A torchvision ResNet without its classifier, returning stages ``c2``..``c5``.

    Args:
        name: one of ``RESNETS``.
        weights: ``"none"`` (random init), ``"imagenet"`` (torchvision's weights enum),
            or the path of a state-dict file.
        trainable_stages: how many stages, counted from the deepest, receive gradients
            (0..5; 5 trains the stem too). Frozen stages also keep their norm statistics.
        norm: ``"frozen_bn"``, ``"bn"``, or ``"auto"``: frozen statistics when starting
            from weights, trainable BatchNorm from scratch.
        output_stride: 32, or 16/8 by dilating the last stages instead of striding.
        out_features: which stages ``forward`` returns.
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
    ) -> None:
        super().__init__()
        if name not in RESNETS:
            raise ValueError(f"unknown ResNet {name!r}; choose one of {sorted(RESNETS)}")
        if not 0 <= trainable_stages <= 5:
            raise ValueError(f"trainable_stages={trainable_stages} must be between 0 and 5")
        if output_stride not in _DILATION:
            raise ValueError(f"output_stride={output_stride} must be one of {sorted(_DILATION)}")
        unknown = [f for f in out_features if f not in STAGES]
        if unknown or not out_features:
            raise ValueError(f"out_features {list(out_features)} must be a non-empty subset of {STAGES}")
        builder, imagenet = RESNETS[name]
        norm_layer = _norm_layer(norm, pretrained=weights != "none")
        try:
            net = builder(weights=None, norm_layer=norm_layer, replace_stride_with_dilation=_DILATION[output_stride])
        except NotImplementedError as err:  # BasicBlock refuses dilation
            raise ValueError(
                f"{name} cannot dilate (basic blocks), so output_stride={output_stride} is unavailable; "
                "use output_stride=32 or a bottleneck ResNet such as resnet50"
            ) from err
        self.name = name
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self._out_features = [s for s in STAGES if s in out_features]
        self._output_stride = output_stride
        self.load_weights(weights, imagenet)
        self._frozen = self._freeze(trainable_stages)

    def load_weights(self, weights: str, imagenet: models.WeightsEnum) -> None:
        if weights == "none":
            return
        if weights == "imagenet":
            state, source = torchvision_state_dict(imagenet), str(imagenet)
        elif Path(weights).expanduser().suffix or "/" in weights:
            state, source = load_state_dict_file(weights), weights
        else:
            raise WeightsError(f"weights={weights!r} is not 'none', 'imagenet' or a file path")
        loadable, missing, unused = match_state_dict(self, state, _KNOWN_PREFIXES)
        if not loadable:
            raise WeightsError(f"no tensor of {source} fits {self.name}: is it a {self.name} checkpoint?")
        self.load_state_dict(loadable, strict=False)
        log.info("%s: loaded %d tensors from %s", self.name, len(loadable), source)
        if missing:
            log.warning("%s: %d tensors left at initialisation: %s", self.name, len(missing), missing[:8])
        unused = [k for k in unused if not k.startswith("fc.")]
        if unused:
            log.warning("%s: %d tensors of %s not used: %s", self.name, len(unused), source, unused[:8])

    def _stage_modules(self) -> list[list[nn.Module]]:
        return [[self.conv1, self.bn1], [self.layer1], [self.layer2], [self.layer3], [self.layer4]]

    def _freeze(self, trainable_stages: int) -> list[nn.Module]:
        frozen = [m for stage in self._stage_modules()[: 5 - trainable_stages] for m in stage]
        for module in frozen:
            module.requires_grad_(False)
        return frozen

    def train(self, mode: bool = True) -> ResNetBackbone:
        super().train(mode)
        for module in self._frozen:  # frozen stages keep their running statistics too
            module.eval()
        return self

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


def _norm_layer(norm: str, *, pretrained: bool) -> Callable[[int], nn.Module]:
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} must be one of {NORMS}")
    if norm == "auto":
        norm = "frozen_bn" if pretrained else "bn"
    return FrozenBatchNorm2d if norm == "frozen_bn" else nn.BatchNorm2d


def _block_out_channels(block: nn.Module) -> int:
    last_norm = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_norm.num_features if hasattr(last_norm, "num_features") else last_norm.weight.numel()
