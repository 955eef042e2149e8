"""MSDeformAttn: official parameter names and init, reference-point forms, padding, torch.compile."""

from __future__ import annotations

import math

import pytest
import torch

from ops import MSDeformAttn


def inputs(n=2, lq=7, embed_dims=32, shapes=((6, 8), (3, 4)), dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    query = torch.randn(n, lq, embed_dims, generator=g, dtype=dtype)
    flat = torch.randn(n, s, embed_dims, generator=g, dtype=dtype)
    ref = torch.rand(n, lq, len(shapes), 2, generator=g, dtype=dtype)
    return query, ref, flat, spatial_shapes, starts


def test_parameter_names_and_shapes():
    m = MSDeformAttn(embed_dims=256, num_levels=4, num_heads=8, num_points=4)
    shapes = {k: tuple(v.shape) for k, v in m.state_dict().items()}
    assert shapes == {
        "sampling_offsets.weight": (256, 256),
        "sampling_offsets.bias": (256,),
        "attention_weights.weight": (128, 256),
        "attention_weights.bias": (128,),
        "value_proj.weight": (256, 256),
        "value_proj.bias": (256,),
        "output_proj.weight": (256, 256),
        "output_proj.bias": (256,),
    }


def test_official_init():
    m = MSDeformAttn(embed_dims=64, num_levels=3, num_heads=8, num_points=4)
    assert torch.count_nonzero(m.sampling_offsets.weight) == 0
    bias = m.sampling_offsets.bias.view(8, 3, 4, 2)
    for head in range(8):
        angle = head * 2 * math.pi / 8
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for point in range(4):
            for level in range(3):
                torch.testing.assert_close(bias[head, level, point], direction * (point + 1))
    assert torch.count_nonzero(m.attention_weights.weight) == 0
    assert torch.count_nonzero(m.attention_weights.bias) == 0
    assert torch.count_nonzero(m.value_proj.bias) == 0 and torch.count_nonzero(m.output_proj.bias) == 0


def test_box_reference_points_equal_point_form_for_matching_offsets():
    """4-d refs put a point at ref_xy + offset / P * ref_wh / 2; with wh = 2 P / (W, H) this is the
    2-d rule ref + offset / (W, H) (single level)."""
    torch.manual_seed(0)
    m = MSDeformAttn(embed_dims=32, num_levels=1, num_heads=4, num_points=2, backend="reference").eval()
    query, ref, flat, shapes, starts = inputs(shapes=((6, 8),))
    wh = torch.tensor([2 * 2 / 8, 2 * 2 / 6]).expand(*ref.shape[:3], 2)
    boxes = torch.cat([ref, wh], dim=-1)
    torch.testing.assert_close(m(query, boxes, flat, shapes, starts), m(query, ref, flat, shapes, starts))


def test_padding_mask_zeroes_padded_values():
    m = MSDeformAttn(embed_dims=32, num_levels=2, num_heads=4, num_points=2).eval()
    query, ref, flat, shapes, starts = inputs()
    mask = torch.zeros(flat.shape[:2], dtype=torch.bool)
    mask[0, 10:20] = True
    changed = flat.clone()
    changed[0, 10:20] = 100.0
    out = m(query, ref, flat, shapes, starts, mask)
    torch.testing.assert_close(m(query, ref, changed, shapes, starts, mask), out)
    assert not torch.allclose(m(query, ref, changed, shapes, starts), out)


def test_bad_reference_points_shape():
    m = MSDeformAttn(embed_dims=32, num_levels=2, num_heads=4, num_points=2)
    query, ref, flat, shapes, starts = inputs()
    with pytest.raises(ValueError, match="reference_points"):
        m(query, ref[..., :1], flat, shapes, starts)
    with pytest.raises(ValueError, match="divisible"):
        MSDeformAttn(embed_dims=30, num_heads=8)


def test_compile_fullgraph_equals_eager(cpu_backend):
    """The native op is a torch.library custom op: Dynamo traces the module without graph breaks."""
    backend = cpu_backend
    torch.manual_seed(0)
    m = MSDeformAttn(embed_dims=32, num_levels=2, num_heads=4, num_points=2, backend=backend)
    torch.nn.init.normal_(m.sampling_offsets.weight, std=0.5)
    args = inputs()
    eager = m(*args)
    compiled = torch.compile(m, fullgraph=True, backend="inductor")
    torch.testing.assert_close(compiled(*args), eager, atol=1e-5, rtol=1e-5)
    # gradients flow through the compiled graph too
    query = args[0].clone().requires_grad_()
    compiled(query, *args[1:]).sum().backward()
    assert query.grad is not None and torch.isfinite(query.grad).all()
