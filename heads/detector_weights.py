"""Loading whole-detector weights (torchvision's COCO detectors or a file) with label remapping."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_Weights,
    FCOS_ResNet50_FPN_Weights,
    MaskRCNN_ResNet50_FPN_Weights,
    RetinaNet_ResNet50_FPN_V2_Weights,
    RetinaNet_ResNet50_FPN_Weights,
)

from backbones.weights import WeightsError, load_state_dict_file, strip_prefix, torchvision_state_dict

log = logging.getLogger(__name__)

COCO_WEIGHTS = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
COCO_MASK_WEIGHTS = MaskRCNN_ResNet50_FPN_Weights.COCO_V1  # 37.9 box AP, 34.6 mask AP
# torchvision's COCO detectors predict 91 indices: background, then COCO category ids 1..90 ("N/A" for gaps)
COCO_91_NAMES: list[str] = list(COCO_WEIGHTS.meta["categories"])
# per detector kind: torchvision's COCO weights, and the per-class rows of its predictors as (state-dict key,
# rows per class); the first key has one row per class (per anchor for RetinaNet: anchor-major blocks)
_TWO_STAGE_ROWS = (
    ("roi_heads.box_predictor.cls_score", 1),
    ("roi_heads.box_predictor.bbox_pred", 4),
    ("roi_heads.mask_predictor.mask_fcn_logits", 1),
)
_ONE_STAGE_ROWS = (("head.classification_head.cls_logits", 1),)
KINDS = {
    "faster_rcnn": (COCO_WEIGHTS, _TWO_STAGE_ROWS),
    "mask_rcnn": (COCO_MASK_WEIGHTS, _TWO_STAGE_ROWS),
    "retinanet": (RetinaNet_ResNet50_FPN_Weights.COCO_V1, _ONE_STAGE_ROWS),  # 36.4 box AP
    "retinanet_v2": (RetinaNet_ResNet50_FPN_V2_Weights.COCO_V1, _ONE_STAGE_ROWS),  # 41.5 box AP
    "fcos": (FCOS_ResNet50_FPN_Weights.COCO_V1, _ONE_STAGE_ROWS),  # 39.2 box AP
}
# PASCAL VOC names of COCO categories, so that COCO weights map all 20 VOC classes
VOC_TO_COCO_NAMES = {
    "aeroplane": "airplane",
    "diningtable": "dining table",
    "motorbike": "motorcycle",
    "pottedplant": "potted plant",
    "sofa": "couch",
    "tvmonitor": "tv",
}


def _predictor_rows(source_names: Sequence[str], class_names: Sequence[str]) -> tuple[list[int | None], list[str]]:
    """Source row for background and each class (None where the class is unknown), and the unknown names."""
    rows: list[int | None] = [0]
    missing = []
    for name in class_names:
        name = name if name in source_names[1:] else VOC_TO_COCO_NAMES.get(name, name)
        if name in source_names[1:]:
            rows.append(source_names.index(name, 1))
        else:
            rows.append(None)
            missing.append(name)
    return rows, missing


def _remap_predictor(
    state: dict[str, Tensor], own: dict[str, Tensor], rows: list[int | None], keys: tuple, blocks: int
) -> None:
    """Pick predictor rows by class (4 box-regression rows per class; in each of ``blocks`` anchor
    blocks for RetinaNet), keeping ours where the class is unknown."""
    for key, per_class in keys:
        for suffix in ("weight", "bias"):
            name = f"{key}.{suffix}"
            if name not in own:
                continue  # no mask branch
            rest = own[name].shape[1:]
            source = state[name].reshape(blocks, -1, *rest)
            target = own[name].clone().reshape(blocks, -1, *rest)
            for k, row in enumerate(rows):
                if row is not None:
                    target[:, k * per_class : (k + 1) * per_class] = source[:, row * per_class : (row + 1) * per_class]
            state[name] = target.reshape(own[name].shape)


def load_detector_weights(
    model: nn.Module,
    weights: str,
    class_names: Sequence[str] | None = None,
    *,
    kind: str = "faster_rcnn",
) -> None:
    """Load ``weights`` (``"coco"``: torchvision's COCO weights of ``kind`` through its weights API; or a
    file path).

    A predictor trained on torchvision's 91 COCO indices is remapped by class name onto
    ``class_names`` (this model's labels 1..K; VOC's names of COCO classes count, see
    ``VOC_TO_COCO_NAMES``); classes it does not know keep their
    initialisation. Every other tensor must match in shape, else the error names them.
    """
    coco, keys = KINDS[kind]
    if weights == "coco":
        state = torchvision_state_dict(coco, instead="set task.model.weights=none to start from backbone weights only")
        source = str(coco)
    else:
        state, source = strip_prefix(load_state_dict_file(weights), "model."), weights
    own = model.state_dict()
    scores = f"{keys[0][0]}.weight"
    predictor = keys[0][0].rsplit(".", 1)[0]
    if any(k not in state for k in own if k.startswith(predictor)):
        raise WeightsError(f"{source} has no {kind} class predictor ({predictor}.*): is it a {kind} checkpoint?")
    blocks = own[scores].shape[0] // (model.num_classes + 1)  # RetinaNet: a block of rows per anchor
    source_rows = state[scores].shape[0] // blocks
    if source_rows != own[scores].shape[0] // blocks or class_names is not None:
        if source_rows != len(COCO_91_NAMES) and source_rows != len(class_names or []) + 1:
            raise WeightsError(f"{source} predicts {source_rows - 1} classes; cannot map them onto {class_names}")
        source_names = COCO_91_NAMES if source_rows == len(COCO_91_NAMES) else ["__background__", *class_names]
        rows, missing = _predictor_rows(source_names, class_names or source_names[1:])
        if missing:
            log.warning("%s knows no class named %s: their predictor rows stay at initialisation", source, missing)
        _remap_predictor(state, own, rows, keys, blocks)
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]
    if mismatched:
        raise WeightsError(
            f"{source} does not fit this detector: shapes differ for {mismatched[:6]}. COCO weights need "
            "backbone=resnet50, task.model.fpn_channels=256, task.model.fpn_norm=none, representation_size=1024 "
            "(Mask R-CNN also the default mask head: mask_layers of 256, mask_predictor_channels=256)"
        )
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"{source} does not fit this detector: missing {missing[:6]}, unexpected {result.unexpected_keys[:6]}"
        )
    log.info("loaded %d tensors from %s", len(state), source)
