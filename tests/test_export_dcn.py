"""ONNX lowering of the modulated deformable convolution (``deformbev::deform_conv2d``): GridSample + Conv
under ONNX Runtime equals the reference, sizes read inside the graph."""

from __future__ import annotations

import pytest
import torch
from dcn_cases import DcnCase, random_dcn_case

from detr2d.runtime.export import export_model, onnx_max_errors
from ops import deform_conv2d
from ops.deform_conv_reference import sampling_positions

EXTRA = "needs the optional packages: pip install onnx onnxruntime"
pytest.importorskip("onnx", reason=f"ONNX export {EXTRA} (onnx)")
pytest.importorskip("onnxruntime", reason=f"ONNX Runtime parity {EXTRA} (onnxruntime)")

TOL = 1e-4


class Layer(torch.nn.Module):
    """The op with the weight, bias and hyper-parameters of ``case``: (input, offset, mask) -> output,
    computed in the weight's dtype (a float64 layer is the oracle of the float32 graph)."""

    input_names = ("input", "offset", "mask")
    output_names = ("output",)
    dynamic_axes = {name: {0: "batch", 2: "height", 3: "width"} for name in (*input_names, *output_names)}

    def __init__(self, case: DcnCase, backend: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(case.weight)
        self.bias = None if case.bias is None else torch.nn.Parameter(case.bias)
        self.options = case.kwargs()
        self.backend = backend

    def forward(self, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        input, offset, mask = (t.to(self.weight.dtype) for t in (input, offset, mask))
        return deform_conv2d(
            input, offset, mask, self.weight, self.bias, **self.options, backend=self.backend
        )


CASES = {
    "plain": {},
    "groups": {"channels": 4, "groups": 2, "deform_groups": 2},
    "deform_groups": {"channels": 8, "out_channels": 4, "groups": 2, "deform_groups": 4},
    "stride_dilation": {
        "kernel": (3, 2),
        "stride": (2, 1),
        "padding": (2, 0),
        "dilation": (1, 2),
        "bias": False,
    },
    "far_offsets": {"offset_scale": 6.0},
}


def leaves_the_image(case: DcnCase) -> bool:
    """Whether some kernel point samples outside [0, H - 1] x [0, W - 1]."""
    kernel = tuple(case.weight.shape[-2:])
    y, x = sampling_positions(
        case.offset, kernel, case.stride, case.padding, case.dilation, case.deform_groups
    )
    height, width = case.input.shape[-2:]
    return bool(((y < 0) | (y > height - 1) | (x < 0) | (x > width - 1)).any())


@pytest.mark.parametrize("settings", CASES.values(), ids=CASES.keys())
def test_deform_conv_lowering_equals_reference(tmp_path, cpu_backend, settings):
    """Exported at one input size, the graph equals the float64 reference at that size and at another
    batch and size, with offsets that move kernel points outside the image."""
    case = random_dcn_case(0, dtype=torch.float32, **settings)
    path = tmp_path / "dcn.onnx"
    proto = export_model(Layer(case, cpu_backend), (case.input, case.offset, case.mask), "onnx", path)
    ops_used = {node.op_type for node in proto.graph.node}
    assert {"GridSample", "Conv"} <= ops_used and "DeformConv" not in ops_used
    assert all(node.domain in ("", "ai.onnx") for node in proto.graph.node)
    reference = Layer(case.to(torch.float64), "reference")
    for seed, batch, size in ((1, 2, (7, 9)), (2, 1, (12, 5))):
        new = random_dcn_case(seed, batch=batch, size=size, dtype=torch.float32, **settings)
        assert leaves_the_image(new)
        errors = onnx_max_errors(reference, path, (new.input, new.offset, new.mask))
        assert max(errors) < TOL, (size, errors)


def test_deform_conv_lowering_integer_offsets(tmp_path, cpu_backend):
    """Integer positions (zero offsets at init, whole-pixel moves) read the pixels themselves and zero one
    pixel past the border, as the reference's corner rule."""
    case = random_dcn_case(3, dtype=torch.float32, offset_scale=3.0)
    case.offset = case.offset.round()
    path = tmp_path / "dcn.onnx"
    export_model(Layer(case, cpu_backend), (case.input, case.offset, case.mask), "onnx", path)
    reference = Layer(case.to(torch.float64), "reference")
    for offset in (case.offset, torch.zeros_like(case.offset)):
        assert max(onnx_max_errors(reference, path, (case.input, offset, case.mask))) < TOL
