"""Whole-detector weights: torchvision's 91-index COCO predictors (boxes, masks) map onto our labels by class name."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
from torchvision.models import WeightsEnum
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    fasterrcnn_resnet50_fpn,
    maskrcnn_resnet50_fpn,
)

from backbones import ResNetBackbone, WeightsError
from heads import build_faster_rcnn, build_mask_rcnn

PREDICTOR = "roi_heads.box_predictor."


@pytest.fixture(scope="module")
def coco_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    path = tmp_path_factory.mktemp("weights") / "fasterrcnn_coco.pth"
    torch.save(state, path)
    return path, state


def _rows(rows: list[int], per_class: int) -> list[int]:
    return [r * per_class + k for r in rows for k in range(per_class)]


def test_predictor_rows_follow_class_names(coco_checkpoint) -> None:
    path, source = coco_checkpoint
    names = ["dog", "person", "car"]  # COCO category ids 18, 1, 3 = torchvision's predictor rows
    model = build_faster_rcnn(
        ResNetBackbone("resnet50", norm="bn"), num_classes=3, weights=str(path), class_names=names
    )
    ours = model.state_dict()
    rows = [0, 18, 1, 3]
    for suffix in ("weight", "bias"):
        torch.testing.assert_close(
            ours[f"{PREDICTOR}cls_score.{suffix}"], source[f"{PREDICTOR}cls_score.{suffix}"][rows]
        )
        torch.testing.assert_close(
            ours[f"{PREDICTOR}bbox_pred.{suffix}"], source[f"{PREDICTOR}bbox_pred.{suffix}"][_rows(rows, 4)]
        )
    for key, value in source.items():
        if not key.startswith(PREDICTOR):
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)


def test_full_coco_label_set_round_trips(coco_checkpoint) -> None:
    path, source = coco_checkpoint
    from heads.detector_weights import COCO_91_NAMES

    names = [n for n in COCO_91_NAMES[1:] if n != "N/A"]  # the 80 classes of instances_*2017.json
    model = build_faster_rcnn(
        ResNetBackbone("resnet50", norm="bn"), num_classes=80, weights=str(path), class_names=names
    )
    rows = [0] + [COCO_91_NAMES.index(n) for n in names]
    assert rows[1:4] == [1, 2, 3] and rows[-1] == 90
    weight = model.state_dict()[f"{PREDICTOR}cls_score.weight"]
    torch.testing.assert_close(weight, source[f"{PREDICTOR}cls_score.weight"][rows])


def test_unknown_classes_keep_their_initialisation(coco_checkpoint, caplog: pytest.LogCaptureFixture) -> None:
    path, source = coco_checkpoint
    torch.manual_seed(5)
    fresh = build_faster_rcnn(ResNetBackbone("resnet50", norm="bn"), num_classes=2)
    torch.manual_seed(5)
    model = build_faster_rcnn(
        ResNetBackbone("resnet50", norm="bn"), num_classes=2, weights=str(path), class_names=["dog", "unicorn"]
    )
    weight = model.state_dict()[f"{PREDICTOR}cls_score.weight"]
    torch.testing.assert_close(weight[1], source[f"{PREDICTOR}cls_score.weight"][18])
    torch.testing.assert_close(weight[2], fresh.state_dict()[f"{PREDICTOR}cls_score.weight"][2])
    assert "unicorn" in caplog.text


def test_weights_need_the_default_architecture(coco_checkpoint) -> None:
    path, _ = coco_checkpoint
    with pytest.raises(WeightsError, match="fpn_channels=256"):
        build_faster_rcnn(
            ResNetBackbone("resnet50"), num_classes=1, fpn_channels=128, weights=str(path), class_names=["dog"]
        )


def test_coco_offline_says_where_to_put_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(self, *args, **kwargs):
        raise URLError("Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match="fasterrcnn_resnet50_fpn_coco-258fb6c6.pth"):
        build_faster_rcnn(ResNetBackbone("resnet50"), num_classes=1, weights="coco", class_names=["dog"])


def test_voc_names_map_onto_all_twenty_coco_rows(coco_checkpoint, caplog: pytest.LogCaptureFixture) -> None:
    from tasks.data.formats.voc import VOC_CLASSES

    path, source = coco_checkpoint
    model = build_faster_rcnn(
        ResNetBackbone("resnet50", norm="bn"), num_classes=20, weights=str(path), class_names=list(VOC_CLASSES)
    )
    assert "knows no class" not in caplog.text
    coco = {name: row for row, name in enumerate(FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"])}
    aliases = {"aeroplane": "airplane", "diningtable": "dining table", "motorbike": "motorcycle",
               "pottedplant": "potted plant", "sofa": "couch", "tvmonitor": "tv"}  # fmt: skip
    rows = [0, *(coco[aliases.get(name, name)] for name in VOC_CLASSES)]
    torch.testing.assert_close(
        model.state_dict()[f"{PREDICTOR}cls_score.weight"], source[f"{PREDICTOR}cls_score.weight"][rows]
    )


def test_mask_rcnn_coco_weights_remap_box_and_mask_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """task.model.weights=coco for Mask R-CNN asks torchvision for MaskRCNN_ResNet50_FPN_Weights.COCO_V1
    and picks the box and mask predictor rows of each class by name (here from a same-architecture
    state dict standing in for the download)."""
    import heads.detector_weights as detector_weights

    torch.manual_seed(0)
    source = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    asked = []
    monkeypatch.setattr(
        detector_weights, "torchvision_state_dict", lambda weights, **_: asked.append(weights) or dict(source)
    )
    names = ["dog", "person", "car"]
    model = build_mask_rcnn(ResNetBackbone("resnet50", norm="bn"), num_classes=3, weights="coco", class_names=names)
    assert asked == [MaskRCNN_ResNet50_FPN_Weights.COCO_V1]
    ours, rows = model.state_dict(), [0, 18, 1, 3]
    for key, per_class in (
        ("box_predictor.cls_score", 1),
        ("box_predictor.bbox_pred", 4),
        ("mask_predictor.mask_fcn_logits", 1),
    ):
        for suffix in ("weight", "bias"):
            name = f"roi_heads.{key}.{suffix}"
            torch.testing.assert_close(ours[name], source[name][_rows(rows, per_class)], rtol=0, atol=0)
    for key, value in source.items():
        if "_predictor." not in key:
            torch.testing.assert_close(ours[key], value, rtol=0, atol=0)
