"""BEVFormer's published temporal math on hand-made cases, its CAN-bus input, and batch exactness.

- rotation of the previous BEV (torchvision's nearest ``rotate`` about ``rotate_center``);
- the shift of TSA's history references by the ego translation (and the v1 in-place quirk);
- the CAN-bus vector the model builds from the dataset's absolute vectors and feeds ``can_bus_mlp``;
- every published variant (at tiny sizes): a batch of 2 with a previous BEV gives each sample what it
  gets alone; the full-size models do too (slow).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from bev_helpers import (
    IMG_SHAPE,
    can_bus_vector,
    one_thread,  # noqa: F401 (autouse fixture)
    published_tiny_model,
    ring_lidar2img,
    translation_motion,
)

from bev import (
    BEVEncoder,
    CameraMemory,
    Detr3DCrossAttention,
    TemporalSelfAttention,
    bev_pillar_points,
    build_bev_model,
    project_to_cameras,
)
from bev.temporal_alignment import bev_shift, published_can_bus, rotate_bev
from bev.temporal_self_attention import tsa_reference_points
from detr2d.layers.box_ops import inverse_sigmoid
from ops import ms_deform_attn

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
PUBLISHED = ("bevformer_tiny", "bevformer_small", "bevformer_base", "detr3d")
TORCHVISION_ROTATE = Path(__file__).resolve().parent / "reference_data" / "torchvision_rotate.json"


def one_hot(bev_h: int, bev_w: int, row: int, col: int) -> torch.Tensor:
    """(1, bev_h * bev_w, 1) zeros with a 1 at (row, col)."""
    bev = torch.zeros(1, bev_h, bev_w, 1)
    bev[0, row, col] = 1.0
    return bev.view(1, bev_h * bev_w, 1)


def where_is_one(bev: torch.Tensor, bev_h: int, bev_w: int) -> list[tuple[int, int]]:
    return [tuple(v) for v in (bev.view(bev_h, bev_w) == 1).nonzero().tolist()]


def test_quarter_turn_rotates_a_cell_counter_clockwise_about_the_centre():
    # 200 x 200 (base): the default centre (100, 100) is the grid centre. Pixel (row 100, col 150) has
    # its centre at (150.5, 100.5) = centre + (50.5, 0.5); +90 degrees takes it to centre + (0.5, -50.5),
    # the pixel centred at (100.5, 49.5): row 49, col 100.
    bev = one_hot(200, 200, 100, 150)
    rotated = rotate_bev(bev, torch.tensor([90.0]), 200, 200, (100.0, 100.0))
    assert where_is_one(rotated, 200, 200) == [(49, 100)]
    assert float(rotated.sum()) == 1.0
    back = rotate_bev(rotated, torch.tensor([-90.0]), 200, 200, (100.0, 100.0))
    assert torch.equal(back, bev)


def test_default_centre_is_off_the_tiny_grid():
    # 50 x 50 (tiny): about (100, 100) a quarter turn moves every cell off the grid; about the grid
    # centre (25, 25) the cell at centre + (10.5, 0.5) (row 25, col 35) lands at row 14, col 25.
    bev = one_hot(50, 50, 25, 35)
    assert float(rotate_bev(bev, torch.tensor([90.0]), 50, 50, (100.0, 100.0)).abs().sum()) == 0.0
    about_centre = rotate_bev(bev, torch.tensor([90.0]), 50, 50, (25.0, 25.0))
    assert where_is_one(about_centre, 50, 50) == [(14, 25)]


@pytest.mark.parametrize(
    "case",
    json.loads(TORCHVISION_ROTATE.read_text())["cases"],
    ids=lambda case: f"{case['bev_h']}x{case['bev_w']}-about-{case['center']}-by-{case['angle']}",
)
def test_rotation_reads_the_cells_torchvision_rotate_reads(case):
    bev_h, bev_w = case["bev_h"], case["bev_w"]
    cells = (torch.arange(bev_h * bev_w, dtype=torch.float32) + 1)[None, :, None]
    angle = torch.tensor([case["angle"]], dtype=torch.float64)
    rotated = rotate_bev(cells, angle, bev_h, bev_w, case["center"])
    assert rotated[0, :, 0].long().sub(1).tolist() == case["source"]


def test_rotation_is_per_sample_and_zero_is_the_identity():
    torch.manual_seed(0)
    bev = torch.randn(2, 64, 3)
    rotated = rotate_bev(bev, torch.tensor([0.0, 30.0]), 8, 8, (100.0, 100.0))
    assert torch.equal(rotated[0], bev[0])
    assert torch.equal(rotated[1:], rotate_bev(bev[1:], torch.tensor([30.0]), 8, 8, (100.0, 100.0)))


def test_rotation_under_bf16_autocast_moves_the_same_cells():
    torch.manual_seed(0)
    bev, angle = torch.randn(2, 200 * 200, 4), torch.tensor([17.3, -4.0])
    expected = rotate_bev(bev, angle, 200, 200, (100.0, 100.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rotated = rotate_bev(bev.bfloat16(), angle, 200, 200, (100.0, 100.0))
    assert rotated.dtype == torch.bfloat16 and torch.equal(rotated, expected.bfloat16())


@pytest.mark.parametrize("yaw", [0.0, 30.0, 200.0])
def test_one_cell_of_ego_motion_is_one_cell_of_shift(yaw):
    cell = 102.4 / 50  # tiny: 2.048 m cells
    heading = math.radians(yaw)
    previous = can_bus_vector(100.0, 50.0, yaw)
    ahead = can_bus_vector(100.0 + cell * math.cos(heading), 50.0 + cell * math.sin(heading), yaw)
    right = can_bus_vector(100.0 + cell * math.sin(heading), 50.0 - cell * math.cos(heading), yaw)
    for current, expected in ((ahead, (0.0, 1 / 50)), (right, (1 / 50, 0.0))):
        published = published_can_bus(current[None], previous[None])
        shift = bev_shift(published, 50, 50, PC_RANGE)
        torch.testing.assert_close(shift, torch.tensor([expected]), atol=1e-6, rtol=0)


def _sampling_tsa() -> TemporalSelfAttention:
    """A TSA whose every point sits on its reference, with equal weights and identity projections."""
    tsa = TemporalSelfAttention(embed_dims=4, num_heads=1, num_points=2, backend="reference")
    with torch.no_grad():
        for linear in (tsa.sampling_offsets, tsa.attention_weights):
            linear.weight.zero_()
            linear.bias.zero_()
        for linear in (tsa.value_proj, tsa.output_proj):
            linear.weight.copy_(torch.eye(4))
            linear.bias.zero_()
    return tsa


@pytest.mark.parametrize("shift_current", [False, True])
def test_one_cell_shift_moves_the_history_references_by_one_cell(shift_current):
    bev_h = bev_w = 6
    history = torch.arange(bev_h * bev_w, dtype=torch.float32)[None, :, None].expand(1, -1, 4).contiguous()
    current = 100.0 + history
    references = tsa_reference_points(bev_h, bev_w, torch.tensor([[0.0, 1 / bev_h]]), shift_current)
    output = _sampling_tsa()(current, torch.zeros(36, 4), history, bev_h, bev_w, None, references)
    grid = output[0, :, 0].view(bev_h, bev_w)
    hist, cur = history[0, :, 0].view(bev_h, bev_w), current[0, :, 0].view(bev_h, bev_w)
    # Row i reads the history at row i + 1 (one cell ahead); the last row reads outside (zeros).
    expected_current = cur[1:] if shift_current else cur[:-1]
    torch.testing.assert_close(grid[:-1], (hist[1:] + expected_current) / 2)
    moved = references[0, 0] - tsa_reference_points(bev_h, bev_w, torch.zeros(1, 2))[0, 0]
    torch.testing.assert_close(moved, torch.tensor([0.0, 1 / bev_h]).expand(36, 2))
    torch.testing.assert_close(
        references[0, 1], references[0, 0] if shift_current else references[0, 0] - moved
    )


def test_published_can_bus_takes_differences_with_the_previous_frame():
    previous = can_bus_vector(410.0, 1180.0, 350.0)
    current = can_bus_vector(411.5, 1179.0, 5.0)
    both = published_can_bus(
        torch.stack([current, current]), torch.stack([previous, previous]), torch.tensor([True, False])
    )
    expected = current.clone()
    expected[:3] = torch.tensor([1.5, -1.0, 0.0])
    expected[17] = 5.0 - 350.0  # BEVFormer differences [0, 360) angles
    torch.testing.assert_close(both[0], expected)
    at_scene_start = current.clone()
    at_scene_start[[0, 1, 2, 17]] = 0.0
    torch.testing.assert_close(both[1], at_scene_start)
    torch.testing.assert_close(published_can_bus(current[None])[0], at_scene_start)
    with pytest.raises(ValueError, match="can_bus must have shape"):
        published_can_bus(torch.zeros(2, 17))


def _published_batch(frames: int = 2) -> dict:
    """Two samples of ``frames`` frames; sample 1's first frame is padding before its scene start."""
    torch.manual_seed(5)
    can_bus = torch.stack(
        [
            torch.stack([can_bus_vector(10.0 + 3 * t, 20.0 + t, 40.0 + 8 * t) for t in range(frames)]),
            torch.stack([can_bus_vector(-5.0 - 2 * t, 7.0, 300.0 + 20 * t) for t in range(frames)]),
        ]
    )
    return {
        "img": torch.randn(2, frames, 6, 3, *IMG_SHAPE),
        "lidar2img": torch.stack(
            [
                ring_lidar2img()[None].expand(frames, -1, -1, -1),
                ring_lidar2img(yaw_offset=0.5)[None].expand(frames, -1, -1, -1),
            ]
        ),
        "ego_motion": translation_motion(-2.0)[None, None].expand(2, frames, 4, 4).contiguous(),
        "history_valid": torch.tensor([[True] * frames, [False] + [True] * (frames - 1)]),
        "can_bus": can_bus,
    }


