"""Demo: Deformable DETR (two-stage) trained from scratch on the synthetic shapes dataset (``make demo``).

96 x 96 images, a ResNet-18 with trainable batch norm learning in every stage (nothing is pretrained:
frozen identity statistics would leave the trunk unnormalized), a narrow two-layer transformer and 20
queries, so that a 2-core CPU trains it to COCO AP ~0.7 in about 7 minutes (BENCHMARKS.md). Data:
``python -m datasets.synthetic_coco`` (see tools/demo.sh for the exact arguments).
"""

_base_ = "base.py"

model = dict(
    name="deformable_detr_two_stage",
    backbone="resnet18",
    pretrained=None,  # from scratch (trainable batch norm below)
    backbone_norm="bn",
    backbone_trainable_layers=5,  # stem and layer1 learn too
    num_classes=5,  # category ids 1-4 (circle, square, triangle, cross); 0 unused
    num_queries=20,
    embed_dims=64,
    encoder_layers=2,
    decoder_layers=3,
    ffn_dims=256,
    dropout=0.0,
)
data = dict(root="data/synthetic_coco", num_workers=0)  # decoding 96 px JPEGs costs less than a worker
augment = dict(
    scales=[96],
    max_size=160,
    crop_resize_sizes=None,  # no crop branch: horizontal flip only
    eval_size=96,
)
optim = dict(lr=5e-4, lr_backbone=5e-4)  # from scratch: the backbone learns at the full rate
schedule = dict(epochs=3, lr_drop=2)
train = dict(batch_size=4, eval_batch_size=8, eval_every=0, keep_every=0)
