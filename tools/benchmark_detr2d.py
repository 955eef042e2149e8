"""CPU inference time of a Deformable DETR variant (random weights) on one image; median of a few runs.

Example: ``python tools/benchmark_detr2d.py --model deformable_detr --height 800 --width 1333 --runs 3``
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import ops  # noqa: E402
from detr2d import VARIANTS, build_model  # noqa: E402


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def allocator() -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    return "jemalloc" if "jemalloc" in preload else ("tcmalloc" if "tcmalloc" in preload else "glibc malloc")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="deformable_detr", choices=sorted(VARIANTS))
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1333)
    parser.add_argument("--runs", type=int, default=3, help="timed runs (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument(
        "--backend", default=None, choices=["reference", "cpu"], help="MSDA backend (default: auto)"
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_model(args.model, op_backend=args.backend).eval()
    images = torch.randn(1, 3, args.height, args.width)
    mask = torch.zeros(1, args.height, args.width, dtype=torch.bool)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.runs):
            start = time.perf_counter()
            model(images, mask)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    backend = (
        ops.resolve_backend(torch.device("cpu"), args.backend) if hasattr(ops, "resolve_backend") else "?"
    )
    rows = [
        ("model", f"{args.model} (R50, random weights)"),
        ("input", f"1 x 3 x {args.height} x {args.width}"),
        ("median", f"{statistics.median(times):.2f} s"),
        ("runs", ", ".join(f"{t:.2f}" for t in times) + f" s (after {args.warmup} warm-up)"),
        ("peak RSS", f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB"),
        ("MSDA backend", backend),
        ("machine", f"{cpu_model()}, {os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}"),
        ("torch threads", str(torch.get_num_threads())),
        ("torch", torch.__version__),
        ("allocator", allocator()),
    ]
    print("| what | value |\n|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")


if __name__ == "__main__":
    main()
