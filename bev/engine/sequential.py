"""Sequential inference: frames of each scene in time order, the previous frame's BEV carried forward.

This is BEVFormer's test-time temporal history: frame t attends to frame t-1's BEV aligned by the ego
motion between them; the history is dropped at a scene change (or any gap in the frame chain).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from bev import MultiViewDetector3D, ego_motion_between
from detr2d.engine.evaluate import autocast

Detections = dict[str, np.ndarray]


def _numpy(value: torch.Tensor) -> np.ndarray:
    """A CPU numpy copy; floating tensors (also bf16 under autocast) as float32."""
    return (value.float() if value.is_floating_point() else value).cpu().numpy()


@torch.no_grad()
def iterate_sequential(
    model: MultiViewDetector3D,
    loader: DataLoader,
    prev_token: Mapping[str, str],
    device: torch.device,
    amp: str | None = None,
) -> Iterator[tuple[dict[str, Any], Detections]]:
    """Run ``model`` frame by frame over ``loader`` and yield ``(batch, detections)`` per frame.

    Args:
        model: the (unwrapped) detector; put in eval mode here.
        loader: batch size 1, each scene's samples consecutive and in time order (e.g.
            :func:`bev.engine.data.build_sequential_loader`); batches as ``collate_nuscenes`` makes them,
            the current frame last along T.
        prev_token: sample token -> the token of the scene's previous sample ("" at a scene start).
            The previous BEV is used only when the frame just processed is exactly this one.
        device: where the model runs.

    Yields:
        The CPU batch and its detections: ``boxes`` (K, 9) lidar frame [x, y, z, w, l, h, yaw, vx, vy],
        ``scores`` (K,), ``labels`` (K,) as numpy arrays.
    """
    model.eval()
    prev_bev: torch.Tensor | None = None
    last_token, last_pose = "", torch.eye(4, dtype=torch.float64)[None]
    for batch in loader:
        if batch["img"].shape[0] != 1:
            raise ValueError(f"sequential inference needs batch size 1, got {batch['img'].shape[0]}")
        token = batch["sample_token"][0]
        pose = batch["lidar2global"]  # (1, 4, 4) float64
        motion = None
        if prev_bev is not None and prev_token[token] == last_token:
            motion = ego_motion_between(last_pose, pose).float().to(device)
        else:
            prev_bev = None
        with autocast(device, amp):
            detections, prev_bev = model.forward_test(
                batch["img"][:, -1].to(device), batch["lidar2img"][:, -1].to(device), prev_bev, motion
            )
        last_token, last_pose = token, pose
        yield batch, {key: _numpy(value) for key, value in detections[0].items()}


def predict_sequential(
    model: MultiViewDetector3D,
    loader: DataLoader,
    prev_token: Mapping[str, str],
    device: torch.device,
    amp: str | None = None,
) -> dict[str, Detections]:
    """Detections of every sample of ``loader`` by sample token (see :func:`iterate_sequential`)."""
    return {
        batch["sample_token"][0]: detections
        for batch, detections in iterate_sequential(model, loader, prev_token, device, amp)
    }
