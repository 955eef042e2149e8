"""PETR VoVNet-99 P4, 800 x 320: NDS 42.6 / mAP 37.8 (nuScenes val)."""

_base_ = "petr_base.py"
