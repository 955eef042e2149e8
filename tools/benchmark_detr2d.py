"""CPU inference time of a detr2d variant (random weights) on one image, every inference path
in one run: the model on the reference (grid_sample) op, the eager model on the native op, the fast path
(:func:`detr2d.runtime.fast_inference.optimize_for_inference`), optionally compiled (the compilation, i.e. the
first call, is timed apart), and ONNX Runtime when the ``export`` extra is
installed. Runs alternate between the paths so that they share the machine's load. The fast paths run
in the CPU arena (:mod:`ops.arena`) unless ``--no-arena``. ``--baseline NAME`` times a second model in
the same run, its calls alternating with the first's (DETR next to Deformable DETR under the same load).

Example: ``python tools/benchmark_detr2d.py --model deformable_detr --height 800 --width 1333 --runs 3``,
``python tools/benchmark_detr2d.py --model detr_r50 --baseline deformable_detr --threads 2 --no-onnx``

``--stream N`` runs N images of different sizes (600-800 x 800-1333, seeded) one after the other instead,
as a new user would, every path on each image in turn (no reference op, no ONNX Runtime), and reports each
call's time, the CPU arena's bytes in use and cached, and the resident set; the peak resident set is the
process's, so compare paths one per process with ``--only``:
``python tools/benchmark_detr2d.py --stream 10 --only eager`` and ``... --stream 10 --only "fast path"``.
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detr2d import DETR, VARIANTS, build_model  # noqa: E402
from detr2d.runtime.fast_inference import optimize_for_inference, set_op_backend  # noqa: E402
from detr2d.runtime.study import TimedPath, time_paths  # noqa: E402
from ops.arena import cpu_arena_stats  # noqa: E402
from ops.benchmark import cpu_model, proc_status_bytes  # noqa: E402

Row = tuple[str, str]


def allocator(arena: bool) -> str:
    preload = os.environ.get("LD_PRELOAD", "")
    system = next((name for name in ("jemalloc", "tcmalloc") if name in preload), "glibc malloc")
    return f"{system}; fast paths in the CPU arena" if arena else f"{system}; no arena (--no-arena)"


def onnxruntime_path(
    wrapper: torch.nn.Module, example: tuple[torch.Tensor, ...], threads: int
) -> Callable[[], object] | None:
    """A call of ONNX Runtime (CPU) on ``wrapper`` exported to ONNX, or None without the extra."""
    try:
        import onnxruntime
    except ImportError:
        return None
    from detr2d.runtime.export import export_model

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.onnx"
        export_model(wrapper, example, "onnx", path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [node.name for node in session.get_inputs()]
    feed = {name: x.numpy() for name, x in zip(wrapper.input_names, example, strict=True) if name in names}
    return lambda: session.run(None, feed)


def print_paths(times: dict[str, list[tuple[float, float]]]) -> None:
    """The paths' table of :func:`print_report`."""
    medians = {
        name: [statistics.median(t[k] for t in values) for k in (0, 1)] for name, values in times.items()
    }
    base_wall, base_cpu = next(iter(medians.values()))
    print(
        "\n| path | median wall s | wall runs s | x vs first (wall) | median CPU s "
        "| x vs first (CPU) |\n|---|---|---|---|---|---|"
    )
    for name, values in times.items():
        wall, cpu = medians[name]
        runs = ", ".join(f"{t[0]:.2f}" for t in values)
        print(f"| {name} | {wall:.2f} | {runs} | {base_wall / wall:.2f} | {cpu:.2f} | {base_cpu / cpu:.2f} |")


def print_report(
    title: str, times: dict[str, list[tuple[float, float]]], rows: list[Row], warmup: int, arena: bool
) -> None:
    """Markdown tables: the paths (median wall and CPU time, runs, speed-ups over the first path; none
    without ``times``) and the machine. On a loaded machine the CPU time is the steadier measure of the work
    done."""
    print(title)
    if times:
        print_paths(times)
    rows = rows + [
        ("warm-up calls per path", str(warmup)),
        (
            "peak RSS (whole process)",
            f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2:.2f} GB",
        ),
        ("machine", f"{cpu_model()}, {os.cpu_count()} cores"),
        ("torch threads", str(torch.get_num_threads())),
        ("torch", torch.__version__),
        ("allocator", allocator(arena)),
    ]
    print("\n| what | value |\n|---|---|")
    for key, value in rows:
        print(f"| {key} | {value} |")


