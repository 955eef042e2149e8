# ruff: noqa: F811 (pytest fixtures imported from nuscenes_fixtures are parameters here)
"""Nothing wrong passes silently: truncated images, broken files and evaluation edge cases give errors that
name the file (or are skipped and counted on request), and interrupted writes leave nothing behind."""

from __future__ import annotations

import copy
import errno
import io
import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from bev_helpers import tiny_demo_overrides, tiny_root  # noqa: F401
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes_fixtures import dataset, ground_truth_detections, nusc, val_infos  # noqa: F401
from test_coco_train import DEMO as COCO_DEMO
from test_coco_train import tiny_overrides
from test_padding_official import SIZES, TINY, original_forward, padded_batch
from torch.utils.data import DataLoader

from bev import build_bev_model, load_official_checkpoint, official_state_dict, published_can_bus
from bev.box_coder import CODE_SIZE, NMSFreeDecoder
from bev.task import NuScenesDetectionTask
from configs import load_config
from datasets.coco import build_coco_dataset, coco_paths
from datasets.files import BadImageError, image_file_problem, read_json, read_rgb
from datasets.nuscenes.database import open_nuscenes
from datasets.nuscenes.dataset import NuScenesMultiViewDataset
from datasets.nuscenes.evaluation import EVAL_CONFIG, TP_ERROR_NAMES, detections_to_results, evaluate_nuscenes
from datasets.nuscenes.infos import create_nuscenes_infos, infos_path, load_infos, save_infos
from datasets.nuscenes.synthetic import VERSION
from datasets.synthetic_coco import SyntheticCocoSpec, generate_synthetic_coco
from detr2d import build_model, init_from_checkpoint
from detr2d.runtime import io as runtime_io
from detr2d.runtime.checkpoint import (
    TRAINING_KEYS,
    load_checkpoint,
    load_torch_file,
    read_state_dict,
    save_model_state,
    save_training_checkpoint,
)
from detr2d.runtime.evaluate import check_finite, run_predict
from detr2d.runtime.fit import fit
from detr2d.runtime.io import remove_stale_temporaries, temporary_path
from detr2d.runtime.logs import read_log
from detr2d.runtime.run_dir import RunFolderBusy, lock_run_dir
from detr2d.task import CocoDetectionTask
from ops import available_backends
from ops.deform_conv import deform_conv2d

SPEC = SyntheticCocoSpec(num_train=4, num_val=3, image_size=64, seed=5)


class _Foreign:
    """A class a checkpoint must not make the loader unpickle."""


class _Code:
    """Pickles as a call of ``os.system``: loading it must not run anything."""

    def __reduce__(self) -> tuple:
        return (os.system, ("echo pickled code ran",))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_coco(tmp_path_factory.mktemp("coco") / "synthetic", SPEC, log=lambda _: None)


@pytest.fixture
def coco_copy(generated: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(generated, tmp_path / "copy"))


def _image_id(batch: list[tuple[np.ndarray, dict]]) -> int:
    return batch[0][1]["image_id"]


def _truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _jpeg(progressive: bool = False) -> bytes:
    image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, int(progressive)])
    assert ok
    return data.tobytes()


# --- the structural check of image bytes -------------------------------------------------------------


@pytest.mark.parametrize("progressive", [False, True])
def test_every_cut_of_a_jpeg_is_refused(progressive: bool) -> None:
    data = _jpeg(progressive)
    assert image_file_problem(data) is None
    assert image_file_problem(data + b"\x00" * 7) is None  # bytes after the end-of-image marker are allowed
    for cut in np.linspace(0, len(data) - 1, 40).astype(int):
        assert image_file_problem(data[:cut]) is not None, f"a JPEG cut to {cut}/{len(data)} bytes passed"
    assert "no image data" in image_file_problem(data[:100])
    assert "no end-of-image marker" in image_file_problem(data[:-2])


def test_truncated_png_and_undecodable_files(tmp_path: Path) -> None:
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), dtype=np.uint8))
    assert ok and image_file_problem(png.tobytes()) is None
    assert "truncated PNG" in image_file_problem(png.tobytes()[:-12])
    path = tmp_path / "x.png"
    path.write_bytes(png.tobytes()[:-12])
    with pytest.raises(BadImageError, match=r"x\.png is a truncated PNG: no IEND chunk \(my entry\)"):
        read_rgb(path, "my entry")
    path.write_bytes(b"")
    with pytest.raises(BadImageError, match=r"x\.png is empty"):
        read_rgb(path, "my entry")
    path.write_bytes(b"GIF89a not really")
    with pytest.raises(BadImageError, match=r"x\.png cannot be decoded as an image \(17 bytes\)"):
        read_rgb(path, "my entry")
    with pytest.raises(FileNotFoundError, match=r"image file not found: .*nothing\.jpg \(my entry\)"):
        read_rgb(tmp_path / "nothing.jpg", "my entry")


def test_exif_orientation_only_on_request(tmp_path: Path) -> None:
    ok, data = cv2.imencode(".jpg", np.zeros((20, 40, 3), dtype=np.uint8))
    assert ok
    orientation_6 = struct.pack(">2sHIHHHIII", b"MM", 42, 8, 1, 0x0112, 3, 1, 6 << 16, 0)  # rotate 90°
    payload = b"Exif\x00\x00" + orientation_6
    path = tmp_path / "rotated.jpg"
    path.write_bytes(
        data[:2].tobytes() + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:].tobytes()
    )
    assert read_rgb(path, "x").shape == (20, 40, 3)
    assert read_rgb(path, "x", exif_orientation=True).shape == (40, 20, 3)


