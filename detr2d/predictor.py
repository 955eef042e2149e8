"""Inference on images: ``Predictor.from_checkpoint(path)(images)`` -> boxes, scores, labels, names."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from configs import upgrade_model_keys
from datasets.collate import pad_images
from datasets.transforms import build_transforms

from .builder import VARIANTS, build_model_from_config, build_postprocess, family, model_config
from .classes import class_names
from .finetune import CLASS_HEAD_KEY
from .runtime.checkpoint import load_checkpoint, load_torch_file, read_state_dict
from .runtime.evaluate import check_finite
from .runtime.precision import AMP_MODES, autocast

ImageInput = np.ndarray | Tensor | Image.Image
Detections = dict[str, Any]


def to_rgb_array(image: ImageInput, index: int = 0) -> np.ndarray:
    """One input image as an (H, W, 3) uint8 RGB array.

    Args:
        image: (H, W, 3) uint8 RGB numpy array, a PIL image (converted to RGB, as the original does
            after ``Image.open``) or a (3, H, W) uint8 tensor.
        index: the image's position in the call, for error messages.

    Raises:
        ValueError / TypeError: wrong dtype, shape or type; the message names the image and the problem.
    """
    where = f"image {index}"
    if isinstance(image, Image.Image):
        array = np.asarray(image.convert("RGB"))
    elif isinstance(image, Tensor):
        if image.dtype != torch.uint8:
            raise ValueError(
                f"{where}: a tensor must be uint8 (3, H, W) with values 0..255, got {image.dtype}; "
                "for a float image in [0, 1] pass (image * 255).round().to(torch.uint8)"
            )
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(
                f"{where}: a tensor must have shape (3, H, W) (RGB, CHW), got {tuple(image.shape)}"
            )
        array = image.detach().cpu().permute(1, 2, 0).numpy()
    elif isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"{where}: an array must be uint8 (H, W, 3) RGB, got dtype {image.dtype}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"{where}: an array must have shape (H, W, 3) (RGB, HWC), got {image.shape}")
        array = image
    else:
        raise TypeError(
            f"{where}: expected a numpy array, a PIL image or a tensor, got {type(image).__name__}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{where}: empty image of shape {array.shape}")
    return np.ascontiguousarray(array)


class Predictor:
    """Detect objects in images with a detr2d model (Deformable DETR or DETR).

    Each image goes through the original's test-time preprocessing (short side ``eval_size``, long side
    at most ``max_size``, Pillow bilinear, ImageNet normalization), images are padded into batches of
    ``batch_size`` and the top ``top_k`` detections per image with score ≥ ``score_threshold`` are
    returned (the post-processing of the model's family: :func:`detr2d.builder.build_postprocess`) with
    boxes in the input image's pixels. With exact padding (the model default) the result of an image
    does not depend on the other images of the call.

    Args:
        model: the detector (moved to ``device``, put in eval mode).
        names: label -> class name (labels without one are named by their number).
        device: where the model runs.
        score_threshold: minimum score of a detection (sigmoid for Deformable DETR, softmax for DETR).
            Default 0.0: every one of the top ``top_k``, what the COCO evaluation scores; filter them
            yourself, e.g. at 0.3 for pictures (the default of ``tools/predict.py``,
            :data:`detr2d.runtime.evaluate.DRAW_SCORE_THRESHOLD`).
        top_k: detections per image before the threshold (the published evaluation keeps 100).
        batch_size: images per forward pass.
        amp: None, ``"bf16"`` or ``"fp16"`` (autocast).
        eval_size: short side after resizing (800 published).
        max_size: long-side cap (1333 published).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Mapping[int, str] | None = None,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.0,
        top_k: int = 100,
        batch_size: int = 4,
        amp: str | None = None,
        eval_size: int = 800,
        max_size: int = 1333,
    ) -> None:
        if amp not in AMP_MODES:
            raise ValueError(f"amp must be one of {AMP_MODES}, got {amp!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if not 0.0 <= score_threshold <= 1.0:
            raise ValueError(f"score_threshold must be in [0, 1], got {score_threshold}")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.names = dict(names or {})
        self.score_threshold = score_threshold
        self.postprocess = build_postprocess(model, top_k)
        self.batch_size = batch_size
        self.amp = amp
        self.transform = build_transforms(False, eval_size=eval_size, max_size=max_size)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        variant: str | None = None,
        device: str | torch.device = "cpu",
        score_threshold: float = 0.0,
        top_k: int = 100,
        batch_size: int = 4,
        amp: str | None = None,
        eval_size: int | None = None,
        max_size: int | None = None,
        **model_overrides: Any,
    ) -> Predictor:
        """A predictor for a checkpoint file.

        Our checkpoints (``{"model": state_dict, "config": {"model": {"name": variant, ...}, ...},
        "class_names": ...}``) describe their model, so ``path`` suffices; ``model_overrides`` (e.g.
        ``backend``) apply on top of their config. An official release file (``{"model",
        "optimizer", "args", ...}``) or a bare state_dict needs ``variant`` (one of
        :data:`detr2d.VARIANTS`) and ``model_overrides`` for anything not published; its
        ``num_classes`` is read from the class head (less DETR's "no object" logit). Names: the
        checkpoint's ``class_names``, else the COCO names for 91 classes, else none. ``eval_size`` /
        ``max_size`` default to the checkpoint config's ``augment`` values, else 800 / 1333. Other
        arguments: see :class:`Predictor`.

        Raises:
            ValueError: a file without a config and no ``variant``, an unknown variant or override,
                or weights that do not fit the model (names the keys).
        """
        obj = load_torch_file(path)
        if not isinstance(obj, Mapping):
            raise ValueError(
                f"{path} holds a {type(obj).__name__}; expected a checkpoint dict or a state_dict"
            )
        state = read_state_dict(obj)
        config = obj.get("config")
        if isinstance(config, Mapping) and isinstance(config.get("model"), Mapping):
            fields = upgrade_model_keys(config["model"])  # checkpoints written before a key was renamed
            name = fields.pop("name", "deformable_detr")
            if variant is not None and variant != name:
                raise ValueError(f"{path} holds a {name!r} model but variant={variant!r} was given")
            augment = config.get("augment", {})
        else:
            if variant is None:
                raise ValueError(
                    f"{path} has no config (an official release file or a bare state_dict): pass "
                    f"variant= (one of {sorted(VARIANTS)}) and any non-published model overrides"
                )
            name, fields, augment = variant, {}, {}
            heads = [value for key, value in state.items() if CLASS_HEAD_KEY.fullmatch(key)]
            if heads:
                fields["num_classes"] = int(heads[0].shape[0]) - family(name).extra_logits
        cfg = model_config(name, **{**fields, **model_overrides})
        model = build_model_from_config(cfg)
        load_checkpoint(model, state, strict=True, source=str(path))
        return cls(
            model,
            class_names(cfg.num_classes, obj.get("class_names")),
            device=device,
            score_threshold=score_threshold,
            top_k=top_k,
            batch_size=batch_size,
            amp=amp,
            eval_size=eval_size if eval_size is not None else augment.get("eval_size", 800),
            max_size=max_size if max_size is not None else augment.get("max_size", 1333),
        )

    def preprocess(self, image: np.ndarray) -> Tensor:
        """(H, W, 3) uint8 RGB -> the model input (3, h, w) float32 (resized, normalized)."""
        empty = {"boxes": np.zeros((0, 4), np.float32), "labels": np.zeros(0, np.int64)}
        tensor, _ = self.transform(image, empty, np.random.default_rng(0))
        return tensor

    @torch.no_grad()
    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> Detections | list[Detections]:
        """Detect objects.

        Args:
            images: one image or a list of images of any sizes: (H, W, 3) uint8 RGB arrays, PIL
                images, or (3, H, W) uint8 tensors.

        Returns:
            For each image (a single dict for a single image): ``boxes`` (k, 4) float32 (x1, y1, x2, y2)
            in the input image's pixels, ``scores`` (k,) float32 descending, ``labels`` (k,) int64 and
            ``names`` (k strings), all on the CPU.
        """
        single = not isinstance(images, (list, tuple))
        batch = [images] if single else list(images)
        if not batch:
            raise ValueError("images is an empty list; pass at least one image")
        arrays = [to_rgb_array(image, i) for i, image in enumerate(batch)]
        results: list[Detections] = []
        for start in range(0, len(arrays), self.batch_size):
            chunk = arrays[start : start + self.batch_size]
            padded, mask = pad_images([self.preprocess(a) for a in chunk])
            results += self.detect(padded, mask, torch.tensor([a.shape[:2] for a in chunk]))
        return results[0] if single else results

    @torch.no_grad()
    def detect(self, images: Tensor, mask: Tensor, orig_sizes: Tensor) -> list[Detections]:
        """Detections of a preprocessed, padded batch (what :meth:`__call__` and the COCO task's
        evaluation and prediction run).

        Args:
            images: (B, 3, H, W) normalized; mask: (B, H, W) True on padding; orig_sizes: (B, 2) the
                (height, width) the boxes are scaled to.

        Returns:
            Per image, as :meth:`__call__`.

        Raises:
            FloatingPointError: a score or box is not finite (corrupt weights), with the count.
        """
        with autocast(self.device, self.amp):
            outputs = self.model(images.to(self.device), mask.to(self.device))
        detections = self.postprocess(outputs, orig_sizes.to(self.device))
        check_finite(detections, "the detector's outputs")  # before the threshold, which NaN would pass
        results: list[Detections] = []
        for det in detections:
            keep = det["scores"] >= self.score_threshold
            labels = det["labels"][keep].cpu()
            results.append(
                {
                    "boxes": det["boxes"][keep].float().cpu(),
                    "scores": det["scores"][keep].float().cpu(),
                    "labels": labels,
                    "names": [self.names.get(label, str(label)) for label in labels.tolist()],
                }
            )
        return results
