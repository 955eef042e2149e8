"""Timing and memory of the op's backends on the Deformable DETR shapes, and of ``deform_conv2d`` on the
DCN cases of :mod:`ops.deform_conv_benchmark` (used by tools/benchmark_ops.py)."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .deform_conv_benchmark import DCN_CASES, make_dcn_step
from .functional import available_backends, ms_deform_attn

ENCODER_SHAPES = ((100, 134), (50, 67), (25, 34), (13, 17))
HEADS, CHANNELS, POINTS, DECODER_QUERIES = 8, 32, 4, 300


@dataclass
class Result:
    case: str
    dtype: str
    backend: str
    mode: str  # "forward" or "forward+backward"
    median_ms: float
    extra_mb: float  # peak memory beyond the inputs while the step runs
    ratio: float  # reference time / this time, same case, dtype and mode


@dataclass(frozen=True)
class AttentionCase:
    """The op's shapes in one model: value levels ``shapes`` (H, W), ``queries`` per sample (None: one per
    value position, self-attention), ``batch`` samples N, ``points`` P per level (M = 8 heads of D = 32)."""

    shapes: tuple[tuple[int, int], ...]
    queries: int | None
    batch: int = 1
    points: int = POINTS


ATTENTION_CASES = {
    # Deformable DETR, one 800 x 1066 image (levels of 800 x 1072): the encoder's self-attention, the
    # decoder's 300 queries
    "encoder": AttentionCase(ENCODER_SHAPES, None),
    "decoder": AttentionCase(ENCODER_SHAPES, DECODER_QUERIES),
    # BEVFormer-base: temporal self-attention over the 200 x 200 BEV with the previous and the current BEV
    # stacked (N = 2), one level, 4 points
    "bev_temporal": AttentionCase(((200, 200),), None, batch=2),
    # BEVFormer-base: spatial cross-attention, each of 6 cameras (N = 6) sampling its 4 levels of a
    # 928 x 1600 image (strides 8-64) for 10,000 BEV queries (about a ring camera's share of the 40,000
    # pillars, rebatched per camera), 8 points per level (4 heights x 2)
    "bev_spatial": AttentionCase(((116, 200), (58, 100), (29, 50), (15, 25)), 10_000, batch=6, points=8),
}


def make_inputs(
    case: str,
    dtype: torch.dtype,
    device: str,
    seed: int = 0,
    batch: int | None = None,
    shapes: tuple[tuple[int, int], ...] | None = None,
) -> tuple[torch.Tensor, ...]:
    """Inputs of :data:`ATTENTION_CASES` ``case`` (``batch`` / ``shapes`` override the case's), locations
    uniform in [-0.1, 1.1], drawn on ``device``. Returns (value (N, S, M, D), spatial_shapes,
    level_start_index, locations (N, Lq, M, L, P, 2), weights (N, Lq, M, L, P))."""
    spec = ATTENTION_CASES[case]
    batch = spec.batch if batch is None else batch
    shapes = spec.shapes if shapes is None else shapes
    g = torch.Generator(device=device).manual_seed(seed)
    spatial_shapes = torch.tensor(shapes)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    lq = s if spec.queries is None else spec.queries
    num_levels, points = len(shapes), spec.points
    value = torch.randn(batch, s, HEADS, CHANNELS, generator=g, device=device)
    loc = torch.rand(batch, lq, HEADS, num_levels, points, 2, generator=g, device=device) * 1.2 - 0.1
    weights = torch.rand(batch, lq, HEADS, num_levels * points, generator=g, device=device).softmax(-1)
    weights = weights.view(batch, lq, HEADS, num_levels, points)
    floats = [t.to(dtype=dtype) for t in (value, loc, weights)]
    return floats[0], spatial_shapes.to(device), starts.to(device), floats[1], floats[2]


def proc_status_bytes(key: str) -> int:
    """This process's ``/proc/self/status`` memory field ``key`` ("VmRSS"; "VmHWM": its peak), in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def release_freed_memory_to_os() -> None:
    """Make glibc serve every block >= 64 KiB by mmap (fixed threshold), so that freed temporaries leave
    the resident set and the next block's peak counts only what it allocates itself."""
    ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD


class PeakMemory:
    """Peak extra memory of a block: CUDA allocator statistics, or on the CPU the kernel's peak resident
    set (VmHWM, reset through /proc/self/clear_refs) minus the resident set before the block."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0

    def __enter__(self) -> PeakMemory:
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
        else:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            self._base = proc_status_bytes("VmRSS")
        return self

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated() - self._base
        else:
            self.peak_bytes = proc_status_bytes("VmHWM") - self._base


def _time(fn: Callable[[], None], device: str, repeats: int, warmup: int) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times


def make_step(
    backend: str,
    case: str,
    dtype: torch.dtype,
    device: str,
    mode: str,
    batch: int | None = None,
    shapes: tuple[tuple[int, int], ...] | None = None,
) -> Callable[[], None]:
    """One call of the op on :func:`make_inputs` (``mode`` "forward" or "forward+backward"); for a case of
    ``DCN_CASES``, one call of ``deform_conv2d`` (:func:`ops.deform_conv_benchmark.make_dcn_step`)."""
    if case in DCN_CASES:
        return make_dcn_step(backend, case, dtype, device, mode)
    value, shapes, starts, loc, weights = make_inputs(case, dtype, device, batch=batch, shapes=shapes)
    backward = mode == "forward+backward"
    for t in (value, loc, weights):
        t.requires_grad_(backward)

    def step() -> None:
        with torch.set_grad_enabled(backward):
            out = ms_deform_attn(value, shapes, starts, loc, weights, backend=backend)
            if backward:
                out.backward(torch.ones_like(out))
        for t in (value, loc, weights):
            t.grad = None

    return step


def gpu_time_ms(step: Callable[[], None], repeats: int, warmup: int) -> float:
    """Median GPU time of ``step`` in ms, between two CUDA events on the current stream."""
    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        step()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def run_benchmark(
    device: str, dtypes: list[torch.dtype], cases: list[str], repeats: int, warmup: int
) -> list[Result]:
    """Every available backend of ``device`` and ``reference``, side by side, with ratios; then the
    peak memory of each, one fresh process per measurement."""
    backends = [b for b in available_backends() if b in ("reference", device)]
    configs = [
        (b, case, dtype, mode)
        for case in cases
        for dtype in dtypes
        for mode in ("forward", "forward+backward")
        for b in backends
    ]
    medians = {}
    for b, case, dtype, mode in configs:
        times = _time(make_step(b, case, dtype, device, mode), device, repeats, warmup)
        medians[b, case, dtype, mode] = 1e3 * statistics.median(times)
    results = []
    for b, case, dtype, mode in configs:
        ratio = medians["reference", case, dtype, mode] / medians[b, case, dtype, mode]
        extra_mb = peak_memory_mb(b, case, dtype, device, mode)
        name = str(dtype).replace("torch.", "")
        results.append(Result(case, name, b, mode, medians[b, case, dtype, mode], extra_mb, ratio))
    return results


def _peak_memory_in_child(
    backend: str, case: str, dtype: torch.dtype, device: str, mode: str, threads: int
) -> int:
    torch.set_num_threads(threads)
    if device == "cpu":
        release_freed_memory_to_os()
    step = make_step(backend, case, dtype, device, mode)
    step()  # warm-up: lazy initialisation is not the op's memory
    with PeakMemory(device) as memory:
        step()
    return memory.peak_bytes


def peak_memory_mb(backend: str, case: str, dtype: torch.dtype, device: str, mode: str) -> float:
    """Peak extra memory of one step, measured in a fresh process (nothing cached from other runs)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        args = (backend, case, dtype, device, mode, torch.get_num_threads())
        return pool.apply(_peak_memory_in_child, args) / 2**20


def cpu_model() -> str:
    """The processor's model name (/proc/cpuinfo), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def last_level_cache_bytes(default: int = 8 * 2**20) -> int:
    """The size of the CPU's last-level cache (Linux sysfs), ``default`` where it cannot be read."""
    caches = sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"))
    for cache in reversed(caches):
        try:
            size = (cache / "size").read_text().strip()
        except OSError:
            continue
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        return int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
    return default


def machine_description(device: str) -> str:
    allocator = "jemalloc" if "jemalloc" in os.environ.get("LD_PRELOAD", "") else "glibc malloc"
    if device == "cuda":
        hw = torch.cuda.get_device_name()
    else:
        hw = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    return (
        f"{hw}; torch {torch.__version__}; threads {torch.get_num_threads()}; allocator {allocator}; "
        f"backends {', '.join(available_backends())}"
    )


def format_table(results: list[Result]) -> str:
    lines = [
        "| case | dtype | mode | backend | median ms | x vs reference | extra memory MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.dtype} | {r.mode} | {r.backend} | {r.median_ms:.1f} | {r.ratio:.1f} | "
            f"{r.extra_mb:.0f} |"
        )
    return "\n".join(lines)


@dataclass
class Limit:
    name: str
    median_ms: float
    best_ms: float
    rate: float  # in ``unit``, from the best time (a limit is what the machine can do)
    unit: str


def corner_bytes(case: str = "encoder") -> int:
    """Bytes of the corner rows one forward of :data:`ATTENTION_CASES` ``case`` reads:
    N * Lq * M * L * P * 4 rows of D float32."""
    spec = ATTENTION_CASES[case]
    queries = sum(h * w for h, w in spec.shapes) if spec.queries is None else spec.queries
    return spec.batch * queries * HEADS * len(spec.shapes) * spec.points * 4 * CHANNELS * 4


def _limit(name: str, fn: Callable[[], object], amount: float, unit: str, repeats: int, warmup: int) -> Limit:
    times = _time(fn, "cpu", repeats, warmup)
    return Limit(name, 1e3 * statistics.median(times), 1e3 * min(times), amount / min(times), unit)


def measure_limits(repeats: int = 20, warmup: int = 2, seed: int = 0) -> list[Limit]:
    """The machine's limits at torch's current thread count: read bandwidth of a float32 tensor the
    size of the encoder's value (S*M*D, 18 MB: in the last-level cache) and of one that is not
    (512 MiB: memory); ``embedding_bag`` (mode "sum", weighted) over random rows of D float32 from
    that value, as many rows as one encoder forward reads (torch's own weighted gather, for
    comparison); float32 GEMM (``torch.mm``, 2048^3)."""
    g = torch.Generator().manual_seed(seed)
    spatial = sum(h * w for h, w in ENCODER_SHAPES)
    value = torch.randn(spatial * HEADS, CHANNELS, generator=g)
    big = torch.randn(2**27, generator=g)
    rows = corner_bytes() // (CHANNELS * 4)
    index = torch.randint(0, value.shape[0], (rows,), generator=g)
    offsets = torch.arange(0, rows, len(ENCODER_SHAPES) * POINTS * 4)
    weights = torch.rand(rows, generator=g)
    a, b = torch.randn(2048, 2048, generator=g), torch.randn(2048, 2048, generator=g)
    # The cache bandwidth measured on one tensor varies 2x from one process to the next (how its pages
    # are backed); the best of three separately allocated tensors, each over many 0.2 ms calls.
    copies = [value, value.clone(), value.clone()]
    cache = [_limit("", c.sum, c.numel() * 4e-9, "GB/s", 10 * repeats, warmup) for c in copies]
    best = max(cache, key=lambda limit: limit.rate)
    return [
        Limit(
            "read bandwidth, 18 MB (cache; best of 3 tensors)",
            best.median_ms,
            best.best_ms,
            best.rate,
            "GB/s",
        ),
        _limit("read bandwidth, 512 MiB (memory)", big.sum, big.numel() * 4e-9, "GB/s", 5, 1),
        _limit(
            f"embedding_bag, {rows / 1e6:.1f} M random rows of {CHANNELS} float32",
            lambda: F.embedding_bag(index, value, offsets, mode="sum", per_sample_weights=weights),
            rows * 1e-6,
            "M rows/s",
            5,
            1,
        ),
        _limit("float32 GEMM 2048^3 (torch.mm)", lambda: torch.mm(a, b), 2 * 2048**3 * 1e-9, "GFLOP/s", 5, 1),
    ]


def format_limits(limits: list[Limit], op_ms: dict[tuple[str, str], float] | None = None) -> str:
    """The limits as a table; with the op's times (``{(case, mode): ms}``, mode "forward" or
    "forward+backward"), each as a fraction of its cache-bandwidth bound: the forward reads the corner
    rows once (:func:`corner_bytes`), forward+backward four times (the forward's rows, the backward's
    rows of value, and a read and a write of the same rows of grad_value). The kernels sample one
    (sample, head) slice of value at a time (S * D float32: 2-5 MB in every case), which stays in the
    last-level cache."""
    lines = ["| measurement | median ms | best ms | rate (best) |", "|---|---|---|---|"]
    lines += [f"| {x.name} | {x.median_ms:.1f} | {x.best_ms:.1f} | {x.rate:.1f} {x.unit} |" for x in limits]
    bandwidth = limits[0].rate  # GB/s from the cache
    for (case, mode), ms in (op_ms or {}).items():
        passes = 1 if mode == "forward" else 4
        bound_ms = passes * corner_bytes(case) * 1e-6 / bandwidth
        lines.append(
            f"| ms_deform_attn cpu, {case} {mode} | {ms:.1f} | | bound {bound_ms:.1f} ms at "
            f"{bandwidth:.0f} GB/s: {bound_ms / ms:.2f} of it |"
        )
    return "\n".join(lines)