# --- COCO ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train2017", "val2017"])
def test_truncated_coco_image_names_file_and_image_id(coco_copy: Path, split: str) -> None:
    dataset_ = build_coco_dataset(coco_copy, split)
    info = dataset_.coco.imgs[dataset_.ids[1]]
    victim = coco_paths(coco_copy, split)[0] / info["file_name"]
    _truncate(victim)
    dataset_[0]
    with pytest.raises(
        ValueError,
        match=rf"{victim.name} is a truncated JPEG.*\(image id {info['id']} in .*instances_{split}\.json\)",
    ):
        dataset_[1]


def test_skip_option_returns_the_next_sample_and_counts(
    coco_copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    image_dir, _ = coco_paths(coco_copy, "val2017")
    dataset_ = build_coco_dataset(coco_copy, "val2017", on_bad_image="skip")
    victim = image_dir / dataset_.coco.imgs[dataset_.ids[1]]["file_name"]
    _truncate(victim, 0.3)
    with caplog.at_level(logging.WARNING, logger="datasets.files"):
        image, target = dataset_[1]
    assert target["image_id"] == dataset_.ids[2]
    np.testing.assert_array_equal(image, dataset_.load_image(2))
    assert dataset_.num_skipped_images == 1
    assert f"skipping sample 1: image file {victim} is a truncated JPEG" in caplog.text
    # DataLoader workers count into the same counter (one skip per epoch)
    loader = DataLoader(dataset_, batch_size=1, num_workers=2, collate_fn=_image_id)
    assert sorted(loader) == sorted([dataset_.ids[0], dataset_.ids[2], dataset_.ids[2]])
    assert dataset_.num_skipped_images == 2
    for path in image_dir.iterdir():
        _truncate(path)
    with pytest.raises(BadImageError, match="all 3 samples have a bad image"):
        dataset_[0]
    with pytest.raises(ValueError, match="on_bad_image must be 'raise' or 'skip', got 'ignore'"):
        build_coco_dataset(coco_copy, "val2017", on_bad_image="ignore")


def test_file_name_with_subfolder(coco_copy: Path) -> None:
    image_dir, ann_file = coco_paths(coco_copy, "val2017")
    data = json.loads(ann_file.read_text())
    name = data["images"][0]["file_name"]
    original = read_rgb(image_dir / name, "original")
    (image_dir / "sub").mkdir()
    (image_dir / name).rename(image_dir / "sub" / name)
    data["images"][0]["file_name"] = f"sub/{name}"
    ann_file.write_text(json.dumps(data))
    dataset_ = build_coco_dataset(coco_copy, "val2017")
    np.testing.assert_array_equal(dataset_[dataset_.ids.index(data["images"][0]["id"])][0], original)
    (image_dir / "sub" / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"1 image file\(s\) .* not found .*sub/{name}"):
        build_coco_dataset(coco_copy, "val2017")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe binary", "is not JSON text: byte 0 is not UTF-8"),
        (b'{"images": [{"id": 1, "file_na', r"is not valid JSON \(truncated\?\)"),
        (b"[1, 2]", "holds a JSON list, expected an object"),
    ],
)
def test_broken_annotation_file_is_named(coco_copy: Path, content: bytes, message: str) -> None:
    ann_file = coco_paths(coco_copy, "val2017")[1]
    ann_file.write_bytes(content)
    with pytest.raises(ValueError, match=rf"COCO annotation file .*instances_val2017\.json {message}"):
        build_coco_dataset(coco_copy, "val2017")


def test_categories_beyond_the_model_outputs(generated: Path) -> None:
    dataset = build_coco_dataset(generated, "val2017")
    assert dataset.categories_beyond(3) == [(3, "triangle"), (4, "cross")]
    assert dataset.categories_beyond(5) == [] and dataset.categories_beyond(91) == []
    contiguous = build_coco_dataset(generated, "val2017", contiguous_labels=True)  # ids 1-4 -> labels 0-3
    assert contiguous.categories_beyond(4) == [] and contiguous.categories_beyond(3) == [(4, "cross")]


# --- nuScenes ----------------------------------------------------------------------------------------


def _infos_with_bad_camera(val_infos: dict, tmp_path: Path, index: int, channel: str) -> tuple[dict, Path]:
    """A copy of ``val_infos`` reading from ``tmp_path`` (the real ``samples`` linked in) whose sample
    ``index`` has a truncated ``channel`` image."""
    infos = copy.deepcopy(val_infos)
    (tmp_path / "samples").symlink_to(Path(val_infos["dataroot"]) / "samples")
    camera = infos["samples"][index]["cameras"][channel]
    victim = tmp_path / "bad" / Path(camera["path"]).name
    victim.parent.mkdir()
    victim.write_bytes((tmp_path / camera["path"]).read_bytes())
    _truncate(victim)
    camera["path"] = f"bad/{victim.name}"
    infos["dataroot"] = str(tmp_path)
    return infos, victim


