"""Backbones: one contract (named feature maps + their channels and strides)."""

from backbones.base import Backbone, FeatureSpec
from backbones.fpn import FeaturePyramid
from backbones.resnet import RESNETS, ResNetBackbone
from backbones.timm_backbone import TimmBackbone
from backbones.torchvision_zoo import ZOO, TorchvisionBackbone
from backbones.weights import WeightsError, load_state_dict_file

__all__ = [
    "RESNETS",
    "Backbone",
    "FeaturePyramid",
    "FeatureSpec",
    "ResNetBackbone",
    "TimmBackbone",
    "TorchvisionBackbone",
    "ZOO",
    "WeightsError",
    "load_state_dict_file",
]
