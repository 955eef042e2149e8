"""PETR VoVNet-99 P4, 1600 x 640: NDS 45.5 / mAP 40.4 (nuScenes val)."""

_base_ = "petr_base.py"

model = dict(name="petr_vov_p4_1600x640")
data = dict(
    image_size=[1600, 640],
    resize_crop_flip=dict(final_size=[1600, 640], resize_range=[0.94, 1.25]),  # final_dim (640, 1600)
)
