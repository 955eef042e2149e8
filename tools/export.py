"""Export a detector of a config to ONNX (standard operators) or a ``torch.export`` program.

Examples::

    python tools/export.py configs/detr2d/deformable_detr.py CKPT --format onnx --out detr.onnx
    python tools/export.py configs/bev/bevformer_tiny.py CKPT --format onnx --out bev.onnx --check
    python tools/export.py configs/detr2d/demo.py --format onnx --out demo.onnx model.num_classes=5
    python tools/export.py work_dirs/demo/checkpoint.pth --format onnx --out demo.onnx --check

A checkpoint of ours carries its config, so it may come alone (a config given before it wins; one whose
model does not fit the checkpoint is refused naming the model it was trained with); released files need
their config. Without a checkpoint the weights are random (useful to try the pipeline). The image size (of the
example images traced) defaults to the config's evaluation size (COCO: ``augment.eval_size`` x
``augment.max_size``; nuScenes: ``data.image_size``). Deformable DETR graphs accept any image size
from the model's ``min_image_size`` up (``--check`` compares at the traced size and at the transposed
one) and any batch size; BEV graphs are fixed to it and to ``--batch`` (their spatial cross-attention
gathers, per camera, a number of queries the tracer bakes in). Graph inputs and outputs:
:mod:`detr2d.export`, :mod:`bev.export`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bev.export import BevFrameForExport, camera_ring  # noqa: E402
from detr2d.export import Detr2dForExport  # noqa: E402
from detr2d.runtime.cli import load_task, parser_with_config, split_checkpoint  # noqa: E402
from detr2d.runtime.export import FORMATS, export_model, onnx_max_errors, prepare_export  # noqa: E402


def default_image_size(config: dict[str, Any]) -> tuple[int, int]:
    """(H, W) the config evaluates at: nuScenes ``data.image_size`` is (W, H); COCO resizes the short
    side to ``augment.eval_size`` with the long side at most ``augment.max_size`` (landscape)."""
    if "image_size" in config.get("data", {}):
        width, height = config["data"]["image_size"]
        return int(height), int(width)
    augment = config.get("augment", {})
    return int(augment.get("eval_size", 800)), int(augment.get("max_size", 1333))


def main(argv: list[str] | None = None) -> None:
    parser = parser_with_config(__doc__, checkpoint_first=True)
    parser.add_argument(
        "items",
        nargs="*",
        help="the weights after a config file (default: random init), config overrides key=value",
    )
    parser.add_argument(
        "--format", choices=FORMATS, default="onnx", help="onnx, or export (torch.export .pt2)"
    )
    parser.add_argument("--out", help="file to write (required unless --print-config)")
    parser.add_argument("--height", type=int, default=None, help="image height (default: the config's)")
    parser.add_argument("--width", type=int, default=None, help="image width (default: the config's)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 16)")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="batch size B of the traced example (default 1); the 2D ONNX graphs leave B free, the BEV "
        "graphs are fixed to it",
    )
    parser.add_argument(
        "--check", action="store_true", help="compare ONNX Runtime with PyTorch on new inputs"
    )
    args = parser.parse_intermixed_args(argv)
    checkpoint, overrides = split_checkpoint(parser, args, args.items, required=False)
    task = load_task(args, overrides, checkpoint)
    if args.out is None:
        parser.error("the following arguments are required: --out")
    config = task.config
    model = task.build_model()
    if checkpoint is not None:
        task.load_weights(model, checkpoint)
    else:
        print("no checkpoint given: exporting random weights", file=sys.stderr)
    height, width = default_image_size(config)
    size = (args.height or height, args.width or width)
    if args.batch < 1:
        parser.error(f"--batch must be >= 1, got {args.batch}")
    wrapper, example = prepare_export(model.eval(), size, args.batch)
    export_model(wrapper, example, args.format, args.out, opset=args.opset)
    dynamic = isinstance(wrapper, Detr2dForExport)
    sizes = f"any H, W >= {wrapper.min_image_size}" if dynamic else f"{size[0]} x {size[1]}"
    print(f"wrote {args.out}: {type(model).__name__}, images {sizes}, format {args.format}")
    if args.check and args.format == "onnx":
        for check_size in (size, size[::-1]) if dynamic else (size,):
            _, fresh = prepare_export(model, check_size, args.batch)
            if isinstance(wrapper, BevFrameForExport):  # a camera ring instead of the all-seeing example rig
                fresh = (fresh[0], camera_ring(model.num_cams, check_size, args.batch), *fresh[2:])
            diffs = onnx_max_errors(wrapper, args.out, fresh)
            errors = ", ".join(f"{n} {e:.2e}" for n, e in zip(wrapper.output_names, diffs, strict=True))
            print(f"ONNX Runtime vs PyTorch at {check_size[0]} x {check_size[1]}, max |diff|: {errors}")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
