"""Config loader: inheritance, command-line overrides, and the published detr2d recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import ConfigError, apply_overrides, load_config, merge
from detr2d.runtime.cli import load_task_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "detr2d"
VARIANTS = {
    "deformable_detr": "deformable_detr",
    "deformable_detr_single_scale": "deformable_detr_single_scale",
    "deformable_detr_single_scale_dc5": "deformable_detr_single_scale_dc5",
    "deformable_detr_refine": "deformable_detr_refine",
    "deformable_detr_two_stage": "deformable_detr_two_stage",
}


def test_merge_is_recursive_and_copies() -> None:
    base = {"a": {"x": 1, "y": [1]}, "b": 2}
    out = merge(base, {"a": {"y": [2]}, "c": 3})
    assert out == {"a": {"x": 1, "y": [2]}, "b": 2, "c": 3}
    out["a"]["x"] = 5
    assert base["a"]["x"] == 1


def test_inheritance_chain_and_overrides(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.py").write_text(
        "import math\nmodel = dict(depth=50, width=256)\nlr = 1e-4\nname = 'base'\n_private = 1\n"
    )
    (tmp_path / "sub" / "mid.py").write_text("_base_ = '../base.py'\nmodel = dict(depth=18)\n")
    (tmp_path / "sub" / "leaf.py").write_text("_base_ = ['mid.py']\nlr = 2e-4\nname = 'leaf'\n")
    config = load_config(tmp_path / "sub" / "leaf.py", ["model.width=64", "name=other", "lr=1"])
    assert config == {"model": {"depth": 18, "width": 64}, "lr": 1.0, "name": "other"}
    assert isinstance(config["lr"], float)  # an int given to a float key becomes a float


def test_override_errors() -> None:
    config = {"optim": {"lr": 1.0}, "amp": None}
    assert apply_overrides(config, ["amp=bf16", "optim.lr=0.5"]) == {"optim": {"lr": 0.5}, "amp": "bf16"}
    with pytest.raises(ConfigError, match="unknown key 'optim.lrr'"):
        apply_overrides(config, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match="no section 'amp'"):
        apply_overrides(config, ["amp.x=1"])
    with pytest.raises(ValueError, match="key=value"):
        apply_overrides(config, ["optim.lr"])
    flags = {"train": {"progress": True, "amp": None}}
    assert apply_overrides(flags, ["train.progress=false", "train.amp=bf16"])["train"] == {
        "progress": False,
        "amp": "bf16",
    }
    assert apply_overrides(flags, ["train.progress=False", "train.amp=none"])["train"] == {
        "progress": False,
        "amp": None,
    }
    with pytest.raises(ValueError, match="'train.progress=flase': the key holds a bool.*use true or false"):
        apply_overrides(flags, ["train.progress=flase"])


def test_overrides_are_type_checked_against_the_config() -> None:
    config = {"train": {"batch_size": 8, "lr": 1e-4, "root": "data", "scales": [96], "amp": None}}
    with pytest.raises(ValueError, match="'train.batch_size=8.5': the key holds a int, got 8.5"):
        apply_overrides(config, ["train.batch_size=8.5"])
    with pytest.raises(ValueError, match="holds a int, got True"):
        apply_overrides(config, ["train.batch_size=true"])
    with pytest.raises(ValueError, match="holds a list or tuple, got 96"):
        apply_overrides(config, ["train.scales=96"])
    with pytest.raises(ValueError, match="holds a float, got 'fast'"):
        apply_overrides(config, ["train.lr=fast"])
    out = apply_overrides(
        config, ["train.root=123", "train.scales=(64,96)", "train.amp=bf16", "train.lr=none"]
    )
    assert out["train"] == {"batch_size": 8, "lr": None, "root": "123", "scales": [64, 96], "amp": "bf16"}
    with pytest.raises(FileNotFoundError):
        load_config("no/such/config.py")


@pytest.mark.parametrize("stem", sorted(VARIANTS))
def test_published_recipe(stem: str) -> None:
    config = load_task_config(CONFIG_DIR / f"{stem}.py")
    assert config["task"] == "coco_detection"
    assert config["model"]["name"] == VARIANTS[stem]
    assert config["model"]["backbone"] == "resnet50" and config["model"]["num_classes"] == 91
    optim = config["optim"]
    assert (optim["lr"], optim["weight_decay"], optim["lr_backbone"], optim["clip_max_norm"]) == (
        2e-4,
        1e-4,
        2e-5,
        0.1,
    )
    assert optim["lr_linear_proj_mult"] == 0.1
    assert sorted(optim["linear_proj_names"]) == ["reference_points", "sampling_offsets"]
    assert config["schedule"] == {"policy": "step", "epochs": 50, "lr_drop": 40, "lr_gamma": 0.1}
    assert config["train"]["batch_size"] == 32
    augment = config["augment"]
    assert augment["scales"] == [480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800]
    assert augment["max_size"] == 1333 and augment["eval_size"] == 800
    assert augment["crop_resize_sizes"] == [400, 500, 600] and augment["crop_size"] == [384, 600]
