"""The BEV detectors' graph for export (:mod:`detr2d.runtime.export` writes it): one frame of a scene.

BEVFormer-style: ``img`` (B, Ncam, 3, H, W), ``lidar2img`` (B, Ncam, 4, 4), ``prev_bev`` (B, bev_h *
bev_w, C), ``ego_motion`` (B, 4, 4), ``prev_exists`` (B,) bool -> ``cls_logits`` (B, Q, num_classes),
``box_code`` (B, Q, 10) of the last decoder layer (what ``model.box_decoder.decode`` takes) and ``bev``
(B, bev_h * bev_w, C), fed back as ``prev_bev`` with the next frame (zeros with ``prev_exists`` False at a
scene's start). Encoders that read the CAN bus (the published temporal alignment, ``use_can_bus``) take
a last input ``can_bus`` (B, 18) (:func:`bev.temporal_alignment.published_can_bus`); inputs a graph does
not read are left out of it (``ego_motion`` with the published alignment). DETR3D-style (no BEV):
``img``, ``lidar2img`` -> ``cls_logits``, ``box_code``.

The graphs are exported for the size of the example images (export once per deployed input size). They
must trace the spatial cross-attention with every BEV query gathered for every camera (the module
gathers as many queries per camera as the most-seen camera sees, a number the tracer bakes in):
:func:`bev_example_inputs` builds example inputs whose cameras see every pillar, so the exported graph
is exact for any camera geometry.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from .detector import MultiViewDetector3D


class BevFrameForExport(nn.Module):
    """One frame of a ``bev.MultiViewDetector3D``, with the previous BEV as explicit input and output.

    Inputs and outputs: see the module docstring (``input_names`` / ``output_names`` name them).
    """

    def __init__(self, model: MultiViewDetector3D) -> None:
        super().__init__()
        self.model = model
        self.has_bev = model.encoder is not None
        self.reads_can_bus = self.has_bev and model.encoder.reads_can_bus
        if self.has_bev:
            self.input_names = ("img", "lidar2img", "prev_bev", "ego_motion", "prev_exists")
            self.input_names += ("can_bus",) if self.reads_can_bus else ()
            self.output_names = ("cls_logits", "box_code", "bev")
        else:
            self.input_names = ("img", "lidar2img")
            self.output_names = ("cls_logits", "box_code")

    def forward(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        ego_motion: torch.Tensor | None = None,
        prev_exists: torch.Tensor | None = None,
        can_bus: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Last-layer ``cls_logits`` (B, Q, K), ``box_code`` (B, Q, 10) and, with a BEV, the BEV."""
        outputs, bev = self.model.predict(img, lidar2img, prev_bev, ego_motion, prev_exists, can_bus)
        head = (outputs.cls_logits[-1], outputs.box_code[-1])
        return head + (bev,) if self.has_bev else head


def bev_example_inputs(
    model: MultiViewDetector3D, image_size: tuple[int, int], batch: int = 1
) -> tuple[torch.Tensor, ...]:
    """Example inputs of :class:`BevFrameForExport` whose cameras see every BEV pillar.

    Every camera projects every point to the image centre at depth 1, so the traced spatial
    cross-attention gathers all BEV queries for every camera (see the module docstring).

    Args:
        model: the ``bev.MultiViewDetector3D``.
        image_size: (H, W) of the camera images.
        batch: B.

    Returns:
        ``(img, lidar2img)`` for DETR3D-style models, plus ``(prev_bev, ego_motion, prev_exists)``
        (random BEV, identity motion, all True) for BEVFormer-style ones, plus a random (B, 18)
        ``can_bus`` when the encoder reads one.
    """
    height, width = image_size
    device = next(model.parameters()).device
    img = torch.randn(batch, model.num_cams, 3, height, width, device=device)
    centre = torch.zeros(4, 4, device=device)
    centre[0, 3], centre[1, 3], centre[2, 3], centre[3, 3] = width / 2, height / 2, 1.0, 1.0
    lidar2img = centre.expand(batch, model.num_cams, 4, 4).clone()
    if model.encoder is None:
        return img, lidar2img
    encoder = model.encoder
    prev_bev = torch.randn(batch, encoder.bev_h * encoder.bev_w, encoder.embed_dims, device=device)
    ego_motion = torch.eye(4, device=device).expand(batch, 4, 4).clone()
    prev_exists = torch.ones(batch, dtype=torch.bool, device=device)
    frame = (img, lidar2img, prev_bev, ego_motion, prev_exists)
    return frame + (torch.randn(batch, 18, device=device),) if encoder.reads_can_bus else frame


def camera_ring(num_cams: int, image_size: tuple[int, int], batch: int = 1) -> torch.Tensor:
    """(B, Ncam, 4, 4) ``lidar2img`` of a synthetic rig: cameras at the lidar origin looking outwards at
    evenly spaced yaws (x forward, y left, z up), focal length W / 2, principal point at the image centre.
    Each camera sees a sector of the BEV, as on a real car: inputs for checks and benchmarks."""
    height, width = image_size
    intrinsics = torch.tensor([[width / 2, 0.0, width / 2], [0.0, width / 2, height / 2], [0.0, 0.0, 1.0]])
    lidar2img = torch.zeros(num_cams, 4, 4)
    for cam in range(num_cams):
        yaw = 2 * math.pi * cam / num_cams
        # camera axes in lidar coordinates: right, down, forward (viewing direction at this yaw)
        rotation = torch.tensor(
            [[math.sin(yaw), -math.cos(yaw), 0.0], [0.0, 0.0, -1.0], [math.cos(yaw), math.sin(yaw), 0.0]]
        )
        lidar2img[cam, :3, :3] = intrinsics @ rotation
        lidar2img[cam, 3, 3] = 1.0
    return lidar2img.expand(batch, num_cams, 4, 4).clone()
