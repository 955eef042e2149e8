"""Fine-tuning from a checkpoint: exact key accounting, class-head re-initialization, a training step."""

from __future__ import annotations

import math
import re

import pytest
import torch
from detr2d_helpers import TINY as TINY_BASE
from detr2d_helpers import one_thread  # noqa: F401 (autouse fixture)

from detr2d import build_criterion, build_model
from detr2d.finetune import InitReport, init_from_checkpoint

TINY = {**TINY_BASE, "num_levels": 2}


def build(name: str, num_classes: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, num_classes=num_classes, **TINY)


@pytest.mark.parametrize("name", ["deformable_detr", "deformable_detr_two_stage"])
def test_new_class_count_reinitializes_exactly_the_class_head(name: str) -> None:
    source = build(name, 91, seed=0)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    model = build(name, 5, seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = init_from_checkpoint(model, {"model": state}, num_classes=5)

    keys = list(model.state_dict())
    head = [k for k in keys if k.startswith(("class_embed.", "transformer.decoder.class_embed."))]
    assert any(k.startswith("transformer.decoder.class_embed.") for k in head) == name.endswith("two_stage")
    assert report.reinitialized == tuple(head)
    assert report.loaded == tuple(k for k in keys if k not in head)
    assert report.missing == () and report.unexpected == ()
    assert (report.checkpoint_classes, report.model_classes) == (91, 5)

    after = model.state_dict()
    for key in report.loaded:
        torch.testing.assert_close(after[key], state[key], rtol=0, atol=0)
    for key in head:
        assert after[key].shape[0] == 5
        if key.endswith(".bias"):  # the model's own init: focal prior 0.01
            torch.testing.assert_close(after[key], torch.full((5,), -math.log(99.0)))
        else:  # a fresh draw of PyTorch's Linear init: |w| <= 1 / sqrt(fan_in)
            assert not torch.equal(after[key], before[key])
            assert after[key].abs().max() <= 1 / math.sqrt(TINY["embed_dims"])

    text = report.format()
    assert (
        f"{len(report.loaded)} tensors loaded, {len(head)} re-initialized (class head: 91 -> 5 classes)"
        in text
    )
    assert "re-initialized: " + ", ".join(head) in text

    # a training step on the new label space
    model.train()
    criterion = build_criterion(num_classes=5, decoder_layers=TINY["decoder_layers"])
    images = torch.randn(2, 3, 64, 64)
    targets = [
        {"labels": torch.tensor([4, 0]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.7, 0.6, 0.3, 0.4]])},
        {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])},
    ]
    loss = criterion.weighted_total(criterion(model(images), targets))
    assert torch.isfinite(loss)
    loss.backward()
    grad = model.class_embed[0].weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_same_class_count_loads_everything() -> None:
    source = build("deformable_detr_refine", 5, seed=0).eval()
    model = build("deformable_detr_refine", 5, seed=1).eval()
    report = init_from_checkpoint(model, source.state_dict())
    assert report.loaded == tuple(model.state_dict())
    assert report.reinitialized == report.missing == report.unexpected == ()
    assert report.source == "<state_dict>"
    images = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        torch.testing.assert_close(model(images)["pred_boxes"], source(images)["pred_boxes"], rtol=0, atol=0)


def test_missing_and_unexpected_keys_account_for_shared_tensors(tmp_path) -> None:
    """A multi-scale checkpoint into a two-stage model: the two-stage parts are missing, the learned
    queries unexpected; the per-layer heads load although the checkpoint stores one shared head."""
    path = tmp_path / "plain.pth"
    torch.save({"model": build("deformable_detr", 5, seed=0).state_dict()}, path)
    model = build("deformable_detr_two_stage", 5, seed=1)
    report = init_from_checkpoint(model, path)
    keys = list(model.state_dict())
    missing = [
        k
        for k in keys
        if k.startswith(("transformer.enc_output", "transformer.pos_trans"))
        or re.match(r"(transformer\.decoder\.)?(class|bbox)_embed\.2\.", k)  # the proposal heads
    ]
    assert report.missing == tuple(missing)
    assert report.loaded == tuple(k for k in keys if k not in missing)
    assert set(report.unexpected) == {
        "query_embed.weight",
        "transformer.reference_points.weight",
        "transformer.reference_points.bias",
    }
    assert report.source == str(path)
    assert "3 unexpected (ignored)" in report.format()


def test_checkpoint_of_independent_heads_into_shared_heads_is_an_error() -> None:
    """Refinement (one head per layer; layer 0's box head starts apart) into plain (one shared head):
    the shared tensor cannot take both values, so the error names the conflicting keys."""
    state = build("deformable_detr_refine", 5, seed=0).state_dict()
    with pytest.raises(
        ValueError, match=r"different values for \['bbox_embed\.0\.layers\.2\.bias', 'bbox_embed\.1\.layers"
    ):
        init_from_checkpoint(build("deformable_detr", 5, seed=1), state)


def test_other_shape_mismatches_are_errors_naming_the_key() -> None:
    state = build("deformable_detr", 91, seed=0).state_dict()
    state["query_embed.weight"] = state["query_embed.weight"][:7]
    with pytest.raises(ValueError, match=r"query_embed\.weight: checkpoint \(7, 128\) vs model \(12, 128\)"):
        init_from_checkpoint(build("deformable_detr", 5, seed=1), state)


def test_num_classes_must_match_the_model() -> None:
    with pytest.raises(ValueError, match="num_classes is 7 but the model has 5 classes"):
        init_from_checkpoint(build("deformable_detr", 5, seed=1), {}, num_classes=7)


def test_report_without_head_change_has_no_head_note() -> None:
    report = InitReport("x.pth", ("a",), (), ("b",), (), 5, 5)
    assert report.format() == (
        "initialized from x.pth: 1 tensors loaded, 0 re-initialized, 1 missing (kept), "
        "0 unexpected (ignored)\n  missing: b"
    )
