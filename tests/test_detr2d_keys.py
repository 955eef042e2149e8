"""State-dict format of detr2d: exactly the official checkpoints' keys and shapes; loading and saving."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
from detr2d_helpers import TINY as TINY_BASE

from detr2d import ResNetBackbone, build_model, load_checkpoint, save_model_state
from detr2d.layers.resnet import FrozenBatchNorm2d

REFERENCE = Path(__file__).resolve().parent / "reference_keys"  # the official key lists
REFERENCE_FILES = {
    "deformable_detr": "deformable_detr_keys_plain.txt",
    "deformable_detr_refine": "deformable_detr_keys_refine.txt",
    "deformable_detr_two_stage": "deformable_detr_keys_two_stage.txt",
}
TINY = {**TINY_BASE, "num_queries": 8}


def read_reference(name: str) -> list[tuple[str, list[int], str]]:
    """(key, shape, dtype) rows of a reference key file, in file order."""
    path = REFERENCE / REFERENCE_FILES[name]
    rows = []
    for line in path.read_text().splitlines():
        key, shape, dtype = line.split("\t")
        rows.append((key, [int(s) for s in shape.strip("[]").split(",") if s.strip()], dtype))
    return rows


@pytest.fixture(scope="module")
def published_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: build_model(name) for name in REFERENCE_FILES}


@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_state_dict_equals_reference(name: str, published_models: dict) -> None:
    """Keys (in order), shapes and dtypes equal the official checkpoint's."""
    rows = read_reference(name)
    state = published_models[name].state_dict()
    assert list(state) == [k for k, _, _ in rows]
    for key, shape, dtype in rows:
        assert list(state[key].shape) == shape, key
        assert str(state[key].dtype).removeprefix("torch.") == dtype, key


@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_official_wrapper_loads_strict(name: str, published_models: dict) -> None:
    """A ``{'model': state_dict, ...}`` with the reference shapes loads strictly and sets every tensor."""
    rows = read_reference(name)
    model = published_models[name]
    state = {key: torch.tensor(0.5).expand(shape) for key, shape, _ in rows}  # no memory per tensor
    missing, unexpected = load_checkpoint(model, {"model": state, "epoch": 49})
    assert missing == [] and unexpected == []
    for key, value in model.state_dict().items():  # first and last element: each tensor was written
        assert value.flatten()[0] == 0.5 and value.flatten()[-1] == 0.5, key


def test_shared_heads_without_refinement(published_models: dict) -> None:
    """Plain: the six class/box heads are one module; refinement: independent, also in the decoder."""
    plain, refine = published_models["deformable_detr"], published_models["deformable_detr_refine"]
    assert all(h is plain.class_embed[0] for h in plain.class_embed)
    assert all(h is plain.bbox_embed[0] for h in plain.bbox_embed)
    assert plain.transformer.decoder.bbox_embed is None
    assert len({id(h) for h in refine.bbox_embed}) == 6
    assert refine.transformer.decoder.bbox_embed is refine.bbox_embed
    two = published_models["deformable_detr_two_stage"]
    assert len(two.class_embed) == 7 and two.transformer.decoder.class_embed is two.class_embed


@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_published_head_init(name: str) -> None:
    """Class bias -log(99); last box layer zero with bias[2:] = -2 on the first head (0 for two-stage)."""
    model = build_model(name, backbone="resnet18", encoder_layers=1)
    assert torch.allclose(model.class_embed[0].bias, torch.full((91,), -torch.log(torch.tensor(99.0)).item()))
    for i, head in enumerate(model.bbox_embed):
        last = head.layers[-1]
        assert torch.count_nonzero(last.weight) == 0
        first = head is model.bbox_embed[0]  # every head without refinement (one shared module)
        size_bias = -2.0 if first and not name.endswith("two_stage") else 0.0
        assert torch.equal(last.bias.detach(), torch.tensor([0.0, 0.0, size_bias, size_bias])), (name, i)


def test_single_scale_and_dc5_keys() -> None:
    """Single-scale variants: one 1x1 input projection from the 2048-channel C5, 1-level attention."""
    for name in ("deformable_detr_single_scale", "deformable_detr_single_scale_dc5"):
        state = build_model(name).state_dict()
        proj = {k: tuple(v.shape) for k, v in state.items() if k.startswith("input_proj.")}
        assert proj == {
            "input_proj.0.0.weight": (256, 2048, 1, 1),
            "input_proj.0.0.bias": (256,),
            "input_proj.0.1.weight": (256,),
            "input_proj.0.1.bias": (256,),
        }
        assert state["transformer.level_embed"].shape == (1, 256)
        assert state["transformer.encoder.layers.0.self_attn.sampling_offsets.weight"].shape == (64, 256)
        assert state["transformer.decoder.layers.0.cross_attn.attention_weights.weight"].shape == (32, 256)


