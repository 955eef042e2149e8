"""CPU/GPU inference fast path: fold batch norm into convolutions, channels-last, native op, torch.compile.

``optimize_for_inference(model)`` returns an evaluation-only copy of a detector (a
:class:`detr2d.DeformableDETR` or a :class:`bev.MultiViewDetector3D`, or any module built from the same
parts) whose outputs equal the eager model's within float tolerance:

- every frozen batch norm (a module whose class sets ``frozen_batch_norm = True``, with ``weight``,
  ``bias``, ``running_mean``, ``running_var`` and ``eps``, e.g. the ResNet's ``FrozenBatchNorm2d``) and
  every ``nn.BatchNorm2d`` (in eval mode, so its running statistics) that directly follows a
  convolution (plain or deformable) is folded into that convolution's weight and bias and replaced
  by ``nn.Identity``. The pairs are found from the outside by torchvision's naming (``conv{k}``
  followed by ``bn{k}`` in one module) and by position (a convolution followed by a batch norm in an
  ``nn.Sequential``, as in ResNet ``downsample``);
- convolution weights are stored channels-last (the layout oneDNN convolutions run fastest in on CPU);
- every module that calls the deformable attention op (or the deformable convolution of DCN
  backbones) runs its native kernel on the model's device (see :func:`ops.resolve_backend`); the
  attention kernel picks its dense (head-major) path on its own when the sampling is dense;
- on CPU, float32 linear layers run oneDNN's matrix product on a prepacked weight
  (:func:`ops.packed_linear.pack_linear_layers`);
- on CPU, inference runs inside :func:`ops.arena.cpu_arena`: large buffers come from a cache of the
  blocks freed by earlier calls instead of fresh mappings (page faults) from glibc;
- optionally ``torch.compile`` (Inductor's default: weights stay inputs of the graph; its freezing,
  which makes them constants with prepacked oneDNN/MKL kernels, measured slower on CPU, see
  BENCHMARKS.md).

Training is untouched: the caller's model is copied, never modified.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ops import ModulatedDeformConv2d, resolve_backend
from ops.arena import cpu_arena
from ops.packed_linear import pack_linear_layers


def _is_batch_norm(module: nn.Module) -> bool:
    """A batch norm that can fold into the convolution before it (see the module docstring)."""
    return isinstance(module, nn.BatchNorm2d) or getattr(type(module), "frozen_batch_norm", False)


_CONVS = (nn.Conv2d, ModulatedDeformConv2d)  # outputs linear in (weight, bias): a batch norm folds in
_NUMBERED = re.compile(r"^(conv|bn)(\d+)$")


def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(C,) scale and shift with ``bn(x) == x * scale + shift`` per channel (eval-mode statistics)."""
    weight = bn.weight if bn.weight is not None else torch.ones_like(bn.running_mean)
    bias = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_mean)
    scale = weight * (bn.running_var + bn.eps).rsqrt()
    return scale, bias - bn.running_mean * scale


@torch.no_grad()
def fold_conv_bn(conv: nn.Module, bn: nn.Module) -> None:
    """Fold ``bn`` (applied to the output of ``conv``) into ``conv``'s weight and bias, in place.

    Args:
        conv: ``nn.Conv2d`` or :class:`ops.ModulatedDeformConv2d` with C_out output channels (a bias is
            added if it has none).
        bn: a frozen batch norm or an eval-mode ``nn.BatchNorm2d`` over C_out channels.

    Raises:
        ValueError: if the channel counts differ or a ``BatchNorm2d`` has no running statistics.
    """
    if getattr(bn, "running_mean", None) is None:
        raise ValueError(f"{type(bn).__name__} has no running statistics to fold")
    if bn.running_mean.shape != (conv.out_channels,):
        raise ValueError(
            f"cannot fold a batch norm over {bn.running_mean.shape[0]} channels into a convolution "
            f"with {conv.out_channels} output channels"
        )
    scale, shift = _bn_scale_shift(bn)
    conv.weight.mul_(scale.view(-1, *([1] * (conv.weight.dim() - 1))))
    bias = shift if conv.bias is None else conv.bias * scale + shift
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=False)


