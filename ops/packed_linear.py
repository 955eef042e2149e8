"""Prepacked float32 linear layers for CPU inference: ``deformbev::packed_linear``, a custom op that runs
oneDNN's matrix product on a weight reordered once (:class:`PackedLinear`), one graph node under
``torch.compile`` (Inductor cannot lower the prepacked weight itself)."""

from __future__ import annotations

import torch
from torch import nn


@torch.library.custom_op("deformbev::packed_linear", mutates_args=())
def packed_linear(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear`` through oneDNN with a weight prepacked by ``torch.ops.mkldnn._reorder_linear_weight``:
    x (..., K), packed (O, K) -> (..., O). One graph node under ``torch.compile`` (Inductor cannot lower
    the prepacked weight itself)."""
    if x.numel() == 0:
        return x.new_empty(*x.shape[:-1], packed_weight.shape[0])
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), packed_weight, bias, "none", [], "")


@packed_linear.register_fake
def _(x: torch.Tensor, packed_weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty(*x.shape[:-1], packed_weight.shape[0])


class PackedLinear(nn.Module):
    """An inference-only ``nn.Linear`` whose float32 weight is prepacked for oneDNN's matrix product
    (on the AVX-512 CPUs measured, 13-23 % faster than MKL's ``addmm`` on a Deformable DETR encoder's
    shapes; BENCHMARKS.md). ``weight``/``bias`` stay readable; the packed copy is not in the state_dict."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight, self.bias = linear.weight, linear.bias
        self.packed_weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return packed_linear(x, self.packed_weight, self.bias)


def pack_linear_layers(model: nn.Module) -> int:
    """Replace every float32 CPU ``nn.Linear`` of ``model`` (exactly that class: ``nn.MultiheadAttention``'s
    ``out_proj`` subclass is read by weight) by a :class:`PackedLinear`, in place; return how many.
    Nothing is replaced where oneDNN is unavailable."""
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")):
        return 0
    packed = 0
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if (
                type(child) is nn.Linear
                and child.weight.device.type == "cpu"
                and child.weight.dtype == torch.float32
            ):
                setattr(parent, name, PackedLinear(child))
                packed += 1
    return packed
