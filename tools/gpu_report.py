"""The Python part of ``tools/gpu_check.sh``: checks and timings of the deformable-attention op on a GPU.

Each step runs on its own, guarded: its section is appended to the Markdown report as soon as it ends
(a failing step records its traceback and the next step runs), and the timing table is written row by
row. The exit status is 1 when any step failed.

python tools/gpu_report.py --report OUT/gpu_report.md             # on a GPU machine (gpu_check.sh)
python tools/gpu_report.py --report /tmp/report.md --rehearse     # CPU rehearsal: same steps, tiny sizes
python tools/gpu_report.py --sanitizer-case                        # one tiny CUDA call (compute-sanitizer)

Steps: environment; GPU time (CUDA events) of the native op and of ``reference`` for N = 1, 2, 8 on the
encoder and decoder shapes in float32 and bfloat16; D = 1025 and 2048 against float64; a value of more
than 2**31 elements (64-bit indexing); autocast forward + backward; torch.compile(fullgraph=True);
``use_deterministic_algorithms`` (the CUDA backward must refuse, the CPU one has no atomics); two
Deformable DETR training steps with the native op against the reference op.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ops import MSDeformAttn, available_backends, ms_deform_attn  # noqa: E402
from ops.benchmark import ENCODER_SHAPES, gpu_time_ms, make_step  # noqa: E402
from ops.extension import load_native  # noqa: E402

Shapes = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Plan:
    """What the steps run: the GPU sizes, or tiny CPU sizes for a rehearsal."""

    device: str
    rehearse: bool
    batches: tuple[int, ...]
    timing_shapes: Shapes
    repeats: int
    warmup: int
    large: tuple[int, Shapes, int, int]  # (N, level shapes, M, D) of the > 2**31 element case
    amp_dtypes: tuple[torch.dtype, ...]
    compile_backend: str
    detr_size: dict  # build_model overrides of the training step
    image_size: tuple[int, int]

    @property
    def native(self) -> str:
        return self.device  # the native backend is named after its device


GPU_PLAN = Plan(
    device="cuda",
    rehearse=False,
    batches=(1, 2, 8),
    timing_shapes=ENCODER_SHAPES,
    repeats=10,
    warmup=3,
    large=(5, ((256, 512),), 8, 512),  # 5 * 131072 * 8 * 512 = 2.68e9 elements; sample 4 starts at 2**31
    amp_dtypes=(torch.float16, torch.bfloat16),
    compile_backend="inductor",
    detr_size={"num_queries": 100},
    image_size=(256, 320),
)
REHEARSAL_PLAN = Plan(
    device="cpu",
    rehearse=True,
    batches=(1, 2),
    timing_shapes=((6, 8), (3, 4)),
    repeats=2,
    warmup=1,
    large=(2, ((4, 6),), 2, 8),
    amp_dtypes=(torch.bfloat16,),
    compile_backend="aot_eager",
    detr_size={"num_queries": 10, "embed_dims": 64, "ffn_dims": 64, "encoder_layers": 1, "decoder_layers": 1},
    image_size=(64, 64),
)


class Report:
    """Appends sections to the report file as they finish; remembers which steps failed."""

    def __init__(self, path: Path, fail_step: str | None = None) -> None:
        self.path = path
        self.failed: list[str] = []
        self.fail_step = fail_step

    def write(self, text: str) -> None:
        with self.path.open("a") as f:
            f.write(text)

    def step(self, name: str, fn: Callable[[Plan, Report], str], plan: Plan) -> None:
        """Run one step; its section holds what it returns, or FAILED and the traceback."""
        start = time.perf_counter()
        self.write(f"\n## {name}\n\n")
        try:
            if name == self.fail_step:
                raise RuntimeError(f"--fail {name!r}: a deliberate failure to rehearse the report")
            body = fn(plan, self)
            if plan.device == "cuda":
                torch.cuda.synchronize()  # an asynchronous kernel error belongs to this step
                torch.cuda.empty_cache()
            status = "ok"
        except Exception:  # noqa: BLE001 - a failing step is reported and the next one runs
            body = "FAILED\n\n```\n" + traceback.format_exc()[-4000:] + "```\n"
            status = "FAILED"
            self.failed.append(name)
        self.write(f"{body}\n({status}, {time.perf_counter() - start:.1f} s)\n")
        print(f"{name}: {status} ({time.perf_counter() - start:.1f} s)", flush=True)


def environment(plan: Plan, report: Report) -> str:
    status = load_native()
    lines = [
        f"- torch {torch.__version__}, CUDA {torch.version.cuda}",
        f"- native library: {status.source or 'none'} build; backends {available_backends()}",
    ]
    if plan.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"- {props.name}, capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB"
        )
    if plan.native not in available_backends():
        raise RuntimeError(f"the native {plan.native!r} backend is not available: {status.error}")
    return "\n".join(lines) + "\n"


def timing(plan: Plan, report: Report) -> str:
    """Median GPU time (CUDA events; wall time in a rehearsal) of one op call, every row guarded."""
    report.write("| case | N | dtype | mode | native ms | reference ms | reference / native |\n")
    report.write("|---|---|---|---|---|---|---|\n")
    rows, errors = [], 0
    for case in ("encoder", "decoder"):
        for batch in plan.batches:
            for dtype in (torch.float32, torch.bfloat16):
                for mode in ("forward", "forward+backward"):
                    name = str(dtype).removeprefix("torch.")
                    try:
                        ms = {
                            b: _time_ms(
                                make_step(b, case, dtype, plan.device, mode, batch, plan.timing_shapes), plan
                            )
                            for b in (plan.native, "reference")
                        }
                        ratio = ms["reference"] / ms[plan.native]
                        cells = f"{ms[plan.native]:.3f} | {ms['reference']:.3f} | {ratio:.1f}"
                        rows.append({"case": case, "batch": batch, "dtype": name, "mode": mode, **ms})
                    except Exception as exc:  # noqa: BLE001 - the row says why; the table goes on
                        cells = f"error: {type(exc).__name__}: {str(exc)[:120]} | | "
                        errors += 1
                    report.write(f"| {case} | {batch} | {name} | {mode} | {cells} |\n")
    (report.path.parent / "timings.json").write_text(json.dumps(rows, indent=1))
    if errors:
        raise RuntimeError(f"{errors} timing rows failed (see the table)")
    return ""


def _time_ms(step: Callable[[], None], plan: Plan) -> float:
    if plan.device == "cuda":
        return gpu_time_ms(step, plan.repeats, plan.warmup)
    for _ in range(plan.warmup):
        step()
    times = []
    for _ in range(plan.repeats):
        start = time.perf_counter()
        step()
        times.append(1e3 * (time.perf_counter() - start))
    return sorted(times)[len(times) // 2]


def _random_inputs(
    batch: int, shapes: Shapes, heads: int, channels: int, queries: int, points: int, seed: int = 0
) -> list[torch.Tensor]:
    """float64 CPU inputs: value, spatial_shapes, level_start_index, locations in [-0.1, 1.1], weights."""
    g = torch.Generator().manual_seed(seed)
    spatial_shapes = torch.tensor(shapes)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    value = torch.randn(batch, int(sizes.sum()), heads, channels, generator=g, dtype=torch.float64)
    loc = (
        torch.rand(batch, queries, heads, len(shapes), points, 2, generator=g, dtype=torch.float64) * 1.2
        - 0.1
    )
    weights = torch.rand(batch, queries, heads, len(shapes) * points, generator=g, dtype=torch.float64)
    weights = weights.softmax(-1).view(batch, queries, heads, len(shapes), points)
    return [value, spatial_shapes, starts, loc, weights]


def _upstream(shape: tuple[int, ...], seed: int = 1) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _forward_and_grads(
    backend: str, inputs: list[torch.Tensor], upstream: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Output and the gradients of value, locations and weights for an upstream gradient (default: a
    fixed random one)."""
    value, shapes, starts, loc, weights = (t.detach().requires_grad_(t.is_floating_point()) for t in inputs)
    out = ms_deform_attn(value, shapes, starts, loc, weights, backend=backend)
    upstream = (_upstream(out.shape) if upstream is None else upstream).to(out)
    return [out.detach(), *torch.autograd.grad(out, (value, loc, weights), upstream)]


