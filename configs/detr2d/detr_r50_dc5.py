"""DETR, ResNet-50 with dilated C5 (DC5, stride 16), 500 epochs: published COCO val AP 43.3."""

_base_ = "detr_r50.py"

model = dict(name="detr_r50_dc5", dilation=True)
