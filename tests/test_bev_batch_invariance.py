"""A batch of samples with different camera poses gives each sample what it gets alone (eval mode)."""

from __future__ import annotations

import pytest
import torch
from bev_helpers import (
    IMG_SHAPE,
    one_thread,  # noqa: F401 (autouse fixture)
    ring_lidar2img,
    tiny_model,
    translation_motion,
)

TOL = 1e-4


def _two_samples():
    torch.manual_seed(1)
    img = torch.randn(2, 6, 3, *IMG_SHAPE)
    lidar2img = torch.stack([ring_lidar2img(), ring_lidar2img(yaw_offset=0.7, shift=(4.0, -3.0))])
    prev_bev = torch.randn(2, 64, 32)
    ego_motion = torch.stack([translation_motion(-5.0), translation_motion(3.0, 1.0, yaw=0.2)])
    return img, lidar2img, prev_bev, ego_motion


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_encoder_is_batch_invariant():
    model = tiny_model().eval()
    img, lidar2img, prev_bev, ego_motion = _two_samples()
    prev_exists = torch.tensor([True, False])
    with torch.no_grad():
        feats, padded_shape = model.extract_features(img)
        assert padded_shape == IMG_SHAPE
        both = model.encoder(feats, lidar2img, IMG_SHAPE, prev_bev, ego_motion, prev_exists)
        for b in range(2):
            single_feats = [level[b : b + 1] for level in feats]
            single = model.encoder(
                single_feats,
                lidar2img[b : b + 1],
                IMG_SHAPE,
                prev_bev[b : b + 1],
                ego_motion[b : b + 1],
                prev_exists[b : b + 1],
            )
            assert _max_diff(both[b], single[0]) <= TOL


@pytest.mark.parametrize("head", ["bev", "detr3d"])
def test_whole_model_is_batch_invariant(head):
    model = tiny_model(head=head).eval()
    img, lidar2img, prev_bev, ego_motion = _two_samples()
    if head == "detr3d":
        prev_bev = ego_motion = None
    with torch.no_grad():
        outputs, bev = model.predict(img, lidar2img, prev_bev, ego_motion)
        detections, _ = model.forward_test(img, lidar2img, prev_bev, ego_motion)
        for b in range(2):
            keep = slice(b, b + 1)
            single, single_bev = model.predict(
                img[keep],
                lidar2img[keep],
                None if prev_bev is None else prev_bev[keep],
                None if ego_motion is None else ego_motion[keep],
            )
            assert _max_diff(outputs.cls_logits[:, b], single.cls_logits[:, 0]) <= TOL
            assert _max_diff(outputs.box_code[:, b], single.box_code[:, 0]) <= TOL
            if head == "bev":
                assert _max_diff(bev[b], single_bev[0]) <= TOL
            single_detections, _ = model.forward_test(
                img[keep],
                lidar2img[keep],
                None if prev_bev is None else prev_bev[keep],
                None if ego_motion is None else ego_motion[keep],
            )
            assert _max_diff(detections[b]["scores"], single_detections[0]["scores"]) <= TOL


def test_camera_poses_matter():
    """Sanity check of the fixture: the two rigs really see the BEV differently."""
    model = tiny_model().eval()
    img, lidar2img, _, _ = _two_samples()
    with torch.no_grad():
        bev = model.compute_bev(img[:1].expand(2, -1, -1, -1, -1), lidar2img)
    assert _max_diff(bev[0], bev[1]) > 1e-2
