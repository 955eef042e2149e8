"""COCO dataset over generated data: samples, crowd / zero-area handling, empty images, bad-data errors;
and the synthetic generator."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets.coco import build_coco_dataset, coco_paths
from datasets.collate import collate_detection
from datasets.synthetic_coco import SyntheticCocoSpec, generate_synthetic_coco
from datasets.transforms import build_transforms

SPEC = SyntheticCocoSpec(num_train=6, num_val=3, image_size=64, seed=3)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_coco(tmp_path_factory.mktemp("coco") / "synthetic", SPEC, log=lambda _: None)


@pytest.fixture
def coco_copy(generated: Path, tmp_path: Path) -> Path:
    """A private copy of the generated dataset that a test may damage."""
    return Path(shutil.copytree(generated, tmp_path / "copy"))


def _edit_annotations(root: Path, split: str, edit) -> None:
    path = coco_paths(root, split)[1]
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_generated_layout_is_coco(generated: Path) -> None:
    for split, count in (("train2017", SPEC.num_train), ("val2017", SPEC.num_val)):
        image_dir, ann_file = coco_paths(generated, split)
        data = json.loads(ann_file.read_text())
        assert len(data["images"]) == count == len(list(image_dir.glob("*.jpg")))
        assert [c["name"] for c in data["categories"]] == ["circle", "square", "triangle", "cross"]
        for ann in data["annotations"]:
            assert set(ann) >= {"id", "image_id", "category_id", "bbox", "area", "iscrowd"}
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
            assert 0 < ann["area"] <= w * h


def test_generator_is_deterministic_and_never_overwrites(generated: Path, tmp_path: Path) -> None:
    again = generate_synthetic_coco(tmp_path / "again", SPEC, log=lambda _: None)
    for split in ("train2017", "val2017"):
        assert coco_paths(again, split)[1].read_text() == coco_paths(generated, split)[1].read_text()
    generate_synthetic_coco(again, SPEC, log=lambda _: None)  # same spec: no-op
    with pytest.raises(FileExistsError, match="not empty"):
        generate_synthetic_coco(
            again, SyntheticCocoSpec(num_train=2, num_val=1, image_size=64), log=lambda _: None
        )


def test_raw_samples_match_annotations(generated: Path) -> None:
    dataset = build_coco_dataset(generated, "train2017")
    assert len(dataset) == SPEC.num_train
    assert dataset.categories == {1: "circle", 2: "square", 3: "triangle", 4: "cross"}
    image, target = dataset[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    anns = dataset.coco.imgToAnns[target["image_id"]]
    expected = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=np.float32)
    np.testing.assert_allclose(target["boxes"], expected)
    np.testing.assert_array_equal(target["labels"], [a["category_id"] for a in anns])
    assert target["orig_size"].tolist() == [64, 64]


def test_transformed_samples_and_batch(generated: Path) -> None:
    transforms = build_transforms(
        True, scales=[48, 64, 80], max_size=100, crop_resize_sizes=[50, 60], crop_size=(32, 48)
    )
    dataset = build_coco_dataset(generated, "train2017", transforms, seed=1)
    image, target = dataset[1]
    assert image.dtype == torch.float32 and image.shape[0] == 3
    assert target["boxes"].shape[1] == 4 and ((target["boxes"] >= 0) & (target["boxes"] <= 1)).all()
    assert target["size"].tolist() == list(image.shape[1:])
    assert target["orig_size"].tolist() == [64, 64]
    torch.testing.assert_close(dataset[1][0], image)  # same (seed, epoch, index): same augmentation
    images, mask, targets = collate_detection([dataset[i] for i in range(4)])
    assert images.shape[0] == 4 and mask.shape == (4, *images.shape[2:]) and len(targets) == 4


def test_augmentation_changes_with_epoch(generated: Path) -> None:
    transforms = build_transforms(
        True, scales=[40, 48, 56, 64, 72, 80, 88, 96], max_size=200, crop_resize_sizes=None
    )
    dataset = build_coco_dataset(generated, "train2017", transforms)
    shapes = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        shapes.add(tuple(dataset[0][0].shape))
    assert len(shapes) > 1


def test_crowd_and_zero_area_boxes_dropped_and_counted(
    coco_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def edit(data: dict) -> None:
        image_id = data["images"][0]["id"]
        extra = [
            {"bbox": [1, 1, 20, 20], "iscrowd": 1},  # crowd
            {"bbox": [5, 5, 0, 10], "iscrowd": 0},  # zero width
            {"bbox": [70, 10, 5, 5], "iscrowd": 0},  # outside the 64-px image: zero area once clipped
        ]
        for i, ann in enumerate(extra):
            data["annotations"].append(
                {"id": 10_000 + i, "image_id": image_id, "category_id": 1, "area": 1.0, **ann}
            )

    _edit_annotations(coco_copy, "train2017", edit)
    with caplog.at_level(logging.INFO, logger="datasets.coco"):
        dataset = build_coco_dataset(coco_copy, "train2017")
    assert dataset.num_dropped_crowd == 1
    assert dataset.num_dropped_zero_area == 2
    assert "dropped 1 crowd box and 2 zero-area boxes" in caplog.text
    _, target = dataset[0]
    assert len(target["boxes"]) == len(
        [a for a in dataset.coco.imgToAnns[target["image_id"]] if a["id"] < 10_000]
    )


def test_images_without_annotations(coco_copy: Path) -> None:
    _edit_annotations(coco_copy, "val2017", lambda data: data.update(annotations=[]))
    dataset = build_coco_dataset(coco_copy, "val2017", build_transforms(True, scales=[48], max_size=64))
    image, target = dataset[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    images, mask, targets = collate_detection([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 48, 48) and targets[1]["boxes"].shape == (0, 4)


def test_missing_image_names_the_file(coco_copy: Path) -> None:
    image_dir, _ = coco_paths(coco_copy, "val2017")
    victim = sorted(image_dir.iterdir())[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        build_coco_dataset(coco_copy, "val2017")


def test_unreadable_image_names_the_file(coco_copy: Path) -> None:
    image_dir, _ = coco_paths(coco_copy, "val2017")
    victim = sorted(image_dir.iterdir())[2]
    victim.write_bytes(b"this is not a jpeg")
    dataset = build_coco_dataset(coco_copy, "val2017")
    dataset[0]
    with pytest.raises(
        ValueError, match=rf"{victim.name} cannot be decoded as an image .*\(image id \d+ in "
    ):
        dataset[2]


def test_unknown_image_ids_name_the_annotation_file(coco_copy: Path) -> None:
    def edit(data: dict) -> None:
        data["annotations"][0]["image_id"] = 987654

    _edit_annotations(coco_copy, "train2017", edit)
    with pytest.raises(ValueError, match=r"instances_train2017\.json.*unknown image_id.*987654"):
        build_coco_dataset(coco_copy, "train2017")


def test_missing_or_malformed_annotation_file(coco_copy: Path) -> None:
    _, ann_file = coco_paths(coco_copy, "val2017")
    ann_file.write_text("{not json")
    with pytest.raises(ValueError, match="instances_val2017.json is not valid JSON"):
        build_coco_dataset(coco_copy, "val2017")
    ann_file.unlink()
    with pytest.raises(FileNotFoundError, match="instances_val2017.json"):
        build_coco_dataset(coco_copy, "val2017")
