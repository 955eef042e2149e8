"""The op benchmark's cases and bounds (ops/benchmark.py, tools/benchmark_ops.py): shapes and byte counts
written out by hand."""

from __future__ import annotations

import torch

from ops.benchmark import ATTENTION_CASES, Limit, corner_bytes, format_limits, make_inputs


def test_bev_cases_have_bevformer_base_shapes():
    value, shapes, starts, loc, weights = make_inputs("bev_spatial", torch.float32, "cpu")
    pixels = 116 * 200 + 58 * 100 + 29 * 50 + 15 * 25  # 928 x 1600 at strides 8, 16, 32, 64
    assert value.shape == (6, pixels, 8, 32)
    assert loc.shape == (6, 10_000, 8, 4, 8, 2) and weights.shape == (6, 10_000, 8, 4, 8)
    assert starts.tolist() == [0, 116 * 200, 116 * 200 + 58 * 100, pixels - 15 * 25]
    assert torch.allclose(weights.sum((-1, -2)), torch.ones(6, 10_000, 8))
    value, shapes, _, loc, _ = make_inputs("bev_temporal", torch.float32, "cpu")
    assert value.shape == (2, 40_000, 8, 32) and loc.shape == (2, 40_000, 8, 1, 4, 2)
    assert shapes.tolist() == [[200, 200]]


def test_corner_bytes_and_the_bound_fraction():
    assert corner_bytes("encoder") == 17821 * 8 * 4 * 4 * 4 * 32 * 4
    assert corner_bytes("decoder") == 300 * 8 * 4 * 4 * 4 * 32 * 4
    assert corner_bytes("bev_spatial") == 6 * 10_000 * 8 * 4 * 8 * 4 * 32 * 4
    assert set(ATTENTION_CASES) == {"encoder", "decoder", "bev_temporal", "bev_spatial"}
    limits = [Limit("read bandwidth, 18 MB (cache)", 1.0, 1.0, 100.0, "GB/s")]
    bound_ms = corner_bytes("bev_temporal") * 1e-6 / 100.0  # one read of the rows at 100 GB/s
    table = format_limits(limits, {("bev_temporal", "forward"): 2 * bound_ms})
    assert f"bound {bound_ms:.1f} ms at 100 GB/s: 0.50 of it" in table
    table = format_limits(limits, {("bev_temporal", "forward+backward"): 8 * bound_ms})
    assert f"bound {4 * bound_ms:.1f} ms at 100 GB/s: 0.50 of it" in table
