"""PETR / PETRv2 on the runtime (task ``nuscenes_petr``), on the tiny generated nuScenes data: the tools end
to end (train, official evaluation, fast path, submission, pictures, a released-layout checkpoint), PETRv2
end to end on the data side's two-frame batches (the camera-sweeps fixture), PETR's resize / crop / flip,
the published configs' data options, ONNX export parity and the CPU fast path."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from bev_helpers import one_thread, tiny_root  # noqa: F401 (fixtures: one_thread autouse, tiny_root)
from nuscenes_fixtures import GeneratedDataset, sweeps_dataset  # noqa: F401 (fixture)

from bev import build_petr, petr_state_dict
from bev.petr_builder import PREPROCESS
from bev.petr_task import PETRTask, load_backbone_weights
from datasets.nuscenes import collate_nuscenes
from datasets.nuscenes.augment import GlobalRotScale, ResizeCropFlip
from datasets.nuscenes.infos import infos_path, load_infos
from datasets.nuscenes.prev_frame import PrevFrame
from datasets.nuscenes.synthetic import NUSCENES_CAMERA_SWEEPS
from detr2d.layers.vovnet import VoVNetSpec
from detr2d.runtime.cli import load_task_config
from detr2d.runtime.export import export_model, onnx_max_errors, prepare_export
from detr2d.runtime.fast_inference import optimize_for_inference
from detr2d.runtime.tasks import task_class

REPO = Path(__file__).resolve().parent.parent
PETR_DEMO = REPO / "configs" / "bev" / "petr_demo.py"
PETRV2_DEMO = REPO / "configs" / "bev" / "petrv2_demo.py"
TINY_MODEL = [
    "model.embed_dims=32",
    "model.ffn_dims=32",
    "model.decoder_layers=2",
    "model.num_queries=10",
    "model.num_depths=8",
]
TINY_VOV = VoVNetSpec((8, 8, 16), (8, 8, 8, 8), (16, 16, 16, 16), 2, (1, 1, 1, 1))
TINY = {"embed_dims": 32, "ffn_dims": 32, "decoder_layers": 2, "num_queries": 10, "num_depths": 8}


def tiny_petr_overrides(root: Path) -> list[str]:
    """The PETR demo configs shrunk to seconds on generated data under ``root``: 64 x 36 images, C = 32."""
    return [
        f"data.root={root}",
        f"data.infos_dir={root / 'infos'}",
        "data.image_size=[64,36]",
        *TINY_MODEL,
        "train.progress=False",
    ]


def sweeps_overrides(dataset: GeneratedDataset) -> list[str]:
    """The PETR demo configs on the camera-sweeps fixture (one scene of 4 samples per split), 64 x 36
    images, C = 32."""
    return [
        f"data.root={dataset.root}",
        f"data.infos_dir={dataset.infos_dir}",
        "data.train_split=mini_train",
        "data.val_split=mini_val",
        "data.image_size=[64,36]",
        *TINY_MODEL,
        "train.progress=False",
    ]


def run_tool(name: str, args: list[str]) -> None:
    """Run ``tools/<name>`` in this process as if from the command line."""
    argv = sys.argv
    sys.argv = [str(REPO / "tools" / name), *args]
    try:
        runpy.run_path(str(REPO / "tools" / name), run_name="__main__")
    finally:
        sys.argv = argv


def test_the_task_table_names_petr_and_configs_expand_to_its_schema():
    assert task_class("nuscenes_petr") is PETRTask
    config = load_task_config(PETRV2_DEMO)
    assert config["task"] == "nuscenes_petr" and config["model"]["version"] == 2
    published = load_task_config(REPO / "configs" / "bev" / "petrv2_vov_p4_1600x640.py")
    assert published["model"]["num_queries"] == 1500 and published["model"]["backbone"] == "vovnet99"
    assert published["optim"]["lr"] == 2e-4 and published["optim"]["lr_backbone"] == 2e-5
    assert published["optim"]["clip_max_norm"] == 35.0 and published["schedule"]["epochs"] == 24
    r50 = load_task_config(REPO / "configs" / "bev" / "petr_r50dcn_c5.py")
    assert r50["data"]["img_norm"] == {
        "mean": [103.53, 116.28, 123.675],
        "std": [1.0, 1.0, 1.0],
        "to_rgb": False,
    }
    assert r50["data"]["image_size"] == [1408, 512] and r50["data"]["num_history"] == 0
    criterion = PETRTask(r50).build_criterion()
    assert criterion.weight_dict["loss_cls"] == 2.0 and criterion.weight_dict["loss_bbox"] == 0.25
    assert criterion.assigner.cls_weight == 2.0 and criterion.assigner.reg_weight == 0.25
    with pytest.raises(ValueError, match="version must be 1"):
        PETRTask.model_defaults("petr_demo", version=3)


def test_the_petrv2_contract_is_checked_with_errors_naming_the_key(sweeps_dataset, tiny_root):  # noqa: F811
    task = PETRTask(load_task_config(PETRV2_DEMO, sweeps_overrides(sweeps_dataset)))
    batch = collate_nuscenes([task.data.build_dataset("val")[1]])  # the data side's (B, 1, 12, ...)
    inputs = task.model_inputs(batch, torch.device("cpu"))
    assert inputs["img"].shape[:2] == (1, 12) and inputs["timestamps"].dtype == torch.float32
    interval = (inputs["timestamps"][0, 6:] - inputs["timestamps"][0, :6]).mean()
    assert float(interval) == pytest.approx(0.5, abs=1e-3)  # the 2nd sample: only 0.5 s back yet
    one_frame = dict(batch, img=batch["img"][:, :, :6])
    with pytest.raises(
        ValueError, match=r"'img' must have shape \(B, 12, 3, H, W\).*got \(1, 6, 3, 36, 64\)"
    ):
        task.model_inputs(one_frame, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'lidar2img' must have shape \(1, 12, 4, 4\)"):
        task.model_inputs(dict(batch, lidar2img=batch["lidar2img"][:, :, :6]), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'timestamps' must have shape \(1, 12\)"):
        task.model_inputs(dict(batch, timestamps=batch["timestamps"][:, :, :6]), torch.device("cpu"))
    no_time = {key: value for key, value in batch.items() if key != "timestamps"}
    with pytest.raises(ValueError, match=r"missing \['timestamps'\]"):
        task.model_inputs(no_time, torch.device("cpu"))
    # the data side's one-frame layout (B, T = 1, 6, ...) is PETR's
    v1 = PETRTask(load_task_config(PETR_DEMO, tiny_petr_overrides(tiny_root)))
    item = collate_nuscenes([v1.data.build_dataset("val")[0]])
    assert v1.model_inputs(item, torch.device("cpu"))["img"].shape[:2] == (1, 6)


def test_petrv2_trains_and_infers_on_the_data_sides_two_frame_batches(sweeps_dataset):  # noqa: F811
    task = PETRTask(load_task_config(PETRV2_DEMO, sweeps_overrides(sweeps_dataset)))
    train = task.data.build_dataset("train")
    torch.manual_seed(0)
    model = task.build_model(pretrained=True)
    criterion = task.build_criterion()
    batch = collate_nuscenes([train[3]])  # a random earlier frame 0.29..2.29 s back
    (inputs,), targets = task.split_batch(batch, torch.device("cpu"))
    assert inputs["img"].shape[:2] == (1, 12)
    interval = float((inputs["timestamps"][0, 6:] - inputs["timestamps"][0, :6]).mean())
    assert 0.29 <= interval <= 1.5  # 1.5 s: the scene's start, the oldest frame of the 4th sample
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = criterion.weighted_total(criterion(model(inputs), targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses) and losses[-1] < losses[0]
    batch = collate_nuscenes([task.data.build_dataset("val")[3]])
    ((out_batch, detections),) = list(task.infer(model, [None, batch], torch.device("cpu")))
    assert out_batch is batch and detections[0]["boxes"].shape[1] == 9
    assert 0 < len(detections[0]["scores"]) <= 10 * 10
    slow = dict(batch, timestamps=batch["timestamps"] * 2)  # velocities are per second
    ((_, halved),) = list(task.infer(model, [slow], torch.device("cpu")))
    assert torch.allclose(halved[0]["boxes"][:, 7:], detections[0]["boxes"][:, 7:] / 2, atol=1e-5)


def test_petrv2_demo_end_to_end_on_sweeps(sweeps_dataset, tmp_path):  # noqa: F811
    """fit (a few iterations on the data side's two-frame batches) with the official evaluation, then
    tools/predict.py's pictures of a PETRv2 prediction (the current 6 of the 12 views)."""
    overrides = sweeps_overrides(sweeps_dataset)
    run = tmp_path / "run"
    args = [str(PETRV2_DEMO), "--out", str(run), *overrides, "schedule.epochs=1", "schedule.warmup_iters=1"]
    run_tool("train.py", [*args, "train.eval_every=1"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (record,) = [r for r in log if "train" in r]
    assert math.isfinite(record["train"]["loss"]) and record["train"]["loss"] > 0
    assert (
        round(record["train"]["samples_per_s"] * record["train"]["time_s"]) == 4
    )  # the 4 mini_train samples
    assert record["val_samples"] == 4
    metrics = json.loads((run / "val" / "metrics.json").read_text())
    assert {"mAP", "NDS", "mATE", "mAVE"} <= set(metrics) and metrics["num_samples"] == 4

    infos = infos_path(sweeps_dataset.infos_dir, "mini_val")
    predict = tmp_path / "predict"
    run_tool(
        "predict.py",
        [str(PETRV2_DEMO), str(run / "checkpoint.pth"), str(infos), "--out", str(predict), "--limit", "2"]
        + ["--score-threshold", "0", *overrides],
    )
    entries = json.loads((predict / "predictions.json").read_text())
    assert len(entries) == 2 and all(len(e["boxes"]) == len(e["scores"]) > 0 for e in entries)
    for entry in entries:
        assert Path(entry["bev"]).is_file()
        assert cv2.imread(entry["cameras"]).shape[1] == 3 * 64  # the mosaic of the current 2 x 3 cameras


def test_a_petr_config_with_resize_crop_flip_runs_a_batch(sweeps_dataset):  # noqa: F811
    """PETR's random resize / crop / flip and scene rotation / scaling in training, the test-time resize
    + bottom crop on val: the batches have the final size and train / infer."""
    crop = "data.resize_crop_flip={'final_size': [64, 32], 'resize_range': [0.18, 0.25], 'flip': True}"
    rot_scale = "data.global_rot_scale={'rot_range': [-0.3925, 0.3925], 'scale_range': [0.95, 1.05]}"
    task = PETRTask(load_task_config(PETR_DEMO, [*sweeps_overrides(sweeps_dataset), crop, rot_scale]))
    train, val = task.data.build_dataset("train"), task.data.build_dataset("val")
    assert train.image_crop == ResizeCropFlip((64, 32), (0.18, 0.25), (0.0, 0.0), True)
    assert train.scene_aug == GlobalRotScale() and val.image_crop == ResizeCropFlip((64, 32))
    batch = collate_nuscenes([train[1], train[2]])
    assert batch["img"].shape == (2, 1, 6, 3, 32, 64)
    torch.manual_seed(0)
    model = task.build_model(pretrained=True)
    criterion = task.build_criterion()
    (inputs,), targets = task.split_batch(batch, torch.device("cpu"))
    loss = criterion.weighted_total(criterion(model(inputs), targets))
    loss.backward()
    assert math.isfinite(loss.item()) and loss.item() > 0
    assert all(p.grad is not None for p in model.head.parameters() if p.requires_grad)
    val_batch = collate_nuscenes([val[0]])
    assert val_batch["img"].shape == (1, 1, 6, 3, 32, 64)
    ((_, detections),) = list(task.infer(model, [val_batch], torch.device("cpu")))
    assert detections[0]["boxes"].shape[1] == 9


PUBLISHED = {  # config: (final size (W, H), training resize range, PETRv2's earlier frame) of the release
    "petr_r50dcn_c5": ((1408, 512), (0.8, 1.0), False),
    "petr_r50dcn_p4": ((1408, 512), (0.8, 1.0), False),
    "petr_vov_p4_800x320": ((800, 320), (0.47, 0.625), False),
    "petr_vov_p4_1600x640": ((1600, 640), (0.94, 1.25), False),
    "petrv2_vov_p4_800x320": ((800, 320), (0.47, 0.625), True),
    "petrv2_vov_p4_1600x640": ((1600, 640), (0.94, 1.25), True),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_the_published_configs_set_the_releases_data_options(name):
    final_size, resize_range, two_frames = PUBLISHED[name]
    data = load_task_config(REPO / "configs" / "bev" / f"{name}.py")["data"]
    assert ResizeCropFlip(**data["resize_crop_flip"]) == ResizeCropFlip(
        final_size, resize_range, (0, 0), True
    )
    assert tuple(data["image_size"]) == final_size == PREPROCESS[name]["final_size"][::-1]  # export's input
    assert GlobalRotScale(**data["global_rot_scale"]) == GlobalRotScale((-0.3925, 0.3925), (0.95, 1.05))
    if two_frames:  # the 15th frame back at test time, the 4th..27th in training (12 Hz), 15 x 0.083 s pad
        assert PrevFrame(**data["prev_frame"]) == PrevFrame(1.25, (0.29, 2.29), 1.245)
    else:
        assert data["prev_frame"] is None
    # the test-time transform of a 1600 x 900 nuScenes image: resize by max(final / original), bottom rows
    test_crop = ResizeCropFlip(final_size).draw((1600, 900), np.random.default_rng(0))
    assert (
        test_crop.resized[0] == final_size[0] and test_crop.corner[1] == test_crop.resized[1] - final_size[1]
    )


def test_petr_demo_through_the_tools(tiny_root, tmp_path, capsys):  # noqa: F811
    """train (fit with in-training evaluation), test (official evaluator; eager, fast path, a
    released-layout file), --format-only and predict (pictures) on the PETR demo config."""
    overrides = tiny_petr_overrides(tiny_root)
    run = tmp_path / "run"
    args = [str(PETR_DEMO), "--out", str(run), *overrides, "schedule.epochs=1", "schedule.warmup_iters=1"]
    run_tool("train.py", [*args, "train.eval_every=1"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    (record,) = [r for r in log if "train" in r]
    assert math.isfinite(record["train"]["loss"]) and record["train"]["loss"] > 0
    assert set(record["val"]) == {"mAP", "NDS"} and record["val_samples"] == 6

    def test(checkpoint: Path, out: str, *extra: str) -> dict[str, Any]:
        run_tool(
            "test.py", [str(PETR_DEMO), str(checkpoint), "--out", str(tmp_path / out), *extra, *overrides]
        )
        return json.loads((tmp_path / out / "metrics.json").read_text())

    eager = test(run / "checkpoint.pth", "eager")
    assert {"mAP", "NDS", "mATE", "mAVE"} <= set(eager) and eager["num_samples"] == 6
    fast = test(run / "checkpoint.pth", "fast", "--inference", "fast")
    assert fast["NDS"] == pytest.approx(eager["NDS"], abs=1e-4)

    # the released layout (mmdet3d names under 'state_dict') of the same weights scores the same
    task = PETRTask(load_task_config(PETR_DEMO, overrides))
    model = task.build_model()
    task.load_weights(model, run / "checkpoint.pth")
    released = tmp_path / "petr_demo_epoch_1.pth"
    torch.save({"state_dict": petr_state_dict(model), "meta": {"epoch": 1}}, released)
    assert all(
        key.startswith(("img_backbone.", "img_neck.", "pts_bbox_head.")) for key in petr_state_dict(model)
    )
    assert test(released, "released")["NDS"] == eager["NDS"]

    run_tool(
        "test.py",
        [str(PETR_DEMO), str(released), "--out", str(tmp_path / "submit"), "--format-only", *overrides],
    )
    results = json.loads((tmp_path / "submit" / "results_nusc.json").read_text())
    val = load_infos(infos_path(tiny_root / "infos", "synthetic_val"))
    assert set(results["results"]) == {s["token"] for s in val["samples"]}

    infos = infos_path(tiny_root / "infos", "synthetic_val")
    predict = tmp_path / "predict"
    run_tool(
        "predict.py",
        [str(PETR_DEMO), str(released), str(infos), "--out", str(predict), "--limit", "1"]
        + ["--score-threshold", "0", *overrides],
    )
    (entry,) = json.loads((predict / "predictions.json").read_text())
    assert len(entry["boxes"]) == len(entry["scores"]) > 0
    assert Path(entry["bev"]).is_file() and Path(entry["cameras"]).is_file()


@pytest.mark.parametrize("name", ["petr_demo", "petrv2_demo"])
def test_onnx_export_equals_pytorch(name, tmp_path):
    torch.manual_seed(0)
    model = build_petr(name, **TINY).eval()
    wrapper, example = prepare_export(model, (36, 64))
    path = tmp_path / f"{name}.onnx"
    proto = export_model(wrapper, example, "onnx", path)
    expected = ["img", "lidar2img", "timestamps"] if name == "petrv2_demo" else ["img", "lidar2img"]
    assert [node.name for node in proto.graph.input] == expected
    generator = torch.Generator().manual_seed(1)
    inputs = list(example)
    inputs[0] = torch.randn(example[0].shape, generator=generator)
    inputs[1] = example[1].clone()  # the rig moved: other 3D coordinates than the traced ones
    inputs[1][..., :3, 3] += torch.randn(inputs[1][..., :3, 3].shape, generator=generator)
    if name == "petrv2_demo":
        inputs[2] = example[2] * 1.7
    errors = onnx_max_errors(wrapper, path, inputs)
    assert max(errors) < 1e-4, errors


@pytest.mark.parametrize("name", ["petr_demo", "petrv2_demo"])
def test_fast_path_equals_eager(name):
    torch.manual_seed(0)
    model = build_petr(name, **TINY)
    model.train()
    with torch.no_grad():  # batch-norm statistics that are not the identity
        for _ in range(2):
            model({**_example(model), "img": torch.randn(1, model.num_views, 3, 36, 64) * 3 + 1})
    model.eval()
    batch = _example(model)
    fast = optimize_for_inference(model)
    with torch.inference_mode():
        eager, folded = model(batch), fast(batch)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    assert torch.allclose(eager.cls_logits, folded.cls_logits, atol=1e-4)
    assert torch.allclose(eager.box_code, folded.box_code, atol=1e-4)
    expected, got = model.decode(eager)[0], fast.decode(folded)[0]
    assert np.allclose(expected["scores"].numpy(), got["scores"].numpy(), atol=1e-5)


def _example(model) -> dict[str, torch.Tensor]:
    """The export example inputs of ``model`` as a batch (36 x 64 images)."""
    wrapper, example = prepare_export(model, (36, 64))
    return dict(zip(wrapper.input_names, example, strict=True))


def test_init_from_fills_the_image_backbone_from_2d_and_released_checkpoints(tmp_path):
    config = load_task_config(PETR_DEMO, TINY_MODEL)
    task = PETRTask(config)
    torch.manual_seed(0)
    source = task.build_model()
    detr = {f"backbone.0.body.{k}": v + 1 for k, v in source.backbone.body.state_dict().items()}
    torch.save({"model": {**detr, "class_embed.weight": torch.zeros(3, 3)}}, tmp_path / "coco.pth")
    model = task.build_model()
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    task.init_from(model, tmp_path / "coco.pth")
    body = model.backbone.body.state_dict()
    assert all(torch.equal(body[k.removeprefix("backbone.0.body.")], v) for k, v in detr.items())
    assert all(torch.equal(v, model.head.state_dict()[k]) for k, v in head_before.items())

    vov = PETRTask(load_task_config(REPO / "configs" / "bev" / "petr_vov_p4_800x320.py"))
    vov_model = build_petr("petr_vov_p4_800x320", vovnet_spec=TINY_VOV, **TINY)
    released = {
        f"img_backbone.{k}": torch.full_like(v, 0.5) for k, v in vov_model.backbone.state_dict().items()
    }
    torch.save({"state_dict": released}, tmp_path / "fcos3d.pth")
    load_backbone_weights(vov_model, tmp_path / "fcos3d.pth", strict=True)
    state = vov_model.backbone.state_dict()
    assert all(bool((v == 0.5).all()) for v in state.values() if v.is_floating_point())
    released.pop(next(iter(released)))
    torch.save({"state_dict": released}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"partial\.pth.*1 missing keys"):
        load_backbone_weights(vov_model, tmp_path / "partial.pth", strict=True)
    assert "tensors loaded" in vov.init_from(vov_model, tmp_path / "partial.pth")


def test_a_fresh_run_refuses_fixed_batch_norm_without_backbone_weights():
    config = load_task_config(
        REPO / "configs" / "bev" / "petr_vov_p4_800x320.py", [*TINY_MODEL, "model.pretrained=none"]
    )
    with pytest.raises(ValueError, match=r"model.norm_eval keeps the vovnet99 .* model.pretrained is None"):
        PETRTask(config).build_model(pretrained=True)
    PETRTask(config).build_model()  # testing or fine-tuning: the weights come from a checkpoint


def test_the_study_runs_the_petr_configs_on_data_with_camera_sweeps():
    study = runpy.run_path(str(REPO / "tools" / "study.py"))
    models = {m.name: m for m in study["MODELS"]}
    assert (models["petr"].config, models["petr"].published) == (
        "configs/bev/petr_demo.py",
        "configs/bev/petr_vov_p4_800x320.py",
    )
    assert (models["petrv2"].config, models["petrv2"].published) == (
        "configs/bev/petrv2_demo.py",
        "configs/bev/petrv2_vov_p4_800x320.py",
    )
    assert all((REPO / path).is_file() for m in models.values() for path in (m.config, m.published))
    profiles = [p for p in study["PROFILES"].values() if p.nuscenes is not None]
    assert profiles and all(p.nuscenes.camera_sweeps == NUSCENES_CAMERA_SWEEPS for p in profiles)
