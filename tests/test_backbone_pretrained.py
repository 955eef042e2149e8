"""Backbone initialization: load_pretrained (files, URLs, torchvision:// names, detector checkpoints)
and check_initialization (no fixed batch-norm statistics without weights)."""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import pytest
import torch

from detr2d.layers.resnet import (
    LAYER_NAMES,
    TORCHVISION_URLS,
    ResNetBackbone,
    check_initialization,
    load_pretrained,
)

DCN_34 = (False, False, True, True)


def torchvision_state(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict in torchvision's format: every layer, BatchNorm2d counters and the classifier."""
    torch.manual_seed(seed)
    body = ResNetBackbone(depth, LAYER_NAMES, norm="bn").body
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in body.state_dict().items()}
    width = 512 if depth < 50 else 2048
    return state | {"fc.weight": torch.zeros(1000, width), "fc.bias": torch.zeros(1000)}


def test_torchvision_file(tmp_path: Path) -> None:
    """Every body tensor is matched; fc, counters without a place and unbuilt layers are ignored."""
    state = torchvision_state(18)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    backbone = ResNetBackbone(18, ("layer2", "layer3"))  # frozen_bn; layer4 is not built
    report = load_pretrained(backbone, path)
    assert report.source == str(path) and report.prefix == ""
    assert report.loaded == tuple(backbone.body.state_dict())
    assert report.missing == () and report.unexpected == ()
    expected_ignored = {
        k for k in state if k.startswith(("fc.", "layer4.")) or k.endswith("num_batches_tracked")
    }
    assert set(report.ignored) == expected_ignored
    for key, value in backbone.body.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert f"from {path}: {len(report.loaded)} loaded, 0 missing" in str(report)


def test_torchvision_name_downloads_with_hash_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchvision://resnetN fetches torchvision's ImageNet file through the torch hub cache."""
    calls = []

    def fake_download(url: str, **kwargs: object) -> dict:
        calls.append((url, kwargs))
        return torchvision_state(18)

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    report = load_pretrained(ResNetBackbone(18, ("layer4",), norm="bn"), "torchvision://resnet18")
    url = "https://download.pytorch.org/models/resnet18-f37072fd.pth"
    assert calls == [(url, {"map_location": "cpu", "check_hash": True, "weights_only": True})]
    assert report.source == f"torchvision://resnet18 ({url})" and report.missing == ()
    assert TORCHVISION_URLS == {
        "resnet18": url,
        "resnet34": "https://download.pytorch.org/models/resnet34-b627a593.pth",
        "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "resnet101": "https://download.pytorch.org/models/resnet101-63fe2227.pth",
    }


def test_url_of_a_detector_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """A URL goes to the download unchanged; an mmdet wrapper with img_backbone. keys is unwrapped."""
    backbone_state = torchvision_state(18)
    checkpoint = {
        "meta": {"epoch": 24, "config": "..."},
        "state_dict": {f"img_backbone.{k}": v for k, v in backbone_state.items() if not k.startswith("fc.")}
        | {"img_neck.fpn_convs.0.conv.weight": torch.zeros(1), "pts_bbox_head.code_weights": torch.ones(10)},
    }
    url = "https://example.org/bevformer_r18-0123abcd.pth"
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", lambda u, **kw: checkpoint if u == url else {})
    backbone = ResNetBackbone(18, LAYER_NAMES)
    report = load_pretrained(backbone, url)
    assert report.source == url and report.prefix == "img_backbone."
    assert report.missing == () and report.unexpected == ()
    assert {"img_neck.fpn_convs.0.conv.weight", "pts_bbox_head.code_weights"} < set(report.ignored)
    assert torch.equal(backbone.body.layer4[1].conv2.weight, backbone_state["layer4.1.conv2.weight"])


def test_download_failure_names_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    def failing(url: str, **kwargs: object) -> dict:
        raise RuntimeError('invalid hash value (expected "0676ba61")')

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", failing)
    with pytest.raises(ValueError, match=r"torchvision://resnet50 \(https://.*resnet50-0676ba61.pth\).*hash"):
        load_pretrained(ResNetBackbone(50, ("layer4",)), "torchvision://resnet50")


