"""PETR / PETRv2 on nuScenes: what every published PETR recipe shares (megvii-research/PETR
``projects/configs/petr*/``); the variant files inherit this one and change only what differs.

``model`` is a variant ``name`` of ``bev.petr_builder.VARIANTS`` plus overrides of any
``bev.PETRModelConfig`` field (every field: ``tools/train.py CONFIG --print-config``). Recipe: AdamW 2e-4,
weight decay 0.01, backbone x0.1, gradient clip 35, 500-iteration linear warm-up from 1/3, cosine
(per epoch, mmcv ``CosineAnnealing``) to 1e-3, 24 epochs, 8 GPUs x 1 sample, GridMask (p 0.7). The
release trains in fp16 with loss scale 512 (``train.amp="fp16"`` here where the device has it). Images:
the data side resizes every camera to ``data.image_size`` (the release resizes, then crops the bottom
rows to its final size, and trains with random resize / flip and a global rotation / scaling that this
data side does not apply).
"""

_base_ = "base.py"

task = "nuscenes_petr"

model = dict(
    name="petr_vov_p4_800x320",
    pretrained="ckpts/fcos3d_vovnet_imgbackbone-remapped.pth",  # the release's load_from (V2-99 FCOS3D)
)
data = dict(
    image_size=[800, 320],  # (W, H): the release's final size
    img_norm=dict(mean=[103.530, 116.280, 123.675], std=[57.375, 57.120, 58.395], to_rgb=False),  # BGR
    num_history=0,  # PETR reads one frame (PETRv2's earlier frame is part of its batch)
    random_history=False,
    photometric_distortion=None,  # not in the PETR pipelines
)
