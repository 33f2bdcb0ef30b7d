"""The backbone contract shared by every head.

A backbone's ``forward`` returns an ordered dict of named feature maps, and
``output_shape()`` declares, for the same names in the same order, the channels
and stride of each map. Consumers (FPN, detection heads, ASPP) read channels and
strides from it; nothing downstream hard-codes them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor, nn


@dataclass(frozen=True)
class FeatureSpec:
    """Shape of one named feature map: channel count and stride relative to the input."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class: subclasses implement ``forward`` and ``output_shape``."""

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def feature_names(self) -> list[str]:
        return list(self.output_shape())

    @property
    def size_divisibility(self) -> int:
        """Input sides should be multiples of this so every level's grid lines up."""
        return max(spec.stride for spec in self.output_shape().values())
