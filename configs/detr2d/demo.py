"""Demo: Deformable DETR trained from scratch on the synthetic shapes dataset (``make demo``).

Small images, a ResNet-18 without pretraining, a narrow two-layer transformer and few queries, so a
2-core CPU trains it to COCO AP > 0.5 in minutes. Data: ``python -m datasets.synthetic_coco
data/synthetic_coco`` (see tools/demo.sh for the exact arguments).
"""

_base_ = "base.py"

model = dict(
    name="deformable_detr",
    backbone="resnet18",
    num_classes=5,  # category ids 1-4 (circle, square, triangle, cross); 0 unused
    num_queries=20,
    hidden_dim=64,
    enc_layers=2,
    dec_layers=3,
    dim_feedforward=256,
    dropout=0.0,
)
data = dict(root="data/synthetic_coco", num_workers=1)
augment = dict(
    scales=[112, 128, 144],
    max_size=192,
    crop_resize_sizes=None,  # no crop branch: flip + scale jitter only
    eval_size=128,
)
optim = dict(lr=2e-4, lr_backbone=2e-4)  # from scratch: the backbone learns at the full rate
schedule = dict(epochs=12, lr_drop=10)
train = dict(batch_size=8, eval_batch_size=8, eval_every=0, keep_every=0)