def test_can_bus_mlp_reads_the_published_vector_of_each_frame():
    model = published_tiny_model("bevformer_tiny").eval()
    batch = _published_batch(frames=3)
    seen = []
    model.encoder.can_bus_mlp.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    with torch.no_grad():
        model(batch)
    assert len(seen) == 3  # two history frames, then the current one
    can_bus, valid = batch["can_bus"], batch["history_valid"]
    for t, vectors in enumerate(seen):
        previous = can_bus[:, t - 1] if t > 0 else None
        expected = published_can_bus(can_bus[:, t], previous, valid[:, t - 1] if t > 0 else None)
        torch.testing.assert_close(vectors, expected)
    assert (
        float(seen[2][0, 17]) == pytest.approx(8.0) and float(seen[1][1, 17]) == 0.0
    )  # sample 1: scene start


def test_every_layer_reads_the_first_layers_queries_as_current_with_history():
    model = published_tiny_model("bevformer_tiny").eval()
    batch = _published_batch()
    inputs = {}
    for index, layer in enumerate(model.encoder.layers):
        layer.temporal_self_attention.register_forward_pre_hook(
            lambda module, args, index=index: inputs.__setitem__(index, args)
        )
    with torch.no_grad():
        model(batch)
    first_query, second_current = inputs[0][0], inputs[1][5]
    torch.testing.assert_close(second_current[0], first_query[0])  # sample 0 has a previous BEV
    torch.testing.assert_close(second_current[1], inputs[1][0][1])  # sample 1 (scene start) reads itself
    assert not torch.allclose(inputs[1][0][0], first_query[0])