def _compare(got: list[torch.Tensor], want: list[torch.Tensor], atol: float, rtol: float) -> tuple[str, bool]:
    names = ("output", "grad_value", "grad_locations", "grad_weights")
    parts, ok = [], True
    for name, g, w in zip(names, got, want, strict=True):
        g, w = g.detach().double(), w.detach().to(g.device, torch.float64)
        err = (g - w).abs().max().item() if g.numel() else 0.0
        ok &= bool(torch.allclose(g, w, atol=atol, rtol=rtol))
        parts.append(f"{name} {err:.2e}")
    return ", ".join(parts), ok


def wide_channels(plan: Plan, report: Report) -> str:
    """D = 1025 and 2048 (several channel passes per lane) against float64 reference math."""
    lines, failures = [], []
    for channels in (1025, 2048):
        inputs = _random_inputs(2, ((7, 9), (3, 5)), heads=2, channels=channels, queries=20, points=3)
        want = _forward_and_grads("reference", inputs)
        on_device = [
            t.to(plan.device, torch.float32) if t.is_floating_point() else t.to(plan.device) for t in inputs
        ]
        text, ok = _compare(_forward_and_grads(plan.native, on_device), want, atol=1e-4, rtol=1e-4)
        lines.append(
            f"- D = {channels} float32 vs float64: max abs error {text}: {'ok' if ok else 'MISMATCH'}"
        )
        if not ok:
            failures.append(channels)
    if failures:
        raise AssertionError("\n".join(lines))
    return "\n".join(lines) + "\n"


