"""Feature pyramid on top of any contract backbone (torchvision's FPN)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence

from torch import Tensor, nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool, LastLevelP6P7

from backbones.base import Backbone, FeatureSpec, group_norm

FPN_NORMS: dict[str, Callable[[int], nn.Module] | None] = {"none": None, "bn": nn.BatchNorm2d, "gn": group_norm}
# levels above the backbone's, built from (the last input's channels, the pyramid's width): P6 by max-pooling
# P5 (Faster R-CNN); P6 and P7 by strided convs on P5 (RetinaNet, FCOS) or on the last input, C5 (RetinaNet
# v2; torchvision's block takes P5 where C5 is as wide as the pyramid)
EXTRA_BLOCKS: dict[str, Callable[[int, int], ExtraFPNBlock | None]] = {
    "maxpool": lambda last, width: LastLevelMaxPool(),
    "p6p7": lambda last, width: LastLevelP6P7(width, width),
    "p6p7_c5": lambda last, width: LastLevelP6P7(last, width),
    "none": lambda last, width: None,
}
EXTRA_LEVELS = {"maxpool": 1, "p6p7": 2, "p6p7_c5": 2, "none": 0}


def resolve_head_norm(norm: str, backbone: Backbone) -> str:
    """``auto``: GroupNorm when the backbone normalises with GroupNorm, else no normalisation
    (torchvision's FPN); any other value as given."""
    if norm == "auto":
        return "gn" if getattr(backbone, "norm", None) == "gn" else "none"
    if norm not in FPN_NORMS:
        raise ValueError(f"norm={norm!r} must be one of {[*FPN_NORMS, 'auto']}")
    return norm


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
        norm: ``"none"`` (torchvision's default), ``"bn"`` (BatchNorm after every FPN conv, which
            speeds up training from scratch), ``"gn"`` (GroupNorm, any batch size), or ``"auto"``
            (GroupNorm when the body uses GroupNorm, else none).
        out_levels: the levels a head reads (default: all). Only those get an output conv, and
            backbone outputs finer than the finest of them are not used, so that every parameter
            takes part in the loss (DDP requires it).
    """

    def __init__(
        self,
        body: Backbone,
        *,
        out_channels: int = 256,
        in_features: Sequence[str] | None = None,
        extra_blocks: str = "maxpool",
        norm: str = "none",
        out_levels: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        shapes = body.output_shape()
        in_features = list(in_features) if in_features is not None else list(shapes)
        missing = [f for f in in_features if f not in shapes]
        if missing:
            raise ValueError(f"FPN in_features {missing} are not outputs of the backbone ({list(shapes)})")
        if extra_blocks not in EXTRA_BLOCKS:
            raise ValueError(f"FPN extra_blocks={extra_blocks!r} must be one of {list(EXTRA_BLOCKS)}")
        self.norm = resolve_head_norm(norm, body)
        strides = [shapes[f].stride for f in in_features]
        strides += [strides[-1] * 2**k for k in range(1, EXTRA_LEVELS[extra_blocks] + 1)]
        levels = [f"p{int(math.log2(s))}" for s in strides]
        if len(set(levels)) != len(levels):
            raise ValueError(f"FPN inputs must have distinct strides, got {strides}")
        wanted = list(out_levels) if out_levels is not None else levels
        unknown = [level for level in wanted if level not in levels]
        if unknown:
            raise ValueError(f"FPN levels {unknown} are not built; the pyramid has {levels}")
        finest = min(levels.index(level) for level in wanted)
        self.in_features = in_features[finest:]
        self.body = body
        self.fpn = FeaturePyramidNetwork(
            [shapes[f].channels for f in self.in_features],
            out_channels,
            extra_blocks=EXTRA_BLOCKS[extra_blocks](shapes[self.in_features[-1]].channels, out_channels),
            norm_layer=FPN_NORMS[self.norm],
        )
        built = levels[finest:]
        # extra levels are computed from the last backbone level's output: it keeps its conv
        needed = set(wanted) | ({built[len(self.in_features) - 1]} if EXTRA_LEVELS[extra_blocks] else set())
        for index, level in enumerate(built[: len(self.in_features)]):
            if level not in needed:
                self.fpn.layer_blocks[index] = nn.Identity()
        self._built = built
        self.out_channels = out_channels  # every level's width, which torchvision's one-stage detectors read
        self._shapes = OrderedDict(
            (level, FeatureSpec(out_channels, stride)) for level, stride in zip(levels, strides, strict=True)
            if level in wanted
        )  # fmt: skip
        self.levels = [level for level in built[: len(self.in_features)] if level in wanted]  # no pooled extras

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict(self._shapes)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        pyramid = self.fpn(OrderedDict((f, features[f]) for f in self.in_features))
        named = dict(zip(self._built, pyramid.values(), strict=True))
        return OrderedDict((level, named[level]) for level in self._shapes)
