"""The COCO family of the runtime: its data side and evaluator, shared by every 2D detector on COCO-format
data (a detector adds only its model side, e.g. :class:`detr2d.task.CocoDetectionTask`).

Config sections read here: ``data`` (``root``, ``train_split``, ``val_split``, ``val_ann_file``,
``contiguous_labels``, ``on_bad_image``, ``num_workers``), ``augment`` (see
:func:`datasets.transforms.build_transforms`), ``train`` (``seed``, ``eval_batch_size``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from datasets.coco import CocoDetection, build_coco_dataset, coco_paths
from datasets.coco_evaluation import coco_metrics
from datasets.collate import collate_detection
from datasets.files import read_json, read_rgb
from datasets.transforms import build_transforms

from .classes import class_names
from .runtime.data import ShardSampler, build_eval_loader
from .runtime.io import atomic_write, atomic_write_json
from .runtime.logs import plural
from .runtime.task import DataSide, Detections, EvalResult, Evaluator, Record
from .visualize import draw_detections

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

#: ``(images (B, 3, H, W), mask (B, H, W), targets)`` as :func:`datasets.collate.collate_detection` makes it.
Batch = tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]


def targets_to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Move the tensors of each target dict to ``device``."""
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def coco_class_names(config: dict[str, Any], num_classes: int) -> dict[int, str]:
    """Label -> name for a model with ``num_classes`` logits: the val annotation file's categories when it
    exists (labels as the dataset assigns them), else the COCO names for a 91-class model, else none."""
    data = config["data"]
    ann_file = coco_paths(data["root"], data["val_split"])[1]
    if data["val_ann_file"] is not None:
        ann_file = Path(data["root"]) / data["val_ann_file"]
    names = None
    if ann_file.is_file():
        categories = read_json(ann_file, "COCO annotation")["categories"]
        categories = sorted((c["id"], c["name"]) for c in categories)
        pairs = enumerate(n for _, n in categories) if data["contiguous_labels"] else categories
        names = {label: name for label, name in pairs if label < num_classes}
    return class_names(num_classes, names)


def list_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files named by ``inputs``: files as given, folders expanded to their images (sorted).

    Raises:
        FileNotFoundError: an input does not exist, or nothing to process was found.
    """
    paths: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise FileNotFoundError(f"input not found: {item}")
    if not paths:
        raise FileNotFoundError(f"no image files in {[str(i) for i in inputs]}")
    return paths


class ImageFiles(Dataset):
    """Image files for prediction: ``(image tensor, {"file", "image", "orig_size"})`` per file at the
    eval resize; a file that cannot be read is recorded in :attr:`errors` and yields None."""

    def __init__(self, paths: Sequence[Path], transform: Any) -> None:
        self.paths = list(paths)
        self.transform = transform
        self.errors: list[dict[str, str]] = []
        self.stems: list[str] = []  # output names: the file stem, made unique with trailing "_"
        for path in self.paths:
            stem = path.stem
            while stem in self.stems:
                stem += "_"
            self.stems.append(stem)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, Any]] | None:
        path = self.paths[index]
        try:
            image = read_rgb(path, "input image")
        except (OSError, ValueError) as error:
            self.errors.append({"input": str(path), "error": str(error)})
            return None
        empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
        tensor, _ = self.transform(image, empty, np.random.default_rng(0))
        target = {"file": path, "stem": self.stems[index], "image": image}
        return tensor, {**target, "orig_size": torch.tensor(image.shape[:2])}


def collate_readable(items: list[Any]) -> Batch | None:
    """:func:`collate_detection` of the items that could be read (None when none could)."""
    items = [item for item in items if item is not None]
    return collate_detection(items) if items else None


class CocoData(DataSide):
    """COCO-format datasets (:class:`datasets.coco.CocoDetection`), image-file prediction, the check of
    categories against the model's ``num_classes()`` and drawing of 2D boxes."""

    unit = "images"

    def build_dataset(self, split: str) -> CocoDetection:
        data, augment = self.config["data"], self.config["augment"]
        train = split == "train"
        transforms = build_transforms(
            train,
            scales=augment["scales"],
            max_size=augment["max_size"],
            crop_resize_sizes=augment["crop_resize_sizes"],
            crop_size=tuple(augment["crop_size"]),
            flip_prob=augment["flip_prob"],
            eval_size=augment["eval_size"],
        )
        folder = data["train_split"] if train else data["val_split"]
        return build_coco_dataset(
            data["root"],
            folder,
            transforms,
            self.config["train"]["seed"],
            data["on_bad_image"],
            None if train else data["val_ann_file"],
            data["contiguous_labels"],
        )

    def collate(self, items: list[Any]) -> Batch:
        return collate_detection(items)

    def eval_loader(self, dataset: Dataset, rank: int, world_size: int) -> DataLoader:
        return build_eval_loader(
            dataset,
            self.config["train"]["eval_batch_size"],
            self.config["data"]["num_workers"],
            collate_detection,
            ShardSampler(len(dataset), rank, world_size),
        )

    def predict_loader(self, inputs: Sequence[str | Path], limit: int | None = None) -> DataLoader:
        augment = self.config["augment"]
        transform = build_transforms(False, eval_size=augment["eval_size"], max_size=augment["max_size"])
        dataset = ImageFiles(list_images(inputs)[:limit], transform)
        return DataLoader(dataset, batch_size=1, collate_fn=collate_readable)

    def batch_size(self, batch: Batch) -> int:
        return batch[0].shape[0]

    def check_labels(self, dataset: CocoDetection, training: bool) -> None:
        num_classes = self.task.num_classes()
        beyond = dataset.categories_beyond(num_classes)
        if not beyond:
            return
        message = (
            f"{dataset.ann_file} has {len(beyond)} categories that a model with "
            f"num_classes={num_classes} cannot output: {beyond[:10]}"
        )
        labels = "contiguous" if self.config["data"]["contiguous_labels"] else "category ids"
        hint = f" (labels are the {labels}; raise model.num_classes or set data.contiguous_labels=true)"
        if training:
            raise ValueError(message + hint)
        logger.warning("%s; their AP is 0%s", message, hint)

    def draw(
        self, batch: Batch, detections: Detections, score_threshold: float, out_dir: Path
    ) -> list[dict[str, Any]]:
        """``out_dir/<image stem>.png`` with the detections scoring at least ``score_threshold`` (named
        classes only, when names are known); entries ``{"file", "output", "detections": [{"category_id",
        "category", "score", "bbox" (x1, y1, x2, y2 pixels)}]}``. An input file is never overwritten."""
        names = self.task.class_names()
        entries = []
        for target, result in zip(batch[2], detections, strict=True):
            path: Path = target["file"]
            out_path = out_dir / f"{target['stem']}.png"
            if out_path.resolve() == path.resolve():
                raise FileExistsError(f"{out_path} is an input image; choose an --out folder without inputs")
            keep = result["scores"] >= score_threshold
            if names:
                keep &= torch.isin(result["labels"], torch.tensor(sorted(names)))
            scores, labels = result["scores"][keep].tolist(), result["labels"][keep].tolist()
            boxes = result["boxes"][keep].tolist()
            drawn = draw_detections(target["image"], boxes, labels, scores, names)
            ok, png = cv2.imencode(".png", cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR))
            if not ok:
                raise OSError(f"cannot encode {out_path}")
            atomic_write(out_path, lambda f, png=png: f.write(png.tobytes()))
            found = [
                {"category_id": label, "category": names.get(label, str(label)), "score": score, "bbox": box}
                for score, label, box in zip(scores, labels, boxes, strict=True)
            ]
            entries.append({"file": str(path), "output": str(out_path), "detections": found})
            logger.info("%s: %s -> %s", path, plural(len(found), "detection"), out_path)
        return entries