def compiled_path(
    model: torch.nn.Module, call: Callable[[torch.nn.Module], object], arena: bool
) -> tuple[TimedPath, Row]:
    """The fast path under ``torch.compile``, compiled here by a first call: the path and a
    row with the wall and CPU seconds of that first call (compiling, on a warm or cold Inductor cache)."""
    compiled = optimize_for_inference(model, compile=True, arena=arena)
    wall, cpu = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        call(compiled)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    row = (
        "first call of the compiled path (compiles)",
        f"{wall:.0f} s wall, {cpu:.0f} s CPU of this process",
    )
    return ("fast path + torch.compile", lambda: call(compiled)), row


def inference_paths(
    model: torch.nn.Module,
    call: Callable[[torch.nn.Module], object],
    wrapper_and_example: tuple[torch.nn.Module, tuple[torch.Tensor, ...]] | None,
    compile: bool,
    arena: bool,
) -> tuple[list[TimedPath], list[Row]]:
    """The paths to compare for one ``model`` (eval mode), ``call(m)`` running model ``m`` once, and the
    report rows of their preparation (compile time); the fast paths in the CPU arena if ``arena``."""
    reference = copy.deepcopy(model)
    set_op_backend(reference, "reference")
    paths: list[TimedPath] = [
        ("reference op (grid_sample)", lambda: call(reference)),
        ("eager (native op)", lambda: call(model)),
    ]
    fast = optimize_for_inference(model, arena=arena)
    paths.append(("fast path", lambda: call(fast)))
    rows: list[Row] = []
    if compile:
        path, row = compiled_path(model, call, arena)
        paths.append(path)
        rows.append(row)
    if wrapper_and_example is not None:
        ort_call = onnxruntime_path(*wrapper_and_example, threads=torch.get_num_threads())
        if ort_call is not None:
            paths.append(("onnxruntime (GridSample)", ort_call))
    return paths, rows


def select_paths(paths: list[TimedPath], only: str | None) -> list[TimedPath]:
    """``paths`` whose name starts with ``only`` (all with None); ValueError naming the choices if none."""
    chosen = [path for path in paths if only is None or path[0].startswith(only)]
    if not chosen:
        raise ValueError(f"--only {only!r} matches no path of {[name for name, _ in paths]}")
    return chosen


def parse_benchmark_args(
    argv: list[str] | None,
    description: str,
    model: str,
    models: Iterable[str],
    size: tuple[int, int],
    runs: int,
    stream: bool = False,
) -> argparse.Namespace:
    """The arguments of both inference benchmarks (this one and ``tools/benchmark_bev.py``), with the
    thread count they ask for applied. ``model`` (one of ``models``), ``size``
    (height, width) and ``runs`` are the defaults; ``stream`` adds ``--stream N``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=model, choices=sorted(models))
    parser.add_argument("--height", type=int, default=size[0])
    parser.add_argument("--width", type=int, default=size[1])
    parser.add_argument("--runs", type=int, default=runs, help="timed calls per path (median reported)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--no-onnx", action="store_true", help="skip ONNX Runtime even when installed")
    parser.add_argument(
        "--only",
        metavar="PREFIX",
        help="time only the paths whose name starts with PREFIX (e.g. 'reference', 'fast path +'): one path "
        "per process, so that the paths' allocations cannot change each other's allocator state",
    )
    parser.add_argument(
        "--no-arena", action="store_true", help="run the fast paths without the CPU arena (ops.arena)"
    )
    if stream:
        parser.add_argument(
            "--stream",
            type=int,
            metavar="N",
            help="run N images of varying sizes one after the other (see the module docstring)",
        )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return args


STREAM_HEIGHTS, STREAM_WIDTHS = (600, 800), (800, 1333)


def stream_sizes(count: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` (height, width) pairs drawn uniformly from ``STREAM_HEIGHTS`` x ``STREAM_WIDTHS``."""
    rng = random.Random(seed)
    return [(rng.randint(*STREAM_HEIGHTS), rng.randint(*STREAM_WIDTHS)) for _ in range(count)]


