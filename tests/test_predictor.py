"""Predictor: our and official checkpoint files, batched == alone, input types and their errors."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch
from detr2d_helpers import TINY, one_thread  # noqa: F401 (autouse fixture)
from PIL import Image

from detr2d import build_model
from detr2d.classes import COCO_CLASSES, class_names
from detr2d.predictor import Predictor

AUGMENT = {"eval_size": 64, "max_size": 100}


def image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> str:
    """Our checkpoint format: weights, the config that built them and the class names."""
    torch.manual_seed(0)
    model = build_model("deformable_detr_refine", num_classes=3, **TINY)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pth"
    config = {"model": {"name": "deformable_detr_refine", "num_classes": 3, **TINY}, "augment": AUGMENT}
    torch.save({"model": model.state_dict(), "config": config, "class_names": ["bg", "cat", "dog"]}, path)
    return str(path)


def test_batched_call_equals_each_image_alone(ours: str) -> None:
    images = [image(48, 80, 0), image(90, 50, 1), image(33, 41, 2)]
    batched = Predictor.from_checkpoint(ours, batch_size=3, top_k=20)(images)
    alone = [Predictor.from_checkpoint(ours, batch_size=1, top_k=20)(img) for img in images]
    assert len(batched) == 3
    for got, expected, img in zip(batched, alone, images, strict=True):
        assert got["boxes"].shape == (20, 4) and got["boxes"].dtype == torch.float32
        torch.testing.assert_close(got["scores"], expected["scores"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=1e-4, atol=1e-3)
        assert torch.equal(got["labels"], expected["labels"])
        assert got["names"] == [["bg", "cat", "dog"][i] for i in got["labels"].tolist()]
        assert bool((got["scores"][:-1] >= got["scores"][1:]).all())
        h, w = img.shape[:2]  # boxes in the input image's pixels
        assert float(got["boxes"][:, 2].max()) <= w + 1e-3 and float(got["boxes"][:, 3].max()) <= h + 1e-3


def test_official_padding_override_depends_on_the_batch(ours: str) -> None:
    """With the original's padding a padded image's detections change with its batch mates."""
    images = [image(48, 80, 0), image(90, 50, 1)]
    predictor = Predictor.from_checkpoint(ours, batch_size=2, top_k=20, padding="official")
    assert predictor.model.padding == "official"
    batched = predictor(images)
    alone = [predictor(img) for img in images]
    for got, expected in zip(batched, alone, strict=True):  # both images are padded in the batch
        assert not torch.allclose(got["scores"], expected["scores"], rtol=1e-4, atol=1e-5)


def test_input_types_give_the_same_detections(ours: str) -> None:
    predictor = Predictor.from_checkpoint(ours, top_k=10)
    array = image(40, 60, 3)
    expected = predictor(array)
    for other in (Image.fromarray(array), torch.from_numpy(array).permute(2, 0, 1)):
        got = predictor(other)
        torch.testing.assert_close(got["scores"], expected["scores"], rtol=0, atol=0)
        torch.testing.assert_close(got["boxes"], expected["boxes"], rtol=0, atol=0)


def test_threshold_top_k_and_amp(ours: str) -> None:
    array = image(40, 60, 4)
    everything = Predictor.from_checkpoint(ours, top_k=36)(array)  # 12 queries x 3 classes
    assert len(everything["scores"]) == 36
    cut = float(everything["scores"][5])
    kept = Predictor.from_checkpoint(ours, top_k=36, score_threshold=cut)(array)
    assert len(kept["scores"]) == int((everything["scores"] >= cut).sum()) >= 6
    assert len(Predictor.from_checkpoint(ours, top_k=4)(array)["scores"]) == 4
    bf16 = Predictor.from_checkpoint(ours, top_k=36, amp="bf16")(array)
    assert bf16["scores"].dtype == torch.float32 and torch.isfinite(bf16["boxes"]).all()


@pytest.mark.parametrize(("variant", "score"), [("deformable_detr", "sigmoid"), ("detr_r50", "softmax")])
def test_official_release_file_needs_the_variant(tmp_path, variant: str, score: str) -> None:
    """A released ``{'model': ...}`` file loads strictly given its variant (DETR's 92-logit head: 91
    classes), with its family's post-processing (DETR: softmax, the best of the 91 real classes)."""
    torch.manual_seed(0)
    model = build_model(variant, num_classes=91, **TINY)
    path = tmp_path / "r50_deformable_detr-checkpoint.pth"
    args = argparse.Namespace(lr=2e-4, with_box_refine=False, two_stage=False)
    torch.save({"model": model.state_dict(), "optimizer": {}, "epoch": 49, "args": args}, path)
    with pytest.raises(ValueError, match="has no config .* pass variant="):
        Predictor.from_checkpoint(path)
    predictor = Predictor.from_checkpoint(path, variant=variant, eval_size=64, max_size=100, **TINY)
    assert predictor.names == COCO_CLASSES  # 91 classes read from the head: the COCO names
    assert predictor.postprocess.score == score
    out = predictor([image(50, 70, 5)])[0]
    assert len(out["labels"]) == min(100, TINY["num_queries"] * (91 if score == "sigmoid" else 1))
    assert out["labels"].max() < 91  # never DETR's "no object"
    with torch.no_grad():
        torch.testing.assert_close(predictor.model.state_dict(), model.state_dict())
    assert all(
        name == COCO_CLASSES.get(label, str(label))
        for name, label in zip(out["names"], out["labels"].tolist(), strict=True)
    )
    with pytest.raises(ValueError, match="shape mismatch"):  # wrong overrides: weights do not fit
        Predictor.from_checkpoint(path, variant=variant, **{**TINY, "num_queries": 7})


