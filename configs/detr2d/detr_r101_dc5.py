"""DETR, ResNet-101 with dilated C5 (DC5, stride 16), 500 epochs: published COCO val AP 44.9."""

_base_ = "detr_r50.py"

model = dict(name="detr_r101_dc5", backbone="resnet101", pretrained="torchvision://resnet101", dilation=True)
