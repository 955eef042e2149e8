"""Random inputs of the deformable-attention op for the tests of every backend."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ops.reference import ms_deform_attn_reference


@dataclass
class OpInputs:
    value: torch.Tensor  # (N, S, M, D)
    spatial_shapes: torch.Tensor  # (L, 2)
    level_start_index: torch.Tensor  # (L,)
    sampling_locations: torch.Tensor  # (N, Lq, M, L, P, 2)
    attention_weights: torch.Tensor  # (N, Lq, M, L, P)

    def args(self) -> tuple[torch.Tensor, ...]:
        return (
            self.value,
            self.spatial_shapes,
            self.level_start_index,
            self.sampling_locations,
            self.attention_weights,
        )

    def to(self, dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> OpInputs:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        return OpInputs(*(move(t) for t in self.args()))


def level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    sizes = spatial_shapes.prod(1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def random_inputs(
    seed: int,
    batch: int,
    shapes: list[tuple[int, int]],
    heads: int,
    channels: int,
    queries: int,
    points: int,
    outside: float = 0.2,
    dtype: torch.dtype = torch.float64,
) -> OpInputs:
    """Locations are uniform in [-outside, 1 + outside], so some of them read (partly) zeros."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes, dtype=torch.int64)
    s = int(spatial_shapes.prod(1).sum())
    num_levels = len(shapes)
    value = torch.randn(batch, s, heads, channels, generator=g, dtype=dtype)
    loc = torch.rand(batch, queries, heads, num_levels, points, 2, generator=g, dtype=dtype)
    loc = loc * (1 + 2 * outside) - outside
    weights = torch.rand(batch, queries, heads, num_levels * points, generator=g, dtype=dtype).softmax(-1)
    weights = weights.view(batch, queries, heads, num_levels, points)
    return OpInputs(value, spatial_shapes, level_start_index(spatial_shapes), loc, weights)


def random_case(seed: int, channels: int, dtype: torch.dtype = torch.float64) -> OpInputs:
    """A case with random batch (1-3), levels (1-5, non-square), heads, points (1-8) and Lq != S."""
    g = torch.Generator().manual_seed(1000 + seed)

    def randint(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=g))

    num_levels = randint(1, 5)
    shapes = [(randint(1, 13), randint(1, 17)) for _ in range(num_levels)]
    return random_inputs(
        seed,
        batch=randint(1, 3),
        shapes=shapes,
        heads=randint(1, 4),
        channels=channels,
        queries=randint(1, 40),
        points=randint(1, 8),
        dtype=dtype,
    )


def forward_and_grads(
    fn, inputs: OpInputs, grad_seed: int = 7, upstream_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output and the gradients of value, sampling_locations, attention_weights for a random upstream
    gradient (rounded through ``upstream_dtype`` first, to feed two precisions the same numbers)."""
    value = inputs.value.detach().requires_grad_()
    loc = inputs.sampling_locations.detach().requires_grad_()
    weights = inputs.attention_weights.detach().requires_grad_()
    out = fn(value, inputs.spatial_shapes, inputs.level_start_index, loc, weights)
    g = torch.Generator().manual_seed(grad_seed)
    upstream = torch.randn(out.shape, generator=g, dtype=torch.float64)
    upstream = upstream.to(upstream_dtype or out.dtype).to(out)
    grads = torch.autograd.grad(out, (value, loc, weights), upstream)
    return (out.detach(), *grads)


def check_non_finite_locations(fn, device: str = "cpu") -> None:
    """NaN, +-inf (and huge finite) locations contribute zero and get zero gradients: ``fn`` gives the
    result of the same points with attention weight 0, finite everywhere (float64 inputs on ``device``)."""
    inputs = random_inputs(4, 2, [(5, 7), (3, 4)], heads=2, channels=6, queries=5, points=3)
    bad = torch.zeros(inputs.attention_weights.shape, dtype=torch.bool)
    for index in ((0, 1, 0, 0, 2), (1, 4, 1, 1, 0), (1, 0, 0, 1, 1), (0, 2, 1, 0, 0), (1, 3, 0, 0, 1)):
        bad[index] = True
    loc = inputs.sampling_locations.clone()
    inf, nan = float("inf"), float("nan")
    loc[bad] = torch.tensor(
        [[nan, 0.5], [0.5, inf], [-inf, -inf], [1e300, 0.5], [0.3, -1e300]], dtype=loc.dtype
    )
    with_bad = OpInputs(*inputs.args()[:3], loc, inputs.attention_weights)
    silenced = OpInputs(*inputs.args()[:4], inputs.attention_weights.masked_fill(bad, 0.0))
    got = [t.cpu() for t in forward_and_grads(fn, with_bad.to(device=device))]
    want = [t.cpu() for t in forward_and_grads(fn, silenced.to(device=device))]
    out, grad_value, grad_loc, grad_weights = got
    assert all(torch.isfinite(g).all() for g in got)
    torch.testing.assert_close(out, want[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_value, want[1], atol=1e-12, rtol=0)
    assert torch.count_nonzero(grad_loc[bad]) == 0 and torch.count_nonzero(grad_weights[bad]) == 0
    torch.testing.assert_close(grad_loc[~bad], want[2][~bad], atol=1e-12, rtol=0)
    torch.testing.assert_close(grad_weights[~bad], want[3][~bad], atol=1e-12, rtol=0)


def mixed_precision(inputs: OpInputs, dtype: torch.dtype) -> OpInputs:
    """``value`` in ``dtype`` (float16 / bfloat16); locations and weights in float32."""
    return OpInputs(
        inputs.value.to(dtype),
        inputs.spatial_shapes,
        inputs.level_start_index,
        inputs.sampling_locations.float(),
        inputs.attention_weights.float(),
    )


def check_mixed_precision(fn, dtype: torch.dtype, device: str = "cpu") -> None:
    """A ``dtype`` value with float32 locations and weights through ``fn``, against float64 math on the same
    rounded inputs: the output and the value gradient in ``dtype``, accumulated in float32 and rounded
    once (half an ulp: 2**-8 relative for bfloat16, 2**-11 for float16); the location and weight
    gradients in float32, within 1e-4."""
    rounding = {torch.bfloat16: 2**-8, torch.float16: 2**-11}[dtype]
    inputs = mixed_precision(random_case(21, 37), dtype)
    got = forward_and_grads(fn, inputs.to(device=device))
    want = forward_and_grads(ms_deform_attn_reference, inputs.to(torch.float64), upstream_dtype=dtype)
    names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    for name, g, w, expected in zip(
        names, got, want, (dtype, dtype, torch.float32, torch.float32), strict=True
    ):
        assert g.dtype == expected, name
        rtol = rounding if expected == dtype else 1e-4
        torch.testing.assert_close(
            g.cpu().double(), w, atol=1e-4, rtol=rtol, msg=lambda m, n=name: f"{n}: {m}"
        )
