"""Feature pyramid on top of any contract backbone (torchvision's FPN)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from backbones.base import Backbone, FeatureSpec

FPN_NORMS = {"none": None, "bn": nn.BatchNorm2d}
EXTRA_BLOCKS: dict[str, Callable[[int], ExtraFPNBlock | None]] = {
    "maxpool": lambda channels: LastLevelMaxPool(),
    "p6p7": lambda channels: LastLevelP6P7(channels, channels),
    "none": lambda channels: None,
}
EXTRA_LEVELS = {"maxpool": 1, "p6p7": 2, "none": 0}


class FeaturePyramid(Backbone):
    """Wraps ``body`` with a top-down FPN; outputs ``p<k>`` where stride is 2**k.

    Module names (``body``, ``fpn``) follow torchvision's ``BackboneWithFPN``, so the
    state dicts of torchvision's FPN detectors load key for key.

    Args:
        body: the backbone; its declared channels and strides size the pyramid.
        out_channels: width of every pyramid level.
        in_features: which body outputs feed the pyramid (default: all of them).
        extra_blocks: levels beyond the backbone's: ``"maxpool"`` (P6 by max-pooling P5, as
            Faster R-CNN), ``"p6p7"`` (P6 and P7 by strided convs on P5, as RetinaNet) or ``"none"``.
        norm: ``"none"`` (torchvision's default) or ``"bn"``: BatchNorm after every FPN conv,
            which speeds up training from scratch.
    """

    def __init__(
        self,
        body: Backbone,
        *,
        out_channels: int = 256,
        in_features: Sequence[str] | None = None,
        extra_blocks: str = "maxpool",
        norm: str = "none",
    ) -> None:
        super().__init__()
        shapes = body.output_shape()
        self.in_features = list(in_features) if in_features is not None else list(shapes)
        missing = [f for f in self.in_features if f not in shapes]
        if missing:
            raise ValueError(f"FPN in_features {missing} are not outputs of the backbone ({list(shapes)})")
        if norm not in FPN_NORMS:
            raise ValueError(f"FPN norm={norm!r} must be one of {list(FPN_NORMS)}")
        if extra_blocks not in EXTRA_BLOCKS:
            raise ValueError(f"FPN extra_blocks={extra_blocks!r} must be one of {list(EXTRA_BLOCKS)}")
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [shapes[f].channels for f in self.in_features],
            out_channels,
            extra_blocks=EXTRA_BLOCKS[extra_blocks](out_channels),
            norm_layer=FPN_NORMS[norm],
        )
        strides = [shapes[f].stride for f in self.in_features]
        strides += [strides[-1] * 2**k for k in range(1, EXTRA_LEVELS[extra_blocks] + 1)]
        self._shapes = OrderedDict((f"p{int(math.log2(s))}", FeatureSpec(out_channels, s)) for s in strides)
        if len(self._shapes) != len(strides):
            raise ValueError(f"FPN inputs must have distinct strides, got {strides}")
        self.levels = list(self._shapes)[: len(self.in_features)]  # levels excluding the pooled extra one

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict(self._shapes)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        pyramid = self.fpn(OrderedDict((f, features[f]) for f in self.in_features))
        return OrderedDict(zip(self._shapes, pyramid.values(), strict=True))