def test_published_models_need_the_can_bus():
    model = published_tiny_model("bevformer_tiny").eval()
    batch = _published_batch()
    del batch["can_bus"]
    with pytest.raises(ValueError, match="can_bus"):
        model(batch)
    img, lidar2img = batch["img"][:, -1], batch["lidar2img"][:, -1]
    with pytest.raises(ValueError, match="prev_can_bus"):
        model.forward_test(img, lidar2img, torch.zeros(2, 64, 32), None, None, torch.zeros(2, 18))


def test_planar_alignment_is_an_option_and_models_that_ignore_the_can_bus_accept_it():
    model = published_tiny_model("bevformer_tiny", temporal_alignment="planar", use_can_bus=False).eval()
    assert model.encoder.can_bus_mlp is None and not model.encoder.reads_can_bus
    batch = _published_batch()
    without = {key: value for key, value in batch.items() if key != "can_bus"}
    with torch.no_grad():
        torch.testing.assert_close(model(batch).box_code, model(without).box_code, atol=0, rtol=0)
        img, lidar2img = batch["img"][:, -1], batch["lidar2img"][:, -1]
        _, bev = model.forward_test(img, lidar2img, torch.zeros(2, 64, 32), batch["ego_motion"][:, -1])
        _, same = model.forward_test(
            img,
            lidar2img,
            torch.zeros(2, 64, 32),
            batch["ego_motion"][:, -1],
            can_bus=batch["can_bus"][:, -1],
        )
    torch.testing.assert_close(bev, same, atol=0, rtol=0)
    with pytest.raises(ValueError, match="temporal_alignment must be one of"):
        published_tiny_model("bevformer_tiny", temporal_alignment="warp")


