"""DETR on COCO 2017: the published recipe (Carion et al., ECCV 2020), ResNet-50, 500 epochs: AP 42.0.

Standalone rather than inheriting ``base.py``: the loader expands only the ``model`` section per variant
(so the model would inherit cleanly), but the ``criterion`` section is merged key by key, so it would
keep Deformable DETR's focal_alpha / focal_gamma and refuse DETR's eos_coef as a key the base lacks.
The criterion section is :class:`detr2d.DETRCriterionConfig` (unknown keys fail when the task builds
it). The other DETR files inherit this one (``_base_``) and change only what differs.
"""

task = "coco_detection"  # tools/test.py dispatches on this

model = dict(
    name="detr_r50",  # see detr2d.build_model (every field: detr2d.DETRConfig, or --print-config)
    backbone="resnet50",
    pretrained="torchvision://resnet50",  # ImageNet weights (file, URL or torchvision://); none: scratch
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
    set_cost_class=1.0,  # -softmax probability of the target class
    set_cost_bbox=5.0,
    set_cost_giou=2.0,
    cls_loss_coef=1.0,  # cross-entropy over num_classes + 1
    bbox_loss_coef=5.0,
    giou_loss_coef=2.0,
    eos_coef=0.1,  # cross-entropy weight of "no object"
)

data = dict(
    root="data/coco",  # train2017/, val2017/, annotations/instances_{train,val}2017.json
    train_split="train2017",
    val_split="val2017",
    contiguous_labels=False,  # True: labels 0..K-1 for the sorted category ids (custom data with any ids)
    val_ann_file=None,  # None: annotations/instances_<val_split>.json (test-dev: image_info_test-dev2017)
    num_workers=2,  # per process
    on_bad_image="raise",  # a truncated/corrupt image: "raise" (names the file) or "skip" (logged, counted)
)
augment = dict(
    scales=list(range(480, 801, 32)),  # train short side ∈ {480, 512, ..., 800}
    max_size=1333,  # long side cap (train and eval)
    crop_resize_sizes=[400, 500, 600],  # crop branch: resize → random crop → multi-scale resize
    crop_size=[384, 600],  # random crop side range (min, max)
    flip_prob=0.5,
    eval_size=800,
)

optim = dict(
    lr=1e-4,  # AdamW
    weight_decay=1e-4,
    lr_backbone=1e-5,  # parameters whose name contains one of backbone_names
    backbone_names=["backbone.0"],
    lr_linear_proj_mult=1.0,  # DETR has no sampling offsets or reference points
    linear_proj_names=[],
    clip_max_norm=0.1,  # gradient L2 norm clip (0 disables)
)
schedule = dict(  # stepped every iteration
    policy="step",
    epochs=500,  # the published models; the paper's shorter schedules: 150 epochs (lr_drop=100) or 300 (200)
    lr_drop=400,  # StepLR: lr × lr_gamma every lr_drop epochs
    lr_gamma=0.1,
)
train = dict(
    batch_size=64,  # total over all processes (published: 16 GPUs × 4)
    eval_batch_size=2,  # per process
    eval_every=1,  # epochs; 0 = evaluate only through tools/test.py
    keep_every=50,  # besides checkpoint.pth (latest), keep checkpoint{epoch:04}.pth every N epochs (0: never)
    amp=None,  # None, "bf16" or "fp16" (mixed precision on the CPU or GPU; fp16 with loss scaling)
    seed=42,
    deterministic=False,  # torch.use_deterministic_algorithms (for exact reproducibility tests)
    progress=True,  # tqdm progress bar on rank 0
    log_every=50,  # iterations between {"iter": ...} records in log.jsonl (0: epochs only)
    tensorboard=True,  # also write TensorBoard events when the optional tensorboard package is installed
)
init_from = (
    None  # checkpoint whose matching weights start a fresh run (fine-tuning; tools/train.py --init-from)
)
