"""Demo: a small PETRv2 (two frames, 12 views) on the synthetic nuScenes data: ``petr_demo.py`` with the
``petrv2_demo`` variant and the release's choice of the earlier frame (``petrv2_vov_p4_800x320.py``). The
data needs the camera sweeps (12 Hz, as nuScenes; without them the earlier keyframes, 0.5 s apart, are the
only earlier frames): tools/demo_bev.sh's data with ``--camera-sweeps 5`` (the same keyframe images;
demo_bev.sh reuses the folder)::

    python tools/create_data.py synthetic-nuscenes --out data/synthetic_nuscenes --scenes 40 --samples 10 \
        --image-size 192 108 --seed 0 --camera-sweeps 5
    python tools/create_data.py nuscenes --root data/synthetic_nuscenes --version v1.0-mini \
        --out data/synthetic_nuscenes/infos --splits synthetic_train synthetic_val

``tools/study.py`` generates its BEV data with the sweeps.
"""

_base_ = "petr_demo.py"

model = dict(name="petrv2_demo")
data = dict(prev_frame=dict(test_offset_s=1.25, train_range_s=[0.29, 2.29], pad_offset_s=1.245))
