"""CPU time of one BEV detector frame (random weights, with a previous BEV), every inference path in one
run: reference (grid_sample) op, eager on the native op, the fast path
(:func:`detr2d.runtime.fast_inference.optimize_for_inference`), optionally compiled, and ONNX Runtime when the
``export`` extra is installed. The default is BEVFormer-tiny at its published input, 6 cameras x 450 x 800
(padded to 480 x 800), with few iterations: one frame takes seconds on a CPU.

Example: ``python tools/benchmark_bev.py --model bevformer_tiny --runs 1 --threads 2``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark_detr2d import (  # noqa: E402
    inference_paths,
    parse_benchmark_args,
    print_report,
    select_paths,
    time_paths,
)

from bev import VARIANTS, build_bev_model  # noqa: E402
from bev.export import BevFrameForExport, bev_example_inputs, camera_ring  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parse_benchmark_args(argv, __doc__.splitlines()[0], "bevformer_tiny", VARIANTS, (450, 800), runs=1)

    torch.manual_seed(0)
    model = build_bev_model(args.model).eval()
    size = (args.height, args.width)
    # PyTorch runs a synthetic 6-camera ring (each camera sees a sector of the BEV); the ONNX graph is
    # exported on the all-seeing example cameras (its general form: every query in every camera).
    example = bev_example_inputs(model, size)
    frame = (example[0], camera_ring(model.num_cams, size), *example[2:])
    load_before = os.getloadavg()[0]
    wrapper = None if args.no_onnx else (BevFrameForExport(model), example)
    paths, rows = inference_paths(
        model, lambda m: m.predict(*frame), wrapper, args.compile, not args.no_arena
    )
    times = time_paths(select_paths(paths, args.only), args.runs, args.warmup)
    rows = [
        ("model", f"{args.model} (random weights)"),
        ("input", f"1 x {model.num_cams} x 3 x {args.height} x {args.width}, previous BEV given"),
        ("load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"),
        *rows,
    ]
    print_report("BEV detector, one frame, CPU", times, rows, args.warmup, not args.no_arena)


if __name__ == "__main__":
    main()
