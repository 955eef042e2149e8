"""PETR / PETRv2 components against independent formulas: depths, frustum coordinates, sine embeddings,
box code, frame interval, neck, decoder layer, PETRv2 branches, VoVNet blocks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from bev_helpers import one_thread  # noqa: F401 (autouse fixture)

from bev.petr import (
    CPFPN,
    FeatureGuidedEncoder,
    GroupedRegressionBranch,
    PETRDecoder,
    anchor_box_code,
    anchor_sine_embedding,
    depth_bins,
    frame_interval,
    frustum_coordinates,
    multiview_sine_embedding,
)
from detr2d.layers.transformer import DETRDecoderLayer
from detr2d.layers.vovnet import EffectiveSE, OSAModule, VoVNet, VoVNetSpec

TINY_VOV = VoVNetSpec((8, 8, 16), (8, 8, 8, 8), (16, 16, 24, 32), 2, (1, 2, 1, 2))


def test_lid_depth_bins_follow_the_published_formula():
    depths = depth_bins(64, 1.0, 61.2, lid=True)
    expected = [1 + i * (i + 1) * 60.2 / (64 * 65) for i in range(64)]
    assert depths.shape == (64,)
    assert torch.allclose(depths, torch.tensor(expected), atol=1e-5)
    assert depths[0] == 1.0 and abs(float(depths[-1]) - 59.35) < 5e-3
    steps = depths.diff()
    assert torch.allclose(steps.diff(), torch.full((62,), 2 * 60.2 / (64 * 65)), atol=1e-5)  # linear increase
    uniform = depth_bins(64, 1.0, 61.2, lid=False)
    assert torch.allclose(uniform, torch.tensor([1 + i * 60.2 / 64 for i in range(64)]), atol=1e-5)


def _camera(yaw: float, focal: float, centre: tuple[float, float], translation: tuple[float, float, float]):
    """lidar2img (4, 4) float64 of a camera looking along lidar direction ``yaw`` (x forward, z up)."""
    c, s = math.cos(yaw), math.sin(yaw)
    # camera axes in lidar coordinates: right, down, forward
    forward = torch.tensor([c, s, 0.0], dtype=torch.float64)
    right = torch.tensor([s, -c, 0.0], dtype=torch.float64)
    down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    lidar2cam = torch.eye(4, dtype=torch.float64)
    lidar2cam[:3, :3] = torch.stack([right, down, forward])
    lidar2cam[:3, 3] = -lidar2cam[:3, :3] @ torch.tensor(translation, dtype=torch.float64)
    intrinsic = torch.eye(4, dtype=torch.float64)
    intrinsic[0, 0] = intrinsic[1, 1] = focal
    intrinsic[0, 2], intrinsic[1, 2] = centre
    return intrinsic @ lidar2cam


def test_frustum_coordinates_project_back_onto_their_pixels_and_depths():
    cams = [_camera(0.3 * i, 40.0 + 5 * i, (31.0, 17.0), (0.5 * i, -0.2, 1.6)) for i in range(3)]
    lidar2img = torch.stack(cams).view(1, 3, 4, 4).float()
    depths = depth_bins(5, 1.0, 61.2)
    position_range = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    height, width, pad = 4, 6, (40, 64)
    coords = frustum_coordinates(lidar2img, (height, width), pad, depths, position_range)
    assert coords.shape == (1, 3, 5, 3, height, width)
    low = torch.tensor(position_range[:3], dtype=torch.float64)
    size = torch.tensor(position_range[3:], dtype=torch.float64) - low
    for view in range(3):
        for k, depth in enumerate(depths.tolist()):
            for row in range(height):
                for col in range(width):
                    point = coords[0, view, k, :, row, col].double() * size + low
                    q = cams[view] @ torch.cat([point, point.new_ones(1)])
                    assert q[2].item() == pytest.approx(depth, rel=1e-4)
                    assert (q[0] / q[2]).item() == pytest.approx(col * pad[1] / width, abs=2e-3)
                    assert (q[1] / q[2]).item() == pytest.approx(row * pad[0] / height, abs=2e-3)


def _sine_feature(value: float, k: int, num_feats: int) -> float:
    freq = 10000 ** (2 * (k // 2) / num_feats)
    return math.sin(value / freq) if k % 2 == 0 else math.cos(value / freq)


def test_multiview_sine_embedding_counts_views_rows_and_columns():
    num_feats = 8
    mask = torch.zeros(1, 3, 4, 5, dtype=torch.bool)
    mask[:, :, 3, :] = True  # padded last row
    mask[:, :, :, 4] = True  # padded last column
    mask[:, 2, 0, 0] = True  # a single padded cell
    embedding = multiview_sine_embedding(mask, num_feats)
    assert embedding.shape == (1, 3, 3 * num_feats, 4, 5)
    valid = (~mask).tolist()
    for view in range(3):
        for row in range(4):
            for col in range(5):
                counts = [
                    (
                        sum(valid[0][n][row][col] for n in range(view + 1)),
                        sum(valid[0][n][row][col] for n in range(3)),
                    ),
                    (
                        sum(valid[0][view][r][col] for r in range(row + 1)),
                        sum(valid[0][view][r][col] for r in range(4)),
                    ),
                    (
                        sum(valid[0][view][row][c] for c in range(col + 1)),
                        sum(valid[0][view][row][c] for c in range(5)),
                    ),
                ]
                for axis, (count, total) in enumerate(counts):
                    value = count / (total + 1e-6) * 2 * math.pi
                    for k in range(num_feats):
                        got = embedding[0, view, axis * num_feats + k, row, col].item()
                        assert got == pytest.approx(_sine_feature(value, k, num_feats), abs=1e-5)


def test_anchor_sine_embedding_orders_y_x_z():
    num_feats = 6
    anchors = torch.tensor([[0.1, 0.7, 0.4], [0.9, 0.2, 0.05]])
    embedding = anchor_sine_embedding(anchors, num_feats)
    assert embedding.shape == (2, 3 * num_feats)
    for q, (x, y, z) in enumerate(anchors.tolist()):
        for block, value in enumerate((y, x, z)):
            for k in range(num_feats):
                expected = _sine_feature(value * 2 * math.pi, k, num_feats)
                assert embedding[q, block * num_feats + k].item() == pytest.approx(expected, abs=1e-5)


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_anchor_box_code_offsets_the_anchor_and_maps_onto_pc_range():
    generator = torch.Generator().manual_seed(0)
    raw = torch.randn(2, 1, 3, 10, generator=generator)  # (L, B, Q, 10)
    anchors = torch.tensor([[0.2, 0.5, 0.9], [0.6, 0.1, 0.3], [0.99, 0.01, 0.5]])
    pc_range = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    code = anchor_box_code(raw, anchors, pc_range)
    for layer in range(2):
        for q, (ax, ay, az) in enumerate(anchors.tolist()):
            r = raw[layer, 0, q].tolist()
            expected = [
                _sigmoid(r[0] + _logit(ax)) * 102.4 - 51.2,
                _sigmoid(r[1] + _logit(ay)) * 102.4 - 51.2,
                r[2],
                r[3],
                _sigmoid(r[4] + _logit(az)) * 8.0 - 5.0,
                *r[5:],
            ]
            assert code[layer, 0, q].tolist() == pytest.approx(expected, abs=1e-4)
    scaled = anchor_box_code(raw, anchors, pc_range, time_interval=torch.tensor([0.5]))
    assert torch.allclose(scaled[..., 8:], raw[..., 8:] / 0.5)
    assert torch.equal(scaled[..., :8], code[..., :8])


def test_frame_interval_is_the_mean_camera_time_difference():
    current = torch.tensor([[0.01, 0.02, 0.03, 0.04, 0.05, 0.06]])
    earlier = current + torch.tensor([[1.2, 1.25, 1.3, 1.2, 1.25, 1.3]])
    interval = frame_interval(torch.cat([current, earlier], dim=1))
    assert interval.tolist() == pytest.approx([1.25], abs=1e-6)
    with pytest.raises(ValueError, match="timestamps must have shape"):
        frame_interval(current)


def test_cpfpn_has_one_output_conv_on_the_finest_level():
    neck = CPFPN([6, 10], 4)
    fine, coarse = torch.randn(2, 6, 4, 6), torch.randn(2, 10, 2, 3)
    out = neck([fine, coarse])
    lat0, lat1 = neck.lateral_convs[0].conv, neck.lateral_convs[1].conv
    top = F.conv2d(coarse, lat1.weight, lat1.bias)
    summed = F.conv2d(fine, lat0.weight, lat0.bias) + top.repeat_interleave(2, 2).repeat_interleave(2, 3)
    conv = neck.fpn_convs[0].conv
    assert torch.allclose(out[0], F.conv2d(summed, conv.weight, conv.bias, padding=1), atol=1e-5)
    assert torch.allclose(out[1], top, atol=1e-6)
    assert sorted(neck.state_dict()) == [
        "fpn_convs.0.conv.bias",
        "fpn_convs.0.conv.weight",
        "lateral_convs.0.conv.bias",
        "lateral_convs.0.conv.weight",
        "lateral_convs.1.conv.bias",
        "lateral_convs.1.conv.weight",
    ]


def _attention(mha: torch.nn.MultiheadAttention, q, k, v, mask=None) -> torch.Tensor:
    """Multi-head attention written out: (B, Lq, C) x (B, Lk, C) -> (B, Lq, C)."""
    c, heads = mha.embed_dim, mha.num_heads
    wq, wk, wv = mha.in_proj_weight.split(c)
    bq, bk, bv = mha.in_proj_bias.split(c)

    def split(x):
        return x.view(x.shape[0], x.shape[1], heads, c // heads).transpose(1, 2)

    qh, kh, vh = split(q @ wq.T + bq), split(k @ wk.T + bk), split(v @ wv.T + bv)
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(c // heads)
    if mask is not None:
        scores = scores.masked_fill(mask[:, None, None, :], float("-inf"))
    out = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(q.shape[0], q.shape[1], c)
    return mha.out_proj(out)


def test_decoder_layer_is_post_norm_global_attention_with_positions_on_queries_and_keys():
    torch.manual_seed(0)
    layer = DETRDecoderLayer(embed_dims=16, num_heads=4, ffn_dims=32, dropout=0.1).eval()
    query, query_pos = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    memory, memory_pos = torch.randn(2, 7, 16), torch.randn(2, 7, 16)
    mask = torch.zeros(2, 7, dtype=torch.bool)
    mask[1, 5:] = True
    with torch.no_grad():
        got = layer(query, query_pos, memory, memory_pos, mask)
        q = query + query_pos
        x = layer.norm1(query + _attention(layer.self_attn, q, q, query))
        x = layer.norm2(
            x + _attention(layer.multihead_attn, x + query_pos, memory + memory_pos, memory, mask)
        )
        expected = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
    assert torch.allclose(got, expected, atol=1e-5)
    # padded memory tokens are ignored
    changed = memory.clone()
    changed[1, 5:] += 100.0
    with torch.no_grad():
        again = layer(query, query_pos, changed, memory_pos, mask)
    assert torch.allclose(again, got, atol=1e-5)


def test_decoder_returns_every_layer_through_post_norm_and_feeds_the_raw_output_on():
    torch.manual_seed(1)
    decoder = PETRDecoder(num_layers=3, embed_dims=16, num_heads=4, ffn_dims=32).eval()
    torch.nn.init.normal_(decoder.post_norm.weight)
    args = (torch.randn(1, 4, 16), torch.randn(1, 4, 16), torch.randn(1, 6, 16), torch.randn(1, 6, 16), None)
    with torch.no_grad():
        out = decoder(*args)
        query = args[0]
        for i, layer in enumerate(decoder.layers):
            query = layer(query, *args[1:])
            assert torch.allclose(out[i], decoder.post_norm(query), atol=1e-6)
    assert out.shape == (3, 1, 4, 16)


def test_grouped_regression_branch_concatenates_its_task_heads_in_order():
    branch = GroupedRegressionBranch(16, 2).eval()
    x = torch.randn(3, 16)
    out = branch(x)
    shared = F.relu(branch.reg_branch[3](F.relu(branch.reg_branch[0](x))))
    expected = torch.cat([head[2](F.relu(head[0](shared))) for head in branch.task_heads], dim=-1)
    assert out.shape == (3, 10)
    assert torch.allclose(out, expected, atol=1e-6)
    assert [head[2].out_features for head in branch.task_heads] == [2, 1, 3, 2, 2]


def test_feature_guided_encoder_gates_the_position_embedding():
    fpe = FeatureGuidedEncoder(8)
    pos, feat = torch.randn(2, 8, 3, 4), torch.randn(2, 8, 3, 4)
    hidden = F.relu(F.conv2d(feat, fpe.conv_reduce.weight, fpe.conv_reduce.bias))
    gate = torch.sigmoid(F.conv2d(hidden, fpe.conv_expand.weight, fpe.conv_expand.bias))
    assert torch.allclose(fpe(pos, feat), pos * gate, atol=1e-6)


def test_effective_se_is_a_hard_sigmoid_channel_gate():
    se = EffectiveSE(4)
    x = torch.randn(2, 4, 3, 5)
    squeezed = x.mean(dim=(2, 3))
    gate = ((squeezed @ se.fc.weight.view(4, 4).T + se.fc.bias + 3).clamp(0, 6) / 6)[:, :, None, None]
    assert torch.allclose(se(x), x * gate, atol=1e-6)


def test_osa_module_concatenates_input_and_layers_and_adds_the_shortcut():
    block = OSAModule(8, 4, 8, 3, "OSA3_2", identity=True).eval()
    plain = copy.deepcopy(block)
    plain.identity = False
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        outs, feature = [x], x
        for layer in block.layers:
            feature = layer(feature)
            outs.append(feature)
        fused = block.ese(block.concat(torch.cat(outs, dim=1)))
        assert torch.allclose(plain(x), fused, atol=1e-6)
        assert torch.allclose(block(x), fused + x, atol=1e-6)
    assert block.concat[0].in_channels == 8 + 3 * 4
    assert "layers.2.OSA3_2_2/conv.weight" in block.state_dict()


def test_vovnet_strides_channels_and_ceil_pooling():
    net = VoVNet(TINY_VOV, ("stage3", "stage4", "stage5")).eval()
    outs = net(torch.randn(1, 3, 70, 100))
    assert [o.shape[1] for o in outs] == [16, 24, 32] == net.num_channels
    assert net.strides == [8, 16, 32]
    # stem /4: 18 x 25; ceil-mode pools: 9 x 12, 4 x 6, 2 x 3 (floor would give 4 x 5, 1 x 2)
    assert [tuple(o.shape[-2:]) for o in outs] == [(9, 12), (4, 6), (2, 3)]
    assert not net.stage3.OSA3_1.identity and net.stage5.OSA5_2.identity


def test_vovnet_norm_eval_and_frozen_stages():
    net = VoVNet(TINY_VOV, frozen_stages=-1, norm_eval=True).train()
    batch_norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(not m.training for m in batch_norms)
    assert all(p.requires_grad for p in net.parameters())
    before = batch_norms[0].running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(batch_norms[0].running_mean, before)

    frozen = VoVNet(TINY_VOV, frozen_stages=1, norm_eval=False).train()
    assert not any(p.requires_grad for p in frozen.stem.parameters())
    assert not any(p.requires_grad for p in frozen.stage2.parameters())
    assert all(p.requires_grad for p in frozen.stage3.parameters())
    assert not frozen.stage2.training and frozen.stage3.training
    with pytest.raises(ValueError, match="out_features"):
        VoVNet(TINY_VOV, ("stage5", "stage4"))
