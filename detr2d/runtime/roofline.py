"""Where one inference call's time goes, stage by stage, against the machine's measured limits (a roofline).

Every operator the call dispatches is timed (a ``TorchDispatchMode``: CPU operators are synchronous, so the
wall time around one is its cost) and given its work: floating-point operations for convolutions and matrix
products (torch's own formulas, :data:`torch.utils.flop_counter.flop_registry`), bytes read and written for
everything else, corner rows of ``value`` for the deformable attention op. An operator's floor is the larger
of its work at the machine's GEMM rate and its bytes at the bandwidth of where they live (the last-level
cache when they fit in it, memory otherwise); a stage's floor is the sum over its operators, a model's floor
the sum over its stages. What the operators do not account for (Python between them) has no floor.

Stages: the backbone's convolutions, the neck (or input projections: every operator inside that module), the
attention op, matrix products elsewhere (linear layers, attention products), everything else (the backbone's
activations and pooling, normalisations, element-wise work, copies), and the time between operators.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

BACKBONE_CONVOLUTIONS = "backbone convolutions"
NECK = "neck / input projections"
ATTENTION_OP = "attention op (ms_deform_attn)"
MATRIX_PRODUCTS = "matrix products (linear layers, attention products)"
EVERYTHING_ELSE = "everything else (activations, norms, element-wise, copies)"
BETWEEN_OPERATORS = "between operators (Python, dispatch)"
STAGES = (BACKBONE_CONVOLUTIONS, NECK, ATTENTION_OP, MATRIX_PRODUCTS, EVERYTHING_ELSE, BETWEEN_OPERATORS)

_CONVOLUTIONS = {"convolution", "_convolution", "mkldnn_convolution", "conv2d", "deform_conv2d"}
_DEFORM_ATTN = "deformbev::ms_deform_attn"
#: operators whose FLOPs are 2 * output elements * the last dimension of their first input
_PRODUCTS_OVER_LAST_DIM = {"linear", "matmul", "packed_linear"}


@dataclass(frozen=True)
class MachineLimits:
    """The rates one inference thread team can reach: float32 GEMM (FLOP/s), read bandwidth of data in the
    last-level cache and in memory (bytes/s), and the last-level cache's size (bytes)."""

    gemm_flops: float
    cache_bandwidth: float
    memory_bandwidth: float
    cache_bytes: int

    def bandwidth(self, nbytes: float) -> float:
        """The bandwidth at which ``nbytes`` of data are read: the cache's if they fit in it."""
        return self.cache_bandwidth if nbytes <= self.cache_bytes else self.memory_bandwidth


@dataclass
class StageCost:
    """One stage's measured seconds, its work (FLOPs, bytes) and its floor (seconds at the limits)."""

    stage: str
    seconds: float = 0.0
    flops: float = 0.0
    nbytes: float = 0.0
    floor_seconds: float = 0.0
    operators: int = 0

    @property
    def fraction_of_limit(self) -> float:
        """floor / time: 1.0 is the limit; 0.0 for a stage with no work or no time."""
        return self.floor_seconds / self.seconds if self.seconds > 0 else 0.0


@dataclass
class StageProfile:
    """The stages of one call, the call's wall seconds without instrumentation, and the floor."""

    stages: list[StageCost] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def floor_seconds(self) -> float:
        return sum(stage.floor_seconds for stage in self.stages)


def _tensors(tree: object) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(x.numel() * x.element_size() for x in tensors)


def _is_view(func: torch._ops.OpOverload) -> bool:
    """True for operators whose output aliases an input (views, in-place updates do move bytes)."""
    returns = func._schema.returns
    return bool(returns) and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)


class _OperatorCosts(TorchDispatchMode):
    """Times every dispatched operator and adds its seconds, work and floor to a stage."""

    def __init__(self, limits: MachineLimits, stage_stack: list[str]) -> None:
        super().__init__()
        self.limits, self.stage_stack = limits, stage_stack
        self.costs = {name: StageCost(name) for name in STAGES}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        start = time.perf_counter()
        out = func(*args, **kwargs)
        seconds = time.perf_counter() - start
        self._account(func, args, kwargs, out, seconds)
        return out

    def _account(self, func, args, kwargs, out, seconds: float) -> None:
        name = func._schema.name  # e.g. "aten::convolution", "deformbev::ms_deform_attn"
        short = name.split("::", 1)[-1]
        inputs, outputs = _tensors((args, kwargs)), _tensors(out)
        flops, nbytes = 0.0, 0.0
        if name == _DEFORM_ATTN:
            value, locations = args[0], args[3]  # (N, S, M, D), (N, Lq, M, L, P, 2)
            corner_rows = locations.numel() // 2 * 4
            nbytes = corner_rows * value.shape[-1] * value.element_size()
            floor = nbytes / self.limits.bandwidth(_nbytes([value]))
        else:
            flops = _flops(short, func, args, kwargs, out)
            if not _is_view(func):
                nbytes = _nbytes(inputs) + _nbytes(outputs)
            floor = max(flops / self.limits.gemm_flops, nbytes / self.limits.bandwidth(nbytes))
        stage = self.stage_stack[-1] if self.stage_stack else None
        if stage == NECK:
            key = NECK
        elif name == _DEFORM_ATTN:
            key = ATTENTION_OP
        elif short in _CONVOLUTIONS and stage == BACKBONE_CONVOLUTIONS:
            key = BACKBONE_CONVOLUTIONS
        elif flops > 0:
            key = MATRIX_PRODUCTS
        else:
            key = EVERYTHING_ELSE
        cost = self.costs[key]
        cost.seconds += seconds
        cost.flops += flops
        cost.nbytes += nbytes
        cost.floor_seconds += floor
        cost.operators += 1


