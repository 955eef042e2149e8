"""The study engine (``make study``): several configs trained and measured side by side, each in a run folder
of its own and a subprocess of its own (its peak RSS is the model's), so that a finished run is reused and an
interrupted one continues from its checkpoint. The table of models and the data live with the entry point
(``tools/study.py``); the report with :mod:`detr2d.runtime.study_report`.

A run's ``spec.json`` (config, overrides, latency settings) is written before it starts; its
``result.json`` (metrics, history, parameters, training time, images/s, peak memory, latency eager and fast
path, settings) when it has finished. A folder holding a run of other settings is never overwritten.
"""

from __future__ import annotations

import json
import resource
import statistics
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

import torch

from .cli import load_task_config
from .evaluate import inference_model
from .fit import LATEST, VAL_DIR, fit
from .io import atomic_write_json
from .logs import read_log
from .tasks import build_task

RESULT, SPEC, ERROR = "result.json", "spec.json", "error.txt"
Entry = dict[str, Any]
TimedPath = tuple[str, Callable[[], object]]


@dataclass(frozen=True)
class StudyRun:
    """One model of a study: ``config`` (relative to the study's root) with ``overrides``, in
    ``OUT/group/name``; ``unavailable`` says why it cannot run (None: it can); ``note`` what is inherent to
    the model; ``latency``: ``{"samples": val samples timed, "runs": timed runs}``."""

    group: str
    name: str
    config: str
    overrides: tuple[str, ...]
    latency: dict[str, int]
    note: str = ""
    unavailable: str | None = None

    @property
    def spec(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "name": self.name,
            "config": self.config,
            "overrides": list(self.overrides),
            "latency": self.latency,
        }


def clock(seconds: float) -> str:
    """``seconds`` as h:mm:ss."""
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02}:{secs:02}"


def time_paths(paths: list[TimedPath], runs: int, warmup: int) -> dict[str, list[tuple[float, float]]]:
    """(wall, CPU) seconds of every timed call of every path (CPU: all threads of the process); calls
    alternate between paths, warm-up calls first."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in paths}
    with torch.inference_mode():
        for i in range(warmup + runs):
            for name, call in paths:
                wall, cpu = time.perf_counter(), time.process_time()
                call()
                if i >= warmup:
                    times[name].append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def run_study(
    runs: Sequence[StudyRun], out: Path, expected_s: dict[str, float], worker_command: list[str]
) -> list[Entry]:
    """Run (or reuse) every run in its own subprocess (``worker_command + [run_dir]``), printing the
    overall progress and ETA (``expected_s``: seconds of one run per group until one has finished); one
    entry per run: ``group``, ``name``, ``config``, ``note``, ``status`` (trained | reused | not available
    | failed), ``reason``, ``result`` (the run's result.json, or None)."""
    entries: list[Entry] = []
    seconds: dict[str, list[float]] = {}
    start = time.perf_counter()
    for index, run in enumerate(runs):
        entry: Entry = {
            "group": run.group,
            "name": run.name,
            "config": run.config,
            "note": run.note,
            "result": None,
            "reason": "",
        }
        entries.append(entry)
        remaining = [r for r in runs[index:] if not (out / r.group / r.name / RESULT).is_file()]
        eta = sum(
            statistics.mean(seconds[r.group]) if seconds.get(r.group) else expected_s.get(r.group, 0)
            for r in remaining
        )
        print(
            f"[study {index + 1}/{len(runs)} {run.group}/{run.name}] elapsed "
            f"{clock(time.perf_counter() - start)}, ETA of the study {clock(eta)}",
            flush=True,
        )
        if run.unavailable is not None:
            entry.update(status="not available", reason=run.unavailable)
            print(f"  not available: {run.unavailable}", flush=True)
            continue
        run_dir = out / run.group / run.name
        result = reusable_result(run_dir, run.spec)
        if result is not None:
            entry.update(status="reused", result=result)
            print(f"  reused {run_dir / RESULT}", flush=True)
            continue
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_dir / SPEC, run.spec, indent=2)
        (run_dir / ERROR).unlink(missing_ok=True)
        began = time.perf_counter()
        code = subprocess.call([*worker_command, str(run_dir)])
        seconds.setdefault(run.group, []).append(time.perf_counter() - began)
        if code == 0 and (run_dir / RESULT).is_file():
            entry.update(status="trained", result=json.loads((run_dir / RESULT).read_text()))
            print(f"  done in {clock(seconds[run.group][-1])}", flush=True)
        else:
            error = run_dir / ERROR
            last = error.read_text().strip().splitlines()[-1] if error.is_file() else f"exit status {code}"
            entry.update(status="failed", reason=f"{last} (see {run_dir}/train.log)")
            print(f"  failed: {entry['reason']}", flush=True)
    return entries


