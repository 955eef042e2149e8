"""Deformable DETR + box refinement + two-stage, R50, 50 epochs: published COCO val AP 46.9."""

_base_ = "base.py"

model = dict(name="deformable_detr_two_stage")
