"""BEVFormer-base (R101, BEV 200 x 200, 6 encoder layers, full-size images, queue 4): NDS 51.7 / mAP 41.6."""

_base_ = "base.py"
