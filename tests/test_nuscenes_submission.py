"""nuScenes submissions: ``tools/test.py CONFIG CKPT --format-only --out DIR`` on a split whose infos have
no ground truth (as the test split's) writes ``DIR/results_nusc.json`` for every sample of the split,
which the devkit's own loader accepts, and scores nothing."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest
import torch
from bev_helpers import one_thread, tiny_demo_overrides  # noqa: F401 (autouse fixture)
from nuscenes.eval.common.loaders import load_prediction
from nuscenes.eval.detection.data_classes import DetectionBox

from bev.nuscenes import SampleBoxes
from bev.task import NuScenesDetectionTask
from configs import load_config
from datasets.nuscenes import SyntheticSpec, create_nuscenes_infos, generate_synthetic_nuscenes
from datasets.nuscenes.constants import CLASS_NAMES
from datasets.nuscenes.evaluation import CAMERA_ONLY_META
from datasets.nuscenes.infos import infos_path, load_infos, save_infos
from datasets.nuscenes.synthetic import VERSION

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "bev" / "demo.py"
SPLIT = "synthetic_test"  # the val scenes, their infos stripped of annotations


@pytest.fixture(scope="module")
def test_split_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two scenes of three samples (96 x 54 images) and the infos of a split without ground truth."""
    spec = SyntheticSpec(num_scenes=4, samples_per_scene=3, image_size=(96, 54), objects_per_class=1, seed=4)
    root = generate_synthetic_nuscenes(tmp_path_factory.mktemp("submission") / "nuscenes", spec)
    create_nuscenes_infos(root, VERSION, root / "infos", splits=["synthetic_val"])
    infos = load_infos(infos_path(root / "infos", "synthetic_val"))
    infos["split"] = SPLIT
    for sample in infos["samples"]:
        sample["gt"] = {key: [] for key in sample["gt"]}
    save_infos(infos, infos_path(root / "infos", SPLIT))
    return root


def overrides(root: Path) -> list[str]:
    return [*tiny_demo_overrides(root), f"data.val_split={SPLIT}"]


def test_format_only_writes_a_submission_the_devkit_loads(
    test_split_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    task = NuScenesDetectionTask(load_config(DEMO, overrides(test_split_root)))
    torch.manual_seed(0)
    checkpoint = tmp_path / "model.pth"
    torch.save({"model": task.build_model().state_dict()}, checkpoint)
    out = tmp_path / "submission"
    argv = sys.argv
    sys.argv = ["test.py", str(DEMO), str(checkpoint), "--format-only", "--out", str(out)]
    sys.argv += overrides(test_split_root)
    try:
        runpy.run_path(str(REPO / "tools" / "test.py"), run_name="__main__")
    finally:
        sys.argv = argv
    assert "submission files (not scored)" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["results_nusc.json"]  # no metrics: nothing scored

    boxes, meta = load_prediction(str(out / "results_nusc.json"), 500, DetectionBox, verbose=False)
    assert meta == CAMERA_ONLY_META
    assert meta["use_camera"] and not any(
        meta[k] for k in ("use_lidar", "use_radar", "use_map", "use_external")
    )
    split_tokens = [s["token"] for s in load_infos(infos_path(test_split_root / "infos", SPLIT))["samples"]]
    assert len(split_tokens) == 6 and set(boxes.sample_tokens) == set(split_tokens)
    assert sum(len(boxes[token]) for token in split_tokens) > 0
    box = boxes[split_tokens[0]][0]
    assert box.detection_name in CLASS_NAMES
    assert len(box.translation) == 3 and len(box.rotation) == 4 and len(box.velocity) == 2


def test_a_submission_must_cover_the_whole_split(test_split_root: Path, tmp_path: Path) -> None:
    task = NuScenesDetectionTask(load_config(DEMO, overrides(test_split_root)))
    dataset = task.data.build_dataset("val")
    evaluator = task.build_evaluator(dataset)
    evaluator.records = [SampleBoxes(s["token"], [], [], []) for s in dataset.samples[:-1]]
    with pytest.raises(ValueError, match=r"exactly the 6 samples of the split: 1 missing"):
        evaluator.write_submission(tmp_path)
    evaluator.records.append(SampleBoxes(dataset.samples[-1]["token"], [], [], []))
    (path,) = evaluator.write_submission(tmp_path)
    written = json.loads(path.read_text())
    assert written["meta"] == CAMERA_ONLY_META and all(v == [] for v in written["results"].values())
    assert len(written["results"]) == 6