def large_value(plan: Plan, report: Report) -> str:
    """A bfloat16 value of N*S*M*D > 2**31 elements: the last sample (whose elements all lie beyond 2**31)
    and the first one against the reference run on that sample alone."""
    batch, shapes, heads, channels = plan.large
    spatial = sum(h * w for h, w in shapes)
    elements = batch * spatial * heads * channels
    if not plan.rehearse and elements <= 2**31:
        raise ValueError(f"the large case has only {elements} elements")
    small = _random_inputs(batch, shapes, heads, channels=1, queries=64, points=4)
    g = torch.Generator(device=plan.device).manual_seed(0)
    value = torch.randn(
        batch, spatial, heads, channels, generator=g, device=plan.device, dtype=torch.bfloat16
    )
    shapes_t, starts = small[1].to(plan.device), small[2].to(plan.device)
    loc = (0.5 + 0.5 * small[3]).float().to(plan.device)  # bottom-right half: the highest offsets
    weights = small[4].float().to(plan.device)
    upstream = _upstream((batch, loc.shape[1], heads * channels)).to(torch.bfloat16)
    got = _forward_and_grads(plan.native, [value, shapes_t, starts, loc, weights], upstream)
    lines = [f"- N*S*M*D = {elements} elements ({elements / 2**31:.2f} x 2**31), bfloat16"]
    ok_all = True
    for n in (batch - 1, 0):
        sample = [value[n : n + 1].float(), shapes_t, starts, loc[n : n + 1], weights[n : n + 1]]
        want = _forward_and_grads("reference", sample, upstream[n : n + 1].float())
        text, ok = _compare([g[n : n + 1] for g in got], want, atol=2e-2, rtol=2e-2)
        ok_all &= ok
        first = n * spatial * heads * channels
        lines.append(f"- sample {n} (first element {first}): {text}: {'ok' if ok else 'MISMATCH'}")
    del value, got
    if not ok_all:
        raise AssertionError("\n".join(lines))
    return "\n".join(lines) + "\n"


