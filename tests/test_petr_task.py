"""PETR / PETRv2 on the runtime (task ``nuscenes_petr``), on the tiny generated nuScenes data: the tools end
to end (train, official evaluation, fast path, submission, pictures, a released-layout checkpoint), the
PETRv2 two-frame batch contract, ONNX export parity and the CPU fast path."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from bev_helpers import one_thread, tiny_root  # noqa: F401 (fixtures: one_thread autouse, tiny_root)

from bev import build_petr, petr_state_dict
from bev.petr_task import PETRTask, load_backbone_weights
from datasets.nuscenes import NuScenesMultiViewDataset, collate_nuscenes
from datasets.nuscenes.infos import infos_path, load_infos
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


def run_tool(name: str, args: list[str]) -> None:
    """Run ``tools/<name>`` in this process as if from the command line."""
    argv = sys.argv
    sys.argv = [str(REPO / "tools" / name), *args]
    try:
        runpy.run_path(str(REPO / "tools" / name), run_name="__main__")
    finally:
        sys.argv = argv


def two_frame_batch(dataset: NuScenesMultiViewDataset, index: int) -> dict[str, Any]:
    """A PETRv2 batch (``bev.petr_task`` contract) of sample ``index`` and the sample before it in its scene:
    ``img`` (1, 12, 3, H, W), ``lidar2img`` (1, 12, 4, 4) with the earlier views mapping CURRENT lidar
    points (``lidar2img_prev @ inv(prev_lidar2global) @ cur_lidar2global``), ``timestamps`` (1, 12) seconds
    (current lidar time - camera time), plus the current sample's ground truth and token."""
    cur, prev = dataset[index], dataset[index - 1]
    info, prev_info = dataset.samples[index], dataset.samples[index - 1]
    assert prev_info["token"] == info["prev"], "index must not be a scene's first sample"
    cur_to_prev = torch.linalg.inv(prev["lidar2global"]) @ cur["lidar2global"]  # float64
    prev_lidar2img = (prev["lidar2img"][-1].double() @ cur_to_prev).float()
    lidar_us = info["lidar"]["timestamp"]
    stamps = [
        (lidar_us - sample["cameras"][cam]["timestamp"]) * 1e-6
        for sample in (info, prev_info)
        for cam in sample["cameras"]
    ]
    batch = collate_nuscenes([cur])
    batch["img"] = torch.cat([cur["img"][-1], prev["img"][-1]])[None]
    batch["lidar2img"] = torch.cat([cur["lidar2img"][-1], prev_lidar2img])[None]
    batch["timestamps"] = torch.tensor([stamps], dtype=torch.float64)
    return batch


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


def test_the_petrv2_contract_is_checked_with_errors_naming_the_key(tiny_root):  # noqa: F811
    config = load_task_config(PETRV2_DEMO, tiny_petr_overrides(tiny_root))
    task = PETRTask(config)
    batch = two_frame_batch(task.data.build_dataset("val"), 1)
    inputs = task.model_inputs(batch, torch.device("cpu"))
    assert inputs["img"].shape[:2] == (1, 12) and inputs["timestamps"].dtype == torch.float32
    interval = (batch["timestamps"][0, 6:] - batch["timestamps"][0, :6]).mean()
    assert 0.3 < float(interval) < 0.7  # the fixture's samples are 0.5 s apart
    one_frame = dict(batch, img=batch["img"][:, :6])
    with pytest.raises(
        ValueError, match=r"'img' must have shape \(B, 12, 3, H, W\).*got \(1, 6, 3, 36, 64\)"
    ):
        task.model_inputs(one_frame, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'lidar2img' must have shape \(1, 12, 4, 4\)"):
        task.model_inputs(dict(batch, lidar2img=batch["lidar2img"][:, :6]), torch.device("cpu"))
    with pytest.raises(ValueError, match=r"'timestamps' must have shape \(1, 12\)"):
        task.model_inputs(dict(batch, timestamps=batch["timestamps"][:, :6]), torch.device("cpu"))
    no_time = {key: value for key, value in batch.items() if key != "timestamps"}
    with pytest.raises(ValueError, match=r"missing \['timestamps'\]"):
        task.model_inputs(no_time, torch.device("cpu"))
    # the data side's one-frame layout (B, T = 1, 6, ...) is PETR's
    v1 = PETRTask(load_task_config(PETR_DEMO, tiny_petr_overrides(tiny_root)))
    item = collate_nuscenes([v1.data.build_dataset("val")[0]])
    assert v1.model_inputs(item, torch.device("cpu"))["img"].shape[:2] == (1, 6)


def test_the_earlier_views_see_a_static_point_where_the_earlier_frame_saw_it(tiny_root):  # noqa: F811
    """The composed matrices of the contract put a point fixed in the world on the same pixel of an earlier
    image whether it is given in the current lidar frame (the batch's matrix) or in the earlier one."""
    config = load_task_config(PETRV2_DEMO, tiny_petr_overrides(tiny_root))
    dataset = PETRTask(config).data.build_dataset("val")
    batch = two_frame_batch(dataset, 2)
    cur, prev = dataset[2], dataset[1]
    in_cur = torch.tensor([12.0, -4.0, 1.0, 1.0], dtype=torch.float64)  # current lidar frame
    in_prev = torch.linalg.inv(prev["lidar2global"]) @ cur["lidar2global"] @ in_cur
    for cam in range(6):
        via_batch = batch["lidar2img"][0, 6 + cam].double() @ in_cur
        direct = prev["lidar2img"][-1, cam].double() @ in_prev
        assert torch.allclose(via_batch, direct, rtol=1e-4, atol=1e-3)


def test_petrv2_trains_and_infers_on_two_frame_batches(tiny_root):  # noqa: F811
    config = load_task_config(PETRV2_DEMO, tiny_petr_overrides(tiny_root))
    task = PETRTask(config)
    dataset = task.data.build_dataset("val")
    torch.manual_seed(0)
    model = task.build_model(pretrained=True)
    criterion = task.build_criterion()
    batch = two_frame_batch(dataset, 1)
    (inputs,), targets = task.split_batch(batch, torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = criterion.weighted_total(criterion(model(inputs), targets))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(value) for value in losses) and losses[-1] < losses[0]
    ((out_batch, detections),) = list(task.infer(model, [None, batch], torch.device("cpu")))
    assert out_batch is batch and detections[0]["boxes"].shape[1] == 9
    assert 0 < len(detections[0]["scores"]) <= 10 * 10
    slow = dict(batch, timestamps=batch["timestamps"] * 2)  # velocities are per second
    ((_, halved),) = list(task.infer(model, [slow], torch.device("cpu")))
    assert torch.allclose(halved[0]["boxes"][:, 7:], detections[0]["boxes"][:, 7:] / 2, atol=1e-5)


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
