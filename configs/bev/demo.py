"""Demo: a small BEVFormer trained on the synthetic nuScenes data (``tools/demo_bev.sh``).

ResNet-18 up to layer2 (stride 8, trainable batch norm, every stage learning; ``tools/demo_bev.sh``
starts it from the COCO demo's checkpoint with ``--init-from``, without it from scratch), C = 64,
BEV 50 x 50, 100 queries, 192 x 108 images and one history frame per sample. Three departures from
the published recipe make it learn in a CPU budget (each is a model option; BENCHMARKS.md has the
runs): Group DETR query groups in training, the BEV positional embedding in the decoder's memory
(without it the head predicted one heading for every car) and a pillar z range around the objects.
Time, NDS and mAP on the synthetic val split: BENCHMARKS.md. Data: ``tools/create_data.py
synthetic-nuscenes`` then ``tools/create_data.py nuscenes`` (see tools/demo_bev.sh for the arguments).
"""

_base_ = "base.py"

model = dict(  # the demo's whole size (the bev_demo variant's and what differs from it) in one place
    name="bev_demo",
    return_layers=["layer2"],  # stride 8 only: the stem, layer1 and layer2 of the ResNet run
    pretrained=None,  # from scratch (trainable batch norm below)
    backbone_norm="bn",  # trainable batch norm: from scratch, frozen identity statistics normalize nothing
    backbone_trainable_layers=5,  # stem and layer1 learn too
    num_levels=1,
    embed_dims=64,
    ffn_dims=128,
    bev_h=50,  # 2 m cells over the 102.4 m range (25 x 25: NDS 0.15 / mAP 0.07 in 6 epochs)
    bev_w=50,
    encoder_layers=2,
    decoder_layers=3,
    num_queries=100,
    num_query_groups=4,  # Group DETR: 4 x 100 queries learn in training, 100 decode at test time
    dropout=0.0,
    bev_pos_in_memory=True,  # the decoder knows where it reads: heading/velocity priors by position
    pc_range=[-51.2, -51.2, -3.0, 51.2, 51.2, 1.0],  # pillar points -0.7, 0.3, 1.3, 2.3 m above the road
)
data = dict(
    root="data/synthetic_nuscenes",
    version="v1.0-mini",
    infos_dir="data/synthetic_nuscenes/infos",
    train_split="synthetic_train",
    val_split="synthetic_val",
    image_size=[192, 108],
    img_norm=dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True),  # ImageNet RGB
    num_history=1,
    random_history=False,  # the recipe's augmentation is off: the demo's budget is a few epochs
    photometric_distortion=None,
    grid_mask=None,
    num_workers=0,
)
optim = dict(lr=1e-3, lr_backbone=1e-3)  # from scratch: the backbone learns at the full rate
# 18 x 320 iterations (32 train scenes x 10 samples, batch 1); the cosine advances every iteration
schedule = dict(epochs=18, warmup_iters=100, cosine_by_epoch=False)
train = dict(batch_size=1, eval_every=0, keep_every=0)