def test_variant_must_match_our_checkpoint(ours: str) -> None:
    with pytest.raises(
        ValueError, match="holds a 'deformable_detr_refine' model but variant='deformable_detr'"
    ):
        Predictor.from_checkpoint(ours, variant="deformable_detr")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (
            np.zeros((20, 30, 3), np.float32),
            r"image 1: an array must be uint8 \(H, W, 3\) RGB, got dtype float32",
        ),
        (np.zeros((20, 30, 4), np.uint8), r"image 1: an array must have shape \(H, W, 3\)"),
        (np.zeros((20, 30), np.uint8), r"image 1: an array must have shape \(H, W, 3\)"),
        (torch.zeros(20, 30, 3, dtype=torch.uint8), r"image 1: a tensor must have shape \(3, H, W\)"),
        (torch.zeros(3, 20, 30), r"image 1: a tensor must be uint8 .* got torch.float32"),
        (np.zeros((0, 30, 3), np.uint8), r"image 1: empty image of shape \(0, 30, 3\)"),
        ([[1, 2, 3]], r"image 1: expected a numpy array, a PIL image or a tensor, got list"),
    ],
)
def test_bad_inputs_name_the_problem(ours: str, bad: object, message: str) -> None:
    predictor = Predictor.from_checkpoint(ours)
    with pytest.raises((ValueError, TypeError), match=message):
        predictor([image(20, 30, 0), bad])


def test_bad_options_and_empty_call(ours: str) -> None:
    with pytest.raises(ValueError, match="amp must be one of"):
        Predictor.from_checkpoint(ours, amp="fp8")
    with pytest.raises(ValueError, match="batch_size must be positive"):
        Predictor.from_checkpoint(ours, batch_size=0)
    with pytest.raises(ValueError, match="empty list"):
        Predictor.from_checkpoint(ours)([])


def test_class_names() -> None:
    assert len(COCO_CLASSES) == 80 and min(COCO_CLASSES) == 1 and max(COCO_CLASSES) == 90
    assert set(range(1, 91)) - set(COCO_CLASSES) == {12, 26, 29, 30, 45, 66, 68, 69, 71, 83}
    assert (COCO_CLASSES[1], COCO_CLASSES[44], COCO_CLASSES[90]) == ("person", "bottle", "toothbrush")
    assert class_names(91) == COCO_CLASSES and class_names(5) == {}
    assert class_names(3, {"1": "cat", 2: "dog"}) == {1: "cat", 2: "dog"}  # JSON-style keys
    with pytest.raises(ValueError, match=r"label 3 is outside 0..2"):
        class_names(3, {3: "cow"})
