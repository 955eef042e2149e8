"""DETR on COCO 2017: the published recipe (Carion et al., ECCV 2020), ResNet-50, 500 epochs: AP 42.0.

Inherits Deformable DETR's recipe (``base.py``: data, augmentation, training) and lists what DETR's differs
in: the model, the criterion, the learning rates, the schedule and the batch. The criterion is replaced
whole (``_delete_=True``): DETR's cross-entropy loss has ``eos_coef`` and no focal_alpha / focal_gamma. It is
:class:`detr2d.DETRCriterionConfig` (unknown keys fail when the task builds it). The other DETR files
inherit this one (``_base_``) and change only what differs.
"""

_base_ = "base.py"

model = dict(
    name="detr_r50",  # see detr2d.build_model (every field: detr2d.DETRConfig, or --print-config)
    backbone="resnet50",
    num_classes=91,  # real classes (COCO category ids are the labels); the head adds "no object"
    num_queries=100,
    embed_dims=256,
    num_heads=8,
    encoder_layers=6,
    decoder_layers=6,
    ffn_dims=2048,
    dropout=0.1,
    dilation=False,  # True: DC5 (layer4 dilated, stride 16)
    train_backbone=True,  # False freezes the whole ResNet
    backbone_norm="frozen_bn",
    backbone_trainable_layers=3,  # layer2-4 learn, as in the original
    padding="exact",  # "official": the original's padded-batch behaviour (see README, Padding)
)
criterion = dict(  # Hungarian matching costs and loss weights (num_classes, decoder_layers: from the model)
    _delete_=True,  # replaces Deformable DETR's (focal loss) section
    set_cost_class=1.0,  # -softmax probability of the target class
    set_cost_bbox=5.0,
    set_cost_giou=2.0,
    cls_loss_coef=1.0,  # cross-entropy over num_classes + 1
    bbox_loss_coef=5.0,
    giou_loss_coef=2.0,
    eos_coef=0.1,  # cross-entropy weight of "no object"
)

optim = dict(
    lr=1e-4,  # AdamW
    lr_backbone=1e-5,
    lr_linear_proj_mult=1.0,  # DETR has no sampling offsets or reference points
    linear_proj_names=[],
)
schedule = dict(
    epochs=500,  # the published models; the paper's shorter schedules: 150 epochs (lr_drop=100) or 300 (200)
    lr_drop=400,  # StepLR: lr × lr_gamma every lr_drop epochs
)
train = dict(
    batch_size=64,  # total over all processes (published: 16 GPUs × 4)
    keep_every=50,  # keep checkpoint{epoch:04}.pth every 50 epochs
)
