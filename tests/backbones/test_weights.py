"""Backbone weights: local files load exactly, unsafe pickles are refused, offline errors are useful."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision.models import WeightsEnum, regnet_y_400mf, resnet18
from torchvision.ops import FrozenBatchNorm2d

from backbones import ResNetBackbone, TorchvisionBackbone, WeightsError, load_state_dict_file


def test_local_file_loads_every_tensor(tmp_path: Path) -> None:
    torch.manual_seed(1)
    reference = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = ResNetBackbone("resnet18", weights=str(path))
    assert isinstance(backbone.bn1, FrozenBatchNorm2d)  # norm=auto freezes statistics with weights
    ours = backbone.state_dict()
    for key, value in reference.state_dict().items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_detection_checkpoint_prefix_is_stripped(tmp_path: Path) -> None:
    reference = ResNetBackbone("resnet18")
    path = tmp_path / "detector.ckpt"
    torch.save({"state_dict": {f"model.backbone.body.{k}": v for k, v in reference.state_dict().items()}}, path)
    loaded = ResNetBackbone("resnet18", weights=str(path), norm="bn")
    torch.testing.assert_close(loaded.layer4[1].conv2.weight, reference.layer4[1].conv2.weight, rtol=0, atol=0)


def test_file_of_another_family_member_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "resnet50.pth"
    torch.save(ResNetBackbone("resnet50").state_dict(), path)
    # resnet50's stem fits resnet18; its bottleneck layers share names with the basic blocks, not shapes
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight: file \(64, 64, 1, 1\), model \(64, 64, 3, 3\)"):
        ResNetBackbone("resnet18", weights=str(path))


def test_classifier_for_other_classes_is_no_architecture_mismatch(tmp_path: Path) -> None:
    torch.manual_seed(2)
    reference = regnet_y_400mf(num_classes=10)  # fine-tuned for 10 classes: its fc differs from ImageNet's
    path = tmp_path / "regnet_10_classes.pth"
    torch.save(reference.state_dict(), path)
    loaded = TorchvisionBackbone("regnet_y_400mf", weights=str(path), norm="bn")
    key = "trunk_output.block4.block4-0.proj.0.weight"
    torch.testing.assert_close(loaded.body.state_dict()[key], reference.state_dict()[key], rtol=0, atol=0)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_that_runs_code_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": _RunsCode()}, path)
    with pytest.raises(WeightsError, match="refused"):
        load_state_dict_file(path)
    assert not (tmp_path / "pwned").exists()
    torch.load(path, weights_only=False)  # control: a plain unpickle of the same file does run the code
    assert (tmp_path / "pwned").exists()


def test_missing_file_and_unknown_name_are_explained(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not exist"):
        ResNetBackbone("resnet18", weights=str(tmp_path / "nope.pth"))
    with pytest.raises(WeightsError, match="'imagnet'"):
        ResNetBackbone("resnet18", weights="imagnet")


def test_imagenet_offline_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(self, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError) as info:
        ResNetBackbone("resnet50", weights="imagenet")
    message = str(info.value)
    assert "resnet50-0676ba61.pth" in message and str(tmp_path) in message
    assert "https://download.pytorch.org/models/resnet50-0676ba61.pth" in message