def run_stream(model: torch.nn.Module, args: argparse.Namespace) -> None:
    """Every path (but the reference op) on each image of :func:`stream_sizes` in turn: a markdown row per
    call with its wall time, the CPU arena's counters after it and the resident set."""
    image: dict[str, torch.Tensor] = {}
    paths, rows = inference_paths(model, lambda m: m(image["x"]), None, args.compile, not args.no_arena)
    paths = select_paths([p for p in paths if not p[0].startswith("reference")], args.only)
    load_before = os.getloadavg()[0]
    print(
        "Deformable DETR inference on a stream of sizes, CPU\n\n| image | size | path | wall s "
        "| arena in use GB | arena cached GB | arena peak in use GB | hits / misses | RSS GB | peak RSS GB |"
        "\n|---|---|---|---|---|---|---|---|---|---|"
    )
    walls: dict[str, list[float]] = {name: [] for name, _ in paths}
    with torch.inference_mode():
        for i, (height, width) in enumerate(stream_sizes(args.stream)):
            image["x"] = torch.randn(1, 3, height, width)
            for name, call in paths:
                before = cpu_arena_stats()
                start = time.perf_counter()
                call()
                walls[name].append(time.perf_counter() - start)
                stats = cpu_arena_stats()
                rss, peak = (proc_status_bytes(key) / 2**30 for key in ("VmRSS", "VmHWM"))
                arena = [stats.in_use / 1e9, stats.cached / 1e9, stats.peak_in_use / 1e9]
                counts = f"{stats.hits - before.hits} / {stats.misses - before.misses}"
                print(
                    f"| {i} | {height} x {width} | {name} | {walls[name][-1]:.2f} | "
                    + " | ".join(f"{x:.2f}" for x in arena)
                    + f" | {counts} | {rss:.2f} | {peak:.2f} |"
                )
    rows = [
        ("model", f"{args.model} (R50, random weights)"),
        ("stream", f"{args.stream} images, sizes {stream_sizes(args.stream)}"),
        *[(f"{name}: first call / median of the rest, s", _first_and_rest(w)) for name, w in walls.items()],
        ("load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"),
        *rows,
    ]
    print_report("\nThe stream, summary", {}, rows, 0, not args.no_arena)


def _first_and_rest(walls: list[float]) -> str:
    rest = f"{statistics.median(walls[1:]):.2f}" if len(walls) > 1 else "-"
    return f"{walls[0]:.2f} / {rest}"


def main(argv: list[str] | None = None) -> None:
    extra = argparse.ArgumentParser(add_help=False)  # the option only this benchmark has
    extra.add_argument("--baseline", choices=sorted(VARIANTS), help="a second model, timed alternately")
    known, argv = extra.parse_known_args(argv)
    baseline = known.baseline
    args = parse_benchmark_args(
        argv, __doc__.splitlines()[0], "deformable_detr", VARIANTS, (800, 1333), runs=3, stream=True
    )

    from detr2d.export import Detr2dForExport

    if args.stream:
        torch.manual_seed(0)
        run_stream(build_model(args.model).eval(), args)
        return
    images = torch.randn(1, 3, args.height, args.width)
    load_before = os.getloadavg()[0]
    names = [args.model, *([baseline] if baseline else [])]
    paths: list[TimedPath] = []
    rows: list[Row] = []
    for name in names:
        torch.manual_seed(0)
        model = build_model(name).eval()
        wrapper = None if args.no_onnx else (Detr2dForExport(model), (images,))
        found, prepared = inference_paths(
            model, lambda m: m(images), wrapper, args.compile, not args.no_arena
        )
        if isinstance(model, DETR):  # no deformable op: its "reference op" path is its eager path
            found = [path for path in found if not path[0].startswith("reference")]
        label = f"{name}: " if len(names) > 1 else ""
        paths += [(label + path, call) for path, call in select_paths(found, args.only)]
        rows += [(label + key, value) for key, value in prepared]
    times = time_paths(paths, args.runs, args.warmup)
    rows = [
        ("model", f"{', '.join(names)} (R50, random weights)"),
        ("input", f"1 x 3 x {args.height} x {args.width}"),
        ("load average (1 min) before / after", f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"),
        *rows,
    ]
    print_report("detr2d inference, CPU", times, rows, args.warmup, not args.no_arena)


if __name__ == "__main__":
    main()
