"""torch.autograd.gradcheck (float64) of the native CPU op and of the MSDeformAttn module."""

from __future__ import annotations

import torch
from msda_cases import random_inputs

from ops import MSDeformAttn, ms_deform_attn


def test_gradcheck_cpu_op(cpu_backend):
    inputs = random_inputs(0, 2, [(3, 4), (2, 3)], heads=2, channels=3, queries=4, points=2)
    value = inputs.value.requires_grad_()
    loc = inputs.sampling_locations.requires_grad_()
    weights = inputs.attention_weights.requires_grad_()

    def fn(v, l, w):
        return ms_deform_attn(v, inputs.spatial_shapes, inputs.level_start_index, l, w, backend=cpu_backend)

    assert torch.autograd.gradcheck(fn, (value, loc, weights), eps=1e-6, atol=1e-5)


def test_gradcheck_module(cpu_backend):
    torch.manual_seed(0)
    module = MSDeformAttn(embed_dims=8, num_levels=2, num_heads=2, num_points=2, backend=cpu_backend).double()
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.1)
    torch.nn.init.normal_(module.attention_weights.weight, std=0.1)
    shapes = torch.tensor([[3, 4], [2, 2]])
    starts = torch.tensor([0, 12])
    query = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    flat = torch.randn(2, 16, 8, dtype=torch.float64, requires_grad=True)
    ref = torch.rand(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)

    def fn(q, r, x):
        return module(q, r, x, shapes, starts)

    assert torch.autograd.gradcheck(fn, (query, ref, flat), eps=1e-6, atol=1e-5)
