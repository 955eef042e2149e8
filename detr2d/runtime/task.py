"""What a detector contributes to the runtime: a model-side :class:`Task`, the :class:`DataSide` of its
benchmark family and that family's :class:`Evaluator`.

The runtime (``fit``, ``evaluate``, ``predict``) owns the process group, loops, precision, checkpoints,
logging and files. A task says how to build its model and criterion, move a batch to the device and run
inference over a loader; it names the data side (datasets, loaders, label checks, drawing) and the
evaluator (records, scoring, submission files) of its benchmark. Detectors of one benchmark (COCO,
nuScenes) share these two, so adding a detector means writing one small :class:`Task` subclass and naming
it in :data:`detr2d.runtime.tasks.TASKS`.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .checkpoint import load_checkpoint
from .losses import Criterion

#: One batch's detections as :meth:`Task.infer` yields them: one dict per sample with CPU ``boxes``,
#: ``scores``, ``labels`` tensors.
Detections = list[dict[str, torch.Tensor]]


@dataclass
class EvalResult:
    """``metrics``: the evaluator's numbers by name (the same on every process); ``table``: a printable
    summary; ``num_samples``: samples evaluated over all processes; ``summary``: the few metrics that go
    into the training log line (e.g. AP, or NDS and mAP); ``num_skipped``: samples of the split that could
    not be read (``data.on_bad_image=skip``) and were left out of the scoring."""

    metrics: dict[str, Any]
    table: str
    num_samples: int
    summary: dict[str, float] = field(default_factory=dict)
    num_skipped: int = 0


@dataclass
class Record:
    """One sample's detections as an evaluator keeps them (a dataclass per benchmark family; picklable,
    gathered from every process)."""

    @property
    def key(self) -> Hashable:
        """The sample's id in its split (COCO image id, nuScenes sample token)."""
        raise NotImplementedError


class Evaluator:
    """Scores a model's detections on one dataset (detectron2's ``DatasetEvaluator``).

    The runtime calls :meth:`reset`, then :meth:`process` for every batch of this process's share, gathers
    every process's :attr:`records` into the main process's evaluator (the first record of each sample
    :attr:`Record.key`), and there calls :meth:`evaluate` or, for splits without ground truth,
    :meth:`write_submission`.

    Args:
        task: the model side (its ``config``, ``class_names()``, ...).
        dataset: the evaluated dataset (as the family's :meth:`DataSide.build_dataset` makes it).
        out_dir: where :meth:`evaluate` writes the evaluator's files (e.g. ``detections.json``), or None.
    """

    def __init__(self, task: Task, dataset: Dataset, out_dir: Path | None = None) -> None:
        self.task = task
        self.config = task.config
        self.dataset = dataset
        self.out_dir = out_dir
        self.records: list[Record] = []

    def reset(self) -> None:
        """Forget the records of an earlier evaluation."""
        self.records = []

    def process(self, batch: Any, detections: Detections) -> None:
        """Keep the records of one batch's detections (:meth:`records_of`)."""
        self.records += self.records_of(batch, detections)

    def records_of(self, batch: Any, detections: Detections) -> list[Record]:
        """The typed records of one batch's detections, one per sample."""
        raise NotImplementedError

    def evaluate(self) -> EvalResult:
        """Score :attr:`records` (every process's, on the main process) against the dataset's ground truth
        with the official evaluator, writing its files into ``out_dir`` when given."""
        raise NotImplementedError

    def write_submission(self, out_dir: Path) -> list[Path]:
        """Write :attr:`records` as the benchmark's submission file(s) into ``out_dir``, without scoring
        (also for splits without ground truth); returns the written paths."""
        raise NotImplementedError(f"{type(self).__name__} writes no submission files")


class DataSide:
    """The data of a benchmark family (COCO, nuScenes) for any detector of it: datasets, loaders, label
    checks, drawing. ``task`` is the model side (its ``config``, ``num_classes()``, ...)."""

    #: What one batch element is called in logs and speeds (``images``, ``samples``).
    unit: ClassVar[str] = "samples"

    def __init__(self, task: Task) -> None:
        self.task = task
        self.config = task.config

    def build_dataset(self, split: str) -> Dataset:
        """``split`` "train" (with augmentation) or "val" (evaluation transforms)."""
        raise NotImplementedError

    def collate(self, items: list[Any]) -> Any:
        """A batch from dataset items."""
        raise NotImplementedError

    def eval_loader(self, dataset: Dataset, rank: int, world_size: int) -> DataLoader:
        """This process's share of ``dataset`` in the order :meth:`Task.infer` needs."""
        raise NotImplementedError

    def predict_loader(self, inputs: Sequence[str | Path], limit: int | None = None) -> DataLoader:
        """A loader over the files named by ``inputs`` (images, folders, infos files) for prediction, in
        the order :meth:`Task.infer` needs. Its dataset has ``errors``: a list of ``{"input", "error"}``
        for the inputs that could not be read (skipped, not fatal; their batches are None). ``limit``: the
        first N samples only (per input file where an input holds many)."""
        raise NotImplementedError

    def batch_size(self, batch: Any) -> int:
        """Samples in a batch (for speeds)."""
        raise NotImplementedError

    def check_labels(self, dataset: Dataset, training: bool) -> None:
        """Before training (raise ``ValueError``) or evaluation (warn): ground truth of ``dataset`` that
        the model cannot output (e.g. categories beyond ``num_classes``)."""

    def draw(
        self, batch: Any, detections: Detections, score_threshold: float, out_dir: Path
    ) -> list[dict[str, Any]]:
        """Write the pictures of one batch into ``out_dir``; return its ``predictions.json`` entries."""
        raise NotImplementedError


class Task:
    """A detector as the runtime sees it (the model side); ``config`` is the whole experiment config.

    Subclasses set :attr:`name`, :attr:`data_class` and :attr:`evaluator_class` (their benchmark family's)
    and implement the methods that raise ``NotImplementedError``.
    """

    name: ClassVar[str] = ""
    #: The benchmark family's data side and evaluator.
    data_class: ClassVar[type[DataSide]] = DataSide
    evaluator_class: ClassVar[type[Evaluator]] = Evaluator

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.data = self.data_class(self)

    def build_evaluator(self, dataset: Dataset, out_dir: Path | None = None) -> Evaluator:
        """The family's evaluator of ``dataset``, writing its files into ``out_dir`` (when given)."""
        return self.evaluator_class(self, dataset, out_dir)

    def build_model(self, pretrained: bool = False) -> nn.Module:
        """The model on the CPU: random init, plus (``pretrained``, a fresh training run) the configured
        backbone weights, refusing frozen batch norm without weights."""
        raise NotImplementedError

    def build_criterion(self) -> Criterion:
        """The training loss: ``criterion(outputs, targets)`` -> named raw terms."""
        raise NotImplementedError

    def num_classes(self) -> int:
        """Labels the model outputs (label checks of the data side)."""
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

    def split_batch(self, batch: Any, device: torch.device) -> tuple[tuple[Any, ...], Any]:
        """``(model inputs, criterion targets)`` of a training batch on ``device``: the step runs
        ``criterion(model(*inputs), targets)``."""
        raise NotImplementedError

    def infer(
        self, model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None
    ) -> Iterator[tuple[Any, Detections]]:
        """Run the eval-mode model over ``loader`` (skipping None batches: prediction inputs that could
        not be read) without gradient, its forward passes under
        :func:`detr2d.runtime.precision.autocast` ``(device, amp)``, and yield ``(batch, detections)``."""
        raise NotImplementedError
