"""CPU inference of every model at its published input size (random weights), one path per fresh process,
and the roofline of one model by stage.

python tools/benchmark_models.py --threads 2                         # every model, every path, 2 rounds
python tools/benchmark_models.py --threads 2 --models deformable_detr,bevformer_tiny --compile
python tools/benchmark_models.py --threads 2 --roofline deformable_detr --compile

Paths: the model on the reference (grid_sample) op (models with deformable attention), the eager model on
the native op, the fast path (:func:`detr2d.runtime.fast_inference.optimize_for_inference`, in the CPU
arena) and, with ``--compile``, the fast path under ``torch.compile``. Each (model, path) runs in a process
of its own that builds only what that path needs (so its peak resident set is the path's): one warm-up
call (the compiled path's compiles), then ``--runs`` timed calls; the rounds alternate over all of them.

``--roofline NAME`` measures the machine's limits (:func:`ops.benchmark.measure_limits`), then times the
fast path of NAME stage by stage (:mod:`detr2d.runtime.roofline`) and prints each stage's work and floor,
and the model's floor against the fast path (and, with ``--compile``, the compiled fast path, timed in the
same process after the uncompiled one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bev import VARIANTS as BEV_VARIANTS  # noqa: E402
from bev import build_bev_model  # noqa: E402
from bev.export import bev_example_inputs, camera_ring  # noqa: E402
from bev.petr_builder import PREPROCESS, build_petr  # noqa: E402
from configs import load_config  # noqa: E402
from detr2d import VARIANTS as DETR2D_VARIANTS  # noqa: E402
from detr2d import build_model  # noqa: E402
from detr2d.runtime.fast_inference import optimize_for_inference, set_op_backend  # noqa: E402
from detr2d.runtime.roofline import MachineLimits, format_profile, profile_stages  # noqa: E402
from ops.benchmark import (  # noqa: E402
    last_level_cache_bytes,
    machine_description,
    measure_limits,
    proc_status_bytes,
)

REPO = Path(__file__).resolve().parents[1]
PATHS = ("reference op", "eager", "fast path", "fast path + compile")
DETR2D_SIZE = (800, 1333)


@dataclass
class Benchmarked:
    """A model at its published input: ``call(m)`` runs model ``m`` once."""

    model: torch.nn.Module
    call: Callable[[torch.nn.Module], object]
    input: str


def model_names() -> list[str]:
    """Every published model: the detr2d variants, BEVFormer / DETR3D, PETR / PETRv2 (no demo sizes)."""
    bev = [name for name in BEV_VARIANTS if "demo" not in name]
    petr = [name for name in PREPROCESS if "demo" not in name]
    return [*DETR2D_VARIANTS, *sorted(bev), *sorted(petr)]


def build_benchmarked(name: str) -> Benchmarked:
    """Model ``name`` (random weights, seed 0, eval mode) and its call on one random input."""
    torch.manual_seed(0)
    if name in DETR2D_VARIANTS:
        model = build_model(name).eval()
        images = torch.randn(1, 3, *DETR2D_SIZE)
        return Benchmarked(model, lambda m: m(images), f"1 x 3 x {DETR2D_SIZE[0]} x {DETR2D_SIZE[1]}")
    if name in BEV_VARIANTS:
        model = build_bev_model(name).eval()
        width, height = load_config(REPO / "configs" / "bev" / f"{name}.py")["data"]["image_size"]
        size = (height, width)
        example = bev_example_inputs(model, size)
        frame = (example[0], camera_ring(model.num_cams, size), *example[2:])
        history = ", previous BEV given" if model.encoder is not None else ""  # DETR3D has no BEV
        text = f"1 x {model.num_cams} x 3 x {height} x {width}{history}, camera ring"
        return Benchmarked(model, lambda m: m.predict(*frame), text)
    if name in PREPROCESS:
        model = build_petr(name).eval()
        height, width = PREPROCESS[name]["final_size"]
        wrapper, example = model.for_export((height, width))
        batch = dict(zip(wrapper.input_names, example, strict=True))
        return Benchmarked(model, lambda m: m(batch), f"1 x {model.num_views} x 3 x {height} x {width}")
    raise SystemExit(f"error: unknown model {name!r}; known: {', '.join(model_names())}")


def run_worker(name: str, path: str, runs: int) -> dict:
    """Build ``name``'s ``path`` alone, one warm-up call, ``runs`` timed calls: wall and CPU seconds
    (``{"skip": ...}`` for the reference op of a model that calls none of the project's ops)."""
    bench = build_benchmarked(name)
    model = bench.model
    if path == "reference op" and set_op_backend(model, "reference") == 0:
        return {"skip": "no deformable op"}
    elif path.startswith("fast path"):
        model = optimize_for_inference(bench.model, compile=path.endswith("compile"))
        del bench.model  # the path's own memory only
    walls, cpus = [], []
    with torch.inference_mode():
        start = time.perf_counter()
        bench.call(model)
        first = time.perf_counter() - start
        for _ in range(runs):
            wall, cpu = time.perf_counter(), time.process_time()
            bench.call(model)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    peak_rss_gb = proc_status_bytes("VmHWM") / 2**30
    return {"wall": walls, "cpu": cpus, "first": first, "peak_rss_gb": peak_rss_gb, "input": bench.input}


def paths_of(compile: bool) -> list[str]:
    return [path for path in PATHS if compile or not path.endswith("compile")]


def run_all(names: list[str], rounds: int, runs: int, threads: int | None, compile: bool) -> None:
    """Every (model, path) in its own process, ``rounds`` times in alternation; a markdown table."""
    results: dict[tuple[str, str], list[dict]] = {}
    load_before = os.getloadavg()[0]
    jobs = [(name, path) for name in names for path in paths_of(compile)]
    for round_ in range(rounds):
        for i, (name, path) in enumerate(jobs):
            command = [sys.executable, __file__, "--worker", name, path, "--runs", str(runs)]
            if threads is not None:
                command += ["--threads", str(threads)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(f"{name} / {path} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            if "skip" in result:
                continue
            results.setdefault((name, path), []).append(result)
            print(
                f"[round {round_ + 1}/{rounds}, {i + 1}/{len(jobs)}] {name} / {path}: "
                f"{statistics.median(result['wall']):.2f} s",
                file=sys.stderr,
                flush=True,
            )
    print(
        "| model | input | path | wall s per round | CPU s (median) | x vs reference op (wall) "
        "| x vs eager (wall) | peak RSS GB |\n|---|---|---|---|---|---|---|---|"
    )
    for name in names:
        mean_wall = {
            path: statistics.mean(statistics.median(r["wall"]) for r in found)
            for (model, path), found in results.items()
            if model == name
        }
        for path in paths_of(compile):
            found = results.get((name, path))
            if not found:
                continue  # failed (reported above) or no such path
            walls = [statistics.median(r["wall"]) for r in found]
            cpu = statistics.median(c for r in found for c in r["cpu"])
            ratios = [
                f"{mean_wall[base] / mean_wall[path]:.2f}" if base in mean_wall else "–"
                for base in ("reference op", "eager")
            ]
            rounds_text = " / ".join(f"{w:.2f}" for w in walls)
            peak = max(r["peak_rss_gb"] for r in found)
            print(
                f"| {name} | {found[0]['input']} | {path} | {rounds_text} | {cpu:.2f} | {' | '.join(ratios)} "
                f"| {peak:.2f} |"
            )
    print(
        f"\n{machine_description('cpu')}; {cpu_flags()}; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after; {runs} timed call(s) after 1 warm-up call per process"
    )


def cpu_flags() -> str:
    """The vector instruction sets the processor reports (what the kernels can use)."""
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return "instruction sets " + " ".join(f for f in wanted if f in flags)
    except OSError:
        pass
    return "instruction sets unknown"


def machine_limits() -> MachineLimits:
    """This machine's GEMM rate and read bandwidths, measured now (best of repeated calls)."""
    cache, memory, _gather, gemm = measure_limits()
    return MachineLimits(gemm.rate * 1e9, cache.rate * 1e9, memory.rate * 1e9, last_level_cache_bytes())


def run_roofline(name: str, runs: int, compile: bool) -> None:
    """The stage table of ``name``'s fast path, its floor, and the fast paths' times against it."""
    limits = machine_limits()
    bench = build_benchmarked(name)
    model = bench.model
    fast = optimize_for_inference(model)
    with torch.inference_mode():
        bench.call(fast)  # warm-up
    profile = profile_stages(lambda: bench.call(fast), [fast.backbone], _neck_of(fast), limits, runs)
    print(f"{name} (random weights), input {bench.input}, the fast path (not compiled), stage by stage:\n")
    print(format_profile(profile, limits))
    rows = [("fast path", profile.wall_seconds)]
    if compile:
        compiled = optimize_for_inference(model, compile=True)
        times = []
        with torch.inference_mode():
            bench.call(compiled)  # compiles
            for _ in range(runs):
                start = time.perf_counter()
                bench.call(compiled)
                times.append(time.perf_counter() - start)
        rows.append(("fast path + torch.compile", statistics.median(times)))
    print("\n| path | wall s (median) | x the floor |\n|---|---|---|")
    for path, seconds in rows:
        print(f"| {path} | {seconds:.3f} | {seconds / profile.floor_seconds:.2f} |")
    print(f"\n{machine_description('cpu')}; {cpu_flags()}; load average {os.getloadavg()[0]:.1f}")


def _neck_of(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules between backbone and transformer: a BEV model's or PETR's neck, detr2d's input
    projections (each of Deformable DETR's levels: a module list is never called itself)."""
    neck = model.neck if hasattr(model, "neck") else model.input_proj
    return list(neck) if isinstance(neck, torch.nn.ModuleList) else [neck]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help=f"comma-separated (default: all of {', '.join(model_names())})")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds over every (model, path)")
    parser.add_argument("--runs", type=int, default=2, help="timed calls per process (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--roofline", metavar="MODEL", help="the stage table of one model's fast path")
    parser.add_argument("--worker", nargs=2, metavar=("MODEL", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(run_worker(*args.worker, args.runs)))
    elif args.roofline:
        run_roofline(args.roofline, args.runs, args.compile)
    else:
        names = args.models.split(",") if args.models else model_names()
        unknown = sorted(set(names) - set(model_names()))
        if unknown:
            parser.error(f"unknown model(s) {unknown}; known: {', '.join(model_names())}")
        run_all(names, args.rounds, args.runs, args.threads, args.compile)


if __name__ == "__main__":
    main()
