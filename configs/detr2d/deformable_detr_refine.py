"""Deformable DETR + iterative bounding box refinement, R50, 50 epochs: published COCO val AP 46.2."""

_base_ = "base.py"

model = dict(name="deformable_detr_refine")