def test_published_init_is_xavier_then_each_attentions_own():
    model = published_tiny_model("bevformer_tiny").requires_grad_(False)
    layer = model.encoder.layers[0]
    xavier_bound, default_bound = math.sqrt(6 / (32 + 64)), 1 / math.sqrt(32)  # linear1: 32 -> 64
    assert default_bound < float(layer.linear1.weight.abs().max()) <= xavier_bound
    assert float(layer.temporal_self_attention.sampling_offsets.weight.abs().max()) == 0.0
    assert float(model.head.layers[0].cross_attn.attention_weights.weight.abs().max()) == 0.0
    assert float(model.encoder.can_bus_mlp[0].bias.abs().max()) > 0.0  # PyTorch's default, as released
    assert model.encoder.level_embeds.shape == (4, 32)
    demo = published_tiny_model("bev_demo", num_levels=2).requires_grad_(False)
    assert float(demo.encoder.layers[0].linear1.weight.abs().max()) <= default_bound
    assert demo.encoder.level_embeds.shape == (2, 32) and demo.encoder.can_bus_mlp is None


def v1_encoder(
    encoder: BEVEncoder,
    feats: list[torch.Tensor],
    lidar2img: torch.Tensor,
    prev_bev: torch.Tensor | None,
    can_bus: torch.Tensor,
) -> torch.Tensor:
    """BEVFormer v1's get_bev_features + encoder at batch 1, transcribed step by step from its code
    (its layouts: the (2, Q) BEV queue, value[:bs] in the offset input, the in-place shift of ref_2d,
    the queue built once from the first layer's queries). SCA and FFN are our modules (tested apart)."""
    bev_h, bev_w, channels = encoder.bev_h, encoder.bev_w, encoder.embed_dims
    delta_x, delta_y = float(can_bus[0, 0]), float(can_bus[0, 1])
    ego_angle = float(can_bus[0, -2]) / math.pi * 180
    length = math.sqrt(delta_x**2 + delta_y**2)
    translation_angle = math.atan2(delta_y, delta_x) / math.pi * 180
    if translation_angle < 0:
        translation_angle += 360
    bev_angle = ego_angle - translation_angle
    shift_y = length * math.cos(bev_angle / 180 * math.pi) / (102.4 / bev_h) / bev_h
    shift_x = length * math.sin(bev_angle / 180 * math.pi) / (102.4 / bev_w) / bev_w
    if prev_bev is not None:
        prev_bev = rotate_bev(prev_bev, can_bus[:, -1], bev_h, bev_w, encoder.rotate_center)
    query = encoder.bev_embedding.weight[None] + encoder.can_bus_mlp(can_bus)[:, None]
    bev_pos = encoder.positional_embedding()[None]
    value, spatial_shapes, level_start_index = encoder.flatten_features(feats)
    pillars = bev_pillar_points(bev_h, bev_w, PC_RANGE, 4)[None]
    reference_points_cam, visible = project_to_cameras(pillars, lidar2img, (32, 64))
    ref_y, ref_x = torch.meshgrid(
        torch.linspace(0.5, bev_h - 0.5, bev_h), torch.linspace(0.5, bev_w - 0.5, bev_w), indexing="ij"
    )
    ref_2d = torch.stack([ref_x.reshape(-1) / bev_w, ref_y.reshape(-1) / bev_h], -1)[None, :, None]
    shift_ref_2d = ref_2d  # the v1 release: no clone
    shift_ref_2d += torch.tensor([shift_x, shift_y])
    num_queries = bev_h * bev_w
    hybrid_ref_2d = torch.stack([shift_ref_2d, ref_2d], 1).reshape(2, num_queries, 1, 2)
    queue = None if prev_bev is None else torch.stack([prev_bev, query], 1).reshape(2, num_queries, channels)
    for layer in encoder.layers:
        tsa = layer.temporal_self_attention
        heads, points = tsa.num_heads, tsa.num_points
        tsa_value = (
            torch.stack([query, query], 1).reshape(2, num_queries, channels) if queue is None else queue
        )
        tsa_query = torch.cat([tsa_value[:1], query + bev_pos], -1)
        projected = tsa.value_proj(tsa_value).reshape(2, num_queries, heads, -1)
        offsets = tsa.sampling_offsets(tsa_query).view(1, num_queries, heads, 2, 1, points, 2)
        weights = tsa.attention_weights(tsa_query).view(1, num_queries, heads, 2, points).softmax(-1)
        weights = weights.view(1, num_queries, heads, 2, 1, points).permute(0, 3, 1, 2, 4, 5)
        weights = weights.reshape(2, num_queries, heads, 1, points)
        offsets = offsets.permute(0, 3, 1, 2, 4, 5, 6).reshape(2, num_queries, heads, 1, points, 2)
        locations = hybrid_ref_2d[:, :, None, :, None, :] + offsets / torch.tensor([bev_w, bev_h])
        output = ms_deform_attn(
            projected,
            torch.tensor([[bev_h, bev_w]]),
            torch.tensor([0]),
            locations,
            weights,
            backend="reference",
        )
        output = output.permute(1, 2, 0).view(num_queries, channels, 1, 2).mean(-1).permute(2, 0, 1)
        x = layer.norm1(query + tsa.output_proj(output))
        sca = layer.spatial_cross_attention
        x = layer.norm2(x + sca(x, value, reference_points_cam, visible, spatial_shapes, level_start_index))
        query = layer.norm3(x + layer.linear2(F.relu(layer.linear1(x))))
    return query


