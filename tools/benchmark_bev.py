"""CPU time of one BEV detector frame (random weights, with a previous BEV), every inference path in one
run: reference (grid_sample) op, eager on the native op, the fast path
(:func:`detr2d.runtime.fast_inference.optimize_for_inference`), optionally compiled, and ONNX Runtime when the
``export`` extra is installed. The default is BEVFormer-tiny at its published input, 6 cameras x 450 x 800
(padded to 480 x 800), with few iterations: one frame takes seconds on a CPU.

``--petr VARIANT`` also times a PETR / PETRv2 variant (``bev.petr_builder.VARIANTS``) in the same run, eager
and fast path, at its published input size (``bev.petr_builder.PREPROCESS``; PETRv2: 12 views).

Example: ``python tools/benchmark_bev.py --model bevformer_tiny --runs 1 --threads 2 \
--petr petr_vov_p4_800x320``
"""

from __future__ import annotations

import argparse
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
from bev.petr_builder import PREPROCESS, build_petr  # noqa: E402
from detr2d.runtime.fast_inference import optimize_for_inference  # noqa: E402


def petr_paths(name: str) -> tuple[list[tuple[str, object]], tuple[str, str]]:
    """Eager and fast-path calls of PETR variant ``name`` (random weights) on one sample at its published
    size, and the report row of its input."""
    model = build_petr(name).eval()
    height, width = PREPROCESS[name]["final_size"]
    wrapper, example = model.for_export((height, width))
    batch = dict(zip(wrapper.input_names, example, strict=True))
    fast = optimize_for_inference(model)
    paths = [(f"{name} eager", lambda: model(batch)), (f"{name} fast path", lambda: fast(batch))]
    return paths, (f"{name} input", f"1 x {model.num_views} x 3 x {height} x {width} (camera ring)")


def main(argv: list[str] | None = None) -> None:
    petr_parser = argparse.ArgumentParser(add_help=False)
    petr_parser.add_argument("--petr", choices=sorted(PREPROCESS), default=None)
    petr_args, argv = petr_parser.parse_known_args(argv)
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
    petr_rows = []
    if petr_args.petr is not None:
        more, row = petr_paths(petr_args.petr)
        paths, petr_rows = paths + more, [row]
    times = time_paths(select_paths(paths, args.only), args.runs, args.warmup)
    rows = [
        ("model", f"{args.model} (random weights)"),
        ("input", f"1 x {model.num_cams} x 3 x {args.height} x {args.width}, previous BEV given"),
        *petr_rows,
        ("load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"),
        *rows,
    ]
    print_report("BEV detector, one frame, CPU", times, rows, args.warmup, not args.no_arena)


if __name__ == "__main__":
    main()
