"""CBGS (mmdet3d's CBGSDataset): the index rule against hand-computed counts, the share of every class,
determinism, the valid-flag filter, and the data side's resampled train split (``data.cbgs``)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from bev_helpers import one_thread, tiny_root  # noqa: F401 (fixtures: one_thread autouse, tiny_root)

from bev.petr_task import PETRTask
from configs import ConfigError, load_config
from datasets.nuscenes.augment import PhotoMetricDistortion
from datasets.nuscenes.cbgs import ClassBalancedDataset, cbgs_indices, ground_truth_classes
from datasets.nuscenes.dataset import NuScenesMultiViewDataset
from datasets.nuscenes.infos import infos_path
from detr2d.runtime.cli import load_task_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "bev"
CLASSES = ("a", "b", "c")
#: a: samples 0-5 (6), b: 5 and 6 (2; sample 5 holds a and b), c: 7 (1); 8 has no box, 9 an unknown class.
HAND = [{"a"}] * 5 + [{"a", "b"}, {"b"}, {"c"}, set(), {"unknown"}]


def _draw(sample_classes: list[set[str]], seed: int = 0, classes=CLASSES) -> list[int]:
    return cbgs_indices(sample_classes, classes, np.random.default_rng(seed))


def test_hand_computed_counts_per_class_and_in_all():
    """N = 6 + 2 + 1 = 9 class memberships, K = 3: every class draws int(n_c * (1/3) / (n_c / 9)) = 3, in
    class order; 9 indices in all (10 samples before)."""
    drawn = _draw(HAND)
    assert len(drawn) == 9
    a, b, c = drawn[:3], drawn[3:6], drawn[6:]
    assert set(a) <= {0, 1, 2, 3, 4, 5} and set(b) <= {5, 6} and c == [7, 7, 7]


def test_truncation_of_the_draw_count():
    """a 6, b 3, c 1 (N = 10): each class draws int(10 / 3) = 3, the original's int() of the product."""
    samples = [{"a"}] * 6 + [{"b"}] * 3 + [{"c"}]
    drawn = _draw(samples)
    assert len(drawn) == 9
    assert set(drawn[:3]) <= set(range(6)) and set(drawn[3:6]) <= {6, 7, 8} and drawn[6:] == [9] * 3


def test_a_sample_without_a_box_or_with_unknown_classes_only_is_never_drawn():
    for seed in range(20):
        drawn = _draw(HAND, seed)
        assert 8 not in drawn and 9 not in drawn


def test_unknown_class_names_are_ignored():
    with_unknown = [names | {"pedestrian", "unknown"} for names in HAND]
    assert _draw(with_unknown, 3) == _draw(HAND, 3)
    message = r"none of the 2 samples holds a box of the classes \['a', 'b', 'c'\]"
    with pytest.raises(ValueError, match=message):
        _draw([{"unknown"}, set()])


def test_every_class_gets_about_one_kth_of_the_draws_from_its_own_samples():
    """Skewed random data (class k present with probability 0.9 / (k + 1)): K consecutive blocks of
    int(N / K) or so draws each, block k only samples holding class k, so the rare classes are drawn
    far more often than they occur."""
    rng = np.random.default_rng(7)
    classes = [f"class{k}" for k in range(10)]
    samples = [{name for k, name in enumerate(classes) if rng.random() < 0.9 / (k + 1)} for _ in range(2000)]
    holders = {name: [i for i, names in enumerate(samples) if name in names] for name in classes}
    total = sum(len(indices) for indices in holders.values())
    drawn = _draw(samples, 1, classes)
    assert abs(len(drawn) - total) <= len(classes)  # each class truncates at most one draw
    start = 0
    for name in classes:
        size = int(len(holders[name]) * ((1 / len(classes)) / (len(holders[name]) / total)))
        assert abs(size - total / len(classes)) <= 1
        block = drawn[start : start + size]
        assert set(block) <= set(holders[name])
        start += size
    assert start == len(drawn)
    share = {name: sum(name in samples[i] for i in drawn) / len(drawn) for name in classes}
    plain = {name: len(holders[name]) / len(samples) for name in classes}
    assert share["class9"] > 1 / len(classes) > plain["class9"]  # the rarest class at least 1/K after
    assert share["class9"] / plain["class9"] > 1.5


def test_the_same_seed_draws_the_same_list_and_another_seed_another():
    samples = [{"a"}] * 50 + [{"b"}] * 20 + [{"c"}] * 5
    assert _draw(samples, 5) == _draw(samples, 5)
    assert _draw(samples, 5) != _draw(samples, 6)


