"""Configs carry the whole model: every field shown and overridable, unknown keys named with their file,
``_delete_`` replacing an inherited dict (DETR's criterion over Deformable DETR's recipe), bad values as
one-line errors, one ``pc_range``, old checkpoints' key names, the tools' arguments (a checkpoint of ours
alone, a config that does not fit it, the drawing threshold)."""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from bev import BEVModelConfig, PETRModelConfig
from bev.decoder import DetectionDecoder
from configs import ConfigError, load_config, upgrade_model_keys
from datasets.nuscenes.constants import PC_RANGE
from detr2d import DETRCriterionConfig, ModelConfig, Predictor, build_model
from detr2d.builder import family
from detr2d.runtime.cli import (
    load_task,
    load_task_config,
    parser_with_config,
    split_checkpoint,
)
from detr2d.runtime.evaluate import DRAW_SCORE_THRESHOLD
from detr2d.runtime.tasks import build_task

REPO = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (REPO / "configs").glob("*/*.py"))
DETR_FILES = ["detr_r50", "detr_r50_dc5", "detr_r101", "detr_r101_dc5"]


def _schema(config: dict[str, Any]) -> type:
    """The model config dataclass of a loaded config (detr2d: its variant's family's)."""
    if config["task"] == "coco_detection":
        return family(config["model"]["name"]).config
    return {"nuscenes_detection": BEVModelConfig, "nuscenes_petr": PETRModelConfig}[config["task"]]


