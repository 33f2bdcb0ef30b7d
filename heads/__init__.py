"""Task heads that consume the backbone contract."""

from heads.faster_rcnn import FasterRCNN, build_faster_rcnn
from heads.mask_rcnn import build_mask_rcnn
from heads.one_stage import FCOS, RetinaNet, build_fcos, build_retinanet

__all__ = ["FCOS", "FasterRCNN", "RetinaNet", "build_faster_rcnn", "build_fcos", "build_mask_rcnn", "build_retinanet"]
