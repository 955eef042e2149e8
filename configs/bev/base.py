"""BEVFormer-base on nuScenes: the published recipe (Li et al., ECCV 2022), 24 epochs, NDS 51.7 / mAP 41.6.

The other files in this folder inherit this one (``_base_``) and change only what differs. ``model``
is a variant ``name`` of ``bev.VARIANTS`` plus overrides of any ``bev.BEVModelConfig`` field (every
field: ``tools/train.py CONFIG --print-config``).
"""

task = "nuscenes_detection"  # tools/train.py, test.py and predict.py dispatch on this

model = dict(
    name="bevformer_base",  # ResNet-101 C3-C5 -> 4 FPN levels, BEV 200 x 200, 6 encoder layers
    pretrained="ckpts/r101_dcn_fcos3d_pretrain.pth",  # the release starts from this FCOS3D checkpoint
)

data = dict(
    root="data/nuscenes",  # samples/, v1.0-*/ (and can_bus/ here or in the parent folder)
    version="v1.0-trainval",
    infos_dir="data/nuscenes/infos",  # nuscenes_infos_<split>.json: tools/create_data.py nuscenes
    train_split="train",
    val_split="val",
    image_size=[1600, 900],  # (W, H) every image is resized to (bilinear; lidar2img scaled; padded to x32)
    img_norm=dict(mean=[103.530, 116.280, 123.675], std=[1.0, 1.0, 1.0], to_rgb=False),  # caffe: BGR, 0-255
    num_history=3,  # earlier frames per training sample: queue_length 4
    random_history=True,  # the release's queue: num_history of the previous num_history + 1 frames, at random
    photometric_distortion=dict(  # PhotoMetricDistortionMultiViewImage, every camera image in training
        brightness_delta=32,
        contrast_range=[0.5, 1.5],
        saturation_range=[0.5, 1.5],
        hue_delta=18,
    ),
    grid_mask=dict(  # the detector's GridMask on the current frame's images in training (None: off)
        use_h=True, use_w=True, rotate=1, offset=False, ratio=0.5, mode=1, prob=0.7
    ),
    # PETRv2's earlier frame (12 views: the current 6 cameras, then the same cameras of a camera sweep whose
    # lidar2img maps the current lidar frame; needs num_history 0 and infos with sweeps, format 2).
    # None: off. PETRv2: dict(test_offset_s=1.25, train_range_s=[0.29, 2.29], pad_offset_s=1.245) = the
    # frame nearest 1.25 s back at test time, a uniform one 0.29..2.29 s back in training (the 4th..27th
    # frame at 12 Hz), and the current images with a 1.245 s gap at a scene's first sample.
    prev_frame=None,
    # PETR's ResizeCropFlipImage (replaces image_size; lidar2img updated), None: off. PETR VoVNet
    # 800 x 320: dict(final_size=[800, 320], resize_range=[0.47, 0.625], bot_pct_range=[0.0, 0.0], flip=True):
    # random in training; the val split gets the test-time resize (max of the ratios) + bottom crop.
    resize_crop_flip=None,
    # PETR's GlobalRotScaleTransImage in training (boxes and lidar2img), None: off. PETR:
    # dict(rot_range=[-0.3925, 0.3925], scale_range=[0.95, 1.05]).
    global_rot_scale=None,
    # CBGS (mmdet3d's CBGSDataset): the train split resampled once, from train.seed, so that every class
    # gets about 1/10 of the samples (datasets/nuscenes/cbgs.py); PETRv2's trainval recipe. False: off.
    cbgs=False,
    num_workers=4,  # per process
    on_bad_image="raise",  # a truncated/corrupt image: "raise" (names the file) or "skip" (logged, counted)
)

optim = dict(
    lr=2e-4,  # AdamW
    weight_decay=0.01,
    lr_backbone=2e-5,  # img_backbone lr_mult 0.1: parameters whose name contains one of backbone_names
    backbone_names=["backbone."],
    lr_linear_proj_mult=1.0,  # no separate group for the attention offsets
    linear_proj_names=[],
    clip_max_norm=35.0,  # gradient L2 norm clip
)
schedule = dict(  # stepped every iteration
    policy="warmup_cosine",
    epochs=24,
    warmup_iters=500,  # linear warmup from warmup_ratio x lr, then cosine to min_lr_ratio x lr
    warmup_ratio=1.0 / 3,
    min_lr_ratio=1e-3,
    cosine_by_epoch=True,  # mmcv CosineAnnealing by_epoch: the lr is constant within an epoch
)
train = dict(
    batch_size=8,  # total over all processes (published: 8 GPUs x 1)
    eval_every=1,  # epochs; 0 = evaluate only through tools/test.py
    keep_every=1,  # besides checkpoint.pth (latest), keep checkpoint{epoch:04}.pth every N epochs (0 = never)
    amp=None,  # None, "bf16" or "fp16" (mixed precision on the CPU or GPU; fp16 with loss scaling)
    seed=0,
    deterministic=False,
    progress=True,  # tqdm progress bar on rank 0
    log_every=50,  # iterations between {"iter": ...} records in log.jsonl (0: epochs only)
    tensorboard=True,  # also write TensorBoard events when the optional tensorboard package is installed
)
init_from = (
    None  # checkpoint whose matching weights start a fresh run (fine-tuning; tools/train.py --init-from)
)
