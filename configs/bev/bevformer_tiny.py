"""BEVFormer-tiny (R50 C5, BEV 50 x 50, 3 encoder layers, images x0.5, queue 3): NDS 35.4 / mAP 25.2."""

_base_ = "base.py"

model = dict(name="bevformer_tiny", pretrained="torchvision://resnet50")
data = dict(
    image_size=[800, 450],  # RandomScaleImageMultiViewImage([0.5]) of the 1600 x 900 cameras
    img_norm=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),  # ImageNet RGB
    num_history=2,
)
