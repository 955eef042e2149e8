"""Deformable DETR on COCO-format data as a runtime task (``task = "coco_detection"``)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from datasets.coco import CocoDetection, build_coco_dataset, coco_paths
from datasets.coco_evaluation import coco_metrics
from datasets.collate import collate_detection
from datasets.files import read_json, read_rgb
from datasets.transforms import build_transforms

from .backbone import initialize_backbone
from .builder import ModelConfig, build_criterion, build_model_from_config, model_config
from .classes import class_names
from .criterion import SetCriterion
from .finetune import init_from_checkpoint
from .predictor import Predictor
from .runtime.data import ShardSampler, build_eval_loader
from .runtime.io import atomic_write, atomic_write_json
from .runtime.task import EvalResult, Records, Task
from .visualize import draw_detections

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

Batch = tuple[torch.Tensor, torch.Tensor, list[dict[str, Any]]]


def targets_to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    """Move the tensors of each target dict to ``device``."""
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


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


class CocoDetectionTask(Task):
    """Deformable DETR (any of the five variants) trained and evaluated on COCO-format data.

    Config sections: ``model`` (a variant ``name`` plus :class:`detr2d.ModelConfig` fields),
    ``criterion`` (:class:`detr2d.CriterionConfig` fields), ``data`` (``root``, ``train_split``,
    ``val_split``, ``num_workers``), ``augment`` (see :func:`datasets.transforms.build_transforms`).
    """

    name = "coco_detection"
    unit = "images"

    @classmethod
    def model_defaults(cls, name: str, **overrides: Any) -> dict[str, Any]:
        """The whole ``model`` section of variant ``name``: its name and every :class:`detr2d.ModelConfig`
        field, ``overrides`` applied and validated (ValueError naming the field)."""
        return {"name": name, **dataclasses.asdict(model_config(name, **overrides))}

    @cached_property
    def model_config(self) -> ModelConfig:
        return model_config(**self.config["model"])

    def build_model(self, pretrained: bool = False) -> nn.Module:
        model = build_model_from_config(self.model_config)
        if pretrained:
            report = initialize_backbone(model.backbone[0], self.model_config.pretrained)
            if report is not None:
                logger.info("%s", report)
        return model

    def build_criterion(self) -> SetCriterion:
        cfg = self.model_config
        return build_criterion(
            num_classes=cfg.num_classes, decoder_layers=cfg.decoder_layers, **self.config["criterion"]
        )

    def class_names(self) -> dict[int, str]:
        """Names from the val annotation file's categories when it exists (labels as the dataset assigns
        them), else the COCO names for a 91-class model, else none."""
        data = self.config["data"]
        ann_file = coco_paths(data["root"], data["val_split"])[1]
        if data["val_ann_file"] is not None:
            ann_file = Path(data["root"]) / data["val_ann_file"]
        names = None
        if ann_file.is_file():
            categories = sorted(
                (c["id"], c["name"]) for c in read_json(ann_file, "COCO annotation")["categories"]
            )
            pairs = enumerate(n for _, n in categories) if data["contiguous_labels"] else categories
            names = {label: name for label, name in pairs if label < self.model_config.num_classes}
        return class_names(self.model_config.num_classes, names)

    def init_from(self, model: nn.Module, path: str | Path) -> str:
        return init_from_checkpoint(model, path).format()

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

    def split_batch(self, batch: Batch, device: torch.device) -> tuple[tuple[Any, ...], Any]:
        images, mask, targets = batch
        return (images.to(device), mask.to(device)), targets_to(targets, device)

    def batch_size(self, batch: Batch) -> int:
        return batch[0].shape[0]

    def infer(
        self, model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None
    ) -> Iterator[tuple[Batch, list[dict[str, Any]]]]:
        """Detections in original-image pixels (xyxy), top 100 per image, through
        :meth:`detr2d.Predictor.detect` (also what ``Predictor(images)`` runs)."""
        predictor = Predictor(model, self.class_names(), device, amp=amp)
        for batch in loader:
            if batch is None:  # prediction inputs none of which could be read
                continue
            images, mask, targets = batch
            orig_sizes = torch.stack([target["orig_size"] for target in targets])
            yield batch, predictor.detect(images, mask, orig_sizes)

    def records(self, batch: Batch, detections: list[dict[str, torch.Tensor]]) -> Records:
        """One record per image: ``{"image_id", "detections": [{"label", "bbox" (xywh), "score"}]}``."""
        records = []
        for target, result in zip(batch[2], detections, strict=True):
            image_id = int(target["image_id"])
            boxes = result["boxes"].clone()
            boxes[:, 2:] -= boxes[:, :2]
            entries = [
                {"label": label, "bbox": box, "score": score}
                for score, label, box in zip(
                    result["scores"].tolist(), result["labels"].tolist(), boxes.tolist(), strict=True
                )
            ]
            records.append({"image_id": image_id, "detections": entries})
        return records

    def score(self, records: Records, dataset: CocoDetection, out_dir: Path | None) -> EvalResult:
        """pycocotools ``COCOeval`` (bbox) over the images of ``records``; labels that are not categories
        of the annotation file (unused logits) are left out. Writes ``detections.json`` (COCO results
        format) into ``out_dir``."""
        if not dataset.coco.dataset["annotations"]:
            raise ValueError(
                f"{dataset.ann_file} has no annotations (an image-info file?): nothing to score; "
                "use tools/test.py --format-only to write the submission file"
            )
        detections = self.results(records, dataset)
        metrics, table = coco_metrics(dataset.coco, detections, [r["image_id"] for r in records])
        if out_dir is not None:
            self.write_results(records, dataset, out_dir)
        return EvalResult(metrics, table, len(records), detections, metrics)

    @staticmethod
    def results(records: Records, dataset: CocoDetection) -> list[dict[str, Any]]:
        """COCO results entries (``image_id``, ``category_id``, ``bbox`` xywh, ``score``) of the
        detections whose label is a category of the dataset (unused logits are left out)."""
        labels = {dataset.label_of(c) for c in dataset.coco.cats}
        return [
            {
                "image_id": r["image_id"],
                "category_id": dataset.category_of(d["label"]),
                "bbox": d["bbox"],
                "score": d["score"],
            }
            for r in records
            for d in r["detections"]
            if d["label"] in labels
        ]

    def write_results(self, records: Records, dataset: CocoDetection, out_dir: Path) -> list[Path]:
        """``out_dir/detections.json``: the COCO results format of a test-dev submission (``image_id``,
        ``category_id``, ``bbox`` xywh, ``score``)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "detections.json", self.results(records, dataset))
        return [out_dir / "detections.json"]

    def check_labels(self, dataset: CocoDetection, training: bool) -> None:
        beyond = dataset.categories_beyond(self.model_config.num_classes)
        if not beyond:
            return
        message = (
            f"{dataset.ann_file} has {len(beyond)} categories that a model with "
            f"num_classes={self.model_config.num_classes} cannot output: {beyond[:10]}"
        )
        labels = "contiguous" if self.config["data"]["contiguous_labels"] else "category ids"
        hint = f" (labels are the {labels}; raise model.num_classes or set data.contiguous_labels=true)"
        if training:
            raise ValueError(message + hint)
        logger.warning("%s; their AP is 0%s", message, hint)

    def predict_loader(self, inputs: Sequence[str | Path], limit: int | None = None) -> DataLoader:
        augment = self.config["augment"]
        transform = build_transforms(False, eval_size=augment["eval_size"], max_size=augment["max_size"])
        dataset = ImageFiles(list_images(inputs)[:limit], transform)
        return DataLoader(dataset, batch_size=1, collate_fn=collate_readable)

    def draw(
        self, batch: Batch, detections: list[dict[str, torch.Tensor]], score_threshold: float, out_dir: Path
    ) -> Records:
        """``out_dir/<image stem>.png`` with the detections scoring at least ``score_threshold`` (named
        classes only, when names are known); records ``{"file", "output", "detections": [{"category_id",
        "category", "score", "bbox" (x1, y1, x2, y2 pixels)}]}``. An input file is never overwritten."""
        names = self.class_names()
        records = []
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
            entries = [
                {"category_id": label, "category": names.get(label, str(label)), "score": score, "bbox": box}
                for score, label, box in zip(scores, labels, boxes, strict=True)
            ]
            records.append({"file": str(path), "output": str(out_path), "detections": entries})
            logger.info("%s: %d detections -> %s", path, len(entries), out_path)
        return records
