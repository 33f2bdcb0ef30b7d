"""The backbone contract shared by every head.

A backbone's ``forward`` returns an ordered dict of named feature maps, and
``output_shape()`` declares, for the same names in the same order, the channels
and stride of each map. Consumers (FPN, detection heads, ASPP) read channels and
strides from it; nothing downstream hard-codes them.

Backbones also list their stages (stem first) so that freezing works the same way for
every family: ``trainable_stages=k`` leaves only the last ``k`` stages trainable.
``norm`` says which normalisation the backbone ended up with, so that the layers built on
top of it (FPN, box head) can follow it.
"""

from __future__ import annotations

import copy
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torchvision.ops import FrozenBatchNorm2d

from backbones.weights import apply_weights

# The normalisation ImageNet-trained backbones expect (torchvision's, timm's defaults), RGB in [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

log = logging.getLogger(__name__)

NORMS = ("auto", "frozen_bn", "bn", "gn")
GROUP_NORM_GROUPS = 32  # detectron2's and the GroupNorm paper's choice


@dataclass(frozen=True)
class FeatureSpec:
    """Shape of one named feature map: channel count and stride relative to the input."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses implement ``forward`` and ``output_shape`` (and ``stages`` to freeze)."""

    norm: str = "bn"  # the normalisation in use: frozen_bn, bn or gn
    _frozen_names: list[str]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    def stages(self) -> list[list[nn.Module]]:  # pragma: no cover - abstract
        """The modules of each stage, stem first (5 entries: stem, then strides 4, 8, 16, 32)."""
        raise NotImplementedError

    @property
    def feature_names(self) -> list[str]:
        return list(self.output_shape())

    def stop_after(self, feature: str) -> None:
        """Only ``feature`` and the maps before it are wanted. A backbone able to stop computing there
        does so (its ``output_shape`` then ends at ``feature``); by default every map is still computed."""

    @property
    def size_divisibility(self) -> int:
        """Input sides should be multiples of this so every level's grid lines up."""
        return max(spec.stride for spec in self.output_shape().values())

    def initialise(
        self,
        network: nn.Module,
        *,
        weights: str,
        init: str | None,
        norm: str,
        imagenet: Callable[[], Mapping[str, Tensor]],
        prefixes: tuple[str, ...],
        ignore_unused: tuple[str, ...] = (),
        pretrained: bool | None = None,
    ) -> nn.Module:
        """The set-up every family shares, in order: ``weights`` then ``init`` loaded into ``network``
        (keys remapped under ``prefixes``; ``imagenet()`` gives the family's ImageNet state dict), then
        its BatchNorm turned into ``norm`` (``auto`` resolved from whether it starts from weights;
        ``pretrained`` says so when the weights came in another way). Returns the network."""
        for source in (weights, init or "none"):
            apply_weights(
                network, source, name=self._label(), imagenet=imagenet, prefixes=prefixes, ignore_unused=ignore_unused
            )
        starts_from_weights = weights != "none" or bool(init) if pretrained is None else pretrained or bool(init)
        self.norm = resolve_norm(norm, pretrained=starts_from_weights)
        return apply_norm(network, self.norm, name=self._label(), freeze=self.freeze_norm)

    def dilate_to(self, output_stride: int) -> int:
        """Dilate the deepest stages so that no output is coarser than ``output_stride`` (8 or 16), by
        ``backbones.dilation``'s rule; returns the output stride reached. The rule is tried on a copy
        first: a backbone it cannot dilate (a downsampling it does not see) stays as it is, with a
        warning saying why."""
        from backbones.dilation import dilate  # it builds on this module's stage contract

        current = max(spec.stride for spec in self.output_shape().values())
        if output_stride >= current:
            return current
        if current != 32:
            raise ValueError(f"{self._label()} is already dilated to output stride {current}")
        expected = [min(spec.stride, output_stride) for spec in self.output_shape().values()]
        trial = copy.deepcopy(self)
        try:
            dilate(trial.stages(), output_stride, name=self._label())
            shapes = measure_output_shape(trial)
            reached = [spec.stride for spec in shapes.values()]
            if reached != expected:
                raise ValueError(f"{self._label()} gives strides {reached} once dilated, not {expected}")
        except (ValueError, RuntimeError) as err:
            log.warning("%s: it keeps output stride %d", err, current)
            return current
        dilate(self.stages(), output_stride, name=self._label())  # the same rule: the trial's shapes hold
        self._after_dilation(output_stride, shapes)
        return output_stride

    def _after_dilation(self, output_stride: int, shapes: OrderedDict[str, FeatureSpec]) -> None:
        """Update what ``output_shape`` declares to ``shapes``, measured on the dilated copy (families
        that keep it computed override this)."""

    def _label(self) -> str:
        return str(getattr(self, "name", type(self).__name__))

    def freeze_norm(self, module: nn.Module) -> nn.Module:
        """``module`` with its BatchNorm layers' statistics frozen (families with fused layers override)."""
        return freeze_batch_norm(module)

    def freeze_stages(self, trainable_stages: int) -> None:
        """Only the last ``trainable_stages`` stages get gradients; frozen ones keep their statistics.

        The BatchNorm layers of frozen stages become FrozenBatchNorm2d, so neither train mode nor
        a later SyncBatchNorm conversion (``trainer.sync_batchnorm``) can update their statistics.
        Frozen stages are remembered by name, which survives such module replacements.
        """
        stages = self.stages()
        if not 0 <= trainable_stages <= len(stages):
            raise ValueError(f"trainable_stages={trainable_stages} must be between 0 and {len(stages)}")
        names = {id(module): name for name, module in self.named_modules()}
        self._frozen_names = [names[id(m)] for stage in stages[: len(stages) - trainable_stages] for m in stage]
        for name in self._frozen_names:
            module = self.get_submodule(name)
            module.requires_grad_(False)
            frozen = self.freeze_norm(module)
            if frozen is not module:
                self.set_submodule(name, frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        for name in getattr(self, "_frozen_names", []):
            self.get_submodule(name).eval()
        return self


def measure_output_shape(body: nn.Module, size: int = 64) -> OrderedDict[str, FeatureSpec]:
    """Channels and strides of the feature maps ``body`` returns (a dict, or a list named ``c<log2 stride>``),
    read from one forward pass on a blank ``size`` x ``size`` image."""
    was_training = body.training
    body.eval()
    with torch.no_grad():
        outputs = body(torch.zeros(1, 3, size, size))
    body.train(was_training)
    if not isinstance(outputs, dict):
        outputs = {f"c{round(math.log2(size / t.shape[-1]))}": t for t in outputs}
    return OrderedDict(
        (name, FeatureSpec(int(t.shape[1]), 2 ** round(math.log2(size / t.shape[-1])))) for name, t in outputs.items()
    )


def resolve_norm(norm: str, *, pretrained: bool) -> str:
    """``auto``: frozen statistics when starting from weights, trainable BatchNorm from scratch."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} must be one of {NORMS}")
    if norm == "auto":
        return "frozen_bn" if pretrained else "bn"
    return norm


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups, or the largest count dividing ``channels`` (e.g. 8 for 40 channels)."""
    return nn.GroupNorm(math.gcd(GROUP_NORM_GROUPS, channels), channels)


def freeze_batch_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by FrozenBatchNorm2d with the same statistics."""
    if isinstance(module, nn.BatchNorm2d):
        frozen = FrozenBatchNorm2d(module.num_features, eps=module.eps)
        if module.affine:
            frozen.weight.copy_(module.weight.detach())
            frozen.bias.copy_(module.bias.detach())
        frozen.running_mean.copy_(module.running_mean)
        frozen.running_var.copy_(module.running_var)
        return frozen
    return _replace_children(module, freeze_batch_norm)


def batch_norm_to_group_norm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d below ``module`` by GroupNorm (affine parameters kept, statistics dropped).

    GroupNorm normalises each image on its own, so it trains at any batch size: the choice for
    training from scratch at a few images per device. A norm layer that carries its own
    activation (timm's fused norm + activation layers) keeps it.
    """
    if isinstance(module, nn.BatchNorm2d):
        norm = group_norm(module.num_features)
        if module.affine:
            norm.weight.data.copy_(module.weight.detach())
            norm.bias.data.copy_(module.bias.detach())
        fused = [
            getattr(module, part) for part in ("drop", "act") if isinstance(getattr(module, part, None), nn.Module)
        ]
        return nn.Sequential(norm, *fused) if fused else norm
    return _replace_children(module, batch_norm_to_group_norm)


def _replace_children(module: nn.Module, convert) -> nn.Module:
    for name, child in module.named_children():
        replaced = convert(child)
        if replaced is not child:
            setattr(module, name, replaced)
    return module


def apply_norm(module: nn.Module, norm: str, *, name: str, freeze=freeze_batch_norm) -> nn.Module:
    """Turn ``module``'s BatchNorm layers into ``norm`` (``frozen_bn`` with ``freeze``, ``gn``; ``bn`` keeps them)."""
    if norm == "frozen_bn":
        return freeze(module)
    if norm == "gn":
        log.info("%s: BatchNorm replaced by GroupNorm (%d groups where the width allows)", name, GROUP_NORM_GROUPS)
        return batch_norm_to_group_norm(module)
    return module