def test_saved_state_reloads_strict(tmp_path: Path) -> None:
    """Our checkpoints are ``{'model': state_dict}``, written atomically, and reload strictly."""
    name = "deformable_detr_two_stage"
    torch.manual_seed(1)
    model = build_model(name, **TINY)
    path = tmp_path / "sub" / "model.pth"
    save_model_state(model, path)
    assert sorted(os.listdir(path.parent)) == ["model.pth"]  # no temporary file left
    saved = torch.load(path, weights_only=True)
    assert list(saved) == ["model"]
    torch.manual_seed(2)
    other = build_model(name, **TINY)
    load_checkpoint(other, path)
    for key, value in model.state_dict().items():
        assert torch.equal(other.state_dict()[key], value), key


def test_official_file_with_args_namespace(tmp_path: Path) -> None:
    """The released files also hold optimizer state and an ``argparse.Namespace``: still weights-only."""
    model = build_model("deformable_detr", **TINY)
    path = tmp_path / "official.pth"
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": {"state": {}, "param_groups": [{"lr": 2e-4}]},
            "lr_scheduler": {"step_size": 40},
            "epoch": 49,
            "args": argparse.Namespace(lr=2e-4, with_box_refine=False, dataset_file="coco"),
        },
        path,
    )
    assert load_checkpoint(build_model("deformable_detr", **TINY), path) == ([], [])


class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("code ran while loading",))


def test_loading_never_unpickles_code(tmp_path: Path) -> None:
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"model": {}, "payload": _Payload()}, f, protocol=2)
    with pytest.raises(
        ValueError, match=r"evil\.pth .*refers to a Python global that is not allowed \((builtins\.)?print\)"
    ):
        load_checkpoint(build_model("deformable_detr", **TINY), path)


def test_load_errors_name_the_keys() -> None:
    model = build_model("deformable_detr", **TINY)
    state = model.state_dict()
    missing = {k: v for k, v in state.items() if k != "query_embed.weight"}
    with pytest.raises(ValueError, match=r"1 missing keys \[query_embed.weight\]"):
        load_checkpoint(model, missing)
    assert load_checkpoint(model, missing, strict=False) == (["query_embed.weight"], [])
    with pytest.raises(ValueError, match=r"1 unexpected keys \[extra.weight\]"):
        load_checkpoint(model, {**state, "extra.weight": torch.zeros(1)})
    bad = {**state, "query_embed.weight": torch.zeros(3, 3)}
    with pytest.raises(ValueError, match=r"query_embed.weight: checkpoint \(3, 3\) vs model \(8, 128\)"):
        load_checkpoint(model, bad, strict=False)
    with pytest.raises(ValueError, match="expected a state_dict"):
        load_checkpoint(model, {"model": 3})


def test_frozen_batchnorm() -> None:
    """Buffers only (no num_batches_tracked); y = (x - mean) / sqrt(var + 1e-5) * w + b."""
    bn = FrozenBatchNorm2d(2)
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]
    assert list(bn.parameters()) == []
    bn.load_state_dict(
        {
            "weight": torch.tensor([2.0, 1.0]),
            "bias": torch.tensor([1.0, 0.0]),
            "running_mean": torch.tensor([0.5, 0.0]),
            "running_var": torch.tensor([4.0 - 1e-5, 1.0 - 1e-5]),
            "num_batches_tracked": torch.tensor(7),
        }
    )
    x = torch.tensor([1.5, 3.0]).view(1, 2, 1, 1)
    assert torch.allclose(bn(x).flatten(), torch.tensor([2.0, 3.0]))


# torchvision's parameter counts (weights=None) minus the fc layer: BN affine params included.
TORCHVISION_PARAMS_WITHOUT_FC = {
    18: 11_689_512 - 513_000,
    34: 21_797_672 - 513_000,
    50: 25_557_032 - 2_049_000,
}


@pytest.mark.parametrize("depth", sorted(TORCHVISION_PARAMS_WITHOUT_FC))
def test_resnet_sizes_match_torchvision(depth: int) -> None:
    body = ResNetBackbone(depth, ("layer1", "layer2", "layer3", "layer4")).body
    counted = sum(
        v.numel() for k, v in body.state_dict().items() if not k.endswith(("running_mean", "running_var"))
    )
    assert counted == TORCHVISION_PARAMS_WITHOUT_FC[depth]
