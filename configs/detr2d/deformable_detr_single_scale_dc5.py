"""Deformable DETR, single scale with dilated C5 (DC5, stride 16), R50, 50 epochs: published AP 41.5."""

_base_ = "base.py"

model = dict(name="deformable_detr_single_scale_dc5")
