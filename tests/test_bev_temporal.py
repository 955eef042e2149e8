"""Temporal alignment of the previous BEV and the temporal self-attention around it."""

from __future__ import annotations

import math

import pytest
import torch
from bev_helpers import (
    IMG_SHAPE,
    PC_RANGE,
    one_thread,  # noqa: F401 (autouse fixture)
    ring_lidar2img,
    tiny_model,
    translation_motion,
)

from bev import TemporalSelfAttention, align_prev_bev, ego_motion_between

H = W = 8
CELL = 102.4 / W  # metres per BEV cell


def _grid(bev: torch.Tensor) -> torch.Tensor:
    """(B, H*W, C) -> (B, H, W, C)."""
    return bev.view(bev.shape[0], H, W, -1)


def test_zero_motion_is_identity():
    prev = torch.randn(2, H * W, 5)
    aligned = align_prev_bev(prev, torch.eye(4).expand(2, 4, 4), H, W, PC_RANGE)
    torch.testing.assert_close(aligned, prev, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cells", [1, 3])
def test_forward_translation_shifts_by_whole_cells(cells):
    """Ego drives +x by k cells: a static point at x in the previous frame is at x - k cells now."""
    prev = torch.randn(1, H * W, 4)
    motion = translation_motion(-cells * CELL)[None]
    aligned = _grid(align_prev_bev(prev, motion, H, W, PC_RANGE))
    expected = torch.zeros_like(aligned)
    expected[:, :, : W - cells] = _grid(prev)[:, :, cells:]  # column j now shows old column j + k
    torch.testing.assert_close(aligned, expected, atol=1e-5, rtol=0)


def test_sideways_translation_shifts_rows():
    prev = torch.randn(1, H * W, 3)
    aligned = _grid(align_prev_bev(prev, translation_motion(0.0, 2 * CELL)[None], H, W, PC_RANGE))
    expected = torch.zeros_like(aligned)
    expected[:, 2:] = _grid(prev)[:, :-2]  # row i now shows old row i - 2
    torch.testing.assert_close(aligned, expected, atol=1e-5, rtol=0)


def test_quarter_turn_maps_cells():
    """p_cur = R(90 deg) p_prev: current cell (i, j) shows previous cell (W - 1 - j, i)."""
    prev = torch.randn(1, H * W, 3)
    aligned = _grid(align_prev_bev(prev, translation_motion(0.0, yaw=math.pi / 2)[None], H, W, PC_RANGE))
    old = _grid(prev)
    expected = torch.stack([torch.stack([old[0, W - 1 - j, i] for j in range(W)]) for i in range(H)])[None]
    torch.testing.assert_close(aligned, expected, atol=1e-5, rtol=0)


def test_alignment_is_per_sample():
    prev = torch.randn(2, H * W, 3)
    motions = torch.stack([translation_motion(-CELL), translation_motion(2 * CELL, yaw=0.3)])
    both = align_prev_bev(prev, motions, H, W, PC_RANGE)
    for b in range(2):
        torch.testing.assert_close(
            align_prev_bev(prev[b : b + 1], motions[b : b + 1], H, W, PC_RANGE), both[b : b + 1]
        )


def test_identical_frames_and_zero_motion_give_the_current_bev():
    """BEV of frame 1 aligned with zero motion equals the BEV of the identical frame 2 (no history)."""
    model = tiny_model().eval()
    img = torch.randn(1, 6, 3, *IMG_SHAPE)
    lidar2img = ring_lidar2img()[None]
    with torch.no_grad():
        prev_bev = model.compute_bev(img, lidar2img)
        current = model.compute_bev(img, lidar2img)
    aligned = align_prev_bev(prev_bev, torch.eye(4)[None], H, W, PC_RANGE)
    torch.testing.assert_close(aligned, current, atol=1e-5, rtol=0)


def test_history_changes_the_bev_only_where_it_exists():
    model = tiny_model().eval()
    img = torch.randn(2, 6, 3, *IMG_SHAPE)
    lidar2img = ring_lidar2img()[None].expand(2, -1, -1, -1)
    prev_bev = torch.randn(2, H * W, 32)
    motion = translation_motion(-CELL)[None].expand(2, 4, 4)
    with torch.no_grad():
        alone = model.compute_bev(img, lidar2img)
        mixed = model.compute_bev(img, lidar2img, prev_bev, motion, torch.tensor([True, False]))
    assert (mixed[0] - alone[0]).abs().max() > 1e-3
    torch.testing.assert_close(mixed[1], alone[1], atol=1e-5, rtol=0)


def test_history_chain_matches_frame_by_frame_bevs():
    """history_bev over stacked frames = compute_bev frame by frame, per-sample validity included."""
    model = tiny_model().eval()
    torch.manual_seed(4)
    img = torch.randn(2, 3, 6, 3, *IMG_SHAPE)
    lidar2img = torch.stack([ring_lidar2img(), ring_lidar2img(yaw_offset=0.3)])[:, None].expand(
        2, 3, -1, -1, -1
    )
    motion = torch.stack([translation_motion(-CELL), translation_motion(0.5 * CELL, yaw=0.1)])
    motion = motion[:, None].expand(2, 3, 4, 4)
    valid = torch.tensor([[True, True, True], [False, True, True]])
    with torch.no_grad():
        chained = model.history_bev(img, lidar2img, motion, valid)
        first = model.compute_bev(img[:, 0], lidar2img[:, 0])
        second = model.compute_bev(img[:, 1], lidar2img[:, 1], first, motion[:, 1], valid[:, 0])
        third = model.compute_bev(img[:, 2], lidar2img[:, 2], second, motion[:, 2], valid[:, 1])
        # sample 1 alone: its frame 0 is padding, so frame 1 starts its chain
        alone = model.compute_bev(img[1:, 1], lidar2img[1:, 1])
        alone = model.compute_bev(img[1:, 2], lidar2img[1:, 2], alone, motion[1:, 2])
    torch.testing.assert_close(chained, third)
    assert float((chained[1] - alone[0]).abs().max()) <= 1e-4


def test_ego_motion_between_poses():
    prev_pose, pose = torch.eye(4, dtype=torch.float64), torch.eye(4, dtype=torch.float64)
    pose[:3, 3] = torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)  # the ego drove 5 m along global x
    motion = ego_motion_between(prev_pose[None], pose[None])[0]
    point_prev = torch.tensor([10.0, 1.0, 0.0, 1.0], dtype=torch.float64)  # static point seen before
    torch.testing.assert_close(motion @ point_prev, torch.tensor([5.0, 1.0, 0.0, 1.0], dtype=torch.float64))


def test_temporal_self_attention_without_history_attends_to_itself():
    torch.manual_seed(0)
    tsa = TemporalSelfAttention(embed_dims=16, num_heads=2, num_points=2, backend="reference")
    with torch.no_grad():
        tsa.sampling_offsets.weight.normal_(0, 0.1)
    query, pos = torch.randn(2, H * W, 16), torch.randn(H * W, 16)
    out = tsa(query, pos, query, H, W)
    assert out.shape == (2, H * W, 16)
    assert (out - tsa(query, pos, torch.randn_like(query), H, W)).abs().max() > 1e-4


def test_bad_alignment_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="prev_bev"):
        align_prev_bev(torch.zeros(1, 10, 4), torch.eye(4)[None], H, W, PC_RANGE)
    with pytest.raises(ValueError, match="ego_motion"):
        align_prev_bev(torch.zeros(2, H * W, 4), torch.eye(4)[None], H, W, PC_RANGE)
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="ego_motion"):
        model.compute_bev(torch.zeros(1, 6, 3, *IMG_SHAPE), ring_lidar2img()[None], torch.zeros(1, H * W, 32))
