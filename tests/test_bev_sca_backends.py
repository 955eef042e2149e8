"""Spatial cross-attention through the native CPU backend equals the reference backend (values and grads)."""

from __future__ import annotations

import pytest
import torch
from bev_helpers import (
    IMG_SHAPE,
    PC_RANGE,
    one_thread,  # noqa: F401 (autouse fixture)
    ring_lidar2img,
)

import ops
from bev import SpatialCrossAttention, bev_pillar_points, project_to_cameras

HAS_CPU_BACKEND = "cpu" in getattr(ops, "available_backends", lambda: ("reference",))()


def _inputs(dtype: torch.dtype):
    torch.manual_seed(0)
    batch, channels = 2, 16
    shapes = torch.tensor([[4, 8], [2, 4]], dtype=torch.int64)
    starts = torch.tensor([0, 32], dtype=torch.int64)
    lidar2img = torch.stack([ring_lidar2img(), ring_lidar2img(yaw_offset=0.4, shift=(2.0, 1.0))])
    pillars = bev_pillar_points(6, 6, PC_RANGE)[None].expand(batch, -1, -1, -1)
    uv, visible = project_to_cameras(pillars, lidar2img, IMG_SHAPE)
    query = torch.randn(batch, 36, channels, dtype=dtype, requires_grad=True)
    value = torch.randn(batch, 6, 40, channels, dtype=dtype, requires_grad=True)
    return query, value, uv.to(dtype), visible, shapes, starts


def _run(backend: str, dtype: torch.dtype):
    torch.manual_seed(1)
    sca = SpatialCrossAttention(16, num_levels=2, num_heads=2, num_points=4, num_z_anchors=4, backend=backend)
    sca = sca.to(dtype)
    with torch.no_grad():
        sca.sampling_offsets.weight.normal_(0, 0.2)
        sca.attention_weights.weight.normal_(0, 0.2)
    query, value, uv, visible, shapes, starts = _inputs(dtype)
    out = sca(query, value, uv, visible, shapes, starts)
    out.square().sum().backward()
    grads = [query.grad, value.grad] + [p.grad for p in sca.parameters()]
    return out, grads


@pytest.mark.skipif(not HAS_CPU_BACKEND, reason="the native 'cpu' op backend is not available in this build")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_backend_equals_reference(dtype):
    out_ref, grads_ref = _run("reference", dtype)
    out_cpu, grads_cpu = _run("cpu", dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out_cpu, out_ref, atol=tol, rtol=tol)
    for grad_cpu, grad_ref in zip(grads_cpu, grads_ref, strict=True):
        torch.testing.assert_close(grad_cpu, grad_ref, atol=10 * tol, rtol=10 * tol)


def test_queries_no_camera_sees_get_the_bias_only():
    sca = SpatialCrossAttention(16, num_levels=2, num_heads=2, num_points=4, backend="reference")
    query, value, uv, _, shapes, starts = _inputs(torch.float32)
    hidden = torch.zeros(2, 6, 36, 4, dtype=torch.bool)
    out = sca(query, value, uv, hidden, shapes, starts)
    torch.testing.assert_close(out, sca.output_proj.bias.detach().expand(2, 36, 16))


def test_bad_shapes_raise_value_errors():
    sca = SpatialCrossAttention(16, num_levels=2, num_heads=2, num_points=4, backend="reference")
    query, value, uv, visible, shapes, starts = _inputs(torch.float32)
    with pytest.raises(ValueError, match="visible"):
        sca(query, value, uv, visible[:, :, :5], shapes, starts)
    with pytest.raises(ValueError, match="num_z_anchors"):
        SpatialCrossAttention(16, num_points=6, num_z_anchors=4)


@pytest.mark.parametrize("num_levels", [1, 2])
def test_gathering_gives_each_sample_its_own_result(num_levels):
    """Module level: the per-(sample, camera) gather is exact however the batch is composed."""
    torch.manual_seed(2)
    sca = SpatialCrossAttention(16, num_levels=num_levels, num_heads=2, num_points=8, backend="reference")
    with torch.no_grad():
        sca.sampling_offsets.weight.normal_(0, 0.2)
    query, value, uv, visible, shapes, starts = _inputs(torch.float32)
    shapes, starts, value = (
        shapes[:num_levels],
        starts[:num_levels],
        value[:, :, : int(shapes[:num_levels].prod(1).sum())],
    )
    both = sca(query, value, uv, visible, shapes, starts)
    for b in range(2):
        keep = slice(b, b + 1)
        single = sca(query[keep], value[keep], uv[keep], visible[keep], shapes, starts)
        torch.testing.assert_close(single, both[keep], atol=1e-5, rtol=0)
