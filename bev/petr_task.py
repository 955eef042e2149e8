"""PETR / PETRv2 on nuScenes-format data as a runtime task (``nuscenes_petr``): the model side; data and
evaluation are the nuScenes family's (:mod:`bev.nuscenes`), unchanged.

Batch contract (what the model side reads; other keys stay on the CPU):

- PETR: ``img`` (B, 6, 3, H, W), or the nuScenes data side's (B, T, 6, 3, H, W) with T = 1
  (``data.num_history = 0``); ``lidar2img`` likewise (B, 6, 4, 4) or (B, 1, 6, 4, 4).
- PETRv2: ``img`` (B, 12, 3, H, W): the 6 current cameras, then the same 6 cameras of an earlier frame;
  ``lidar2img`` (B, 12, 4, 4), the last 6 mapping points of the CURRENT lidar frame into the earlier
  images (ego motion folded in); ``timestamps`` (B, 12) seconds per view (lidar time - camera time); or
  the nuScenes data side's (B, 1, 12, ...) with ``data.prev_frame`` (the earlier frame chosen among the
  sample's camera sweeps).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from detr2d.layers.resnet import ResNetBackbone, initialize_backbone, load_pretrained
from detr2d.runtime.checkpoint import key_mismatch_message, load_torch_file
from detr2d.runtime.precision import autocast
from detr2d.runtime.task import Detections

from .loss import DetectionLoss3D
from .petr import PETR
from .petr_builder import build_petr_criterion, build_petr_from_config, petr_model_config
from .petr_official import load_petr_checkpoint
from .sequential import _cpu
from .task import TARGET_KEYS, NuScenesDetectionTask

logger = logging.getLogger(__name__)

#: Where a checkpoint keeps an image backbone: released detectors, Deformable DETR, a bare backbone.
BACKBONE_PREFIXES = ("img_backbone.", "backbone.0.body.", "backbone.body.", "backbone.")


def petr_inputs(batch: Mapping[str, Any], num_views: int, with_time: bool) -> dict[str, torch.Tensor]:
    """The model's tensors of a batch (see the module docstring), checked: ``img`` (B, N, 3, H, W),
    ``lidar2img`` (B, N, 4, 4) and, with ``with_time`` (PETRv2), ``timestamps`` (B, N); N = ``num_views``.

    Raises:
        ValueError: a missing key or a shape off the contract, naming the key, its shape and the expected one.
    """
    required = ("img", "lidar2img", *(("timestamps",) if with_time else ()))
    missing = [key for key in required if key not in batch]
    if missing:
        raise ValueError(f"the PETR batch is missing {missing} (it has {sorted(batch)})")
    img, lidar2img = batch["img"], batch["lidar2img"]
    if img.dim() == 6 and img.shape[1] == 1 and lidar2img.dim() == 5:  # the data side's (B, T=1, N, ...)
        img, lidar2img = img[:, 0], lidar2img[:, 0]
    if img.dim() != 5 or img.shape[1] != num_views or img.shape[2] != 3:
        raise ValueError(
            f"batch key 'img' must have shape (B, {num_views}, 3, H, W)"
            + (" (6 current + 6 earlier cameras)" if with_time else "")
            + f" or (B, 1, {num_views}, 3, H, W)"
            + f", got {tuple(img.shape)}"
        )
    batch_size = img.shape[0]
    if tuple(lidar2img.shape) != (batch_size, num_views, 4, 4):
        raise ValueError(
            f"batch key 'lidar2img' must have shape {(batch_size, num_views, 4, 4)}, "
            f"got {tuple(lidar2img.shape)}"
        )
    inputs = {"img": img, "lidar2img": lidar2img}
    if with_time:
        timestamps = batch["timestamps"]
        if timestamps.dim() == 3 and timestamps.shape[1] == 1:  # the data side's (B, T=1, Ncam)
            timestamps = timestamps[:, 0]
        if tuple(timestamps.shape) != (batch_size, num_views):
            raise ValueError(
                f"batch key 'timestamps' must have shape {(batch_size, num_views)} (seconds per view), "
                f"got {tuple(timestamps.shape)}"
            )
        inputs["timestamps"] = timestamps.float()
    return inputs


def load_backbone_weights(model: PETR, path: str | Path, strict: bool) -> str:
    """Fill ``model.backbone`` from a checkpoint holding the same backbone (its keys under one of
    :data:`BACKBONE_PREFIXES` or bare). ResNets go through :func:`detr2d.layers.resnet.load_pretrained`;
    a VoVNet takes the entries under the prefix by name, ``strict``: every backbone tensor.

    Returns:
        A one-line report. Raises ValueError naming ``path`` on shape mismatches or (``strict``) missing keys.
    """
    if isinstance(model.backbone, ResNetBackbone):
        return str(load_pretrained(model.backbone, path, strict=strict))
    checkpoint = load_torch_file(path)
    state = checkpoint.get("state_dict", checkpoint.get("model", checkpoint))
    prefix = next((p for p in BACKBONE_PREFIXES if any(key.startswith(p) for key in state)), "")
    own = model.backbone.state_dict()
    entries = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
    found = {key: value for key, value in entries.items() if key in own}
    mismatched = [
        f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[key].shape)}"
        for key, value in found.items()
        if value.shape != own[key].shape
    ]
    missing = sorted(set(own) - set(found)) if strict else []
    if mismatched or missing:
        raise ValueError(key_mismatch_message(str(path), missing, [], mismatched))
    model.backbone.load_state_dict(found, strict=False)
    return f"{path}: {len(found)} of {len(own)} backbone tensors loaded (prefix {prefix!r})"


class PETRTask(NuScenesDetectionTask):
    """PETR / PETRv2 detection on nuScenes-format data: the BEV model side with PETR's model, criterion,
    backbone loading, batch and inference (weights, config schema, classes and ranges as the BEV task's).

    Config sections: ``model`` (a variant ``name`` of :data:`bev.petr_builder.VARIANTS` plus
    :class:`bev.PETRModelConfig` fields), the nuScenes family's ``data`` (:mod:`bev.nuscenes`; PETR's
    BGR normalization through ``data.img_norm``) and ``data.grid_mask`` (:class:`bev.augment.GridMask`
    arguments or None), applied in :meth:`split_batch` to every view of a training sample, as the
    release masks all images in its feature extraction; evaluation never masks. Inference is per
    sample (no state carried between frames: PETRv2's earlier frame is part of its batch).
    """

    name = "nuscenes_petr"
    model_config_of = staticmethod(petr_model_config)
    load_released = staticmethod(load_petr_checkpoint)

    def build_model(self, pretrained: bool = False) -> PETR:
        """The model on the CPU; ``pretrained`` (a fresh training run): the backbone from
        ``model.pretrained``, refusing fixed batch-norm statistics (``norm_eval``) without weights."""
        cfg = self.model_config()
        model = build_petr_from_config(cfg)
        if not pretrained:
            return model
        if cfg.norm_eval and cfg.pretrained is None:
            raise ValueError(
                f"model.norm_eval keeps the {cfg.backbone} backbone's batch-norm statistics fixed, but "
                "model.pretrained is None: give backbone weights (a file, URL or torchvision:// name) or "
                "train the batch norm from scratch with model.norm_eval=false"
            )
        if isinstance(model.backbone, ResNetBackbone):
            report = initialize_backbone(model.backbone, cfg.pretrained)
            if report is not None:
                logger.info("%s", report)
        elif cfg.pretrained is not None:
            logger.info("%s", load_backbone_weights(model, cfg.pretrained, strict=True))
        return model

    def build_criterion(self) -> DetectionLoss3D:
        name, settings = self._model_settings()
        return build_petr_criterion(name, **settings)

    def init_from(self, model: nn.Module, path: str | Path) -> str:
        """The first stage: the image backbone from a checkpoint holding the same backbone, e.g. a
        Deformable DETR trained on COCO (``backbone.0.body.*``) for the ResNets, or an FCOS3D / PETR
        release (``img_backbone.*``); layers the model does not build are ignored. The neck and head
        keep their initialization."""
        return load_backbone_weights(model, path, strict=False)

    def model_inputs(self, batch: Mapping[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
        """:func:`petr_inputs` of ``batch`` for this config's model, on ``device``."""
        cfg = self.model_config()
        inputs = petr_inputs(batch, cfg.num_views, with_time=cfg.version == 2)
        return {key: value.to(device) for key, value in inputs.items()}

    def split_batch(self, batch: dict[str, Any], device: torch.device) -> tuple[tuple[Any, ...], Any]:
        """The model's part of a training batch on ``device`` (:meth:`model_inputs`; every view
        GridMasked when ``data.grid_mask`` is set) and the targets ``gt_boxes`` / ``gt_labels``."""
        inputs = self.model_inputs(batch, device)
        if self.grid_mask is not None:
            inputs["img"] = self.grid_mask(inputs["img"])
        targets = {key: [t.to(device) for t in batch[key]] for key in TARGET_KEYS}
        return (inputs,), targets

    @torch.no_grad()
    def infer(
        self, model: nn.Module, loader: DataLoader, device: torch.device, amp: str | None = None
    ) -> Iterator[tuple[dict[str, Any], Detections]]:
        """Per-batch inference: NMS-free top-``max_num`` decoding of the last decoder layer; boxes
        (K, 9) lidar frame with the box centre's z, as every BEV detector of the project outputs."""
        model.eval()
        for batch in loader:
            if batch is None:
                continue
            with autocast(device, amp):
                outputs = model(self.model_inputs(batch, device))
            detections = model.decode(outputs)
            yield batch, [{key: _cpu(value) for key, value in d.items()} for d in detections]
