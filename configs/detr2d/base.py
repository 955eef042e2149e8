"""Deformable DETR on COCO 2017: the published recipe (Zhu et al., ICLR 2021), ResNet-50, 50 epochs.

The variant files in this folder inherit this one (``_base_``) and change only what differs.
"""

task = "coco_detection"  # tools/test.py dispatches on this

model = dict(  # what differs from detr2d.ModelConfig (every field: tools/train.py CONFIG --print-config)
    name="deformable_detr",  # see detr2d.build_model
    pretrained="torchvision://resnet50",  # ImageNet weights (file, URL or torchvision://); none: scratch
)
criterion = dict(  # Hungarian matching costs and loss weights (num_classes, decoder_layers: from the model)
    set_cost_class=2.0,
    set_cost_bbox=5.0,
    set_cost_giou=2.0,
    cls_loss_coef=2.0,
    bbox_loss_coef=5.0,
    giou_loss_coef=2.0,
    focal_alpha=0.25,
    focal_gamma=2.0,
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
    lr=2e-4,  # AdamW
    weight_decay=1e-4,
    lr_backbone=2e-5,  # parameters whose name contains one of backbone_names
    backbone_names=["backbone.0"],
    lr_linear_proj_mult=0.1,  # parameters whose name contains one of linear_proj_names
    linear_proj_names=["sampling_offsets", "reference_points"],
    clip_max_norm=0.1,  # gradient L2 norm clip (0 disables)
)
schedule = dict(  # stepped every iteration
    policy="step",
    epochs=50,
    lr_drop=40,  # StepLR: lr × lr_gamma every lr_drop epochs
    lr_gamma=0.1,
)
train = dict(
    batch_size=32,  # total over all processes (published: 8 GPUs × 4)
    eval_batch_size=2,  # per process
    eval_every=1,  # epochs; 0 = evaluate only through tools/test.py
    keep_every=5,  # besides checkpoint.pth (latest), keep checkpoint{epoch:04}.pth every N epochs (0 = never)
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
