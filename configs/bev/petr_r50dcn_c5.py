"""PETR R50-DCN C5 (no neck), 1408 x 512: NDS 35.0 / mAP 30.5 (nuScenes val)."""

_base_ = "petr_base.py"

model = dict(name="petr_r50dcn_c5", pretrained="ckpts/resnet50_msra-5891d200.pth")  # caffe-style ImageNet
data = dict(
    image_size=[1408, 512],
    img_norm=dict(mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False),  # caffe: BGR, 0-255
    resize_crop_flip=dict(final_size=[1408, 512], resize_range=[0.8, 1.0]),  # final_dim (512, 1408)
)
