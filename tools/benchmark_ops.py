"""Benchmark the deformable-attention op: every backend vs the grid_sample reference, same run.

python tools/benchmark_ops.py                      # CPU, float32, encoder + decoder shapes
python tools/benchmark_ops.py --device cuda --dtypes float32 bfloat16 --json out.json
python tools/benchmark_ops.py --threads 2 --cases dcn_stage3 dcn_stage4   # DCNv2 (deform_conv2d)
python tools/benchmark_ops.py --threads 2 --cases bev_temporal bev_spatial # BEVFormer-base's attention
python tools/benchmark_ops.py --threads 2 --limits # the machine's bandwidth and GEMM limits, and the
                                                   # CPU op's times as fractions of their bound
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.benchmark import (  # noqa: E402
    ATTENTION_CASES,
    format_limits,
    format_table,
    machine_description,
    measure_limits,
    run_benchmark,
)
from ops.deform_conv_benchmark import DCN_CASES  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--dtypes", nargs="+", default=["float32"], choices=("float32", "float64", "bfloat16", "float16")
    )
    parser.add_argument(
        "--cases",
        nargs="+",
        default=["encoder", "decoder"],
        choices=(*ATTENTION_CASES, *DCN_CASES),
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--limits", action="store_true", help="measure the machine's limits and the CPU op against them"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.limits:
        run_limits([case for case in args.cases if case in ATTENTION_CASES], args.repeats, args.warmup)
        return
    dtypes = [getattr(torch, d) for d in args.dtypes]
    results = run_benchmark(args.device, dtypes, args.cases, args.repeats, args.warmup)
    machine = machine_description(args.device)
    print(machine)
    print(format_table(results))
    if args.json:
        payload = {"machine": machine, "results": [dataclasses.asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2))


def run_limits(cases: list[str], repeats: int, warmup: int) -> None:
    """The limits, then the CPU op's float32 times of ``cases`` in the same process, as fractions of them."""
    limits = measure_limits()
    results = run_benchmark("cpu", [torch.float32], cases, repeats, warmup)
    op_ms = {(r.case, r.mode): r.median_ms for r in results if r.backend == "cpu"}
    print(machine_description("cpu"))
    print(format_limits(limits, op_ms))
    print(format_table(results))


if __name__ == "__main__":
    main()