@pytest.mark.parametrize("with_prev", [True, False])
def test_encoder_equals_the_v1_transcription_at_batch_1(with_prev):
    model = published_tiny_model("bevformer_tiny", rotate_center=(4.0, 4.0)).eval()
    torch.manual_seed(2)
    img, lidar2img = torch.randn(1, 6, 3, *IMG_SHAPE), ring_lidar2img()[None]
    prev_bev = torch.randn(1, 64, 32) if with_prev else None
    can_bus = published_can_bus(
        can_bus_vector(30.0, -4.0, 300.0)[None], can_bus_vector(10.0, 6.5, 283.0)[None]
    )
    assert float(bev_shift(can_bus, 8, 8, PC_RANGE).abs().max()) > 1 / 8  # more than a cell
    with torch.no_grad():
        feats, img_shape = model.extract_features(img)
        ours = model.encoder(feats, lidar2img, img_shape, prev_bev, None, None, can_bus)
        theirs = v1_encoder(model.encoder, feats, lidar2img, prev_bev, can_bus)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def detr3d_cross_attention_v1(
    attn: Detr3DCrossAttention,
    query: torch.Tensor,
    query_pos: torch.Tensor,
    reference_points: torch.Tensor,
    mlvl_feats: list[torch.Tensor],
    lidar2img: torch.Tensor,
    img_shape: tuple[int, int],
) -> torch.Tensor:
    """DETR3D's Detr3DCrossAtten + feature_sampling, transcribed from its code (batch-first here)."""
    batch, num_queries, _ = query.shape
    num_cams, num_levels = attn.num_cams, attn.num_levels
    weights = attn.attention_weights(query + query_pos).view(batch, 1, num_queries, num_cams, 1, num_levels)
    low, high = torch.tensor(PC_RANGE[:3]), torch.tensor(PC_RANGE[3:])
    points = torch.cat(
        [reference_points * (high - low) + low, torch.ones_like(reference_points[..., :1])], -1
    )
    points = points.view(batch, 1, num_queries, 4).repeat(1, num_cams, 1, 1).unsqueeze(-1)
    cam = torch.matmul(
        lidar2img.view(batch, num_cams, 1, 4, 4).repeat(1, 1, num_queries, 1, 1), points
    ).squeeze(-1)
    eps = 1e-5
    mask = cam[..., 2:3] > eps
    cam = cam[..., 0:2] / torch.maximum(cam[..., 2:3], torch.ones_like(cam[..., 2:3]) * eps)
    cam = (cam / torch.tensor([img_shape[1], img_shape[0]]) - 0.5) * 2
    mask = (
        mask & (cam[..., 0:1] > -1.0) & (cam[..., 0:1] < 1.0) & (cam[..., 1:2] > -1.0) & (cam[..., 1:2] < 1.0)
    )
    mask = mask.view(batch, num_cams, 1, num_queries, 1, 1).permute(0, 2, 3, 1, 4, 5)
    sampled = []
    for feat in mlvl_feats:
        _, _, channels, height, width = feat.shape
        grid = cam.reshape(batch * num_cams, num_queries, 1, 2)
        level = F.grid_sample(
            feat.reshape(batch * num_cams, channels, height, width), grid, align_corners=False
        )
        sampled.append(level.view(batch, num_cams, channels, num_queries, 1).permute(0, 2, 3, 1, 4))
    output = torch.stack(sampled, -1).view(batch, channels, num_queries, num_cams, 1, num_levels)
    output = (output * (weights.sigmoid() * mask)).sum(-1).sum(-1).sum(-1).permute(0, 2, 1)
    return attn.output_proj(output) + query + attn.position_encoder(inverse_sigmoid(reference_points))