def test_truncated_camera_image_names_file_camera_and_sample(val_infos, tmp_path: Path) -> None:
    infos, victim = _infos_with_bad_camera(val_infos, tmp_path, 2, "CAM_FRONT_LEFT")
    dataset_ = NuScenesMultiViewDataset(infos, image_size=(160, 90))
    dataset_[1]
    token = infos["samples"][2]["token"]
    with pytest.raises(
        ValueError,
        match=rf"{re.escape(victim.name)} is a truncated JPEG.*\(CAM_FRONT_LEFT of sample {token}\)",
    ):
        dataset_[2]


def test_nuscenes_skip_option(val_infos, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    infos, victim = _infos_with_bad_camera(val_infos, tmp_path, 2, "CAM_BACK")
    dataset_ = NuScenesMultiViewDataset(infos, image_size=(160, 90), on_bad_image="skip")
    with caplog.at_level(logging.WARNING, logger="datasets.files"):
        item = dataset_[2]
    assert item["sample_token"] == infos["samples"][3]["token"]
    assert dataset_.num_skipped_images == 1 and str(victim) in caplog.text


BEV_DEMO = Path(__file__).resolve().parents[1] / "configs" / "bev" / "demo.py"


@pytest.fixture
def bev_bad_val(tiny_root: Path, tmp_path: Path) -> tuple[list[str], Path, str]:  # noqa: F811
    """Overrides of the tiny BEV demo whose val infos (in ``tmp_path``) read a truncated CAM_BACK image
    for the second sample; the infos file and that sample's token."""
    infos = load_infos(infos_path(tiny_root / "infos", "synthetic_train"))
    save_infos(infos, infos_path(tmp_path / "infos", "synthetic_train"))
    infos = load_infos(infos_path(tiny_root / "infos", "synthetic_val"))
    camera = infos["samples"][1]["cameras"]["CAM_BACK"]
    victim = tmp_path / "bad.jpg"
    victim.write_bytes((tiny_root / camera["path"]).read_bytes())
    _truncate(victim)
    camera["path"] = str(victim)  # absolute: data.root stays the database
    path = save_infos(infos, infos_path(tmp_path / "infos", "synthetic_val"))
    overrides = [*tiny_demo_overrides(tiny_root), f"data.infos_dir={tmp_path / 'infos'}"]
    return overrides, path, infos["samples"][1]["token"]


def test_bev_evaluation_scores_the_samples_read_when_skipping(
    bev_bad_val, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides, _, token = bev_bad_val
    overrides += ["data.on_bad_image=skip", "schedule.epochs=1", "train.eval_every=1", "train.log_every=0"]
    torch.set_num_threads(1)
    with caplog.at_level(logging.WARNING):
        fit(NuScenesDetectionTask(load_config(BEV_DEMO, overrides)), tmp_path / "run")
    (record,) = read_log(tmp_path / "run" / "log.jsonl")
    assert record["val_samples"] == 5 and record["val_skipped"] == 1 and set(record["val"]) == {"mAP", "NDS"}
    assert (tmp_path / "run" / "checkpoint.pth").is_file()
    metrics = json.loads((tmp_path / "run" / "val" / "metrics.json").read_text())
    assert metrics["num_samples"] == 5 and metrics["skipped_samples"] == [token]
    results = json.loads((tmp_path / "run" / "val" / "results_nusc.json").read_text())["results"]
    assert len(results) == 5 and token not in results
    assert "1 of 6 samples of split 'synthetic_val' could not be read" in caplog.text and token in caplog.text


def test_bev_predict_skips_a_sample_with_a_truncated_camera(bev_bad_val, tmp_path: Path) -> None:
    overrides, infos, token = bev_bad_val
    task = NuScenesDetectionTask(load_config(BEV_DEMO, overrides))
    torch.save({"model": task.build_model().state_dict()}, tmp_path / "weights.pth")
    torch.set_num_threads(1)
    entries, errors = run_predict(task, tmp_path / "weights.pth", [infos], tmp_path / "out", 0.0, limit=3)
    assert len(entries) == 2 and token not in {e["sample_token"] for e in entries}
    (error,) = errors
    assert error["input"] == f"{infos}: sample {token}" and "bad.jpg is a truncated JPEG" in error["error"]
    assert json.loads((tmp_path / "out" / "predictions.json").read_text()) == entries + errors
    args = ["tools/predict.py", str(BEV_DEMO), str(tmp_path / "weights.pth"), str(infos), "--limit", "3"]
    proc = subprocess.run(
        [sys.executable, *args, "--out", str(tmp_path / "cli"), *overrides],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 1 and "1 input could not be read" in proc.stderr, proc.stderr[-2000:]
    assert len(json.loads((tmp_path / "cli" / "predictions.json").read_text())) == 3


def test_evaluation_of_a_part_of_the_split_loads_only_its_ground_truth(
    dataset, nusc, val_infos, tmp_path: Path
) -> None:
    detections = ground_truth_detections(val_infos)
    unread, *read = detections
    assert len(detections.pop(unread)["boxes"])  # its ground truth, if loaded, would be missed
    with pytest.raises(ValueError, match=r"exactly the \d+ samples of split 'mini_val': 1 missing"):
        evaluate_nuscenes(detections, dataset.root, VERSION, "mini_val", tmp_path, nusc=nusc)
    metrics = evaluate_nuscenes(
        detections, dataset.root, VERSION, "mini_val", tmp_path, nusc=nusc, sample_tokens=read
    )
    assert metrics["num_samples"] == len(read) and metrics["mAP"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"sample_tokens name 1 sample\(s\) not in split 'mini_val'"):
        evaluate_nuscenes(detections, dataset.root, VERSION, "mini_val", tmp_path, sample_tokens=["x"])


def test_evaluation_without_any_box_gives_the_devkits_zero_metrics(
    dataset, nusc, val_infos, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    empty = {
        sample["token"]: {
            "boxes": np.zeros((0, 9)),
            "scores": np.zeros(0),
            "labels": np.zeros(0, dtype=np.int64),
        }
        for sample in val_infos["samples"]
    }
    with caplog.at_level(logging.WARNING, logger="datasets.nuscenes.evaluation"):
        metrics = evaluate_nuscenes(empty, dataset.root, VERSION, "mini_val", tmp_path / "ours", nusc=nusc)
    assert f"no predicted box in any of the {len(empty)} samples of split 'mini_val'" in caplog.text
    # Oracle: the devkit itself, on one box per sample placed 1 km away, which its range filter drops.
    far = {
        token: {
            "boxes": np.array([[1000.0, 0, 0, 2, 4, 1.5, 0, 0, 0]]),
            "scores": np.ones(1),
            "labels": np.zeros(1, dtype=np.int64),
        }
        for token in empty
    }
    result_path = tmp_path / "far.json"
    result_path.write_text(json.dumps(detections_to_results(far, nusc)))
    oracle = DetectionEval(
        nusc,
        config_factory(EVAL_CONFIG),
        str(result_path),
        "mini_val",
        str(tmp_path / "devkit"),
        verbose=False,
    ).main(plot_examples=0, render_curves=False)
    assert metrics["mAP"] == oracle["mean_ap"] == 0.0 and metrics["NDS"] == oracle["nd_score"] == 0.0
    assert metrics["per_class_AP"] == oracle["mean_dist_aps"]
    for name, short in TP_ERROR_NAMES.items():
        assert metrics[short] == oracle["tp_errors"][name] == 1.0
    assert json.loads((tmp_path / "ours" / "results_nusc.json").read_text())["results"] == {
        t: [] for t in empty
    }


@pytest.fixture
def tables_copy(dataset, tmp_path: Path) -> Path:
    shutil.copytree(dataset.root / VERSION, tmp_path / VERSION)
    shutil.copytree(dataset.root / "maps", tmp_path / "maps")
    return tmp_path


@pytest.mark.parametrize(
    ("table", "damage", "message"),
    [
        ("sample_annotation", lambda p: _truncate(p), r"is not valid JSON \(truncated\?\)"),
        ("ego_pose", lambda p: p.write_bytes(b""), "is empty"),
        ("scene", lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 jpeg"), "is not JSON text"),
        ("sensor", lambda p: p.write_text('{"token": "x"}'), "is not a JSON list of records"),
    ],
)
def test_broken_nuscenes_table_is_named(tables_copy: Path, table: str, damage, message: str) -> None:
    damage(tables_copy / VERSION / f"{table}.json")
    with pytest.raises(ValueError, match=rf"nuScenes {table} table .*{VERSION}/{table}\.json {message}"):
        open_nuscenes(tables_copy, VERSION)


def test_broken_infos_file_is_named(val_infos, tmp_path: Path) -> None:
    path = save_infos(val_infos, tmp_path / "infos.json")
    _truncate(path, 0.7)
    with pytest.raises(
        ValueError, match=r"nuScenes infos file .*infos\.json is not valid JSON \(truncated\?\)"
    ):
        load_infos(path)
    path.write_bytes(b"\x00\x9f\x92\x96")
    with pytest.raises(ValueError, match=r"infos\.json is not JSON text: byte 1 is not UTF-8"):
        NuScenesMultiViewDataset(path)


def test_read_json_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"splits file not found: .*none\.json"):
        read_json(tmp_path / "none.json", "splits")
    with pytest.raises(ValueError, match=r"splits file .* is a directory"):
        read_json(tmp_path, "splits")
    (tmp_path / "a.json").write_text('{"a": [1, 2,\n')
    with pytest.raises(ValueError, match=r"a\.json is not valid JSON \(truncated\?\): .* line 2 column 1"):
        read_json(tmp_path / "a.json", "splits")


# --- checkpoints and configs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"is empty \(0 bytes\)"),
        (b"\x13\x37 garbage" * 9, r"\(90 bytes\): it is truncated, corrupt or not written by torch\.save"),
        (b'{"model": {}}', "it is truncated, corrupt or not written by torch.save"),
    ],
)
def test_unreadable_checkpoint_is_named(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    with pytest.raises(
        ValueError, match=rf"checkpoint file .*weights\.pth {message}|weights\.pth .*{message}"
    ):
        load_checkpoint(torch.nn.Linear(2, 2), path)
    with pytest.raises(ValueError, match=r"training checkpoint file .*weights\.pth"):
        load_torch_file(path, "training checkpoint")


def test_truncated_or_foreign_checkpoint_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    save_model_state(torch.nn.Linear(64, 64), path)
    _truncate(path)
    with pytest.raises(
        ValueError, match=r"cannot read checkpoint file .*model\.pth \(\d+ bytes\): it is truncated"
    ):
        read_state_dict(path)
    torch.save({"model": {"weight": torch.zeros(1)}, "extra": _Foreign()}, path)
    with pytest.raises(
        ValueError,
        match=r"model\.pth .*refers to a Python global that is not allowed \(test_bad_inputs\._Foreign\)",
    ):
        read_state_dict(path)
    torch.save({"model": [1, 2]}, path)
    with pytest.raises(ValueError, match=r"expected a state_dict .* in .*model\.pth, got dict"):
        read_state_dict(path)
    with pytest.raises(FileNotFoundError, match=r"checkpoint file not found: .*gone\.pth"):
        read_state_dict(tmp_path / "gone.pth")


def test_config_that_fails_to_run_is_named(tmp_path: Path) -> None:
    (tmp_path / "base.py").write_text("model = dict(depth=undefined)\n")
    (tmp_path / "child.py").write_text("_base_ = 'base.py'\nmodel = dict(x=1)\n")
    with pytest.raises(ValueError, match=r"config file .*base\.py failed to run as Python: NameError"):
        load_config(tmp_path / "child.py")
    (tmp_path / "child.py").write_bytes(b"\x00\xff")
    with pytest.raises(ValueError, match=r"config file .*child\.py failed to run as Python: SyntaxError"):
        load_config(tmp_path / "child.py")


# --- interrupted writes ------------------------------------------------------------------------------------


def test_stale_temporaries_removed_live_ones_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True
    )
    dead_pid = int(finished.stdout)
    dead = tmp_path / f".checkpoint.pth.tmp.{dead_pid}"
    dead.write_bytes(b"x" * 1000)
    live = temporary_path(tmp_path / "checkpoint.pth")
    assert live.name == f".checkpoint.pth.tmp.{os.getpid()}"
    live.write_bytes(b"y")
    others = [tmp_path / ".notes.tmp", tmp_path / "checkpoint.pth.tmp.1", tmp_path / f".x.tmp.{dead_pid}.bak"]
    for path in others:
        path.write_text("keep")
    with caplog.at_level(logging.WARNING, logger="detr2d.runtime.io"):
        assert remove_stale_temporaries(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and all(path.exists() for path in others)
    assert f"removed {dead} (1000 bytes)" in caplog.text and f"process {dead_pid}" in caplog.text
    assert remove_stale_temporaries(tmp_path / "missing") == []


# --- one run per folder, resumed logs ---------------------------------------------------------------------

REPO = Path(__file__).resolve().parents[1]


def _coco_run_config(root: Path, *overrides: str) -> dict:
    """The tiny COCO demo (two iterations an epoch) on ``root``, no evaluation."""
    return load_config(COCO_DEMO, [*tiny_overrides(root), "train.eval_every=0", *overrides])


def _wait_for_lock(folder: Path, proc: subprocess.Popen) -> dict:
    """The holder record of ``folder/.lock`` once ``proc`` has written it."""
    for _ in range(1200):
        text = (folder / ".lock").read_text() if (folder / ".lock").exists() else ""
        if text.endswith("\n"):
            return json.loads(text)
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError(f"{folder / '.lock'} was never written")


def test_a_second_run_into_a_busy_folder_fails_and_the_first_is_unharmed(
    generated: Path, tmp_path: Path
) -> None:
    """The first run (another process) waits before its first epoch; a fresh run and a --resume into its
    folder fail at once naming it; it then completes with its own config, log and checkpoint."""
    out, go = tmp_path / "run", tmp_path / "go"
    first = _coco_run_config(generated, "schedule.epochs=1", "train.seed=1")
    script = f"""
import json, pathlib, sys, time
from detr2d.runtime import fit as fit_module
from detr2d.task import CocoDetectionTask
go, train_one_epoch = pathlib.Path({str(go)!r}), fit_module.train_one_epoch
def waiting(*args, **kwargs):
    for _ in range(3000):
        if go.exists():
            break
        time.sleep(0.05)
    return train_one_epoch(*args, **kwargs)
fit_module.train_one_epoch = waiting
fit_module.fit(CocoDetectionTask(json.loads(sys.argv[1])), {str(out)!r})
"""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, json.dumps(first)],
        cwd=REPO,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        holder = _wait_for_lock(out, proc)
        assert holder["pid"] == proc.pid
        busy = rf"{re.escape(str(out))} is in use by another training run \(pid {proc.pid} on host "
        second = _coco_run_config(generated, "schedule.epochs=1", "train.seed=2")
        with pytest.raises(RunFolderBusy, match=busy) as error:
            fit(CocoDetectionTask(second), out)
        assert "\n" not in str(error.value) and holder["started"] in str(error.value)
        with pytest.raises(RunFolderBusy, match=busy):
            fit(CocoDetectionTask(second), out, resume=out / "checkpoint.pth")
        go.touch()
        assert proc.wait(timeout=300) == 0, proc.communicate()[1][-3000:]
    finally:
        proc.kill()
        proc.communicate()
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 1
    assert [r["epoch"] for r in read_log(out / "log.jsonl") if "train" in r] == [0]
    assert torch.load(out / "checkpoint.pth", weights_only=True)["epoch"] == 0
    assert not (out / ".lock").exists()  # released at the end of the run


def test_the_lock_of_a_killed_run_is_taken_over(
    generated: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "run"
    code = (
        "import sys, time; from detr2d.runtime.run_dir import lock_run_dir; "
        f"lock_run_dir({str(out)!r}); print('locked', flush=True); time.sleep(120)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "locked\n"
    with pytest.raises(RunFolderBusy, match=f"pid {proc.pid} "):
        lock_run_dir(out)  # held while it runs
    proc.kill()  # kill -9: the lock file stays, the kernel drops the lock
    proc.wait()
    assert json.loads((out / ".lock").read_text())["pid"] == proc.pid
    with caplog.at_level(logging.WARNING):
        fit(CocoDetectionTask(_coco_run_config(generated, "schedule.epochs=1")), out)
    assert (
        f"taking over the lock of a run that ended without releasing it (pid {proc.pid} on host"
        in caplog.text
    )
    assert (out / "checkpoint.pth").is_file() and not (out / ".lock").exists()


def test_a_resumed_log_tells_redone_iterations_apart(
    generated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed in the second iteration of epoch 1 (iteration 4; checkpoint after epoch 0 = iteration 2)
    and resumed: iteration 3 is logged by both attempts; read_log keeps the latest."""
    config = _coco_run_config(generated, "schedule.epochs=2", "train.log_every=1")
    task = CocoDetectionTask(config)
    criterion = task.build_criterion()
    forward, calls = criterion.forward, []

    def killed_at_iteration_4(outputs, targets):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt  # the run dies after logging iteration 3
        return forward(outputs, targets)

    monkeypatch.setattr(criterion, "forward", killed_at_iteration_4)
    monkeypatch.setattr(task, "build_criterion", lambda: criterion)
    with pytest.raises(KeyboardInterrupt):
        fit(task, tmp_path)
    assert not (tmp_path / ".lock").exists()  # released on the exception
    fit(CocoDetectionTask(config), tmp_path, resume=tmp_path / "checkpoint.pth")

    raw = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [(r.get("iter"), r.get("epoch"), r["attempt"]) for r in raw if "resumed" not in r] == [
        (1, 0, 0),
        (2, 0, 0),
        (None, 0, 0),
        (3, 1, 0),
        (3, 1, 1),
        (4, 1, 1),
        (None, 1, 1),
    ]
    (resumed,) = [r for r in raw if "resumed" in r]
    assert raw.index(resumed) == 4 and resumed["attempt"] == 1
    assert resumed["resumed"]["from_epoch"] == 1 and resumed["resumed"]["iter"] == 2
    assert resumed["resumed"]["checkpoint"] == str(tmp_path / "checkpoint.pth")
    redone = [r for r in raw if r.get("iter") == 3]
    assert redone[0]["loss"] == pytest.approx(redone[1]["loss"])  # the same iteration, done again

    log = read_log(tmp_path / "log.jsonl")
    assert [(r.get("iter"), r["epoch"], r["attempt"]) for r in log] == [
        (1, 0, 0),
        (2, 0, 0),
        (None, 0, 0),
        (3, 1, 1),
        (4, 1, 1),
        (None, 1, 1),
    ]


def test_read_log_drops_an_earlier_attempts_work_beyond_a_later_resume_point(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Attempt 0 reached iteration 5 (epoch 1 ends at iteration 4), attempt 1 resumed after epoch 0 and
    died at iteration 3, attempt 2 resumed there again: nothing of attempt 0 after iteration 2 counts,
    and a line cut by a killed write is skipped with a warning."""
    lines = [{"iter": i, "epoch": (i - 1) // 2, "attempt": 0} for i in (1, 2)] + [
        {"epoch": 0, "train": {}, "attempt": 0},
        {"iter": 3, "epoch": 1, "attempt": 0},
    ]
    lines += [{"epoch": 1, "train": {}, "attempt": 0}, {"iter": 5, "epoch": 2, "attempt": 0}]
    lines += [{"resumed": {"from_epoch": 1, "iter": 2}, "attempt": 1}, {"iter": 3, "epoch": 1, "attempt": 1}]
    lines += [{"resumed": {"from_epoch": 1, "iter": 2}, "attempt": 2}, {"iter": 3, "epoch": 1, "attempt": 2}]
    path = tmp_path / "log.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"iter": 4, "ep')
    with caplog.at_level(logging.WARNING):
        log = read_log(path)
    assert [(r.get("iter"), r["epoch"], r["attempt"]) for r in log] == [
        (1, 0, 0),
        (2, 0, 0),
        (None, 0, 0),
        (3, 1, 2),
    ]
    assert f"{path} line 11 is not a JSON object" in caplog.text


def test_save_model_state_leaves_no_temporary(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    save_model_state(model, tmp_path / "out" / "model.pth")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["model.pth"]
    torch.testing.assert_close(read_state_dict(tmp_path / "out" / "model.pth")["weight"], model.weight)


def test_disk_full_while_writing_names_the_file_and_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch.save turns a failed write into "unexpected pos ..."; the error names the file and ENOSPC."""
    path = tmp_path / "model.pth"
    model = torch.nn.Linear(64, 64)
    save_model_state(model, path)
    before = path.read_bytes()

    class FullDisk(io.FileIO):
        def write(self, data) -> int:
            if self.tell() + len(data) > 4096:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    monkeypatch.setattr(runtime_io, "open", lambda file, mode: FullDisk(file, mode), raising=False)
    with pytest.raises(
        OSError, match=rf"cannot write {re.escape(str(path))} .*: No space left on device"
    ) as info:
        save_model_state(torch.nn.Linear(64, 64), path)
    assert info.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=r"training\.pth .*No space left on device"):
        save_training_checkpoint(
            tmp_path / "training.pth", {"model": model.state_dict(), **dict.fromkeys(TRAINING_KEYS[1:], 0)}
        )
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["model.pth"]


# --- round 2: checkpoints -----------------------------------------------------------------------------


def test_checkpoint_from_a_newer_torch_keeps_torchs_reason(tmp_path: Path) -> None:
    path = tmp_path / "new.pth"
    save_model_state(torch.nn.Linear(2, 2), path)
    with zipfile.ZipFile(path) as archive:
        records = {item.filename: archive.read(item) for item in archive.infolist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in records.items():
            archive.writestr(name, b"99\n" if name.endswith("/version") else data)
    with pytest.raises(
        ValueError,
        match=r"new\.pth \(\d+ bytes\): it was written by a newer PyTorch than this one .*version 99, "
        r"but the maximum supported version for reading is \d+.*PyTorch installation may be too old",
    ):
        read_state_dict(path)


def test_checkpoint_with_pickled_code_is_refused_as_such(
    tmp_path: Path, capfd: pytest.CaptureFixture
) -> None:
    path = tmp_path / "code.pth"
    torch.save({"model": {"weight": torch.zeros(1)}, "payload": _Code()}, path)
    with pytest.raises(
        ValueError, match=r"code\.pth .*refers to a Python global that is not allowed \(\w+\.system\)"
    ):
        read_state_dict(path)
    assert "pickled code ran" not in capfd.readouterr().out


def test_key_mismatch_names_the_file_and_counts_every_kind(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"model": {"weight": torch.zeros(3, 2), "extra": torch.zeros(1)}}, path)
    with pytest.raises(
        ValueError,
        match=rf"checkpoint {re.escape(str(path))} does not fit the model: 1 missing keys \[bias\], "
        r"1 unexpected keys \[extra\], 1 shape mismatches \[weight: checkpoint \(3, 2\) vs model \(2, 2\)\]",
    ):
        load_checkpoint(torch.nn.Linear(2, 2), path)
    # bevformer_tiny's weights in our format into bevformer_small (built without memory on "meta")
    with torch.device("meta"):
        tiny, small = build_bev_model("bevformer_tiny"), build_bev_model("bevformer_small")
    with pytest.raises(
        ValueError,
        match=r"checkpoint tiny\.pth does not fit the model: 358 missing keys \[backbone\..* "
        r"\(\+353 more\)\], 0 unexpected keys, 3 shape mismatches \[encoder\.bev_embedding\.weight: "
        r"checkpoint \(2500, 256\) vs model \(22500, 256\)",
    ):
        load_checkpoint(small, tiny.state_dict(), source="tiny.pth")
    # the released format: the same counts, with the path
    with pytest.raises(
        ValueError, match=r"official checkpoint tiny\.pth does not fit the model: 358 missing keys .* 3 shape"
    ):
        load_official_checkpoint(small, official_state_dict(tiny), source="tiny.pth")


def test_aliased_keys_that_disagree_are_refused_by_every_loader(tmp_path: Path) -> None:
    """Without refinement every decoder layer shares one box head: a file holding two different values
    under its names is refused, whichever loader reads it."""
    torch.manual_seed(0)
    model = build_model("deformable_detr", **TINY)
    state = {key: value.clone() for key, value in model.state_dict().items()}
    state["bbox_embed.1.layers.2.bias"] += 1.0
    path = tmp_path / "edited.pth"
    torch.save({"model": state}, path)
    message = (
        r"edited\.pth: the model shares one tensor under .* different values for "
        r"\['bbox_embed\.0\.layers\.2\.bias', 'bbox_embed\.1\.layers\.2\.bias'"
    )
    with pytest.raises(ValueError, match=message):
        load_checkpoint(model, path)
    with pytest.raises(ValueError, match=message):
        init_from_checkpoint(model, path)
    with pytest.raises(ValueError, match=r"<state_dict>: the model shares one tensor"):
        load_checkpoint(model, state, strict=False)
    load_checkpoint(model, model.state_dict())  # consistent aliases load


# --- round 2: models and ops --------------------------------------------------------------------------


def test_bev_boxes_with_nan_centres_reach_the_non_finite_check() -> None:
    """The decoder's range filter dropped NaN centres (zero detections, NDS 0, exit 0)."""
    decoder = NMSFreeDecoder(num_classes=3, max_num=5)
    logits = torch.randn(2, 4, 3)
    code = torch.zeros(2, 4, CODE_SIZE)
    code[1, :, :2] = float("nan")  # the second sample's centres
    detections = decoder.decode(logits, code)
    assert len(detections[0]["boxes"]) == 5 and len(detections[1]["boxes"]) == 5
    with pytest.raises(FloatingPointError, match=r"5 of 10 detections in 1 of 2 sample\(s\)"):
        check_finite(detections, "the test")
    code[1, :, :2] = 100.0  # finite centres out of range are still dropped
    assert len(decoder.decode(logits, code)[1]["boxes"]) == 0


@pytest.mark.skipif("cpu" not in available_backends(), reason="native CPU library not built")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcn_reference_agrees_with_native_on_non_finite_offsets(dtype: torch.dtype) -> None:
    """A NaN / inf sampling position contributes zero (the reference indexed with int64 min before)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 6, 7, generator=g, dtype=dtype)
    offset = torch.randn(1, 18, 6, 7, generator=g, dtype=dtype)
    offset[0, 0, 1, 2], offset[0, 3, 2, 2], offset[0, 5, 3, 3] = float("nan"), float("inf"), -float("inf")
    offset[0, 7, 0, 0] = 1e30
    mask = torch.rand(1, 9, 6, 7, generator=g, dtype=dtype)
    weight, bias = torch.randn(5, 4, 3, 3, generator=g, dtype=dtype), torch.randn(5, generator=g, dtype=dtype)
    results = {}
    for backend in ("reference", "cpu"):
        inputs = [t.clone().requires_grad_() for t in (x, offset, mask)]
        out = deform_conv2d(*inputs, weight, bias, padding=1, backend=backend)
        out.sum().backward()
        results[backend] = (out.detach(), *(t.grad for t in inputs))
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for reference, native in zip(*results.values(), strict=True):
        assert torch.isfinite(reference).all()
        torch.testing.assert_close(reference, native, **tolerance)


def test_official_two_stage_ranks_padded_proposals_like_the_original() -> None:
    """A class head scoring the padded cells' constant memory highest: the original's top-k picks them
    (their reference is sigmoid(inf) = 1), ``official`` reproduces that, ``exact`` never picks them."""
    torch.manual_seed(0)
    official = build_model("deformable_detr_two_stage", padding="official", **TINY).eval()
    transformer = official.transformer
    with torch.no_grad():
        # padded memory is 0 -> LayerNorm(enc_output.bias); a head row along it scores it highest
        padded_memory = transformer.enc_output_norm(transformer.enc_output.bias)
        official.class_embed[-1].weight[0] = padded_memory / padded_memory.norm()
    exact = build_model("deformable_detr_two_stage", **TINY).eval()
    exact.load_state_dict(official.state_dict())
    batch, mask = padded_batch(SIZES)
    with torch.no_grad():
        ours = official(batch, mask)
        reference = original_forward(official, batch, mask)
        exact_out = exact(batch, mask)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(ours[key], reference[key], rtol=1e-5, atol=1e-5)
        assert (ours[key] - exact_out[key]).abs().max() > 1e-3
    # a query from a padded cell starts at reference 1 = sigmoid(inf), which refinement keeps near 1
    assert (ours["pred_boxes"] > 0.999).all(-1).any(dim=1).all(), "no padded proposal picked: no test"
    assert not (exact_out["pred_boxes"] > 0.999).all(-1).any()


# --- round 2: nuScenes ----------------------------------------------------------------------------------


def _with_nan_lidar2img(val_infos: dict, index: int, channel: str) -> dict:
    infos = copy.deepcopy(val_infos)
    infos["samples"][index]["cameras"][channel]["lidar2img"][1][2] = float("nan")
    return infos


def test_nan_lidar2img_names_the_infos_file_sample_and_camera(val_infos, tmp_path: Path) -> None:
    infos = _with_nan_lidar2img(val_infos, 3, "CAM_BACK_LEFT")
    token = infos["samples"][3]["token"]
    path = tmp_path / "nuscenes_infos_val.json"
    path.write_text(json.dumps(infos))  # save_infos refuses NaN; a hand-edited or foreign file may hold it
    expected = (
        rf"infos file {re.escape(str(path))}: camera CAM_BACK_LEFT of sample {token} has lidar2img .*nan"
    )
    with pytest.raises(ValueError, match=expected):
        load_infos(path)
    with pytest.raises(ValueError, match=expected):
        NuScenesMultiViewDataset(path, image_size=(160, 90))
    with pytest.raises(
        ValueError, match=rf"infos of split 'mini_val': camera CAM_BACK_LEFT of sample {token}"
    ):
        NuScenesMultiViewDataset(infos, image_size=(160, 90), num_history=1)


def test_can_bus_deltas_are_taken_in_float64(val_infos) -> None:
    """Global positions near 600 m: float32 storage made the frame-to-frame deltas off by ~5e-5 m."""
    infos = copy.deepcopy(val_infos)
    for index, sample in enumerate(infos["samples"]):
        sample["can_bus"][:3] = [600.123456789 + 0.37 * index, 1700.987654321 - 0.11 * index, 0.0123456789]
    item = NuScenesMultiViewDataset(infos, image_size=(160, 90), num_history=1)[1]
    assert bool(item["history_valid"][0])
    previous, current = (np.asarray(infos["samples"][i]["can_bus"], dtype=np.float64) for i in (0, 1))
    published = published_can_bus(item["can_bus"][1:], item["can_bus"][:1], torch.ones(1, dtype=torch.bool))
    np.testing.assert_allclose(published[0, :3].numpy(), current[:3] - previous[:3], rtol=0, atol=1e-9)
    np.testing.assert_allclose(published[0, 17].item(), current[17] - previous[17], rtol=0, atol=1e-9)


def test_create_infos_refuses_tables_of_another_version(tables_copy: Path, tmp_path: Path) -> None:
    (tables_copy / VERSION).rename(tables_copy / "v1.0-trainval")
    with pytest.raises(
        ValueError,
        match=r"nuScenes version 'v1.0-trainval' \(.*v1\.0-trainval\) holds \d+ scenes.*expected the "
        r"850 scenes of splits \['train', 'val'\]",
    ):
        create_nuscenes_infos(tables_copy, "v1.0-trainval", tmp_path / "infos")
    assert not (tmp_path / "infos").exists()


def test_create_infos_names_a_missing_map_file(tables_copy: Path, tmp_path: Path) -> None:
    victim = sorted((tables_copy / "maps").glob("*.png"))[0]
    victim.unlink()
    with pytest.raises(
        FileNotFoundError, match=rf"map file .*{re.escape(victim.name)} listed in .*map\.json"
    ):
        create_nuscenes_infos(tables_copy, VERSION, tmp_path / "infos")
