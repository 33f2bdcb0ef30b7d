"""Backbone table (prints figures; not a test): every ``conf/backbone/*.yaml`` measured here.

    python -m tasks.benchmarks.backbone_table

Columns: backbone parameters; GMACs of Faster R-CNN (torchvision's COCO settings, 91 outputs)
on an 800x800 image and of DeepLabV3 (21 classes, the backbone dilated to output stride 8) on
512x512, counted by ``torch.utils.flop_counter`` (convolutions and matrix
products; MACs = FLOPs / 2); median CPU latency of one 256x256 backbone forward here. Then
ResNet50's stages as measured from torchvision's model at 224x224.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode
from torchvision.models import resnet50

from heads import build_faster_rcnn
from heads.deeplab import build_deeplab
from tasks import PROJECT_ROOT


def gmacs(model: torch.nn.Module, inputs) -> float:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model.eval()(inputs)
    return counter.get_total_flops() / 2e9


def latency_ms(module: torch.nn.Module, size: int = 256, runs: int = 10) -> float:
    x = torch.rand(1, 3, size, size)
    module.eval()
    with torch.no_grad():
        for _ in range(2):
            module(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def backbone(config: Path, **overrides):
    cfg = OmegaConf.merge(OmegaConf.load(config), overrides)
    return instantiate(cfg)


def backbone_rows() -> list[str]:
    rows = [
        "| backbone | params (M) | Faster R-CNN GMACs @800 | DeepLabV3 GMACs @512 (output stride) | CPU ms @256 |",
        "| --- | --- | --- | --- | --- |",
    ]
    print("\n".join(rows), flush=True)
    for config in sorted((PROJECT_ROOT / "conf" / "backbone").glob("*.yaml")):
        body = backbone(config)
        params = sum(p.numel() for p in body.parameters()) / 1e6
        detector = gmacs(build_faster_rcnn(backbone(config), num_classes=90), [torch.rand(3, 800, 800)])
        model = build_deeplab(backbone(config), num_classes=21, output_stride=8)  # dilated by the head itself
        stride = max(spec.stride for spec in model.backbone.output_shape().values())
        deeplab = gmacs(model, torch.rand(1, 3, 512, 512))
        label = config.stem if config.stem != "timm" else f"timm ({body.name})"
        rows.append(f"| {label} | {params:.1f} | {detector:.1f} | {deeplab:.1f} ({stride}) | {latency_ms(body):.0f} |")
        print(rows[-1], flush=True)
    return rows


def resnet50_stages() -> list[str]:
    model = resnet50().eval()
    stages = [
        ("stem (conv1 7x7/2, maxpool/2)", [model.conv1, model.bn1, model.relu, model.maxpool]),
        ("conv2_x (layer1, 3 bottlenecks)", [model.layer1]),
        ("conv3_x (layer2, 4 bottlenecks)", [model.layer2]),
        ("conv4_x (layer3, 6 bottlenecks)", [model.layer3]),
        ("conv5_x (layer4, 3 bottlenecks)", [model.layer4]),
        ("head (avgpool, fc)", [model.avgpool, torch.nn.Flatten(), model.fc]),
    ]
    rows = ["| stage | output at 224x224 | parameters |", "| --- | --- | --- |"]
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        for name, modules in stages:
            for module in modules:
                x = module(x)
            shape = "x".join(map(str, x.shape[1:][::-1])) if x.dim() == 4 else str(x.shape[1])
            params = sum(p.numel() for m in modules for p in m.parameters())
            rows.append(f"| {name} | {shape} | {params:,} |")
    block = model.layer1[0]
    convs = " - ".join(f"{c.kernel_size[0]}x{c.kernel_size[1]}" for c in (block.conv1, block.conv2, block.conv3))
    rows.append(f"\nbottleneck convolutions: {convs}; total parameters {sum(p.numel() for p in model.parameters()):,}")
    return rows


def main() -> None:
    torch.set_num_threads(os.cpu_count() or 1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}\n")
    backbone_rows()
    print()
    print("\n".join(resnet50_stages()))


if __name__ == "__main__":
    main()