def reusable_result(run_dir: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    """The finished run's result in ``run_dir`` when it ran ``spec``; None when it has not finished.

    Raises:
        SystemExit: ``run_dir`` holds a run of other settings (never overwritten).
    """
    for name in (RESULT, SPEC):
        path = run_dir / name
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("spec", saved) != spec:
                raise SystemExit(
                    f"error: {path} is a run of other settings (another --budget, data or overrides); "
                    "choose another --out or remove that folder"
                )
    result = run_dir / RESULT
    return json.loads(result.read_text()) if result.is_file() else None


def read_epochs(run_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """The epoch records of ``run_dir/log.jsonl`` (:func:`detr2d.runtime.logs.read_log`: each epoch as its
    latest attempt logged it, in order) and the number of training iterations run."""
    epochs: dict[int, dict[str, Any]] = {}
    iterations = 0
    for record in read_log(run_dir / "log.jsonl"):  # an interrupted run's redone work counted once
        if "iter" in record:
            iterations = max(iterations, int(record["iter"]))
        elif "train" in record:
            epochs[int(record["epoch"])] = record
    return [epochs[e] for e in sorted(epochs)], iterations


class Preloaded:
    """Batches read ahead of the timing (decoding is not timed), with the loader's ``dataset``."""

    def __init__(self, loader: torch.utils.data.DataLoader, count: int) -> None:
        self.dataset = loader.dataset
        self.batches = [batch for batch in islice(loader, count) if batch is not None]

    def __iter__(self):
        return iter(self.batches)


def measure_latency(run_dir: Path, spec: dict[str, Any], root: Path) -> tuple[dict[str, float], int]:
    """Milliseconds per image (2D) or frame (BEV) of the trained model over the first val samples, batch 1,
    eager and fast path (:func:`detr2d.runtime.evaluate.inference_model`), calls alternating; and the
    model's parameter count."""
    overrides = [*spec["overrides"], *(["train.eval_batch_size=1"] if spec["group"] == "2d" else [])]
    task = build_task(load_task_config(root / spec["config"], overrides))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = task.build_model()
    task.load_weights(model, run_dir / LATEST)
    model = model.to(device).eval()
    loader = Preloaded(
        task.data.eval_loader(task.data.build_dataset("val"), 0, 1), spec["latency"]["samples"]
    )
    paths = []
    for mode in ("eager", "fast"):
        prepared = inference_model(model, mode)
        paths.append((mode, lambda m=prepared: sum(1 for _ in task.infer(m, loader, device))))
    times = time_paths(paths, spec["latency"]["runs"], warmup=1)
    latency = {
        mode: statistics.median(t[0] for t in values) / len(loader.batches) * 1e3
        for mode, values in times.items()
    }
    return latency, sum(p.numel() for p in model.parameters())


def run_worker(run_dir: Path, root: Path) -> None:
    """Train (or continue) the run of ``run_dir/spec.json`` (its config relative to ``root``), then measure
    it; write ``result.json``, or on failure ``error.txt`` with the traceback (and raise)."""
    try:
        _train_and_measure(run_dir, root)
    except BaseException:
        (run_dir / ERROR).write_text(traceback.format_exc())
        raise


def _train_and_measure(run_dir: Path, root: Path) -> None:
    spec = json.loads((run_dir / SPEC).read_text())
    task = build_task(load_task_config(root / spec["config"], spec["overrides"]))
    checkpoint = run_dir / LATEST
    fit(task, run_dir, resume=checkpoint if checkpoint.is_file() else None)
    config = task.config
    records, iterations = read_epochs(run_dir)
    unit = task.data.unit
    metrics = json.loads((run_dir / VAL_DIR / "metrics.json").read_text())
    train_time, history = 0.0, []
    for record in records:
        train_time += record["train"]["time_s"]
        history.append(
            {"epoch": record["epoch"] + 1, "train_time_s": train_time, "metrics": record.get("val", {})}
        )
    per_s = sum(r["train"][f"{unit}_per_s"] * r["train"]["time_s"] for r in records) / max(train_time, 1e-9)
    images_per_sample = 1
    if spec["group"] == "bev":
        model = config["model"]  # PETRv2 reads 12 views of one frame, BEVFormer 6 per history frame
        images_per_sample = model.get("num_views") or model.get("num_cams", 6) * (
            1 + config["data"].get("num_history", 0)
        )
    latency, params = measure_latency(run_dir, spec, root)
    sizes = {split: len(task.data.build_dataset(split)) for split in ("train", "val")}
    result = {
        "spec": spec,
        "params": params,
        "unit": unit,
        "train_time_s": train_time,
        "train_per_s": per_s,
        "images_per_sample": images_per_sample,
        "images_per_s": per_s * images_per_sample,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "latency_ms": latency,
        "metrics": metrics,
        "history": history,
        "iterations": iterations,
        "settings": {
            "train samples": sizes["train"],
            "val samples": sizes["val"],
            "image size": config["data"]["image_size"]
            if spec["group"] == "bev"
            else config["augment"]["eval_size"],
            "queries": config["model"].get("num_queries"),
            "backbone": config["model"].get("backbone"),
            "history frames": config["data"].get("num_history", 0) if spec["group"] == "bev" else 0,
            "epochs": config["schedule"]["epochs"],
            "iterations": iterations,
            "batch size": config["train"]["batch_size"],
            "lr": config["optim"]["lr"],
            "seed": config["train"]["seed"],
        },
    }
    atomic_write_json(run_dir / RESULT, result, indent=1)
