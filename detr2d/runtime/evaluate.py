"""The one evaluation and prediction driver: a task's inference over a sharded loader, detections checked
for non-finite values, recorded by the task's evaluator, gathered from every process and scored there (or
drawn by the task's data side)."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from .distributed import all_gather_object, broadcast_object, init_distributed
from .fast_inference import optimize_for_inference
from .io import atomic_write_json
from .logs import plural
from .task import EvalResult, Record, Task

logger = logging.getLogger(__name__)

#: How test / predict run the model: as trained (``eager``), the CPU fast path (batch norm folded into
#: the convolutions, channels-last, native op backends; :func:`.fast_inference.optimize_for_inference`)
#: or the fast path under ``torch.compile`` (``compile``). Training always runs the model as built.
INFERENCE_MODES = ("eager", "fast", "compile")

#: Minimum score of a drawn detection (tools/predict.py, the demos). Lower than the usual 0.5 because
#: small or briefly trained models, the demos' among them, are not confident: at 0.5 the COCO demo's
#: pictures lose most true detections (README, "Score thresholds"). The APIs (``detr2d.Predictor``, the
#: evaluation) keep every one of the top-k detections instead.
DRAW_SCORE_THRESHOLD = 0.3


def inference_model(model: nn.Module, mode: str) -> nn.Module:
    """``model`` for evaluation or prediction in ``mode`` (:data:`INFERENCE_MODES`); the fast modes return
    an optimized copy whose outputs equal the model's within float tolerance."""
    if mode not in INFERENCE_MODES:
        raise ValueError(f"inference mode must be one of {INFERENCE_MODES}, got {mode!r}")
    return model if mode == "eager" else optimize_for_inference(model, compile=mode == "compile")


def check_finite(detections: list[dict[str, torch.Tensor]], where: str) -> None:
    """Refuse detections with a non-finite score or box coordinate: they would reach the evaluator as
    valid boxes (a NaN model once scored AP 0.27 that way).

    Raises:
        FloatingPointError: naming ``where`` and how many detections of how many samples are not finite.
    """
    bad = total = 0
    bad_samples = 0
    for detection in detections:
        finite = torch.isfinite(detection["scores"])
        boxes = detection["boxes"]
        finite &= torch.isfinite(boxes.flatten(1)).all(dim=1)
        bad += int((~finite).sum())
        bad_samples += int(not bool(finite.all()))
        total += finite.numel()
    if bad:
        raise FloatingPointError(
            f"the model produced non-finite outputs: {bad} of {total} detections in {bad_samples} of "
            f"{len(detections)} sample(s) of a batch of {where} have a NaN/inf score or box; the weights "
            "are likely corrupt (check the checkpoint, or the training log for a diverging loss)"
        )


def first_of_each(parts: list[list[Record]]) -> list[Record]:
    """Every process's records in process order, the first record of each sample (:attr:`Record.key`)
    only: under ``data.on_bad_image=skip`` a dataset reads the next sample in place of a bad one, so that
    sample comes twice and the bad one not at all."""
    unique: dict[Hashable, Record] = {}
    for record in (record for part in parts for record in part):
        unique.setdefault(record.key, record)
    return list(unique.values())