def test_fcos3d_and_deformable_detr_checkpoints(tmp_path: Path) -> None:
    """mmdet ``backbone.`` keys (FCOS3D) and Deformable DETR ``backbone.0.body.`` keys (with its
    argparse.Namespace, still read weights-only) are found under their prefix."""
    state = {k: v for k, v in torchvision_state(18).items() if not k.startswith("fc.")}
    fcos3d = tmp_path / "fcos3d.pth"
    torch.save(
        {
            "meta": {"epoch": 12},
            "state_dict": {f"backbone.{k}": v for k, v in state.items()}
            | {"neck.lateral_convs.0.conv.weight": torch.zeros(1), "bbox_head.conv_cls.bias": torch.zeros(1)},
        },
        fcos3d,
    )
    report = load_pretrained(ResNetBackbone(18, LAYER_NAMES, norm="bn"), fcos3d)
    assert report.prefix == "backbone." and report.missing == () and report.unexpected == ()
    assert set(report.ignored) == {"neck.lateral_convs.0.conv.weight", "bbox_head.conv_cls.bias"}
    detr = tmp_path / "detr.pth"
    model = {f"backbone.0.body.{k}": v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model["transformer.level_embed"] = torch.zeros(4, 256)
    torch.save({"model": model, "args": argparse.Namespace(lr=2e-4), "epoch": 49}, detr)
    backbone = ResNetBackbone(18, ("layer2", "layer3", "layer4"))
    report = load_pretrained(backbone, detr)
    assert report.prefix == "backbone.0.body." and report.missing == () and report.unexpected == ()
    assert report.ignored == ("transformer.level_embed",)
    assert torch.equal(backbone.body.bn1.running_var, state["bn1.running_var"])


def test_imagenet_weights_into_a_dcn_backbone() -> None:
    """The offsets of deformable convs may be missing (they stay zero: plain convs at the start)."""
    backbone = ResNetBackbone(50, LAYER_NAMES, stage_with_dcn=DCN_34)
    report = load_pretrained(backbone, torchvision_state(50))
    offsets = {k for k in backbone.body.state_dict() if ".conv_offset." in k}
    assert len(offsets) == 2 * (6 + 3) and set(report.missing) == offsets and report.unexpected == ()
    assert all(torch.count_nonzero(v) == 0 for k, v in backbone.body.state_dict().items() if k in offsets)


def test_mismatches_are_refused_with_the_file_named(tmp_path: Path) -> None:
    """A DCN checkpoint into a plain backbone, a missing entry, a shape mismatch: each names the source."""
    dcn_state = ResNetBackbone(50, ("layer3",), stage_with_dcn=DCN_34).body.state_dict()
    path = tmp_path / "r50_dcn.pth"
    torch.save({"state_dict": {f"img_backbone.{k}": v for k, v in dcn_state.items()}}, path)
    plain = ResNetBackbone(50, ("layer3",))
    with pytest.raises(
        ValueError,
        match=rf"{path} does not fit the backbone \(deformable conv offsets: does stage_with_dcn match the "
        r"file\?\): 0 missing \[\], 12 unexpected \[img_backbone.layer3.0.conv2.conv_offset.weight, ",
    ):
        load_pretrained(plain, path)
    report = load_pretrained(plain, path, strict=False)
    assert len(report.unexpected) == 12 and report.missing == ()
    assert "layer3.0.conv2.conv_offset.weight" in report.unexpected
    state = torchvision_state(18)
    del state["layer2.0.conv1.weight"]
    with pytest.raises(
        ValueError, match=r"the given state_dict does not fit .* 1 missing \[layer2.0.conv1.weight\]"
    ):
        load_pretrained(ResNetBackbone(18), state)
    r18 = tmp_path / "r18.pth"
    torch.save(torchvision_state(18), r18)
    with pytest.raises(
        ValueError, match=rf"{r18}: \d+ shape mismatches \[layer1.0.conv1.weight: file \(64, 64, 3, 3\) vs"
    ):
        load_pretrained(ResNetBackbone(50, ("layer2",)), r18)


def test_unreadable_sources(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FileNotFoundError, match=f"pretrained weights file not found: {missing}"):
        load_pretrained(ResNetBackbone(18), missing)
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read pretrained weights file {garbage}"):
        load_pretrained(ResNetBackbone(18), garbage)
    code = tmp_path / "code.pth"
    with open(code, "wb") as f:
        pickle.dump({"conv1.weight": print}, f, protocol=2)
    with pytest.raises(ValueError, match=f"cannot read pretrained weights file {code} .*could run code"):
        load_pretrained(ResNetBackbone(18), code)
    not_tensors = tmp_path / "lists.pth"
    torch.save({"state_dict": {"conv1.weight": [1, 2]}}, not_tensors)
    with pytest.raises(ValueError, match=f"{not_tensors}: expected a state_dict"):
        load_pretrained(ResNetBackbone(18), not_tensors)
    with pytest.raises(ValueError, match="unknown pretrained weights 'torchvision://resnet152'"):
        load_pretrained(ResNetBackbone(18), "torchvision://resnet152")
    with pytest.raises(
        ValueError, match="torchvision://resnet50 holds a resnet50, but the backbone is a resnet18"
    ):
        load_pretrained(ResNetBackbone(18), "torchvision://resnet50")
    with pytest.raises(ValueError, match="pytorch-style weights .* the backbone is 'caffe'-style"):
        load_pretrained(ResNetBackbone(50, style="caffe"), "torchvision://resnet50")


@pytest.mark.parametrize(
    ("norm", "norm_eval", "fixed"),
    [("frozen_bn", False, "frozen batch norm"), ("bn", True, "batch norm with norm_eval")],
)
def test_fixed_statistics_need_weights(norm: str, norm_eval: bool, fixed: str) -> None:
    with pytest.raises(ValueError, match=f"the backbone uses {fixed}") as error:
        check_initialization(norm, None, norm_eval)
    message = str(error.value)
    for advice in (
        "model.pretrained=torchvision://resnet50",
        "model.backbone_norm=bn",
        "model.pretrained=none",
    ):
        assert advice in message


def test_check_initialization_accepts(tmp_path: Path) -> None:
    check_initialization("bn", None)  # from scratch with trainable batch norm
    check_initialization("frozen_bn", "torchvision://resnet101")
    check_initialization("bn", "https://example.org/fcos3d.pth", norm_eval=True)
    path = tmp_path / "r50.pth"
    path.write_bytes(b"")
    check_initialization("frozen_bn", path)
    with pytest.raises(FileNotFoundError, match=f"model.pretrained: no such file {tmp_path / 'r5.pth'}"):
        check_initialization("frozen_bn", str(tmp_path / "r5.pth"))
    with pytest.raises(ValueError, match="unknown pretrained weights 'torchvision://resnet152'"):
        check_initialization("frozen_bn", "torchvision://resnet152")
    with pytest.raises(ValueError, match="backbone norm must be one of"):
        check_initialization("gn", "torchvision://resnet50")
    with pytest.raises(
        ValueError, match="model.pretrained must be a file, URL, torchvision:// name or none, got 1"
    ):
        check_initialization("bn", 1)
