"""Camera-only 3D detector: backbone + neck, then BEV encoder + decoder (BEVFormer) or a DETR3D decoder.

Batch contract (what ``datasets.nuscenes.collate_nuscenes`` produces; B samples, T >= 1 frames
oldest first with the current frame last, Ncam cameras in a fixed order):

- ``img``: (B, T, Ncam, 3, H, W) float, RGB normalized with the ImageNet mean/std; (B, Ncam, 3, H, W)
  means T = 1. The model zero-pads H, W at the bottom/right to a multiple of ``size_divisor`` (32)
  and normalizes image coordinates by the padded size, as BEVFormer does.
- ``lidar2img``: (B, T, Ncam, 4, 4) (or (B, Ncam, 4, 4)): intrinsics @ (camera <- lidar of that
  frame), mapping lidar-frame points to pixels of the (resized, unpadded) input image.
- ``ego_motion``: (B, T, 4, 4): frame t-1's lidar frame -> frame t's (entry 0 unused); needed when T > 1.
- ``history_valid``: (B, T) bool, False for padding frames before a scene's start (default: all True).
- ``can_bus``: (B, T, 18) absolute CAN-bus vectors (``datasets.nuscenes.can_bus`` layout); required by
  models with ``use_can_bus`` or the published temporal alignment. The model turns them into
  BEVFormer's per-frame input (position and yaw differences with the previous valid frame, 0 at a
  scene start: :func:`bev.temporal_alignment.published_can_bus`).
Other keys (``gt_boxes``, tokens, ...) are ignored by the model; the criterion
(:class:`bev.DetectionLoss3D`) reads ``gt_boxes`` / ``gt_labels``.

With an encoder (BEVFormer) the earlier frames' BEVs are built in sequence without gradient and in
eval mode; frame t uses frame t-1's BEV for the samples whose frame t-1 is valid. ``model(batch)``
returns the raw :class:`HeadOutput` of every decoder layer in training and in eval mode (in training
with Group DETR, G query groups per sample); ``model.decode(outputs)`` turns it into detections.

Sequential testing: ``detections, bev = model.forward_test(img, lidar2img, prev_bev, ego_motion,
prev_exists, can_bus, prev_can_bus)`` on one frame (B, Ncam, ...) returns B dicts (``boxes`` (K, 9)
lidar frame, centre z; ``scores`` (K,); ``labels`` (K,)) and the BEV (B, bev_h * bev_w, C) to pass as
``prev_bev`` with the next frame of the same scene (None for DETR3D); ``ego_motion`` (B, 4, 4) maps the
previous frame's lidar frame to this one (:func:`bev.temporal_alignment.ego_motion_between`);
``can_bus`` / ``prev_can_bus`` (B, 18) are the absolute CAN-bus vectors of this and the previous frame.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from detr2d.layers.fpn import FPNNeck

from .box_coder import NMSFreeDecoder
from .decoder import BEVMemory, DetectionDecoder, HeadOutput
from .detr3d_head import CameraMemory
from .encoder import BEVEncoder
from .export import BevFrameForExport, bev_example_inputs
from .temporal_alignment import CAN_BUS_DIM, published_can_bus


def _require(batch: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
    missing = [key for key in keys if key not in batch]
    if missing:
        raise ValueError(f"{where} is missing {missing}; it has {sorted(batch)}")


class MultiViewDetector3D(nn.Module):
    """Multi-camera 3D object detector on the shared deformable attention op.

    With an ``encoder`` it is BEVFormer: the head reads a BEV built from the cameras (and the
    previous BEV); without one it is DETR3D: the head reads the camera features directly.

    Args:
        backbone: image backbone, ``backbone(x (N, 3, H, W)) -> list[(N, C_l, H_l, W_l)]``.
        neck: FPN mapping the backbone levels to the ``embed_dims``-wide levels the model uses.
        head: :class:`DetectionDecoder` whose layers read :class:`BEVMemory` (with an encoder) or
            :class:`CameraMemory` (without).
        box_decoder: top-k decoding of the last layer into boxes.
        encoder: :class:`BEVEncoder`, or None for the DETR3D-style detector.
        num_cams: cameras per sample.
        size_divisor: images are zero-padded (bottom/right) to a multiple of this.
        bev_pos_in_memory: the decoder reads the BEV plus the encoder's BEV positional embedding, so
            what its queries sample says where they sampled (the published decoder reads the bare BEV).
    """

    def __init__(
        self,
        backbone: nn.Module,
        neck: FPNNeck,
        head: DetectionDecoder,
        box_decoder: NMSFreeDecoder,
        encoder: BEVEncoder | None = None,
        num_cams: int = 6,
        size_divisor: int = 32,
        bev_pos_in_memory: bool = False,
    ) -> None:
        super().__init__()
        if bev_pos_in_memory and encoder is None:
            raise ValueError("bev_pos_in_memory needs a BEV encoder (the DETR3D-style head reads no BEV)")
        self.bev_pos_in_memory = bev_pos_in_memory
        self.backbone = backbone
        self.neck = neck
        self.encoder = encoder
        self.head = head
        self.box_decoder = box_decoder
        self.num_cams = num_cams
        self.size_divisor = size_divisor

    def _check_frame(self, img: torch.Tensor, lidar2img: torch.Tensor) -> None:
        if img.dim() != 5 or img.shape[1] != self.num_cams or img.shape[2] != 3:
            raise ValueError(f"img must have shape (B, {self.num_cams}, 3, H, W), got {tuple(img.shape)}")
        if lidar2img.shape != (img.shape[0], self.num_cams, 4, 4):
            raise ValueError(
                f"lidar2img must have shape {(img.shape[0], self.num_cams, 4, 4)}, "
                f"got {tuple(lidar2img.shape)}"
            )

    def extract_features(self, img: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Neck levels of one frame's images.

        Args:
            img: (B, Ncam, 3, H, W).

        Returns:
            the levels, each (B, Ncam, C, H_l, W_l), and the padded image size (H', W').
        """
        batch, num_cams, _, height, width = img.shape
        pad_h, pad_w = (-height) % self.size_divisor, (-width) % self.size_divisor
        images = F.pad(img.flatten(0, 1), (0, pad_w, 0, pad_h))
        levels = self.neck(self.backbone(images))
        feats = [level.view(batch, num_cams, *level.shape[1:]) for level in levels]
        return feats, (height + pad_h, width + pad_w)

    def inference_parts(self) -> list[nn.Module]:
        """The submodules ``predict`` and ``forward_test`` call (not ``forward``): what
        :func:`detr2d.runtime.fast_inference.optimize_for_inference` compiles and runs in its CPU arena."""
        return [part for part in (self.backbone, self.neck, self.encoder, self.head) if part is not None]

    def for_export(
        self, image_size: tuple[int, int], batch: int = 1
    ) -> tuple[BevFrameForExport, tuple[torch.Tensor, ...]]:
        """The one-frame export graph of this detector and example inputs whose cameras see every BEV
        pillar (see :mod:`bev.export`); ``image_size`` (H, W) of every camera."""
        return BevFrameForExport(self), bev_example_inputs(self, image_size, batch)

    def predict(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        ego_motion: torch.Tensor | None = None,
        prev_exists: torch.Tensor | None = None,
        can_bus: torch.Tensor | None = None,
    ) -> tuple[HeadOutput, torch.Tensor | None]:
        """Head outputs of every decoder layer for one frame, and its BEV (None without encoder).

        Args:
            img: (B, Ncam, 3, H, W); lidar2img: (B, Ncam, 4, 4).
            prev_bev: (B, bev_h * bev_w, C) the previous frame's BEV, or None.
            ego_motion: (B, 4, 4) previous lidar frame -> this one; required with ``prev_bev`` by the
                planar alignment.
            prev_exists: (B,) bool, which samples' ``prev_bev`` is real (default: all).
            can_bus: (B, 18) the frame's published CAN-bus vector (differences already taken,
                :func:`bev.temporal_alignment.published_can_bus`), or None.
        """
        self._check_frame(img, lidar2img)
        feats, img_shape = self.extract_features(img)
        if self.encoder is None:
            memory: BEVMemory | CameraMemory = CameraMemory(feats, lidar2img, img_shape)
            bev = None
        else:
            bev = self.encoder(feats, lidar2img, img_shape, prev_bev, ego_motion, prev_exists, can_bus)
            read = bev + self.encoder.positional_embedding() if self.bev_pos_in_memory else bev
            memory = BEVMemory(read, self.encoder.bev_h, self.encoder.bev_w)
        return self.head(memory, img.shape[0]), bev

    def compute_bev(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        ego_motion: torch.Tensor | None = None,
        prev_exists: torch.Tensor | None = None,
        can_bus: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The BEV (B, bev_h * bev_w, C) of one frame (encoder only); arguments as :meth:`predict`."""
        if self.encoder is None:
            raise ValueError("compute_bev needs a BEV encoder; this detector has none (DETR3D-style)")
        self._check_frame(img, lidar2img)
        feats, img_shape = self.extract_features(img)
        return self.encoder(feats, lidar2img, img_shape, prev_bev, ego_motion, prev_exists, can_bus)

    @torch.no_grad()
    def history_bev(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        ego_motion: torch.Tensor | None,
        history_valid: torch.Tensor,
        can_bus: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """BEV of the last of T frames, built frame by frame in eval mode without gradient.

        Frame t attends to frame t-1's BEV for the samples with ``history_valid[:, t - 1]``; frames
        that are padding for every sample are skipped.

        Args:
            img: (B, T, Ncam, 3, H, W); lidar2img: (B, T, Ncam, 4, 4); ego_motion: (B, T, 4, 4) (frame
                t-1 -> t), may be None when T <= 1; history_valid: (B, T) bool; can_bus: (B, T, 18)
                published per-frame vectors (:meth:`published_can_bus_sequence`), or None.

        Returns:
            (B, bev_h * bev_w, C), or None for T = 0, no encoder, or an invalid last frame everywhere.
        """
        num_frames = img.shape[1]
        if self.encoder is None or num_frames == 0:
            return None
        if num_frames > 1 and ego_motion is None and self.encoder.temporal_alignment == "planar":
            raise ValueError("ego_motion (B, T, 4, 4) is required with more than one frame")
        was_training = self.training
        self.eval()
        try:
            bev = None
            for t in range(num_frames):
                if not bool(history_valid[:, t].any()):
                    bev = None
                    continue
                with_prev = bev is not None
                bev = self.compute_bev(
                    img[:, t],
                    lidar2img[:, t],
                    bev,
                    ego_motion[:, t] if with_prev and ego_motion is not None else None,
                    history_valid[:, t - 1] if with_prev else None,
                    None if can_bus is None else can_bus[:, t],
                )
        finally:
            self.train(was_training)
        return bev

    @staticmethod
    def published_can_bus_sequence(can_bus: torch.Tensor, history_valid: torch.Tensor) -> torch.Tensor:
        """BEVFormer's per-frame CAN-bus inputs of a frame sequence.

        Args:
            can_bus: (B, T, 18) absolute vectors, oldest frame first.
            history_valid: (B, T) bool; frame t differs from frame t-1 where ``history_valid[:, t - 1]``
                (and has zero position / yaw differences elsewhere, and at t = 0).

        Returns:
            (B, T, 18).
        """
        frames = [published_can_bus(can_bus[:, 0])]
        for t in range(1, can_bus.shape[1]):
            frames.append(published_can_bus(can_bus[:, t], can_bus[:, t - 1], history_valid[:, t - 1]))
        return torch.stack(frames, dim=1)

    def _frames(
        self, batch: Mapping[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
        """``img``, ``lidar2img``, ``ego_motion``, ``history_valid`` and the published ``can_bus`` inputs
        of a batch with an explicit T axis."""
        _require(batch, ("img", "lidar2img"), "the batch")
        img, lidar2img = batch["img"], batch["lidar2img"]
        if img.dim() == 5:
            img, lidar2img = img[:, None], lidar2img[:, None]
        if img.dim() != 6 or lidar2img.dim() != 5 or lidar2img.shape[:2] != img.shape[:2]:
            raise ValueError(
                "img must be (B, T, Ncam, 3, H, W) or (B, Ncam, 3, H, W) with lidar2img (B, T, Ncam, 4, 4) "
                f"or (B, Ncam, 4, 4); got {tuple(batch['img'].shape)} and {tuple(batch['lidar2img'].shape)}"
            )
        batch_size, num_frames = img.shape[:2]
        ego_motion = batch.get("ego_motion")
        if ego_motion is not None and ego_motion.dim() == 3:
            ego_motion = ego_motion[:, None]
        if ego_motion is not None and ego_motion.shape != (batch_size, num_frames, 4, 4):
            raise ValueError(
                f"ego_motion must have shape {(batch_size, num_frames, 4, 4)}, got {tuple(ego_motion.shape)}"
            )
        history_valid = batch.get("history_valid")
        if history_valid is None:
            history_valid = torch.ones(batch_size, num_frames, dtype=torch.bool, device=img.device)
        elif history_valid.shape != (batch_size, num_frames):
            raise ValueError(
                f"history_valid must have shape {(batch_size, num_frames)}, got {tuple(history_valid.shape)}"
            )
        history_valid = history_valid.bool()
        can_bus = batch.get("can_bus")
        if can_bus is not None:
            if can_bus.dim() == 2:
                can_bus = can_bus[:, None]
            if can_bus.shape != (batch_size, num_frames, CAN_BUS_DIM):
                raise ValueError(
                    f"can_bus must have shape {(batch_size, num_frames, CAN_BUS_DIM)}, "
                    f"got {tuple(can_bus.shape)}"
                )
            can_bus = self.published_can_bus_sequence(can_bus, history_valid)
        return img, lidar2img, ego_motion, history_valid, can_bus

    def forward(self, batch: Mapping[str, Any]) -> HeadOutput:
        """Head outputs of every decoder layer for the current (last) frame of a batch, its history folded
        into the previous BEV (keys and shapes in the module docstring)."""
        img, lidar2img, ego_motion, history_valid, can_bus = self._frames(batch)
        history_motion = None if ego_motion is None else ego_motion[:, :-1]
        prev_bev = self.history_bev(
            img[:, :-1],
            lidar2img[:, :-1],
            history_motion,
            history_valid[:, :-1],
            None if can_bus is None else can_bus[:, :-1],
        )
        current_motion = ego_motion[:, -1] if prev_bev is not None and ego_motion is not None else None
        prev_exists = history_valid[:, -2] if prev_bev is not None else None
        current_can_bus = None if can_bus is None else can_bus[:, -1]
        outputs, _ = self.predict(
            img[:, -1], lidar2img[:, -1], prev_bev, current_motion, prev_exists, current_can_bus
        )
        return outputs

    def decode(self, outputs: HeadOutput) -> list[dict[str, torch.Tensor]]:
        """Detections of the last decoder layer: B dicts with ``boxes`` (K, 9), ``scores``, ``labels``."""
        return self.box_decoder.decode(outputs.cls_logits[-1], outputs.box_code[-1])

    @torch.no_grad()
    def forward_test(
        self,
        img: torch.Tensor,
        lidar2img: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        ego_motion: torch.Tensor | None = None,
        prev_exists: torch.Tensor | None = None,
        can_bus: torch.Tensor | None = None,
        prev_can_bus: torch.Tensor | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor | None]:
        """Decoded detections of one frame and its BEV (to carry to the next frame of the scene).

        Args:
            img, lidar2img, prev_bev, ego_motion, prev_exists: as :meth:`predict`.
            can_bus: (B, 18) this frame's absolute CAN-bus vectors, or None; required by models that read
                it (:attr:`bev.encoder.BEVEncoder.reads_can_bus`), ignored by the others.
            prev_can_bus: (B, 18) the previous frame's; required with ``can_bus`` and ``prev_bev``.

        Returns:
            B dicts with ``boxes`` (K, 9), ``scores`` (K,), ``labels`` (K,); the BEV
            (B, bev_h * bev_w, C), or None without encoder.
        """
        if self.encoder is None or not self.encoder.reads_can_bus:
            can_bus = None  # DETR3D and our planar alignment without the CAN-bus MLP ignore it
        if can_bus is not None:
            if prev_bev is not None and prev_can_bus is None:
                raise ValueError("prev_can_bus (B, 18) is required with can_bus and prev_bev")
            previous = prev_can_bus if prev_bev is not None else None
            can_bus = published_can_bus(can_bus, previous, prev_exists if previous is not None else None)
        outputs, bev = self.predict(img, lidar2img, prev_bev, ego_motion, prev_exists, can_bus)
        return self.decode(outputs), bev
