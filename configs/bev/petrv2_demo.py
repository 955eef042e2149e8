"""Demo: a small PETRv2 (two frames, 12 views) on the synthetic nuScenes data: ``petr_demo.py`` with the
``petrv2_demo`` variant and the release's choice of the earlier frame (``petrv2_vov_p4_800x320.py``). The
data needs the camera sweeps (12 Hz, as nuScenes): ``tools/create_data.py synthetic-nuscenes
--camera-sweeps 5`` (tools/demo_bev.sh and tools/study.py write them), then ``tools/create_data.py
nuscenes`` (keeps them in the infos); without them the earlier keyframes (0.5 s apart) are the only
earlier frames."""

_base_ = "petr_demo.py"

model = dict(name="petrv2_demo")
data = dict(prev_frame=dict(test_offset_s=1.25, train_range_s=[0.29, 2.29], pad_offset_s=1.245))
