"""Demo-sized DETR3D on the synthetic nuScenes data: the BEV demo's backbone, image size, queries and
schedule (``configs/bev/demo.py``) with the DETR3D head (queries sample the image features at their 3D
reference points projected into every camera; no BEV grid, no history). ``tools/study.py`` trains it
beside the demo BEVFormer; alone: ``tools/train.py configs/bev/detr3d_demo.py`` with the data of
``tools/demo_bev.sh``.
"""

_base_ = "demo.py"

model = dict(
    name="detr3d",
    backbone="resnet18",  # the demo's ResNet-18 (the demo's variant sets it, detr3d's is a ResNet-101)
    backbone_style="pytorch",  # the demo's ResNet-18, not the published caffe-style R101-DCN
    backbone_dcn=[False, False, False, False],
    backbone_norm_eval=False,  # trainable batch norm from scratch, as in the demo
    num_heads=4,  # the demo variant's
    published_init=False,  # the demo variant's initialization
    bev_pos_in_memory=False,  # no BEV: the head reads the image features
)
data = dict(num_history=0)  # one frame per sample
