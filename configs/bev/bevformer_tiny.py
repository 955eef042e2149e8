"""BEVFormer-tiny (R50 C5, BEV 50 x 50, 3 encoder layers, images x0.5, queue 3): NDS 35.4 / mAP 25.2."""

_base_ = "base.py"

model = dict(name="bevformer_tiny", pretrained="torchvision://resnet50")
data = dict(image_size=[800, 450], num_history=2)
