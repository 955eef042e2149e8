"""Demo: a small PETR trained on the synthetic nuScenes data (compare with ``demo.py``, the BEVFormer
demo, on the same data and budget).

ResNet-18 layer3 + layer4 -> CPFPN -> P4 from scratch (trainable batch norm), C = 64, 3 decoder layers,
100 queries, 16 depth bins, 192 x 108 images (the ``petr_demo`` variant of ``bev.petr_builder``).
Data: ``tools/create_data.py synthetic-nuscenes`` then ``tools/create_data.py nuscenes`` (see
tools/demo_bev.sh for the arguments).
"""

_base_ = "petr_base.py"

model = dict(name="petr_demo", pretrained=None)  # from scratch
data = dict(
    root="data/synthetic_nuscenes",
    version="v1.0-mini",
    infos_dir="data/synthetic_nuscenes/infos",
    train_split="synthetic_train",
    val_split="synthetic_val",
    image_size=[192, 108],
    img_norm=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),  # ImageNet RGB
    grid_mask=None,  # the recipe's augmentations are off: the demo's budget is a few epochs
    resize_crop_flip=None,  # every camera resized to image_size
    global_rot_scale=None,
    num_workers=0,
)
optim = dict(lr=1e-3, lr_backbone=1e-3)  # from scratch: the backbone learns at the full rate
schedule = dict(epochs=18, warmup_iters=100, cosine_by_epoch=False)
train = dict(batch_size=1, eval_every=0, keep_every=0)
