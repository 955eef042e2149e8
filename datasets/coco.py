"""COCO detection dataset over the standard on-disk layout.

::

    root/
      train2017/*.jpg
      val2017/*.jpg
      annotations/instances_train2017.json
      annotations/instances_val2017.json

Annotations are read once and checked up front (clear errors naming the file for a missing, binary or
malformed annotation JSON, annotations that refer to unknown image ids, image files that are missing;
``file_name`` may include subfolders); images are decoded when a sample is requested, and a truncated
or undecodable file raises an error naming it and its image id, or is skipped and counted
(``on_bad_image="skip"``). Crowd boxes are not training targets and zero-area boxes (after clipping to
the image) are dropped; both counts are logged. The pycocotools ``COCO`` index of the full file (crowd
boxes included) is kept in :attr:`CocoDetection.coco` for the evaluator.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from .files import BadImagePolicy, OnBadImage, missing_files, read_json, read_rgb
from .transforms import Compose

logger = logging.getLogger(__name__)


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """``(image_dir, annotation_file)`` of a split (e.g. ``"val2017"``) in the standard layout."""
    root = Path(root)
    return root / split, root / "annotations" / f"instances_{split}.json"


def load_coco_index(ann_file: str | Path) -> COCO:
    """Read a COCO annotation JSON into a pycocotools index, checking that it is consistent.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is empty, binary or not valid JSON (see :func:`datasets.files.read_json`),
            is not a JSON object with ``images`` and ``categories`` (``annotations`` may be absent: an
            image-info file such as ``image_info_test-dev2017.json``), or has annotations whose
            ``image_id`` or ``category_id`` is not declared; the message names the file and a few
            offending ids.
    """
    ann_file = Path(ann_file)
    data = read_json(ann_file, "COCO annotation")
    if not isinstance(data, dict):
        raise ValueError(
            f"COCO annotation file {ann_file} holds a JSON {type(data).__name__}, expected an object"
        )
    missing = [key for key in ("images", "categories") if key not in data]
    if missing:
        raise ValueError(f"COCO annotation file {ann_file} lacks the key(s) {missing}")
    data.setdefault("annotations", [])  # an image-info file (e.g. image_info_test-dev2017.json)
    for field, declared in (
        ("image_id", {image["id"] for image in data["images"]}),
        ("category_id", {category["id"] for category in data["categories"]}),
    ):
        unknown = sorted({ann[field] for ann in data["annotations"]} - declared)
        if unknown:
            raise ValueError(
                f"COCO annotation file {ann_file}: {len(unknown)} unknown {field}(s) in annotations, "
                f"e.g. {unknown[:5]}"
            )
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(torch.utils.data.Dataset):
    """COCO detection samples.

    A sample is ``(image, target)``. Before the transforms, ``image`` is (H, W, 3) uint8 RGB and
    ``target`` holds ``boxes`` (K, 4) float32 absolute xyxy, ``labels`` (K,) int64 (the category ids, or
    with ``contiguous_labels`` their index among the sorted category ids),
    ``image_id`` int, ``orig_size`` (2,) int64 (h, w). With the usual pipeline ending in
    :class:`datasets.transforms.ToTensor`, the image is a normalized (3, H', W') tensor, ``boxes`` are
    normalized (cx, cy, w, h) and ``size`` (2,) is (H', W').

    Random transforms draw from a generator seeded with ``(seed, epoch, index)``: call
    :meth:`set_epoch` at the start of every epoch; a sample's augmentation does not depend on the
    worker or process that loads it.

    Args:
        image_dir: folder holding the image files named in the annotation JSON.
        ann_file: COCO ``instances_*.json``.
        transforms: pipeline applied to every sample, or None for the raw arrays.
        seed: augmentation seed.
        on_bad_image: ``"raise"`` (default): a truncated or undecodable image raises ``ValueError``
            naming the file and image id. ``"skip"``: the next good sample is returned instead, a
            warning names the file and :attr:`num_skipped_images` counts it.
        contiguous_labels: label = index of the category id among the file's sorted ids (custom data
            with any ids: ``num_classes`` = number of categories), instead of the id itself (COCO's
            published 91-logit label space); :attr:`category_ids` maps labels back.
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        transforms: Compose | None = None,
        seed: int = 0,
        on_bad_image: OnBadImage = "raise",
        contiguous_labels: bool = False,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.transforms = transforms
        self.seed = seed
        self.epoch = 0
        self.bad_images = BadImagePolicy(on_bad_image, str(self.ann_file))
        self.coco = load_coco_index(ann_file)
        #: label -> COCO category id
        self.category_ids = sorted(self.coco.cats) if contiguous_labels else None
        self.ids = sorted(self.coco.imgs)
        self._check_image_files()
        self.num_dropped_crowd = 0
        self.num_dropped_zero_area = 0
        self._targets = [self._build_target(image_id) for image_id in self.ids]
        num_boxes = sum(len(t["labels"]) for t in self._targets)
        logger.info(
            "%s: %d image%s, %d box%s; dropped %d crowd box%s and %d zero-area box%s",
            self.ann_file,
            len(self.ids),
            "" if len(self.ids) == 1 else "s",
            num_boxes,
            "" if num_boxes == 1 else "es",
            self.num_dropped_crowd,
            "" if self.num_dropped_crowd == 1 else "es",
            self.num_dropped_zero_area,
            "" if self.num_dropped_zero_area == 1 else "es",
        )

    @property
    def categories(self) -> dict[int, str]:
        """COCO category id → name."""
        return {cat_id: cat["name"] for cat_id, cat in sorted(self.coco.cats.items())}

    def category_of(self, label: int) -> int:
        """The COCO category id of a label."""
        return label if self.category_ids is None else self.category_ids[label]

    @property
    def label_names(self) -> dict[int, str]:
        """Label → category name."""
        return {self.label_of(cat_id): name for cat_id, name in self.categories.items()}

    def label_of(self, category_id: int) -> int:
        """The label of a COCO category id."""
        return category_id if self.category_ids is None else self.category_ids.index(category_id)

    def categories_beyond(self, num_classes: int) -> list[tuple[int, str]]:
        """The categories a model with ``num_classes`` logits cannot output, as (id, name): their label
        is outside ``[0, num_classes)``, so their AP is 0 however good the model is."""
        return [(c, name) for c, name in self.categories.items() if not 0 <= self.label_of(c) < num_classes]

    @property
    def num_skipped_images(self) -> int:
        """Bad images skipped so far (``on_bad_image="skip"``), DataLoader workers included."""
        return self.bad_images.num_skipped

    def set_epoch(self, epoch: int) -> None:
        """Select the augmentation stream of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Any, dict[str, Any]]:
        return self.bad_images.get(index, len(self), self._sample)

    def _sample(self, index: int) -> tuple[Any, dict[str, Any]]:
        image = self.load_image(index)
        target = dict(self._targets[index])
        if self.transforms is None:
            return image, target
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return self.transforms(image, target, rng)

    def load_image(self, index: int) -> np.ndarray:
        """Decode image ``index`` as (H, W, 3) uint8 RGB (EXIF orientation ignored, as in the labels).

        Raises:
            FileNotFoundError: the file is missing.
            datasets.files.BadImageError (a ValueError): the file is truncated or cannot be decoded.
            ValueError: its size differs from the annotation JSON.
        """
        info = self.coco.imgs[self.ids[index]]
        path = self.image_dir / info["file_name"]
        image = read_rgb(path, f"image id {info['id']} in {self.ann_file}")
        if image.shape[:2] != (info["height"], info["width"]):
            raise ValueError(
                f"image file {path} is {image.shape[1]}x{image.shape[0]} but {self.ann_file} says "
                f"{info['width']}x{info['height']}"
            )
        return image

    def _check_image_files(self) -> None:
        missing = missing_files(self.image_dir / self.coco.imgs[i]["file_name"] for i in self.ids)
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} image file(s) listed in {self.ann_file} not found in {self.image_dir}, "
                f"e.g. {missing[0]}"
            )

    def _build_target(self, image_id: int) -> dict[str, Any]:
        info = self.coco.imgs[image_id]
        height, width = info["height"], info["width"]
        anns = [ann for ann in self.coco.imgToAnns.get(image_id, []) if not ann.get("iscrowd", 0)]
        self.num_dropped_crowd += len(self.coco.imgToAnns.get(image_id, [])) - len(anns)
        boxes = np.array([ann["bbox"] for ann in anns], dtype=np.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        boxes = np.clip(boxes, 0, np.array([width, height, width, height], dtype=np.float32))
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        self.num_dropped_zero_area += int((~keep).sum())
        labels = np.array([self.label_of(ann["category_id"]) for ann in anns], dtype=np.int64)
        return {
            "boxes": boxes[keep],
            "labels": labels[keep],
            "image_id": image_id,
            "orig_size": np.array([height, width], dtype=np.int64),
        }


def build_coco_dataset(
    root: str | Path,
    split: str,
    transforms: Compose | None = None,
    seed: int = 0,
    on_bad_image: OnBadImage = "raise",
    ann_file: str | Path | None = None,
    contiguous_labels: bool = False,
) -> CocoDetection:
    """The split ``split`` (e.g. ``"train2017"``) of the COCO-layout dataset under ``root``; ``ann_file``
    (relative to ``root``) replaces ``annotations/instances_<split>.json``, e.g. for test-dev
    ``annotations/image_info_test-dev2017.json``."""
    image_dir, default_ann_file = coco_paths(root, split)
    ann_file = default_ann_file if ann_file is None else Path(root) / ann_file
    return CocoDetection(image_dir, ann_file, transforms, seed, on_bad_image, contiguous_labels)
