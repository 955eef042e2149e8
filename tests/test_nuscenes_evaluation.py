"""Our results conversion scored by the official DetectionEval (detection_cvpr_2019)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes_fixtures import dataset, ground_truth_detections, nusc, val_infos  # noqa: F401

from datasets.nuscenes.evaluation import (
    METRICS_FILE,
    attribute_name,
    detections_to_results,
    evaluate_nuscenes,
)
from datasets.nuscenes.synthetic import VERSION

METRIC_KEYS = ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def _evaluate(detections: dict, dataset, nusc, split: str, out_dir: Path) -> dict:  # noqa: F811
    return evaluate_nuscenes(detections, dataset.root, VERSION, split, out_dir, nusc=nusc)


@pytest.mark.parametrize("split", ["mini_val", "synthetic_val"])
def test_ground_truth_scores_perfectly(split, dataset, nusc, val_infos, tmp_path):  # noqa: F811
    metrics = _evaluate(ground_truth_detections(val_infos), dataset, nusc, split, tmp_path)
    assert metrics["mAP"] == pytest.approx(1.0, abs=1e-6) and metrics["NDS"] == pytest.approx(1.0, abs=1e-6)
    assert all(metrics[key] == pytest.approx(0.0, abs=1e-6) for key in METRIC_KEYS[2:])
    written = json.loads((tmp_path / METRICS_FILE).read_text())
    assert set(METRIC_KEYS) <= set(written) and len(written["per_class_AP"]) == 10
    assert all(ap == pytest.approx(1.0, abs=1e-6) for ap in written["per_class_AP"].values())


def test_scores_fall_monotonically_with_noise(dataset, nusc, val_infos, tmp_path):  # noqa: F811
    scores = []
    for noise in (0.15, 0.5, 1.2):
        detections = ground_truth_detections(val_infos, np.random.default_rng(0), noise)
        metrics = _evaluate(detections, dataset, nusc, "mini_val", tmp_path / str(noise))
        scores.append((noise, metrics["mAP"], metrics["NDS"]))
    print("\n(noise, mAP, NDS):", [(n, round(m, 4), round(d, 4)) for n, m, d in scores])
    maps, nds = [s[1] for s in scores], [s[2] for s in scores]
    assert 1.0 > maps[0] > maps[1] > maps[2] and 1.0 > nds[0] > nds[1] > nds[2]


def test_results_json_is_global_and_complete(nusc, val_infos):  # noqa: F811
    detections = ground_truth_detections(val_infos)
    results = detections_to_results(detections, nusc)
    assert set(results["meta"]) == {"use_camera", "use_lidar", "use_radar", "use_map", "use_external"}
    sample = val_infos["samples"][0]
    box = results["results"][sample["token"]][0]
    annotation = nusc.get("sample_annotation", sample["gt"]["annotation_tokens"][0])
    assert np.allclose(box["translation"], annotation["translation"], atol=1e-9)
    assert np.allclose(box["size"], annotation["size"])
    assert np.allclose(box["velocity"], nusc.box_velocity(annotation["token"])[:2], atol=1e-9)
    assert set(box) == {
        "sample_token",
        "translation",
        "size",
        "rotation",
        "velocity",
        "detection_name",
        "detection_score",
        "attribute_name",
    }


def test_missing_samples_and_bad_detections_are_named(dataset, nusc, val_infos, tmp_path):  # noqa: F811
    detections = ground_truth_detections(val_infos)
    token = next(iter(detections))
    partial = {key: value for key, value in detections.items() if key != token}
    with pytest.raises(ValueError, match=r"1 missing"):
        _evaluate(partial, dataset, nusc, "mini_val", tmp_path)
    broken = {**detections, token: {**detections[token], "labels": detections[token]["labels"] + 10}}
    with pytest.raises(ValueError, match=f"sample {token}: labels must be integers"):
        _evaluate(broken, dataset, nusc, "mini_val", tmp_path)
    broken = {**detections, token: {**detections[token], "boxes": np.zeros((2, 7))}}
    with pytest.raises(ValueError, match=r"expected boxes of shape \(K, 9\), got \(2, 7\)"):
        _evaluate(broken, dataset, nusc, "mini_val", tmp_path)
    with pytest.raises(ValueError, match=r"split 'val' needs a version ending in 'trainval'"):
        _evaluate(detections, dataset, nusc, "val", tmp_path)


def test_attribute_follows_speed_and_class():
    assert attribute_name("car", 3.0) == "vehicle.moving" and attribute_name("car", 0.0) == "vehicle.parked"
    assert attribute_name("bus", 0.0) == "vehicle.stopped"
    assert attribute_name("pedestrian", 0.0) == "pedestrian.standing"
    assert attribute_name("pedestrian", 1.3) == "pedestrian.moving"
    assert attribute_name("bicycle", 4.0) == "cycle.with_rider"
    assert attribute_name("traffic_cone", 4.0) == ""
