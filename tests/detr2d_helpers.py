"""What the detr2d tests share: a tiny model configuration and the one-thread fixture."""

from __future__ import annotations

from bev_helpers import one_thread  # noqa: F401 (re-exported: import it into a module to make it autouse)

#: A few-hundred-thousand-parameter Deformable DETR (ResNet-18, 64 channels, one encoder layer).
TINY = dict(
    backbone="resnet18",
    embed_dims=64,
    num_heads=4,
    encoder_layers=1,
    decoder_layers=2,
    ffn_dims=64,
    num_queries=12,
)
