"""DETR end to end through the tools, on tiny synthetic COCO data: a released-layout ``{'model': ...}`` file
taken by tools/test.py (scored and ``--format-only``), tools/predict.py (pictures), tools/export.py
(ONNX, checked against PyTorch) and ``Predictor.from_checkpoint``; ``--init-from`` re-initializes the
92-logit class head for another class count; the criterion section is DETR's typed schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from test_coco_train import NUM_VAL, _cli, tiny_root  # noqa: F401 (fixture)

from detr2d import DETRCriterionConfig, Predictor
from detr2d.runtime.cli import load_task_config
from detr2d.task import CocoDetectionTask

REPO = Path(__file__).resolve().parents[1]
DETR_R50 = REPO / "configs" / "detr2d" / "detr_r50.py"
QUERIES = 5


def detr_overrides(root: Path, num_classes: int = 5) -> list[str]:
    """configs/detr2d/detr_r50.py shrunk to seconds: ResNet-18 from scratch, a 64-wide transformer."""
    return [
        f"data.root={root}",
        "data.num_workers=0",
        "model.backbone=resnet18",
        "model.pretrained=none",
        f"model.num_classes={num_classes}",
        "model.embed_dims=64",
        "model.encoder_layers=1",
        "model.decoder_layers=2",
        f"model.num_queries={QUERIES}",
        "model.ffn_dims=64",
        "augment.scales=[48,64]",
        "augment.max_size=80",
        "augment.eval_size=64",
        "train.batch_size=2",
        "train.eval_batch_size=2",
        "train.progress=False",
        "schedule.epochs=1",
        "schedule.lr_drop=1",
    ]


@pytest.fixture(scope="module")
def released(tiny_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """A DETR weights file in the released layout (``{'model': state_dict}``, nothing else)."""
    task = CocoDetectionTask(load_task_config(DETR_R50, detr_overrides(tiny_root)))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("released") / "detr-r50-tiny.pth"
    torch.save({"model": task.build_model().state_dict()}, path)
    return path


def test_the_task_builds_detr_its_criterion_and_post_processing(tiny_root: Path) -> None:  # noqa: F811
    config = load_task_config(DETR_R50, detr_overrides(tiny_root))
    task = CocoDetectionTask(config)
    model = task.build_model()
    assert type(model).__name__ == "DETR" and model.class_embed.out_features == 6
    criterion = task.build_criterion()
    assert criterion.class_loss == "softmax" and criterion.matcher.class_cost == "softmax"
    assert criterion.class_weight[-1] == DETRCriterionConfig().eos_coef == 0.1 and criterion.num_logits == 6
    bad = {**config, "criterion": {**config["criterion"], "focal_alpha": 0.25}}
    with pytest.raises(ValueError, match=r"criterion section: unknown criterion overrides \['focal_alpha'\]"):
        CocoDetectionTask(bad).build_criterion()


@pytest.mark.slow
def test_tools_take_a_released_detr_file(tiny_root: Path, released: Path, tmp_path: Path) -> None:  # noqa: F811
    overrides = detr_overrides(tiny_root)
    proc = _cli(["tools/test.py", str(DETR_R50), str(released), "--out", str(tmp_path / "eval"), *overrides])
    assert len([line for line in proc.stdout.splitlines() if line.startswith(" Average")]) == 12
    detections = json.loads((tmp_path / "eval" / "detections.json").read_text())
    assert len(detections) == NUM_VAL * QUERIES  # softmax: one (best real class) detection per query
    assert {d["category_id"] for d in detections} <= {1, 2, 3, 4}  # never "no object" (label 5)

    info = json.loads((tiny_root / "annotations" / "instances_val2017.json").read_text())
    image_info = {"images": info["images"], "categories": info["categories"]}
    (tmp_path / "image_info.json").write_text(json.dumps(image_info))
    proc = _cli(
        [
            "tools/test.py",
            str(DETR_R50),
            str(released),
            "--format-only",
            "--out",
            str(tmp_path / "submission"),
            *overrides,
            f"data.val_ann_file={tmp_path / 'image_info.json'}",
        ]
    )
    assert len(json.loads((tmp_path / "submission" / "detections.json").read_text())) == NUM_VAL * QUERIES

    proc = _cli(
        [
            "tools/predict.py",
            str(DETR_R50),
            str(released),
            str(tiny_root / "val2017"),
            "--out",
            str(tmp_path / "pred"),
            "--limit",
            "2",
            "--score-threshold",
            "0",
            *overrides,
        ]
    )
    records = json.loads((tmp_path / "pred" / "predictions.json").read_text())
    assert len(records) == 2 and all(Path(r["output"]).suffix == ".png" for r in records)
    assert all(Path(r["output"]).is_file() and len(r["detections"]) == QUERIES for r in records)

    proc = _cli(
        [
            "tools/export.py",
            str(DETR_R50),
            str(released),
            "--format",
            "onnx",
            "--out",
            str(tmp_path / "detr.onnx"),
            "--check",
            *overrides,
        ]
    )
    assert "DETR, images any H, W >= 33" in proc.stdout
    errors = [float(x) for x in re.findall(r"(?:pred_logits|pred_boxes) ([0-9.e+-]+)", proc.stdout)]
    assert len(errors) == 4 and max(errors) < 1e-4, proc.stdout


def test_predictor_takes_a_released_detr_file_with_its_variant(released: Path) -> None:
    tiny = dict(backbone="resnet18", embed_dims=64, encoder_layers=1, decoder_layers=2, ffn_dims=64)
    predictor = Predictor.from_checkpoint(
        released, variant="detr_r50", eval_size=64, max_size=80, num_queries=QUERIES, **tiny
    )
    assert predictor.model.class_embed.out_features == 6 and predictor.postprocess.score == "softmax"
    image = torch.randint(0, 256, (3, 50, 70), dtype=torch.uint8)
    out = predictor(image)
    assert len(out["scores"]) == QUERIES and bool((out["labels"] < 5).all())


@pytest.mark.slow
def test_init_from_a_91_class_detr_fine_tunes_a_5_class_model(tiny_root: Path, tmp_path: Path) -> None:  # noqa: F811
    """``--init-from``: DETR's one class head (91 + 1 logits) is re-initialized for 5 + 1; the run's own
    checkpoint then describes itself (``Predictor.from_checkpoint(path)`` alone)."""
    overrides = [*detr_overrides(tiny_root), "train.eval_every=0"]
    task = CocoDetectionTask(load_task_config(DETR_R50, [*overrides, "model.num_classes=91"]))
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "detr-91.pth")
    proc = _cli(
        [
            "tools/train.py",
            str(DETR_R50),
            "--out",
            str(tmp_path / "ft"),
            "--init-from",
            str(tmp_path / "detr-91.pth"),
        ]
        + overrides
    )
    assert "(class head: 91 -> 5 classes), 0 missing (kept), 0 unexpected (ignored)" in proc.stderr
    assert "re-initialized: class_embed.weight, class_embed.bias" in proc.stderr
    checkpoint = torch.load(tmp_path / "ft" / "checkpoint.pth", weights_only=True)
    assert checkpoint["model"]["class_embed.weight"].shape == (6, 64)
    predictor = Predictor.from_checkpoint(tmp_path / "ft" / "checkpoint.pth")
    assert predictor.model.class_embed.out_features == 6 and predictor.postprocess.score == "softmax"
