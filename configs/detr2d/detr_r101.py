"""DETR, ResNet-101, 500 epochs: published COCO val AP 43.5."""

_base_ = "detr_r50.py"

model = dict(name="detr_r101", backbone="resnet101", pretrained="torchvision://resnet101")
