"""Task heads that consume the backbone contract."""

from heads.faster_rcnn import FasterRCNN, build_faster_rcnn

__all__ = ["FasterRCNN", "build_faster_rcnn"]
