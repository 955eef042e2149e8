"""PETRv2 VoVNet-99 P4, 800 x 320, two frames (12 views): NDS 50.3 / mAP 41.0 (nuScenes val).

The batch carries the current 6 cameras and the same cameras of an earlier frame (``bev.petr_task``
module docstring: ``img`` (B, 12, 3, H, W), ``lidar2img`` (B, 12, 4, 4), ``timestamps`` (B, 12)), chosen
among the sample's camera sweeps (infos from ``tools/create_data.py nuscenes``, which keeps 27 by
default) as the release's ``LoadMultiViewImageFromMultiSweepsFiles(sweeps_num=1, sweep_range=[3, 27],
pad_empty_sweeps=True)`` does.
"""

_base_ = "petr_base.py"

model = dict(name="petrv2_vov_p4_800x320")
data = dict(
    # the 15th earlier frame (~1.25 s) at test time, one of the 4th..27th (0.33..2.25 s) in training, the
    # current images with (3 + 27) / 2 x 0.083 s at a scene's first sample
    prev_frame=dict(test_offset_s=1.25, train_range_s=[0.29, 2.29], pad_offset_s=1.245),
)
