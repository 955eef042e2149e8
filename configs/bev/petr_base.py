"""PETR / PETRv2 on nuScenes: what every published PETR recipe shares (megvii-research/PETR
``projects/configs/petr*/``); the variant files inherit this one and change only what differs.

``model`` is a variant ``name`` of ``bev.petr_builder.VARIANTS`` plus overrides of any
``bev.PETRModelConfig`` field (every field: ``tools/train.py CONFIG --print-config``). Recipe: AdamW 2e-4,
weight decay 0.01, backbone x0.1, gradient clip 35, 500-iteration linear warm-up from 1/3, cosine
(per epoch, mmcv ``CosineAnnealing``) to 1e-3, 24 epochs, 8 GPUs x 1 sample, GridMask (p 0.7). The
release trains in fp16 with loss scale 512 (``train.amp="fp16"`` here where the device has it). Images:
the release's pipeline, ``ida_aug_conf`` and ``GlobalRotScaleTransImage``: in training every camera
(all 12 of PETRv2) is resized by a random factor of the 1600 x 900 original, cropped to the final size
from the bottom and flipped at random, and the scene is rotated / scaled with its boxes and
``lidar2img``; at test time resize by max(final / original) and crop the bottom rows
(``data.resize_crop_flip``, ``data.global_rot_scale``). ``data.image_size`` is the final size, the
network's input (export). CBGS (class-balanced resampling, ``data.cbgs``) is on in the trainval config
only (``petrv2_vov_p4_1600x640.py``), as in the release.
"""

_base_ = "base.py"

task = "nuscenes_petr"

model = dict(
    name="petr_vov_p4_800x320",
    pretrained="ckpts/fcos3d_vovnet_imgbackbone-remapped.pth",  # the release's load_from (V2-99 FCOS3D)
)
data = dict(
    image_size=[800, 320],  # (W, H): the release's final size (= resize_crop_flip.final_size)
    img_norm=dict(mean=[103.530, 116.280, 123.675], std=[57.375, 57.120, 58.395], to_rgb=False),  # BGR
    num_history=0,  # PETR reads one frame (PETRv2's earlier frame is part of its batch)
    random_history=False,
    photometric_distortion=None,  # not in the PETR pipelines
    # ida_aug_conf: final_dim (320, 800), resize_lim (0.47, 0.625), bot_pct_lim (0, 0), rand_flip True
    resize_crop_flip=dict(
        final_size=[800, 320], resize_range=[0.47, 0.625], bot_pct_range=[0.0, 0.0], flip=True
    ),
    # GlobalRotScaleTransImage: rot_range +-0.3925 rad, scale_ratio_range (0.95, 1.05), no translation
    global_rot_scale=dict(rot_range=[-0.3925, 0.3925], scale_range=[0.95, 1.05]),
)
