"""Any timm model behind the contract, through timm's ``features_only`` and its ``feature_info``."""

from __future__ import annotations

import math
from collections import OrderedDict

from torch import Tensor, nn

from backbones.base import Backbone, FeatureSpec
from backbones.weights import BODY_PREFIXES, WeightsError


def _create(name: str, *, pretrained: bool, output_stride: int) -> nn.Module:
    import timm  # imported here so the other backbones do not pay for it

    options = {"output_stride": output_stride} if output_stride != 32 else {}
    try:
        return timm.create_model(name, pretrained=pretrained, features_only=True, **options)
    except RuntimeError as err:
        if "known" in str(err).lower() or "unknown" in str(err).lower():
            raise ValueError(f"timm has no model {name!r}: see timm.list_models()") from err
        raise
    except (AssertionError, TypeError) as err:  # timm's own refusal of dilation for this model
        raise DilationRefused(f"timm model {name} cannot give output_stride={output_stride}: {err}") from err


class DilationRefused(ValueError):
    """timm cannot dilate this model itself."""


def _units(module: nn.Module, ends: list[str], prefix: str = ""):
    """Modules in execution order, opened up where a stage end lies inside them."""
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if any(end.startswith(f"{full}.") for end in ends):
            yield from _units(child, ends, f"{full}.")
        else:
            yield full, child


class TimmBackbone(Backbone):
    """``timm.create_model(name, features_only=True)``; outputs named ``c<log2 stride>`` for strides 4..32.

    ``weights``: ``none``, ``imagenet`` (timm's pretrained weights via its hub API; offline, a
    clear error says how to supply a file), or a file path (read with ``weights_only=True``).
    Stages for freezing are timm's feature stages, the stem being everything before the
    stride-4 output. Statistics are frozen with timm's own helper, which keeps the activation of
    its fused norm + activation layers.
    """

    def __init__(
        self,
        name: str = "resnet18d",
        *,
        weights: str = "none",
        trainable_stages: int = 5,
        norm: str = "auto",
        output_stride: int = 32,
        init: str | None = None,
    ) -> None:
        super().__init__()
        self.name = name
        try:
            try:
                self.body = _create(name, pretrained=weights == "imagenet", output_stride=output_stride)
                generic_dilation = False
            except DilationRefused:  # dilated below instead, by this project's rule
                self.body = _create(name, pretrained=weights == "imagenet", output_stride=32)
                generic_dilation = output_stride != 32
        except OSError as err:  # the hub could not be reached
            raise WeightsError(
                f"could not fetch timm's ImageNet weights for {name} ({err}). Without network access, save them "
                f"where it is available (torch.save(timm.create_model('{name}', pretrained=True).state_dict(), "
                f"'{name}.pth')) and pass backbone.weights=/path/to/{name}.pth"
            ) from err
        self.body = self.initialise(
            self.body,
            weights=weights if weights != "imagenet" else "none",  # timm loaded its own ImageNet weights
            init=init,
            norm=norm,
            imagenet=dict,
            prefixes=BODY_PREFIXES,
            ignore_unused=("fc.", "head.", "classifier.", "conv_head.", "bn2."),
            pretrained=weights != "none",
        )
        info = self.body.feature_info
        self._keep = [i for i, r in enumerate(info.reduction()) if 4 <= r <= 32 or r == output_stride]
        if len(self._keep) < 2:
            raise ValueError(f"timm model {name} gives strides {info.reduction()}: need levels between 4 and 32")
        self._shapes = OrderedDict(
            (f"c{round(math.log2(info.reduction()[i]))}", FeatureSpec(info.channels()[i], info.reduction()[i]))
            for i in self._keep
        )
        if generic_dilation:
            self.dilate_to(output_stride)
        elif len(self._shapes) != len(self._keep):  # dilated by timm: later levels share a stride
            self._shapes = OrderedDict(
                (f"c{k + 2}", FeatureSpec(info.channels()[i], info.reduction()[i])) for k, i in enumerate(self._keep)
            )
        self.freeze_stages(trainable_stages)

    def freeze_norm(self, module: nn.Module) -> nn.Module:
        """timm's own helper: its fused norm + activation layers (BatchNormAct2d) keep their activation."""
        from timm.layers import freeze_batch_norm_2d

        return freeze_batch_norm_2d(module)

    def _after_dilation(self, output_stride: int, shapes: OrderedDict[str, FeatureSpec]) -> None:
        self._shapes = OrderedDict(shapes)

    def stages(self) -> list[list[nn.Module]]:
        names = {name for name, _ in self.body.named_modules()}
        ends = [m if m in names else m.replace(".", "_") for m in self.body.feature_info.module_name()]
        ends = [ends[i] for i in self._keep]
        stages: list[list[nn.Module]] = [[] for _ in range(len(ends) + 1)]
        current = 0  # how many stage ends have been passed
        for name, module in _units(self.body, ends):
            if current == len(ends):  # after the last returned level: part of the last stage
                stages[-1].append(module)
                continue
            stages[current + 1 if current or name == ends[0] else 0].append(module)
            current += name == ends[current]
        return stages

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        return OrderedDict(self._shapes)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        features = self.body(x)
        return OrderedDict((name, features[i]) for name, i in zip(self._shapes, self._keep, strict=True))
