"""Demo: a small BEVFormer trained from scratch on the synthetic nuScenes data (``tools/demo_bev.sh``).

ResNet-18 up to layer2 (stride 8, trainable batch norm, every stage learning from scratch), C = 64,
BEV 50 x 50, 100 queries, 192 x 108 images and one history frame per sample. On the idle 2-core VM it
trains in ~22 minutes and reaches NDS 0.21 / mAP 0.15 on the synthetic val split: short of the 0.35
goal (BENCHMARKS.md). The backbone is most of the cost (a history frame adds ~70 %), and at this image
size a pixel of a far object's ground contact spans metres of depth. Data: ``tools/create_data.py
synthetic-nuscenes`` then ``tools/create_data.py nuscenes`` (see tools/demo_bev.sh for the arguments).
"""

_base_ = "base.py"

model = dict(  # the bev_demo variant's sizes, spelled out so that they can be overridden
    name="bev_demo",
    return_layers=["layer2"],  # stride 8 only: the stem, layer1 and layer2 of the ResNet run
    backbone_norm="bn",  # trainable batch norm: from scratch, frozen identity statistics normalize nothing
    backbone_trainable_layers=5,  # stem and layer1 learn too
    num_levels=1,
    embed_dims=64,
    ffn_dims=128,
    bev_h=50,  # 2 m cells over the 102.4 m range (25 x 25: NDS 0.15 / mAP 0.07 in 6 epochs)
    bev_w=50,
    encoder_layers=2,
    decoder_layers=3,
    num_query=100,
    dropout=0.0,
    bev_pos_in_memory=False,
    pc_range=[-51.2, -51.2, -5.0, 51.2, 51.2, 3.0],
)
data = dict(
    root="data/synthetic_nuscenes",
    version="v1.0-mini",
    infos_dir="data/synthetic_nuscenes/infos",
    train_split="synthetic_train",
    val_split="synthetic_val",
    image_size=[192, 108],
    num_history=1,
    num_workers=0,
)
optim = dict(lr=1e-3, lr_backbone=1e-3)  # from scratch: the backbone learns at the full rate
schedule = dict(epochs=8, warmup_iters=100)  # 8 x 320 iterations (8 train scenes x 40 samples, batch 1)
train = dict(batch_size=1, eval_every=0, keep_every=0)
