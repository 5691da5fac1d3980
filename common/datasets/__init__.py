"""Dataset layouts every stage reads, torch-free: where a split's COCO json and images are, and
Pascal VOC and YOLO folders converted to COCO (cached)."""
