"""PETRv2 VoVNet-99 P4, 1600 x 640, 1500 queries, trained on train + val with CBGS (the release's
``petrv2_vovnet_gridmask_p4_1600x640_trainval_cbgs``; its trailing comment's 84.1 mAP / 83.0 NDS is on
the val split it trained on, so no val number). Starts from the DD3D V2-99 checkpoint. CBGS as the
release's ``CBGSDataset`` (``data.cbgs``: the trainval samples resampled once so that every class gets about
1/10 of them, drawn from ``train.seed`` where the original used numpy's global RNG); the earlier frame is
``petrv2_vov_p4_800x320.py``'s."""

_base_ = "petrv2_vov_p4_800x320.py"

model = dict(name="petrv2_vov_p4_1600x640", pretrained="ckpts/dd3d_det_final.pth")
data = dict(
    image_size=[1600, 640],
    resize_crop_flip=dict(final_size=[1600, 640], resize_range=[0.94, 1.25]),  # final_dim (640, 1600)
    train_split="trainval",
    cbgs=True,  # CBGSDataset around the train + val samples
    val_split="test",  # test: --format-only
)
train = dict(eval_every=0)  # the test split has no annotations: submit with tools/test.py --format-only