def _module_inputs(plan: Plan, seed: int = 0) -> tuple[MSDeformAttn, list[torch.Tensor]]:
    torch.manual_seed(seed)
    module = MSDeformAttn(embed_dims=256, num_levels=4, num_heads=8, num_points=4, backend=plan.native).to(
        plan.device
    )
    torch.nn.init.normal_(module.sampling_offsets.weight, std=0.02)
    shapes = ((32, 40), (16, 20), (8, 10), (4, 5)) if not plan.rehearse else ((6, 8), (3, 4), (2, 2), (1, 1))
    spatial_shapes = torch.tensor(shapes, device=plan.device)
    sizes = spatial_shapes.prod(1)
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    s = int(sizes.sum())
    query = torch.randn(2, s, 256, device=plan.device)
    flat = torch.randn(2, s, 256, device=plan.device)
    ref = torch.rand(2, s, 4, 2, device=plan.device)
    return module, [query, ref, flat, spatial_shapes, starts]


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def autocast_step(plan: Plan, report: Report) -> str:
    """MSDeformAttn (encoder-like, Lq = S) forward + backward under autocast vs float32: the output and
    the value-path gradient (input_flatten) within 2% (relative L2). The gradient of the sampling-offset
    weights is listed too: a sum over all queries of terms of random sign, its low-precision error is
    large on random data (~10% in bfloat16) and not a property of the op."""
    module, inputs = _module_inputs(plan)

    def run(dtype: torch.dtype | None) -> tuple[torch.Tensor, ...]:
        flat = inputs[2].clone().requires_grad_()
        module.zero_grad()
        with torch.autocast(plan.device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out = module(inputs[0], inputs[1], flat, *inputs[3:])
        out.float().square().mean().backward()
        return out.detach(), flat.grad, module.sampling_offsets.weight.grad.clone()

    reference = run(None)
    lines, bad = [], []
    for dtype in plan.amp_dtypes:
        results = run(dtype)
        errors = [_relative(got, want) for got, want in zip(results, reference, strict=True)]
        ok = results[0].dtype == dtype and all(math.isfinite(e) for e in errors) and max(errors[:2]) < 0.02
        lines.append(
            f"- {dtype}: output {results[0].dtype}; relative error output {errors[0]:.2e}, input_flatten "
            f"grad {errors[1]:.2e}, sampling_offsets.weight grad {errors[2]:.2e}: "
            f"{'ok' if ok else 'MISMATCH'}"
        )
        if not ok:
            bad.append(dtype)
    if bad:
        raise AssertionError("\n".join(lines))
    return "\n".join(lines) + "\n"


def compile_step(plan: Plan, report: Report) -> str:
    """torch.compile(fullgraph=True) of MSDeformAttn: forward and backward equal eager."""
    module, inputs = _module_inputs(plan)
    compiled = torch.compile(module, fullgraph=True, backend=plan.compile_backend)
    results = []
    for fn in (module, compiled):
        start = time.perf_counter()
        query = inputs[0].clone().requires_grad_()
        out = fn(query, *inputs[1:])
        out.square().mean().backward()
        results.append((out.detach(), query.grad, time.perf_counter() - start))
    errors = [(a - b).abs().max().item() for a, b in zip(results[0][:2], results[1][:2], strict=True)]
    ok = all(e < 1e-4 for e in errors)
    text = (
        f"- {plan.compile_backend}: first call {results[1][2]:.1f} s; max abs difference output "
        f"{errors[0]:.2e}, query grad {errors[1]:.2e}: {'ok' if ok else 'MISMATCH'}"
    )
    if not ok:
        raise AssertionError(text)
    return text + "\n"


def deterministic_step(plan: Plan, report: Report) -> str:
    """Under torch.use_deterministic_algorithms(True) the CUDA backward (atomic adds) must refuse; the CPU
    backward (no atomics) runs. The op is called alone (cuBLAS in a module would refuse first)."""
    inputs = _random_inputs(2, ((5, 6), (2, 3)), heads=2, channels=8, queries=7, points=3)
    inputs = [t.float().to(plan.device) if t.is_floating_point() else t.to(plan.device) for t in inputs]
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        _forward_and_grads(plan.native, inputs)
        raised = ""
    except RuntimeError as exc:
        raised = str(exc).splitlines()[0]
    finally:
        torch.use_deterministic_algorithms(previous)
    expected = plan.device == "cuda"
    if expected and "ms_deform_attn_backward" not in raised:
        raise AssertionError(f"the CUDA backward did not refuse deterministic mode (got {raised!r})")
    if not expected and raised:
        raise AssertionError(f"the CPU backward refused deterministic mode: {raised}")
    return f"- {plan.native} backward: {'refused: ' + raised if raised else 'runs'} (as expected)\n"


def detr_training(plan: Plan, report: Report) -> str:
    """Two AdamW steps of a small Deformable DETR with the native op and with the reference op, from the
    same initialisation and data: the losses must agree."""
    from detr2d import build_criterion, build_model, model_config

    height, width = plan.image_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(2, 3, height, width, generator=g).to(plan.device)
    mask = torch.zeros(2, height, width, dtype=torch.bool, device=plan.device)
    mask[1, :, width * 3 // 4 :] = True
    targets = [
        {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3], [0.3, 0.6, 0.1, 0.1]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.4, 0.4, 0.3, 0.2]])},
    ]
    targets = [{k: v.to(plan.device) for k, v in t.items()} for t in targets]
    losses = {}
    for backend in (plan.native, "reference"):
        torch.manual_seed(0)
        overrides = {
            "backbone": "resnet18",
            "num_classes": 5,
            "dropout": 0.0,
            "backend": backend,
            **plan.detr_size,
        }
        model = build_model("deformable_detr", **overrides).to(plan.device)
        layers = model_config("deformable_detr", **overrides).decoder_layers
        criterion = build_criterion(num_classes=5, decoder_layers=layers)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        losses[backend] = []
        for _ in range(2):
            total = criterion.weighted_total(criterion(model(images, mask), targets))
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            losses[backend].append(total.item())
    native, reference = losses[plan.native], losses["reference"]
    ok = all(abs(a - b) <= 5e-3 * abs(b) for a, b in zip(native, reference, strict=True))
    text = f"- losses per step: {plan.native} {native}, reference {reference}: {'ok' if ok else 'MISMATCH'}"
    if not ok:
        raise AssertionError(text)
    return text + "\n"


