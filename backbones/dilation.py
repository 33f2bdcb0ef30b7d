"""Replace the strides of a backbone's deepest stages by dilation, for any family built from convolutions.

The rule is torchvision's ResNet ``replace_stride_with_dilation``, applied to any stage list: in a
stage made stride-1, the convolution that used to stride keeps the previous dilation rate, and every
convolution after it takes the stage's new rate (so on a ResNet the result is exactly torchvision's).
Kernels whose dilated extent is odd (ConvNeXt's 2x2 downsampling) get their extra pixel of padding on
the right and bottom. A pooling layer that used to stride (DenseNet's transitions, ResNet-D's
shortcuts) pools at stride 1 with padding that keeps the size, undilated. Anything else that
downsamples (a strided layer of another kind, a reshape) is not seen here: ``Backbone.dilate_to``
checks the strides the result really has.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch.nn.functional as F
from torch import Tensor, nn

OUTPUT_STRIDES = (8, 16, 32)
_POOLS = (nn.MaxPool2d, nn.AvgPool2d)


def _modules(stage: Sequence[nn.Module]) -> list[nn.Module]:
    return [m for root in stage for m in root.modules()]


def _strided(module: nn.Module) -> bool:
    stride = module.stride if isinstance(module.stride, tuple) else (module.stride, module.stride)
    return max(stride) > 1


def _pad_right_bottom(module: nn.Module, inputs: tuple[Tensor, ...], mode: str = "constant") -> tuple[Tensor, ...]:
    return (F.pad(inputs[0], (0, 1, 0, 1), mode=mode), *inputs[1:])


def _keep_size(pool: nn.Module) -> None:
    """A pool at stride 1 whose output has its input's size (edge values repeated, not zeros)."""
    kernel = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
    pool.stride, pool.padding, pool.ceil_mode = 1, (kernel - 1) // 2, False
    if (kernel - 1) % 2:
        pool.register_forward_pre_hook(partial(_pad_right_bottom, mode="replicate"))


def _set_rate(conv: nn.Conv2d, rate: int) -> None:
    conv.stride, conv.dilation = (1, 1), (rate, rate)
    if isinstance(conv.padding, str):  # "same"/"valid": PyTorch pads for the dilation itself
        return
    extents = [(k - 1) * rate for k in conv.kernel_size]
    conv.padding = tuple(extent // 2 for extent in extents)
    if any(extent % 2 for extent in extents):
        conv.register_forward_pre_hook(_pad_right_bottom)


def dilation_plan(num_stages: int, output_stride: int) -> list[tuple[int, int, int]]:
    """(stage index, previous rate, new rate) for the stages deeper than ``output_stride``
    (stage 0 is the stem, stage i >= 1 ends at stride 2 ** (i + 1))."""
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride={output_stride} must be one of {OUTPUT_STRIDES}")
    plan, rate = [], 1
    for index in range(1, num_stages):
        stride = 2 ** (index + 1)
        if stride > output_stride:
            plan.append((index, rate, stride // output_stride))
            rate = stride // output_stride
    return plan


def dilate(stages: Sequence[Sequence[nn.Module]], output_stride: int, *, name: str = "the backbone") -> None:
    """Make ``stages`` (stem first, then strides 4, 8, 16, 32) reach at most ``output_stride``."""
    plan = dilation_plan(len(stages), output_stride)
    for index, _, _ in plan:
        for module in _modules(stages[index]):
            leaf = next(module.children(), None) is None  # blocks may record their stride too
            if leaf and hasattr(module, "stride") and _strided(module) and not isinstance(module, (nn.Conv2d, *_POOLS)):
                kind = type(module).__name__
                raise ValueError(f"{name} downsamples with {kind} in stage {index}: it cannot be dilated")
    for index, previous, rate in plan:
        passed_stride = False
        for module in _modules(stages[index]):
            if isinstance(module, _POOLS) and _strided(module):
                _keep_size(module)
                passed_stride = True
            if not isinstance(module, nn.Conv2d):
                continue
            if _strided(module):  # the downsampling conv (and a parallel shortcut) keeps the previous rate
                _set_rate(module, previous)
                passed_stride = True
                continue
            current = rate if passed_stride else previous
            if current > 1:
                _set_rate(module, current)
