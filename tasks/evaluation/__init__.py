"""Evaluators (one interface: ``reset``, ``update``, ``compute``): COCO, VOC, confusion matrix and
classification metrics, gathered across DDP processes."""
