"""PETRv2 VoVNet-99 P4, 800 x 320, two frames (12 views): NDS 50.3 / mAP 41.0 (nuScenes val).

The batch carries the current 6 cameras and the same cameras of an earlier frame (``bev.petr_task``
module docstring: ``img`` (B, 12, 3, H, W), ``lidar2img`` (B, 12, 4, 4), ``timestamps`` (B, 12)).
"""

_base_ = "petr_base.py"

model = dict(name="petrv2_vov_p4_800x320")
