"""Training and evaluation engine for detr2d configs: data loaders, optimizer, epoch loop, COCO
evaluation, checkpoints, distributed setup, and the runs behind ``tools/train.py``, ``tools/test.py``
and ``tools/predict.py``.

Submodules are imported on demand (``from detr2d.engine.trainer import run_training``) so that each
tool loads only what it uses.
"""
