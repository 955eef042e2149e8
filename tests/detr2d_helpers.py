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

#: Narrower still (32 channels, 2 heads, 3 classes): the export and fast-path tests.
NARROW = dict(TINY, embed_dims=32, num_heads=2, ffn_dims=32, num_queries=10, num_classes=3)
