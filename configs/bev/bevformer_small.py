"""BEVFormer-small (R101 C5, BEV 150 x 150, 3 encoder layers, images x0.8, queue 3): NDS 47.9 / mAP 37.0."""

_base_ = "base.py"

model = dict(name="bevformer_small")
data = dict(image_size=[1280, 720], num_history=2)  # RandomScaleImageMultiViewImage([0.8]) of 1600 x 900