def test_detr3d_cross_attention_equals_the_transcription():
    model = published_tiny_model("detr3d").eval()
    attn = model.head.layers[0].cross_attn
    torch.manual_seed(4)
    with torch.no_grad():
        attn.attention_weights.weight.normal_(std=0.5)
        attn.attention_weights.bias.normal_()
        img = torch.randn(2, 6, 3, *IMG_SHAPE)
        lidar2img = torch.stack([ring_lidar2img(), ring_lidar2img(yaw_offset=0.4, shift=(2.0, -1.0))])
        feats, img_shape = model.extract_features(img)
        query, query_pos = torch.randn(2, 50, 32), torch.randn(2, 50, 32)
        reference = torch.rand(2, 50, 3) * 0.9 + 0.05
        ours = attn(query, query_pos, reference, CameraMemory(feats, lidar2img, img_shape))
        theirs = detr3d_cross_attention_v1(attn, query, query_pos, reference, feats, lidar2img, img_shape)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def _assert_batch_equals_single(model, batch, atol: float = 1e-4) -> None:
    with torch.no_grad():
        both = model(batch)
        for b in range(2):
            single = model({key: value[b : b + 1] for key, value in batch.items()})
            torch.testing.assert_close(both.cls_logits[:, b], single.cls_logits[:, 0], atol=atol, rtol=0)
            torch.testing.assert_close(both.box_code[:, b], single.box_code[:, 0], atol=atol, rtol=0)


@pytest.mark.parametrize("name", PUBLISHED)
def test_batch_of_two_with_history_equals_each_sample_alone(name):
    # About the 8 x 8 grid's centre, so that the rotated previous BEV stays on the grid.
    model = published_tiny_model(name, rotate_center=(4.0, 4.0)).eval()
    batch = _published_batch(frames=3)
    _assert_batch_equals_single(model, batch)
    if name != "detr3d":  # sequential testing: forward_test with the previous BEV and CAN bus
        img, lidar2img, can_bus = batch["img"], batch["lidar2img"], batch["can_bus"]
        with torch.no_grad():
            _, prev_bev = model.forward_test(img[:, 0], lidar2img[:, 0], can_bus=can_bus[:, 0])
            args = (img[:, 1], lidar2img[:, 1], prev_bev, None, torch.tensor([True, False]))
            both, bev = model.forward_test(*args, can_bus=can_bus[:, 1], prev_can_bus=can_bus[:, 0])
            for b in range(2):
                single_args = [None if a is None else a[b : b + 1] for a in args]
                one, one_bev = model.forward_test(
                    *single_args, can_bus=can_bus[b : b + 1, 1], prev_can_bus=can_bus[b : b + 1, 0]
                )
                torch.testing.assert_close(bev[b], one_bev[0], atol=1e-4, rtol=0)
                torch.testing.assert_close(both[b]["scores"], one[0]["scores"], atol=1e-4, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name", PUBLISHED)
def test_full_size_published_model_batch_of_two_equals_each_sample_alone(name):
    torch.manual_seed(0)
    model = build_bev_model(name, backend="reference").eval()
    batch = _published_batch(frames=2)
    batch["img"] = torch.randn(2, 2, 6, 3, 64, 96)
    batch["lidar2img"] = torch.stack(
        [
            ring_lidar2img((64, 96))[None].expand(2, -1, -1, -1),
            ring_lidar2img((64, 96), yaw_offset=0.5)[None].expand(2, -1, -1, -1),
        ]
    )
    _assert_batch_equals_single(model, batch, atol=2e-4)
