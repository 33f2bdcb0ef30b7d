"""CPU inference speed-ups that keep the outputs: BatchNorm folded into the convolution before it,
and the channels-last memory layout (oneDNN's fast convolution path); optionally the convolutional
trunk compiled by inductor.

Folding rewrites ``bn(conv(x))`` as one convolution with a bias: exact up to float rounding,
and it saves a full pass over every feature map per normalisation layer. Only pairs whose order
the code guarantees are folded: consecutive layers of an ``nn.Sequential`` (downsampling
branches, torchvision's Conv2dNormActivation) and the ``convK``/``bnK`` pairs of torchvision's
ResNet blocks and stem. Normalisation fused with an activation (timm's BatchNormAct2d) is left as
it is.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FrozenBatchNorm2d

from heads.protocol import Detector

FOLDABLE_NORMS = (nn.BatchNorm2d, FrozenBatchNorm2d)
_PAIRED_LAYERS = (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3"))


def _foldable(conv: nn.Module, norm: nn.Module) -> bool:
    return type(conv) is nn.Conv2d and type(norm) in FOLDABLE_NORMS


def _pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of (conv, norm) children that ``module``'s forward applies one right after the other."""
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        return [
            (a, b) for a, b in zip(names, names[1:], strict=False) if _foldable(module._modules[a], module._modules[b])
        ]
    if isinstance(module, BasicBlock | Bottleneck) or _is_resnet_stem(module):
        return [(c, n) for c, n in _PAIRED_LAYERS if _foldable(getattr(module, c, None), getattr(module, n, None))]
    return []


def _is_resnet_stem(module: nn.Module) -> bool:
    """This project's ResNet backbone and torchvision's ResNet both run ``bn1(conv1(x))`` first."""
    from torchvision.models import ResNet

    from backbones.resnet import ResNetBackbone

    return isinstance(module, ResNetBackbone | ResNet)


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eligible normalisation into its convolution, in place (eval mode); returns the count."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode: training-mode BatchNorm uses batch statistics")
    folded = 0
    for module in list(model.modules()):
        for conv_name, norm_name in _pairs(module):
            conv, norm = getattr(module, conv_name), getattr(module, norm_name)
            setattr(module, conv_name, fuse_conv_bn_eval(conv, norm))
            setattr(module, norm_name, nn.Identity())
            folded += 1
    return folded


def compile_trunk(model: nn.Module) -> nn.Module:
    """``torch.compile`` (inductor with frozen weights: constants folded, convolutions fused with their
    activation and prepacked for oneDNN) of the convolutional trunk: a detector's backbone with its
    FPN and the dense or RPN head's convolutions (its ``trunk()``), or a whole segmenter or classifier.
    The detection post-processing stays eager. The first call at each new image size compiles (14-27 s
    for R50-FPN on 2 CPU cores)."""
    import torch._inductor.config as inductor

    inductor.freezing = True
    if not isinstance(model, Detector):
        return torch.compile(model)
    for path, part in model.trunk().items():
        owner, _, name = path.rpartition(".")
        setattr(model.get_submodule(owner), name, torch.compile(part))
    return model


def optimise_for_cpu(
    model: nn.Module, *, fold: bool = True, channels_last: bool = True, compile: bool = False
) -> nn.Module:
    """The CPU engine of ``tasks/predict.py``: folded normalisation and channels-last weights (the same
    outputs, faster; ``python -m tasks.benchmarks.inference_speed`` measures it), and with ``compile``
    the trunk compiled as well (:func:`compile_trunk`). ``model`` is changed in place."""
    model.eval()
    if fold:
        fold_batchnorm(model)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return compile_trunk(model) if compile else model
