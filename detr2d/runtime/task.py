"""What a detector contributes to the runtime: a :class:`Task`.

The runtime (``fit``, ``evaluate``, ``predict``) owns the process group, loops, precision, checkpoints,
logging and files; a task says how to build its model and criterion, read its data, move a batch to the
device, run inference over a loader, score detections and draw them. Adding a detector means writing
one subclass and naming it in :data:`detr2d.runtime.tasks.TASKS`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..checkpoint import load_checkpoint
from .losses import Criterion

#: A task's detection records of one sample (JSON-serializable; see :meth:`Task.records`).
Records = list[dict[str, Any]]


@dataclass
class EvalResult:
    """``metrics``: the evaluator's numbers by name (the same on every process); ``table``: a printable
    summary; ``num_samples``: samples evaluated over all processes; ``records``: every process's
    detection records on the main process (this process's elsewhere); ``summary``: the few metrics that
    go into the training log line (e.g. AP, or NDS and mAP)."""

    metrics: dict[str, Any]
    table: str
    num_samples: int
    records: Records = field(default_factory=list)
    summary: dict[str, float] = field(default_factory=dict)


class Task:
    """A detector as the runtime sees it; ``config`` is the whole experiment config (nested dicts).

    Subclasses set :attr:`name` and implement the methods that raise ``NotImplementedError``.
    """

    name: str = ""
    #: What one batch element is called in logs and speeds (``images``, ``samples``).
    unit: str = "samples"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    # ---- model and loss -------------------------------------------------------------------------
    def build_model(self, pretrained: bool = False) -> nn.Module:
        """The model on the CPU: random init, plus (``pretrained``, a fresh training run) the configured
        backbone weights, refusing frozen batch norm without weights."""
        raise NotImplementedError

    def build_criterion(self) -> Criterion:
        """The training loss: ``criterion(outputs, targets)`` -> named raw terms."""
        raise NotImplementedError

    def class_names(self) -> dict[int, str]:
        """Label -> name of the labels the model outputs that have a name."""
        raise NotImplementedError

    def load_weights(self, model: nn.Module, path: str | Path) -> None:
        """Load a checkpoint for testing or prediction: ours or an official release file, strict."""
        load_checkpoint(model, path, strict=True)

    def init_from(self, model: nn.Module, path: str | Path) -> str:
        """Load a checkpoint's matching tensors into a fresh ``model`` (fine-tuning); returns a report."""
        raise NotImplementedError(f"task {self.name!r} has no init_from")

    # ---- data -----------------------------------------------------------------------------------
    def build_dataset(self, split: str) -> Dataset:
        """``split`` "train" (with augmentation) or "val" (evaluation transforms)."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """A batch from dataset items."""
        raise NotImplementedError

    def eval_loader(self, dataset: Dataset, rank: int, world_size: int) -> DataLoader:
        """This process's share of ``dataset`` in the order :meth:`infer` needs."""
        raise NotImplementedError

    def split_batch(self, batch: Any, device: torch.device) -> tuple[tuple[Any, ...], Any]:
        """``(model inputs, criterion targets)`` of a training batch on ``device``: the step runs
        ``criterion(model(*inputs), targets)``."""
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        """Samples in a batch (for speeds)."""
        raise NotImplementedError

    # ---- inference, scoring, drawing --------------------------------------------------------------
    def infer(
        self, model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None
    ) -> Iterator[tuple[Any, list[dict[str, torch.Tensor]]]]:
        """Run the eval-mode model over ``loader`` without gradient, its forward passes under
        :func:`detr2d.runtime.precision.autocast` ``(device, amp)``, and yield ``(batch, detections)``:
        one dict per sample with CPU ``boxes``, ``scores``, ``labels`` tensors."""
        raise NotImplementedError

    def records(self, batch: Any, detections: list[dict[str, torch.Tensor]]) -> Records:
        """The evaluator's records of one batch's detections (e.g. COCO results entries)."""
        raise NotImplementedError

    def score(self, records: Records, dataset: Dataset, out_dir: Path | None) -> EvalResult:
        """Score every process's records against ``dataset``'s ground truth with the official evaluator
        (main process only), writing the evaluator's files into ``out_dir`` when given."""
        raise NotImplementedError

    def write_results(self, records: Records, dataset: Dataset, out_dir: Path) -> list[Path]:
        """Write every process's records as the benchmark's submission file(s) into ``out_dir``, without
        scoring (also for splits without ground truth); returns the written paths."""
        raise NotImplementedError(f"task {self.name!r} writes no submission files")

    def check_labels(self, dataset: Dataset, training: bool) -> None:
        """Before training (raise ``ValueError``) or evaluation (warn): ground truth of ``dataset`` that
        the model cannot output (e.g. categories beyond ``num_classes``)."""

    def predict_loader(self, inputs: Sequence[str | Path], limit: int | None = None) -> DataLoader:
        """A loader over the files named by ``inputs`` (images, folders, infos files) for prediction,
        in the order :meth:`infer` needs. Its dataset has ``errors``: a list of ``{"input", "error"}``
        for the inputs that could not be read (skipped, not fatal). ``limit``: the first N samples only
        (per input file where an input holds many)."""
        raise NotImplementedError

    def draw(
        self, batch: Any, detections: list[dict[str, torch.Tensor]], score_threshold: float, out_dir: Path
    ) -> Records:
        """Write the pictures of one batch into ``out_dir``; return its ``predictions.json`` records."""
        raise NotImplementedError
