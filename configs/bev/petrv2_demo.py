"""Demo: a small PETRv2 (two frames, 12 views) on the synthetic nuScenes data: ``petr_demo.py`` with the
``petrv2_demo`` variant. Needs the data side's two-frame batches (``bev.petr_task`` module docstring)."""

_base_ = "petr_demo.py"

model = dict(name="petrv2_demo")