def _sample(names: list[str], valid: list[bool]) -> dict:
    return {"gt": {"names": names, "valid_flag": valid}}


def test_ground_truth_classes_keep_only_valid_boxes_with_the_valid_flag():
    samples = [_sample(["car", "car", "bus"], [True, False, False]), _sample(["bus"], [False])]
    samples.append(_sample([], []))
    assert ground_truth_classes(samples, use_valid_flag=True) == [{"car"}, set(), set()]
    assert ground_truth_classes(samples, use_valid_flag=False) == [{"car", "bus"}, {"bus"}, set()]


def _overrides(root: Path, *extra: str) -> list[str]:
    return [
        f"data.root={root}",
        f"data.infos_dir={root / 'infos'}",
        "data.train_split=mini_train",
        "data.val_split=mini_val",
        "data.image_size=[64,36]",
        "train.seed=3",
        *extra,
    ]


def test_the_data_side_resamples_the_train_split_only_with_data_cbgs(tiny_root):  # noqa: F811
    plain = PETRTask(load_task_config(CONFIGS / "petr_demo.py", _overrides(tiny_root))).data
    data = PETRTask(load_task_config(CONFIGS / "petr_demo.py", _overrides(tiny_root, "data.cbgs=True"))).data
    assert isinstance(plain.build_dataset("train"), NuScenesMultiViewDataset)
    train, val = data.build_dataset("train"), data.build_dataset("val")
    assert isinstance(train, ClassBalancedDataset) and isinstance(val, NuScenesMultiViewDataset)
    assert len(val) == len(plain.build_dataset("val")) == len(val.samples)
    samples = train.dataset.samples
    expected = cbgs_indices(
        ground_truth_classes(samples, True), train.dataset.class_names, np.random.default_rng(3)
    )
    assert train.indices == expected and len(train) == len(expected) != len(samples)
    assert train.indices == data.build_dataset("train").indices  # the same list on every build (resume)
    train.set_epoch(2)
    assert train.dataset.epoch == 2
    assert train[4]["sample_token"] == samples[expected[4]]["token"]
    assert train.num_skipped_images == 0


def test_resampled_copies_draw_their_own_augmentation(tiny_root):  # noqa: F811
    infos = infos_path(tiny_root / "infos", "mini_train")
    photometric = PhotoMetricDistortion()
    dataset = NuScenesMultiViewDataset(infos, image_size=(64, 36), photometric=photometric, seed=1)
    balanced = ClassBalancedDataset(dataset, seed=0)
    first, second = [i for i, j in enumerate(balanced.indices) if j == balanced.indices[0]][:2]
    one, other = balanced[first], balanced[second]
    assert one["sample_token"] == other["sample_token"]
    assert not torch.equal(one["img"], other["img"])
    index = balanced.indices[0]
    assert torch.equal(dataset.item(index)["img"], dataset[index]["img"])  # without a stream: unchanged


def test_cbgs_is_on_in_the_trainval_petrv2_config_only():
    on = {path.name for path in CONFIGS.glob("*.py") if load_config(path)["data"]["cbgs"]}
    assert on == {"petrv2_vov_p4_1600x640.py"}


def test_data_cbgs_takes_a_bool_only(tmp_path):
    with pytest.raises(ConfigError, match=re.escape("the key holds a bool, got 1")):
        load_config(CONFIGS / "petr_demo.py", ["data.cbgs=1"])
    config = tmp_path / "cbgs.py"
    config.write_text(f'_base_ = "{CONFIGS / "petr_demo.py"}"\ndata = dict(cbgs="yes")\n')
    with pytest.raises(ConfigError, match=re.escape("data.cbgs must be True or False, got 'yes'")):
        load_config(config)


def test_counter_of_the_hand_example_per_sample():
    """Per sample, the hand example's draws over many seeds: samples 0-5 share a's and b's draws, so the
    one sample holding both (5) is drawn most often, about 3 / 6 + 3 / 2 = 2 times per list."""
    counts = Counter(i for seed in range(400) for i in _draw(HAND, seed))
    per_list = {i: counts[i] / 400 for i in range(10)}
    assert per_list[5] == pytest.approx(2.0, abs=0.2) and per_list[6] == pytest.approx(1.5, abs=0.2)
    assert per_list[0] == pytest.approx(0.5, abs=0.15) and per_list[7] == 3.0
