"""Deformable DETR, multi-scale (4 levels), R50, 50 epochs: published COCO val AP 44.5."""

_base_ = "base.py"

model = dict(name="deformable_detr")