def _flops(short: str, func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: object) -> float:
    """Floating-point operations of one operator call (multiply and add counted apart); 0 for operators
    that are not convolutions or matrix products. Under inference mode composite operators (``conv2d``,
    ``linear``, ``matmul``) arrive whole, so they are counted here rather than by torch's table."""
    if short in _CONVOLUTIONS:
        weight = args[3] if short == "deform_conv2d" else args[1]  # (O, C / groups, kh, kw)
        return 2.0 * out.numel() * weight[0].numel()
    if short in _PRODUCTS_OVER_LAST_DIM:
        return 2.0 * out.numel() * args[0].shape[-1]
    if short == "scaled_dot_product_attention":  # q (..., L, E) k (..., S, E) v (..., S, Ev)
        query, key, value = args[:3]
        return 2.0 * query.numel() // query.shape[-1] * key.shape[-2] * (query.shape[-1] + value.shape[-1])
    if func._overloadpacket in flop_registry:
        return float(flop_registry[func._overloadpacket](*args, **kwargs, out_val=out))
    return 0.0


def _stage_hooks(stage_modules: dict[str, list[nn.Module]], stack: list[str]) -> list:
    """Forward hooks that keep ``stack``'s last entry the stage whose module is running."""

    def leave(*_: object) -> None:  # returns None: a forward hook's result would replace the output
        stack.pop()

    handles = []
    for stage, modules in stage_modules.items():
        for module in modules:
            handles.append(module.register_forward_pre_hook(lambda *_, s=stage: stack.append(s)))
            handles.append(module.register_forward_hook(leave, always_call=True))
    return handles


def profile_stages(
    call: Callable[[], object],
    backbone: list[nn.Module],
    neck: list[nn.Module],
    limits: MachineLimits,
    runs: int = 3,
) -> StageProfile:
    """The stages of ``call()`` (one inference of a model whose ``backbone`` and ``neck`` modules are
    given): ``runs`` uninstrumented calls give the wall time (median), one instrumented call the stages.
    Call it after a warm-up call. The time between operators is the wall time less the operators' time."""
    walls = []
    with torch.inference_mode():
        for _ in range(runs):
            start = time.perf_counter()
            call()
            walls.append(time.perf_counter() - start)
        stack: list[str] = []
        handles = _stage_hooks({BACKBONE_CONVOLUTIONS: backbone, NECK: neck}, stack)
        mode = _OperatorCosts(limits, stack)
        try:
            with mode:
                call()
        finally:
            for handle in handles:
                handle.remove()
    wall = sorted(walls)[len(walls) // 2]
    costs = mode.costs
    operator_seconds = sum(cost.seconds for cost in costs.values())
    costs[BETWEEN_OPERATORS].seconds = max(wall - operator_seconds, 0.0)
    return StageProfile([costs[name] for name in STAGES], wall)


def format_profile(profile: StageProfile, limits: MachineLimits) -> str:
    """A markdown table of ``profile``: per stage the time, the work, the floor and the fraction of the
    limit; then the model's floor against its wall time."""
    lines = [
        "| stage | operators | time s | share | GFLOP | GB moved | floor s | floor / time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for stage in profile.stages:
        share = stage.seconds / profile.wall_seconds
        lines.append(
            f"| {stage.stage} | {stage.operators} | {stage.seconds:.3f} | {share:.0%} | "
            f"{stage.flops / 1e9:.1f} | {stage.nbytes / 1e9:.2f} | {stage.floor_seconds:.3f} | "
            f"{stage.fraction_of_limit:.2f} |"
        )
    operators = sum(s.operators for s in profile.stages)
    gflop = sum(s.flops for s in profile.stages) / 1e9
    gbytes = sum(s.nbytes for s in profile.stages) / 1e9
    wall, floor = profile.wall_seconds, profile.floor_seconds
    lines.append(
        f"| **whole call** | {operators} | **{wall:.3f}** | 100% | {gflop:.1f} | {gbytes:.2f} | "
        f"**{floor:.3f}** | {floor / wall:.2f} |"
    )
    lines.append(
        f"\nLimits: GEMM {limits.gemm_flops / 1e9:.0f} GFLOP/s; read bandwidth "
        f"{limits.cache_bandwidth / 1e9:.0f} GB/s within the {limits.cache_bytes / 2**20:.0f} MiB last-level "
        f"cache, {limits.memory_bandwidth / 1e9:.0f} GB/s from memory."
    )
    return "\n".join(lines)
