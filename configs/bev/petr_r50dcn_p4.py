"""PETR R50-DCN P4 (C4 + C5 -> CPFPN), 1408 x 512: NDS 36.7 / mAP 31.7 (nuScenes val)."""

_base_ = "petr_r50dcn_c5.py"

model = dict(name="petr_r50dcn_p4")
