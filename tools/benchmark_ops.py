"""Benchmark the deformable-attention op: every backend vs the grid_sample reference, same run.

python tools/benchmark_ops.py                      # CPU, float32, encoder + decoder shapes
python tools/benchmark_ops.py --device cuda --dtypes float32 bfloat16 --json out.json
python tools/benchmark_ops.py --threads 2 --cases dcn_stage3 dcn_stage4   # DCNv2 (deform_conv2d)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops.benchmark import format_table, machine_description, run_benchmark  # noqa: E402


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
        choices=("encoder", "decoder", "dcn_stage3", "dcn_stage4"),
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, d) for d in args.dtypes]
    results = run_benchmark(args.device, dtypes, args.cases, args.repeats, args.warmup)
    machine = machine_description(args.device)
    print(machine)
    print(format_table(results))
    if args.json:
        payload = {"machine": machine, "results": [dataclasses.asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