def _conv_bn_pairs(parent: nn.Module) -> list[tuple[str, str]]:
    """Names (conv, bn) of the direct children of ``parent`` where the batch norm follows the conv."""
    children = dict(parent.named_children())
    pairs = []
    if isinstance(parent, nn.Sequential):
        names = list(children)
        pairs += [
            (a, b)
            for a, b in zip(names[:-1], names[1:], strict=True)
            if isinstance(children[a], _CONVS) and _is_batch_norm(children[b])
        ]
    else:
        for name, child in children.items():
            match = _NUMBERED.match(name)
            if match and match.group(1) == "bn" and _is_batch_norm(child):
                conv = children.get(f"conv{match.group(2)}")
                if isinstance(conv, _CONVS):
                    pairs.append((f"conv{match.group(2)}", name))
    return pairs


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every conv -> batch norm pair of ``model`` (in eval mode) in place; return how many.

    The folded batch norms become ``nn.Identity``. A ``BatchNorm2d`` in training mode is left alone
    (its output depends on the batch).
    """
    folded = 0
    for parent in list(model.modules()):
        for conv_name, bn_name in _conv_bn_pairs(parent):
            bn = getattr(parent, bn_name)
            if bn.training and isinstance(bn, nn.BatchNorm2d):
                continue
            fold_conv_bn(getattr(parent, conv_name), bn)
            setattr(parent, bn_name, nn.Identity())
            folded += 1
    return folded


def _calls_an_op(module: nn.Module) -> bool:
    """The module runs one of the project's ops: deformable attention (a ``backend`` attribute next to
    ``sampling_offsets``) or a modulated deformable convolution."""
    return isinstance(module, ModulatedDeformConv2d) or (
        hasattr(module, "sampling_offsets") and hasattr(module, "backend")
    )


def set_op_backend(model: nn.Module, backend: str | None) -> int:
    """Set the op backend (``"reference"``, ``"cpu"``, ``"cuda"`` or None = automatic) of every module
    that calls the deformable attention op or the deformable convolution, in place; return how many."""
    modules = [m for m in model.modules() if _calls_an_op(m)]
    for module in modules:
        module.backend = backend
    return len(modules)


def _in_cpu_arena(forward: Callable[..., Any]) -> Callable[..., Any]:
    """``forward`` run inside a :func:`ops.arena.cpu_arena` scope: its large CPU buffers come from the
    arena. ``torch.compile`` skips this wrapper's own frame and still compiles ``forward``."""

    @functools.wraps(forward)
    def run(*args: Any, **kwargs: Any) -> Any:
        with cpu_arena():
            return forward(*args, **kwargs)

    return torch.compiler.disable(run, recursive=False)


def optimize_for_inference(model: nn.Module, compile: bool = False, arena: bool = True) -> nn.Module:
    """An evaluation-only copy of ``model`` that runs faster with the same outputs.

    Args:
        model: a detector (any ``nn.Module``); it is copied, not changed.
        compile: also compile with ``torch.compile`` (the first call compiles: about 35 s for
            Deformable DETR R50 on 2 CPU cores; a new image size recompiles, with dynamic sizes from the
            second).
        arena: on CPU, run inference inside :func:`ops.arena.cpu_arena` (large buffers reused from one
            call to the next instead of mapped afresh).

    What is compiled and run in the arena is the model's ``forward``, or, for a model whose inference
    does not go through ``forward``, each submodule its ``inference_parts()`` names (a BEV detector's
    ``predict`` calls its backbone, neck, encoder and head): their ``forward`` is replaced on the copy.

    Returns:
        The optimized copy (same class), in eval mode, without gradients. Call it like ``model``, under
        ``torch.inference_mode()``; images may stay contiguous (NCHW): convolutions return
        channels-last maps from channels-last weights.
    """
    fast = copy.deepcopy(model).eval().requires_grad_(False)
    fold_batch_norms(fast)
    fast = fast.to(memory_format=torch.channels_last)
    parameter = next(fast.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    set_op_backend(fast, resolve_backend(device))
    pack_linear_layers(fast)
    in_arena = arena and device.type == "cpu"
    if not (compile or in_arena):
        return fast
    parts = fast.inference_parts() if hasattr(fast, "inference_parts") else [fast]
    for part in parts:
        forward = torch.compile(part.forward) if compile else part.forward
        part.forward = _in_cpu_arena(forward) if in_arena else forward
    return fast