def _tool(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


def _fields(cls: type) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_config_shows_every_model_field_as_built(path: Path) -> None:
    config = load_task_config(path)
    schema = _schema(config)
    model = config["model"]
    assert set(model) == {"name", *_fields(schema)}
    json.dumps(config)  # plain data: tuples are lists
    assert not any(isinstance(value, tuple) for value in model.values())
    name = model.pop("name")
    # the section is exactly what the task builds (variant defaults + the files' values)
    built = dataclasses.asdict(schema(**model))
    assert json.loads(json.dumps(built)) == model, name


def test_print_config_of_both_detectors_takes_any_model_field() -> None:
    proc = _tool("tools/train.py", "configs/bev/bevformer_base.py", "--print-config", "model.bev_h=100")
    assert proc.returncode == 0, proc.stderr
    model = json.loads(proc.stdout)["model"]
    assert model["bev_h"] == 100 and model["bev_w"] == 200 and model["num_levels"] == 4
    assert model["pc_range"] == list(PC_RANGE) and set(model) == {"name", *_fields(BEVModelConfig)}
    proc = _tool(
        "tools/export.py", "configs/detr2d/deformable_detr.py", "--print-config", "model.num_queries=100"
    )
    assert proc.returncode == 0, proc.stderr
    model = json.loads(proc.stdout)["model"]
    assert model["num_queries"] == 100 and set(model) == {"name", *_fields(ModelConfig)}


STRINGS = {  # two valid values each
    "backbone": ("resnet18", "resnet34"),
    "head": ("detr3d", "bev"),
    "temporal_alignment": ("planar", "published"),
    "backbone_norm": ("bn", "frozen_bn"),
    "backbone_style": ("caffe", "pytorch"),
    "padding": ("official", "exact"),
    "backend": ("reference", "cpu"),
    "pretrained": ("weights.pth", "other.pth"),
    "return_layers": (["layer3", "layer4"], ["layer4"]),
}


def _changed(name: str, value: Any) -> Any:
    """A valid value of model field ``name`` different from ``value``."""
    if name in STRINGS:
        return next(option for option in STRINGS[name] if option != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value * 2
    if isinstance(value, float):
        return value / 2
    return [_changed(name, item) for item in value]


@pytest.mark.parametrize("path", ["detr2d/deformable_detr.py", "bev/bevformer_base.py"])
def test_every_model_field_is_overridable(path: str) -> None:
    config = load_task_config(REPO / "configs" / path)
    wanted = {key: _changed(key, value) for key, value in config["model"].items() if key != "name"}
    overrides = [f"model.{k}={v if isinstance(v, str) else repr(v)}" for k, v in wanted.items()]
    model = load_task_config(REPO / "configs" / path, overrides)["model"]
    for key, value in wanted.items():
        assert model[key] == value and model[key] != config["model"][key], key


def test_a_name_override_chooses_the_variant_schema() -> None:
    model = load_task_config(REPO / "configs/bev/bevformer_base.py", ["model.name=bevformer_small"])["model"]
    assert (model["bev_h"], model["num_levels"], model["return_layers"]) == (150, 1, ["layer4"])


def _child(tmp_path: Path, base: str, body: str, name: str = "child.py") -> Path:
    path = tmp_path / name
    path.write_text(f"_base_ = {str(REPO / 'configs' / base)!r}\n{body}\n")
    return path


@pytest.mark.parametrize(
    ("base", "body", "key"),
    [
        ("detr2d/demo.py", "train = dict(batch_sise=2, eval_evry=0)", "'train.batch_sise'"),
        ("detr2d/base.py", "schedul = dict(epochs=1)", "'schedul'"),
        ("bev/detr3d.py", "data = dict(num_histroy=0)", "'data.num_histroy'"),
        ("bev/bevformer_tiny.py", "data = dict(img_norm=dict(meen=[0, 0, 0]))", "'data.img_norm.meen'"),
        ("bev/demo.py", "model = dict(bev_sise=3)", "'model.bev_sise'"),
        ("detr2d/demo.py", "model = dict(num_querys=3)", "'model.num_querys'"),
        (
            "detr2d/demo.py",
            "model = dict(op_backend='reference')",
            "'model.op_backend' \\(renamed 'backend'\\)",
        ),
    ],
)
def test_an_unknown_key_in_a_file_names_the_key_and_the_file(
    tmp_path: Path, base: str, body: str, key: str
) -> None:
    path = _child(tmp_path, base, body)
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: unknown key {key}"):
        load_task_config(path)


def test_an_unknown_model_key_names_the_file_that_wrote_it(tmp_path: Path) -> None:
    middle = _child(tmp_path, "bev/demo.py", "model = dict(num_query=5)", "middle.py")
    (tmp_path / "leaf.py").write_text("_base_ = 'middle.py'\nmodel = dict(bev_h=8)\n")
    with pytest.raises(
        ConfigError, match=f"{re.escape(str(middle))}: unknown key 'model.num_query'.*known: "
    ):
        load_task_config(tmp_path / "leaf.py")


def test_settings_groups_are_checked_where_the_base_holds_a_dict_and_none_takes_anything(
    tmp_path: Path,
) -> None:
    body = "data = dict(grid_mask=dict(prob=1.0), photometric_distortion=dict(hue_delta=4))"
    config = load_task_config(_child(tmp_path, "bev/bevformer_tiny.py", body))
    assert config["data"]["grid_mask"]["prob"] == 1.0 and config["data"]["grid_mask"]["mode"] == 1
    # the demo turns both off (None): a child may set them to anything
    config = load_task_config(_child(tmp_path, "bev/demo.py", "data = dict(grid_mask=dict(prob=1.0))"))
    assert config["data"]["grid_mask"] == {"prob": 1.0}
    with pytest.raises(ConfigError, match="unknown key 'data.grid_mask.prb'; known in 'data.grid_mask': "):
        load_task_config(_child(tmp_path, "bev/base.py", "data = dict(grid_mask=dict(prb=1.0))"))


def test_delete_replaces_the_base_dict_and_a_dict_without_it_merges(tmp_path: Path) -> None:
    body = "criterion = dict(_delete_=True, eos_coef=0.5)\noptim = dict(_delete_=False, lr=1.0)"
    config = load_config(_child(tmp_path, "detr2d/base.py", body))
    assert config["criterion"] == {"eos_coef": 0.5}  # Deformable DETR's keys are gone
    base = load_config(REPO / "configs/detr2d/base.py")
    assert config["optim"] == {**base["optim"], "lr": 1.0}  # merged, the flag dropped
    # any dict level: a settings group inside a section
    nested = "data = dict(grid_mask=dict(_delete_=True, prob=1.0))"
    data = load_config(_child(tmp_path, "bev/bevformer_tiny.py", nested))["data"]
    tiny = load_config(REPO / "configs/bev/bevformer_tiny.py")["data"]
    assert data == {**tiny, "grid_mask": {"prob": 1.0}} and len(tiny["grid_mask"]) > 1


def test_delete_still_checks_keys_against_what_it_replaces(tmp_path: Path) -> None:
    # the replacing dict must sit under a key its base has
    with pytest.raises(ConfigError, match="child.py: unknown key 'criterio'; known at the top level: "):
        load_config(_child(tmp_path, "detr2d/base.py", "criterio = dict(_delete_=True, eos_coef=0.5)"))
    # a file inheriting the replaced dict is checked against its keys, not the base's
    (tmp_path / "leaf.py").write_text("_base_ = 'middle.py'\ncriterion = dict(focal_alpha=0.3)\n")
    _child(tmp_path, "detr2d/base.py", "criterion = dict(_delete_=True, eos_coef=0.5)", "middle.py")
    with pytest.raises(ConfigError, match=r"leaf.py: unknown key 'criterion.focal_alpha'; .*\['eos_coef'\]"):
        load_config(tmp_path / "leaf.py")


@pytest.mark.parametrize(
    ("base", "body", "key"),
    [
        ("detr2d/base.py", "criterion = dict(_delete_=1, eos_coef=0.5)", "criterion._delete_"),
        ("bev/bevformer_tiny.py", "data = dict(grid_mask=dict(_delete_='yes'))", "data.grid_mask._delete_"),
    ],
)
def test_a_delete_that_is_not_a_bool_names_the_file_and_the_key(
    tmp_path: Path, base: str, body: str, key: str
) -> None:
    path = _child(tmp_path, base, body)
    with pytest.raises(ConfigError, match=f"{re.escape(str(path))}: {re.escape(key)} must be True or False"):
        load_config(path)


@pytest.mark.parametrize(
    "override", ["criterion._delete_=True", "criterion={'_delete_': True, 'eos_coef': 1}"]
)
def test_delete_is_refused_in_overrides(override: str) -> None:
    with pytest.raises(ConfigError, match="_delete_ is for config files only"):
        load_config(REPO / "configs/detr2d/detr_r50.py", [override])


def test_detr_files_inherit_deformable_detr_recipe_and_replace_its_criterion() -> None:
    folder = REPO / "configs/detr2d"
    chain = {name: runpy.run_path(str(folder / f"{name}.py"))["_base_"] for name in DETR_FILES}
    assert chain == {"detr_r50": "base.py", **{name: "detr_r50.py" for name in DETR_FILES[1:]}}
    base = load_config(folder / "base.py")
    config = load_config(folder / "detr_r50.py")
    published = dataclasses.asdict(DETRCriterionConfig())
    del published["num_classes"], published["decoder_layers"]  # the model's
    assert config["criterion"] == published
    assert config["data"] == base["data"] and config["augment"] == base["augment"]
    recipe = (config["optim"]["lr"], config["schedule"]["epochs"], config["train"]["batch_size"])
    assert recipe == (1e-4, 500, 64)
    # no copy-paste: every value a DETR file writes differs from what it inherits
    for name in DETR_FILES:
        written = runpy.run_path(str(folder / f"{name}.py"))
        inherited = load_config(folder / chain[name])
        repeated = [
            f"{section}.{key}"
            for section, values in written.items()
            if isinstance(values, dict) and not values.get("_delete_") and section in inherited
            for key, value in values.items()
            if inherited[section].get(key, object()) == value
        ]
        assert not repeated, f"{name}.py repeats {repeated}"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=none", "train.batch_size must be a positive int (>= 1), got None"),
        ("data.image_size=[64,36,3]", "data.image_size must be a (W, H) pair of positive ints"),
        ("schedule.epochs=-1", "schedule.epochs must be a positive int (>= 1), got -1"),
        ("train.amp=fp8", "train.amp must be None, 'bf16' or 'fp16', got 'fp8'"),
        ("model.bev_h=0", "model.bev_h must be a positive int, got 0"),
        ("model.pc_range=[1,2,3]", "model.pc_range must be tuple[float, float, float, float, float, float]"),
        ("model.backend=7", "model.backend must be str | None, got 7"),
        ("model.head=lidar", "model.head must be one of ('bev', 'detr3d'), got 'lidar'"),
    ],
)
def test_a_bad_value_names_the_key_and_what_it_must_be(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_task_config(REPO / "configs/bev/demo.py", [override])


def test_detr2d_model_values_are_validated_by_its_dataclass() -> None:
    with pytest.raises(ConfigError, match=re.escape("model.num_queries must be a positive int, got -1")):
        load_task_config(REPO / "configs/detr2d/demo.py", ["model.num_queries=-1"])
    with pytest.raises(ConfigError, match="model.two_stage requires with_box_refine"):
        load_task_config(REPO / "configs/detr2d/demo.py", ["model.with_box_refine=false"])


def test_the_tools_print_a_config_error_as_one_line() -> None:
    for tool in (["tools/train.py"], ["tools/test.py", "--print-config"]):
        args = [*tool, "configs/detr2d/demo.py", *(["ckpt.pth"] if "tools/test.py" in tool else [])]
        proc = _tool(*args, "train.batch_size=none")
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr == "error: train.batch_size must be a positive int (>= 1), got None\n"
    proc = _tool("tools/predict.py", "configs/bev/demo.py", "ckpt.pth", "x.json", "model.bev_hh=3")
    assert proc.returncode == 2 and proc.stderr.startswith("error: config override 'model.bev_hh=3'")
    assert len(proc.stderr.splitlines()) == 1


def test_export_takes_config_checkpoint_and_overrides(tmp_path: Path) -> None:
    """An item with ``=`` is an override, never the checkpoint (the docstring's example)."""
    out = tmp_path / "demo.onnx"
    proc = _tool(
        "tools/export.py",
        "configs/detr2d/demo.py",
        "--format",
        "onnx",
        "--out",
        str(out),
        "model.num_classes=3",
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "no checkpoint given" in proc.stderr
    items = ["model.num_classes=3", "runs/lr=1e-4/ckpt.pth", "train.amp=bf16"]
    parser = parser_with_config(None, checkpoint_first=True)
    args = argparse.Namespace(config="configs/detr2d/demo.py")
    assert split_checkpoint(parser, args, items, required=True) == (
        "runs/lr=1e-4/ckpt.pth",
        ["model.num_classes=3", "train.amp=bf16"],
    )
    assert split_checkpoint(parser, args, items[:1], required=False) == (None, items[:1])
    # a checkpoint first is the checkpoint; the config then comes from it (args.config None)
    args = argparse.Namespace(config="runs/ckpt.pt")
    assert split_checkpoint(parser, args, items[::2], required=True) == ("runs/ckpt.pt", items[::2])
    assert args.config is None
    proc = _tool("tools/export.py", "configs/detr2d/demo.py", "a.pth", "b.pth", "--out", str(out))
    assert proc.returncode == 2 and "expected at most one checkpoint, got ['a.pth', 'b.pth']" in proc.stderr
    proc = _tool("tools/test.py", "configs/detr2d/demo.py")
    assert proc.returncode == 2 and "expected a checkpoint after the config file" in proc.stderr


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint of ours (weights, config, task) of the COCO demo's model, trained on data.root=shapes,
    and a bare copy of its weights (``bare.pth``, as a released file) next to it."""
    folder = tmp_path_factory.mktemp("checkpoints")
    config = load_task_config(REPO / "configs/detr2d/demo.py", ["data.root=shapes"])
    model = build_task(config).build_model()
    torch.save({"model": model.state_dict(), "config": config, "task": config["task"]}, folder / "ours.pth")
    torch.save({"model": model.state_dict()}, folder / "bare.pth")
    return folder / "ours.pth"


def test_test_and_export_take_a_checkpoint_alone_with_the_config_it_carries(demo_checkpoint: Path) -> None:
    proc = _tool("tools/test.py", str(demo_checkpoint), "--print-config", "model.num_queries=7")
    assert proc.returncode == 0, proc.stderr
    config = json.loads(proc.stdout)
    assert config["data"]["root"] == "shapes" and config["model"]["num_queries"] == 7
    assert config["model"]["name"] == "deformable_detr_two_stage"
    proc = _tool("tools/export.py", str(demo_checkpoint), "--print-config", "model.bad_key=1")
    assert proc.returncode == 2 and proc.stderr.startswith("error: config override 'model.bad_key=1'")
    out = demo_checkpoint.parent / "ours.pt2"
    proc = _tool("tools/export.py", str(demo_checkpoint), "--format", "export", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.is_file() and "no checkpoint given" not in proc.stderr


def test_predict_takes_a_checkpoint_alone_and_draws_at_the_default_threshold(
    demo_checkpoint: Path, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for index in range(2):
        Image.fromarray(rng.integers(0, 255, (64, 80, 3), dtype=np.uint8)).save(images / f"{index}.png")
    out = str(tmp_path)
    proc = _tool("tools/predict.py", str(demo_checkpoint), str(images), "--limit", "1", "--out", out)
    assert proc.returncode == 0, proc.stderr
    entries = json.loads((tmp_path / "predictions.json").read_text())
    assert [Path(entry["file"]).name for entry in entries] == ["0.png"] and (tmp_path / "0.png").is_file()
    assert all(found["score"] >= DRAW_SCORE_THRESHOLD for found in entries[0]["detections"])
    assert "(default: 0.3)" in _tool("tools/predict.py", "--help").stdout


def test_the_demos_draw_at_the_default_threshold() -> None:
    for script in ("tools/demo.sh", "tools/demo_bev.sh"):
        assert "--score-threshold" not in (REPO / script).read_text(), script
    assert DRAW_SCORE_THRESHOLD == 0.3
    assert inspect.signature(Predictor).parameters["score_threshold"].default == 0.0


def _load(config: str | None, checkpoint: Path, overrides: list[str]) -> Any:
    return load_task(argparse.Namespace(config=config, print_config=False), overrides, str(checkpoint))


def test_a_given_config_wins_and_one_that_does_not_fit_names_the_trained_model(
    demo_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    demo = str(REPO / "configs/detr2d/demo.py")
    task = _load(demo, demo_checkpoint, ["model.backend=reference"])  # differs, but fits
    assert task.config["model"]["backend"] == "reference" and task.config["data"]["root"] != "shapes"
    with pytest.raises(SystemExit) as exit_info:
        _load(demo, demo_checkpoint, ["model.num_queries=7", "model.embed_dims=32"])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: checkpoint {demo_checkpoint} does not fit the model of {demo}")
    assert "trained with model 'deformable_detr_two_stage' with embed_dims=64 (config: 32), " in error
    assert "num_queries=20 (config: 7); pass the checkpoint without the config file" in error
    assert "shape mismatches" in error and len(error.splitlines()) == 1
    # the README's config for the demo checkpoint: the variant differs too
    with pytest.raises(SystemExit):
        _load(str(REPO / "configs/detr2d/deformable_detr.py"), demo_checkpoint, [])
    error = capsys.readouterr().err
    assert "does not fit the model of" in error and "('deformable_detr'): it was trained with model " in error
    assert "backbone='resnet18' (config: 'resnet50')" in error


def test_a_checkpoint_without_a_config_alone_asks_for_its_config(
    demo_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bare = demo_checkpoint.parent / "bare.pth"
    with pytest.raises(SystemExit) as exit_info:
        _load(None, bare, [])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert error == (
        f"error: checkpoint {bare} carries no config (a released file or a bare state_dict): pass its "
        f"config file before it (CONFIG {bare})\n"
    )
    # with its config it loads (a released file is not compared with anything)
    assert _load(str(REPO / "configs/detr2d/demo.py"), bare, []).config["model"]["num_queries"] == 20


def test_an_old_checkpoint_config_with_op_backend_still_loads(tmp_path: Path) -> None:
    sizes = {"backbone": "resnet18", "num_classes": 3, "num_queries": 5, "embed_dims": 32, "num_heads": 4}
    sizes |= {"encoder_layers": 1, "decoder_layers": 1, "ffn_dims": 32, "train_backbone": False}
    model = build_model("deformable_detr", **sizes)
    config = {"model": {"name": "deformable_detr", **sizes, "op_backend": "reference"}}
    torch.save({"model": model.state_dict(), "config": config}, tmp_path / "old.pth")
    predictor = Predictor.from_checkpoint(tmp_path / "old.pth")
    backends = {m.backend for m in predictor.model.modules() if hasattr(m, "backend")}
    assert backends == {"reference"}
    assert upgrade_model_keys({"op_backend": None, "bev_h": 5}) == {"backend": None, "bev_h": 5}


def test_pc_range_has_one_name_and_one_literal() -> None:
    assert BEVModelConfig().pc_range == PC_RANGE
    default = dataclasses.fields(BEVModelConfig)
    assert next(f for f in default if f.name == "pc_range").default is PC_RANGE
    assert inspect.signature(DetectionDecoder).parameters["pc_range"].default is PC_RANGE
    literal = re.compile(r"-51\.2,\s*-51\.2,\s*-5")
    sources = [p for d in ("bev", "detr2d", "datasets", "ops", "tools") for p in (REPO / d).rglob("*.py")]
    holders = [p.relative_to(REPO).as_posix() for p in sources if literal.search(p.read_text())]
    assert holders == ["datasets/nuscenes/constants.py"]


def test_configs_and_the_runtime_import_no_detector() -> None:
    code = (
        "import sys, configs, detr2d.runtime.cli, detr2d.runtime.tasks; "
        "print([m for m in sys.modules if m == 'detr2d.task' or m.startswith('bev')])"
    )
    proc = _tool("-c", code)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
