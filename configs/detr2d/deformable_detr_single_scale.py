"""Deformable DETR, single scale (C5, stride 32), R50, 50 epochs: published COCO val AP 39.4."""

_base_ = "base.py"

model = dict(name="deformable_detr_single_scale")