@dataclass
class ImageDetections(Record):
    """One image's detections in original-image pixels: ``boxes`` (K, 4) xywh, ``scores`` (K,),
    ``labels`` (K,) (model labels, not yet category ids)."""

    image_id: int
    boxes: list[list[float]]
    scores: list[float]
    labels: list[int]

    @property
    def key(self) -> int:
        return self.image_id


class CocoEvaluator(Evaluator):
    """pycocotools ``COCOeval`` (bbox) of a :class:`datasets.coco.CocoDetection`; files: ``detections.json``
    (COCO results format, also the test-dev submission)."""

    dataset: CocoDetection
    records: list[ImageDetections]

    def records_of(self, batch: Batch, detections: Detections) -> list[ImageDetections]:
        records = []
        for target, result in zip(batch[2], detections, strict=True):
            boxes = result["boxes"].clone()
            boxes[:, 2:] -= boxes[:, :2]
            scores, labels = result["scores"].tolist(), result["labels"].tolist()
            records.append(ImageDetections(int(target["image_id"]), boxes.tolist(), scores, labels))
        return records

    def results(self) -> list[dict[str, Any]]:
        """COCO results entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) of the
        detections whose label is a category of the dataset (unused logits are left out)."""
        dataset = self.dataset
        labels = {dataset.label_of(c) for c in dataset.coco.cats}
        return [
            {"image_id": r.image_id, "category_id": dataset.category_of(label), "bbox": box, "score": score}
            for r in self.records
            for box, score, label in zip(r.boxes, r.scores, r.labels, strict=True)
            if label in labels
        ]

    def evaluate(self) -> EvalResult:
        """``COCOeval`` over the images of the records (images skipped as unreadable are left out and
        counted); labels that are not categories of the annotation file are left out. Writes
        ``detections.json`` into ``out_dir``."""
        dataset = self.dataset
        if not dataset.coco.dataset["annotations"]:
            raise ValueError(
                f"{dataset.ann_file} has no annotations (an image-info file?): nothing to score; "
                "use tools/test.py --format-only to write the submission file"
            )
        image_ids = [r.image_id for r in self.records]
        skipped = len(set(dataset.ids) - set(image_ids))
        if skipped:
            logger.warning(
                "%s: %d of %s could not be read (data.on_bad_image=skip), not scored",
                dataset.ann_file,
                skipped,
                plural(len(dataset), "image"),
            )
        metrics, table = coco_metrics(dataset.coco, self.results(), image_ids)
        if self.out_dir is not None:
            self.write_submission(self.out_dir)
        return EvalResult(metrics, table, len(self.records), metrics, skipped)

    def write_submission(self, out_dir: Path) -> list[Path]:
        """``out_dir/detections.json``: the COCO results format of a test-dev submission (``image_id``,
        ``category_id``, ``bbox`` xywh, ``score``)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "detections.json", self.results())
        return [out_dir / "detections.json"]
