"""The inference fast path: batch norm folded into convolutions, channels-last, native op, optionally
compiled; same outputs; inference in the CPU arena."""

from __future__ import annotations

import warnings

import pytest
import torch
from detr2d_helpers import NARROW
from torch import nn

from bev import build_bev_model
from detr2d import FrozenBatchNorm2d, ResNetBackbone, build_model
from detr2d.runtime.fast_inference import (
    fold_batch_norms,
    fold_conv_bn,
    optimize_for_inference,
    set_op_backend,
)
from ops import ModulatedDeformConv2d
from ops.arena import cpu_arena_available, cpu_arena_stats, release_cpu_arena
from ops.packed_linear import PackedLinear, pack_linear_layers


def randomize_norms(model: nn.Module) -> None:
    """Non-trivial statistics and affine parameters in every batch norm (fresh ones are identities)."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d | nn.BatchNorm2d):
                c = module.running_mean.shape[0]
                module.running_mean.copy_(torch.randn(c, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(c, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(c, generator=generator) * 0.2)


def count(model: nn.Module, kinds: tuple[type, ...]) -> int:
    return sum(isinstance(m, kinds) for m in model.modules())


@pytest.mark.parametrize(
    ("depth", "norm", "dcn", "norms"),
    [
        (18, "frozen_bn", False, 20),  # stem + 8 blocks x 2 + 3 downsamples
        (18, "bn", False, 20),
        (50, "frozen_bn", True, 53),  # stem + 16 blocks x 3 + 4 downsamples; layer4's conv2 deformable
    ],
)
def test_fold_batch_norms_is_exact(depth, norm, dcn, norms):
    torch.manual_seed(0)
    backbone = ResNetBackbone(
        depth, ("layer2", "layer3", "layer4"), norm=norm, stage_with_dcn=(False, False, False, dcn)
    ).eval()
    if dcn:  # non-zero offsets, so that the deformable convolutions do deform
        for module in backbone.modules():
            if isinstance(module, ModulatedDeformConv2d):
                torch.nn.init.normal_(module.conv_offset.weight, std=0.01)
    randomize_norms(backbone)
    x = torch.randn(2, 3, 64, 80)
    with torch.no_grad():
        expected = backbone(x)
        assert fold_batch_norms(backbone) == norms
        got = backbone(x)
    assert count(backbone, (FrozenBatchNorm2d, nn.BatchNorm2d)) == 0
    for a, b in zip(got, expected, strict=True):  # random statistics grow activations to ~1e3: relative
        torch.testing.assert_close(a, b, atol=1e-5 * float(b.abs().max()), rtol=1e-4)


def test_training_batch_norm_is_not_folded():
    block = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    assert fold_batch_norms(block) == 0 and isinstance(block[1], nn.BatchNorm2d)


def test_fold_conv_bn_checks_channels():
    with pytest.raises(ValueError, match="batch norm over 5 channels into a convolution with 4 output"):
        fold_conv_bn(nn.Conv2d(3, 4, 1), FrozenBatchNorm2d(5))


def test_detr2d_fast_path_equals_eager_and_leaves_the_model_alone(cpu_backend):
    torch.manual_seed(0)
    model = build_model("deformable_detr_two_stage", **NARROW, backend="reference").eval()
    randomize_norms(model)
    fast = optimize_for_inference(model)
    assert count(fast, (FrozenBatchNorm2d,)) == 0 and count(model, (FrozenBatchNorm2d,)) == 20
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    assert fast.backbone[0].body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    attention = [m for m in fast.modules() if hasattr(m, "sampling_offsets")]
    assert attention and all(m.backend == cpu_backend for m in attention)
    assert all(m.backend == "reference" for m in model.modules() if hasattr(m, "sampling_offsets"))
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 70:] = True  # a padded image: the masks and the masked norms still apply
    mask[1, :, 100:] = True
    with torch.inference_mode():
        expected, got = model(images, mask), fast(images, mask)
    for key in ("pred_logits", "pred_boxes"):
        torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(
        got["enc_outputs"]["pred_logits"], expected["enc_outputs"]["pred_logits"], atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_detr_fast_path_equals_eager(compile):
    """DETR (dense nn.MultiheadAttention, no deformable op): norms folded, linear layers packed, compiled
    or not, equals eager on a padded batch and on a single image of another size."""
    torch.manual_seed(0)
    model = build_model("detr_r50", **NARROW).eval()
    randomize_norms(model)
    fast = optimize_for_inference(model, compile=compile)
    assert count(fast, (FrozenBatchNorm2d,)) == 0 and count(model, (FrozenBatchNorm2d,)) == 20
    assert not fast.training and not any(p.requires_grad for p in fast.parameters())
    images = torch.randn(2, 3, 96, 128)
    mask = torch.zeros(2, 96, 128, dtype=torch.bool)
    mask[1, 70:] = True
    mask[1, :, 100:] = True
    for args in ((images, mask), (torch.randn(1, 3, 80, 112),)):
        with torch.inference_mode():
            expected, got = model(*args), fast(*args)
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_bev_fast_path_equals_eager(cpu_backend, compile):
    torch.manual_seed(0)
    model = build_bev_model(
        "bev_demo", embed_dims=32, num_heads=2, ffn_dims=32, bev_h=6, bev_w=6, num_queries=10
    ).eval()
    randomize_norms(model)
    fast = optimize_for_inference(model, compile=compile)
    assert count(fast, (FrozenBatchNorm2d, nn.BatchNorm2d)) == 0
    # predict() calls the parts, not forward: they are what gets compiled and run in the arena
    forwards = [part.forward for part in fast.inference_parts()]
    assert all(hasattr(forward, "__wrapped__") for forward in forwards)  # the arena's scope
    compiled = [hasattr(forward.__wrapped__, "_torchdynamo_orig_callable") for forward in forwards]
    assert compiled == [compile] * 4
    img = torch.randn(1, model.num_cams, 3, 64, 96)
    lidar2img = torch.eye(4).expand(1, model.num_cams, 4, 4).clone()
    lidar2img[..., 0, 3], lidar2img[..., 1, 3] = 48.0, 32.0
    with torch.inference_mode():
        (expected, bev), (got, fast_bev) = model.predict(img, lidar2img), fast.predict(img, lidar2img)
    torch.testing.assert_close(fast_bev, bev, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.cls_logits, expected.cls_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.box_code, expected.box_code, atol=1e-4, rtol=1e-4)


def test_set_op_backend_switches_every_attention(cpu_backend):
    model = build_bev_model("bev_demo", bev_h=4, bev_w=4, num_queries=5, backend="reference")
    changed = set_op_backend(model, cpu_backend)
    # 2 encoder layers x (temporal + spatial) + 3 decoder layers' cross-attention
    assert changed == 7
    assert {m.backend for m in model.modules() if hasattr(m, "sampling_offsets")} == {cpu_backend}


@pytest.mark.slow
def test_compiled_fast_path_equals_eager_at_two_sizes(cpu_backend):
    torch.manual_seed(0)
    model = build_model(
        "deformable_detr",
        backbone="resnet18",
        embed_dims=32,
        num_heads=2,
        encoder_layers=1,
        decoder_layers=1,
        ffn_dims=32,
        num_queries=10,
        num_classes=3,
    ).eval()
    randomize_norms(model)
    fast = optimize_for_inference(model, compile=True)
    for size in ((64, 96), (80, 112)):  # the second size recompiles (dynamic sizes)
        images = torch.randn(1, 3, *size)
        with torch.inference_mode():
            expected, got = model(images), fast(images)
        for key in ("pred_logits", "pred_boxes"):
            torch.testing.assert_close(got[key], expected[key], atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(not cpu_arena_available(), reason="the CPU arena needs the native library")
def test_fast_path_reuses_its_buffers_from_one_call_to_the_next(cpu_backend):
    torch.manual_seed(0)
    model = build_model("deformable_detr", **NARROW).eval()
    images = torch.randn(1, 3, 160, 224)
    with torch.inference_mode():
        expected = model(images)["pred_boxes"]
        without = optimize_for_inference(model, arena=False)
        before = cpu_arena_stats()
        without(images)
        assert cpu_arena_stats()[:5] == before[:5]  # arena=False: nothing from the arena
        fast = optimize_for_inference(model)
        release_cpu_arena()  # earlier tests' blocks would serve the first call
        fast(images)
        first = cpu_arena_stats()
        got = fast(images)["pred_boxes"]
        second = cpu_arena_stats()
    assert first.misses > before.misses and first.open_scopes == 0
    assert second.misses == first.misses  # the second call found every large buffer in the cache
    assert second.hits - first.hits == first.hits + first.misses - before.hits - before.misses
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_compiling_the_fast_path_afterwards_compiles_through_the_arena_scope(cpu_backend):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    compiled = torch.compile(optimize_for_inference(model))  # not compile=True: the user's own
    frames, before = torch._dynamo.utils.counters["frames"]["ok"], cpu_arena_stats()
    images = torch.randn(1, 3, 96, 96)  # 8 x 94 x 94 float maps: 276 KiB, from the arena
    with torch.inference_mode(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.testing.assert_close(compiled(images), model(images), atol=1e-4, rtol=1e-4)
    assert torch._dynamo.utils.counters["frames"]["ok"] > frames  # the model's forward was compiled
    after = cpu_arena_stats()
    assert after.hits + after.misses > before.hits + before.misses and after.open_scopes == 0
    assert not [str(w.message) for w in caught if "Dynamo" in str(w.message)]  # the scope is not traced


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")
def test_packed_linear_layers_equal_the_plain_ones_and_spare_attention_projections():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    attention = nn.MultiheadAttention(8, 2, batch_first=True).eval()  # reads out_proj.weight itself
    both = nn.ModuleList([model, attention])
    x = torch.randn(2, 5, 16)
    with torch.inference_mode():
        expected = attention(*[model(x)] * 3)[0]
        assert pack_linear_layers(both) == 2
        assert isinstance(model[0], PackedLinear) and type(attention.out_proj) is not PackedLinear
        torch.testing.assert_close(attention(*[model(x)] * 3)[0], expected, atol=1e-5, rtol=1e-5)
        assert model(x[:0]).shape == (0, 5, 8)  # empty batches pass
