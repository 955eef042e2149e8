"""Training and evaluation engine for BEV configs (``task = "nuscenes_detection"``): the model and
nuScenes data of a config, the training run with history frames, the sequential tester that carries
the previous BEV through each scene, the official nuScenes evaluation, and BEV/camera pictures.

It reuses the detr2d engine's checkpoints, distributed helpers, logging and optimizer parameter groups.
Submodules are imported on demand (``from bev.engine.trainer import run_bev_training``), as in
:mod:`detr2d.engine`.
"""