def evaluate(
    task: Task,
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    is_main: bool,
    amp: str | None = None,
    out_dir: str | Path | None = None,
    format_only: bool = False,
) -> EvalResult:
    """Run ``task.infer`` over this process's ``loader`` into the task's evaluator, gather every process's
    records (the first of each sample: a sample read in place of a skipped one comes twice) and score
    them with ``evaluator.evaluate()`` on the main process (which writes the evaluator's files and
    ``metrics.json`` into ``out_dir``, when given); metrics and table are shared with every process.
    ``format_only``: write the submission files (``evaluator.write_submission``) into ``out_dir`` instead
    of scoring (splits without ground truth).

    ``model`` must be the unwrapped model (not DDP): shards may differ in length, and a DDP forward is a
    collective.
    """
    if format_only and out_dir is None:
        raise ValueError("format_only needs an output folder (--out) for the submission files")
    out_dir = Path(out_dir) if out_dir is not None else None
    evaluator = task.build_evaluator(loader.dataset, out_dir)
    evaluator.reset()
    model.eval()
    for batch, detections in task.infer(model, loader, device, amp):
        check_finite(detections, f"the {task.name} evaluation")
        evaluator.process(batch, detections)
    evaluator.records = first_of_each(all_gather_object(evaluator.records))
    result = EvalResult({}, "", len(evaluator.records))
    if is_main and format_only:
        written = evaluator.write_submission(out_dir)
        result.table = f"{plural(result.num_samples, 'sample')}; submission files (not scored): " + ", ".join(
            map(str, written)
        )
    elif is_main:
        result = evaluator.evaluate()
        if out_dir is not None:
            atomic_write_json(out_dir / "metrics.json", result.metrics)
            logger.info("wrote %s", out_dir / "metrics.json")
    result.metrics, result.table, result.summary, result.num_skipped = broadcast_object(
        (result.metrics, result.table, result.summary, result.num_skipped)
    )
    result.num_samples = len(evaluator.records)
    return result


def predict(
    task: Task,
    model: nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    device: torch.device,
    score_threshold: float,
    amp: str | None = None,
    limit: int | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Detect and draw every input with ``task.data.draw``; write ``out_dir/predictions.json`` (the
    entries, then one ``{"input", "error"}`` entry per input that could not be read) atomically, also
    when some inputs failed.

    Returns:
        The drawn entries and the failed inputs.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loader = task.data.predict_loader(inputs, limit)
    model.eval()
    entries: list[dict[str, Any]] = []
    try:
        for batch, detections in task.infer(model, loader, device, amp):
            check_finite(detections, "the prediction")
            entries += task.data.draw(batch, detections, score_threshold, out_dir)
    finally:
        errors = list(loader.dataset.errors)
        atomic_write_json(out_dir / "predictions.json", entries + errors, indent=1)
    for error in errors:
        logger.error("skipped %s: %s", error["input"], error["error"])
    return entries, errors


def run_test(
    task: Task,
    checkpoint: str | Path,
    out_dir: str | Path | None = None,
    format_only: bool = False,
    mode: str = "eager",
) -> EvalResult:
    """Load ``checkpoint`` (``task.load_weights``: ours or an official release file) and evaluate it on
    the config's val split in this process (one of ``torchrun``'s, or alone).

    With ``out_dir`` the main process writes ``metrics.json`` and the evaluator's files there (COCO:
    ``detections.json``; nuScenes: ``results_nusc.json`` and the devkit's summaries). ``format_only``
    writes the submission files without scoring (see :func:`evaluate`); ``mode``: see
    :data:`INFERENCE_MODES`.
    """
    info = init_distributed()
    model = task.build_model().to(info.device)
    task.load_weights(model, checkpoint)
    model = inference_model(model, mode)
    dataset = task.data.build_dataset("val")
    if not format_only:
        task.data.check_labels(dataset, training=False)
    loader = task.data.eval_loader(dataset, info.rank, info.world_size)
    amp = task.config["train"]["amp"]
    return evaluate(task, model, loader, info.device, info.is_main, amp, out_dir, format_only)


def run_predict(
    task: Task,
    checkpoint: str | Path,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    score_threshold: float = DRAW_SCORE_THRESHOLD,
    limit: int | None = None,
    mode: str = "eager",
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Load ``checkpoint`` and :func:`predict` ``inputs`` on the best device (``mode``: see
    :data:`INFERENCE_MODES`)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = task.build_model().to(device)
    task.load_weights(model, checkpoint)
    model = inference_model(model, mode)
    return predict(task, model, inputs, out_dir, device, score_threshold, task.config["train"]["amp"], limit)
