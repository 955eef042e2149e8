"""Sequential inference: frames of each scene in time order, the previous frame's BEV carried forward.

This is BEVFormer's test-time temporal history: frame t attends to frame t-1's BEV aligned by the ego
motion between them; the history is dropped at a scene change (or any gap in the frame chain). Scenes
are sharded whole over processes (:class:`SceneShardSampler`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from detr2d.runtime.precision import autocast

from .detector import MultiViewDetector3D
from .temporal_alignment import ego_motion_between


def scene_runs(scene_tokens: Sequence[str]) -> list[list[int]]:
    """Indices grouped into runs of consecutive equal scene tokens, in order: ``["a", "a", "b"]`` ->
    ``[[0, 1], [2]]``."""
    runs: list[list[int]] = []
    for index, token in enumerate(scene_tokens):
        if runs and scene_tokens[runs[-1][-1]] == token:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


class SceneShardSampler(Sampler[int]):
    """Whole scenes per process, each in dataset (time) order: scene runs ``rank, rank + world_size, ...``.

    Every sample is visited exactly once over all processes, and a process sees each of its scenes
    from the first frame to the last, so the previous BEV can be carried through it.

    Args:
        scene_tokens: the scene token of every dataset index, a scene's samples consecutive and in time
            order (as in an infos file).
    """

    def __init__(self, scene_tokens: Sequence[str], rank: int = 0, world_size: int = 1) -> None:
        self.indices = [i for run in scene_runs(scene_tokens)[rank::world_size] for i in run]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _cpu(value: torch.Tensor) -> torch.Tensor:
    """A CPU copy; floating tensors (also bf16 under autocast) as float32."""
    return (value.float() if value.is_floating_point() else value).cpu()


@torch.no_grad()
def iterate_sequential(
    model: MultiViewDetector3D,
    loader: DataLoader,
    prev_token: Mapping[str, str],
    device: torch.device,
    amp: str | None = None,
) -> Iterator[tuple[dict[str, Any], list[dict[str, torch.Tensor]]]]:
    """Run ``model`` frame by frame over ``loader`` and yield ``(batch, detections)`` per frame.

    Args:
        model: the (unwrapped) detector; put in eval mode here.
        loader: batch size 1, each scene's samples consecutive and in time order (e.g. over a
            :class:`SceneShardSampler`); batches as ``collate_nuscenes`` makes them, the current frame
            last along T.
        prev_token: sample token -> the token of the scene's previous sample ("" at a scene start).
            The previous BEV is used only when the frame just processed is exactly this one.
        device: where the model runs; ``amp``: its autocast mode.

    Yields:
        The CPU batch and its one-sample detections: ``boxes`` (K, 9) lidar frame [x, y, z, w, l, h, yaw,
        vx, vy], ``scores`` (K,), ``labels`` (K,) as CPU tensors.
    """
    model.eval()
    prev_bev: torch.Tensor | None = None
    last_token, last_pose, last_can_bus = "", torch.eye(4, dtype=torch.float64)[None], None
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
        can_bus = batch["can_bus"][:, -1].to(device) if "can_bus" in batch else None
        with autocast(device, amp):
            detections, prev_bev = model.forward_test(
                batch["img"][:, -1].to(device),
                batch["lidar2img"][:, -1].to(device),
                prev_bev,
                motion,
                can_bus=can_bus,
                prev_can_bus=last_can_bus if prev_bev is not None else None,
            )
        last_token, last_pose, last_can_bus = token, pose, can_bus
        yield batch, [{key: _cpu(value) for key, value in detections[0].items()}]