STEPS: dict[str, Callable[[Plan, Report], str]] = {
    "environment": environment,
    "timing": timing,
    "wide channels": wide_channels,
    "large value (64-bit indexing)": large_value,
    "autocast": autocast_step,
    "torch.compile": compile_step,
    "deterministic algorithms": deterministic_step,
    "Deformable DETR training, native vs reference": detr_training,
}


def sanitizer_case() -> None:
    """One tiny forward + backward on the GPU, for compute-sanitizer."""
    inputs = _random_inputs(2, ((5, 6), (2, 3)), heads=2, channels=33, queries=7, points=3)
    on_device = [t.float().cuda() if t.is_floating_point() else t.cuda() for t in inputs]
    _forward_and_grads("cuda", on_device)
    torch.cuda.synchronize()
    print("sanitizer case done")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--report", type=Path, help="Markdown file to append the sections to")
    parser.add_argument("--rehearse", action="store_true", help="run every step on the CPU with tiny sizes")
    parser.add_argument("--sanitizer-case", action="store_true", help="only one tiny CUDA call")
    parser.add_argument("--fail", choices=sorted(STEPS), help="make this step fail (to rehearse the report)")
    args = parser.parse_args()
    if args.sanitizer_case:
        sanitizer_case()
        return
    if args.report is None:
        parser.error("--report is required")
    plan = REHEARSAL_PLAN if args.rehearse else GPU_PLAN
    report = Report(args.report, fail_step=args.fail)
    for name, fn in STEPS.items():
        report.step(name, fn, plan)
    summary = f"failed steps: {', '.join(report.failed)}" if report.failed else "all steps passed"
    report.write(f"\n**{summary}**\n")
    print(summary)
    sys.exit(1 if report.failed else 0)


if __name__ == "__main__":
    main()
