"""Task heads that consume the backbone contract."""

from heads.faster_rcnn import FasterRCNN, build_faster_rcnn
from heads.mask_rcnn import build_mask_rcnn

__all__ = ["FasterRCNN", "build_faster_rcnn", "build_mask_rcnn"]
