"""One parser per file format (COCO json, VOC XML and PNG, COCO masks, semantic mask PNGs), each with
its checks. They build on the shared item, index, image and finding types of ``tasks.data``; data
modules, synthetic data, tasks and metrics sit above them, and nothing here imports those."""
