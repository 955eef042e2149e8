"""Multi-camera nuScenes dataset over an infos file, with history frames for temporal BEV models.

One item (T = 1 + ``num_history`` frames, oldest first, the current frame last; N = 6 cameras, or 12
with ``prev_frame``: PETRv2's views, below)::

    img               float32 (T, N, 3, H, W)  RGB (BGR with ``bgr``), (x / 255 - mean) / std
    lidar2img         float32 (T, N, 4, 4)     lidar frame of *that* frame -> resized image pixels
    timestamps        float32 (T, N)           seconds: that frame's lidar time - the image's time (the
                                               original's ``img_timestamp``; about -0.05..0 for a keyframe)
    can_bus           float64 (T, 18)          absolute CAN bus vectors of the frames, below
    ego_motion        float32 (T, 4, 4)        lidar frame of frame t-1 -> lidar frame of frame t (identity
                                               at t = 0 or where frame t-1 is padding); aligns prev_bev
    history_valid     bool    (T,)             False for padding frames (before the scene start; they
                                               repeat the scene's first sample)
    lidar2global      float64 (4, 4)           current frame
    img_shape         int64   (2,)             (H, W)
    gt_boxes          float32 (K, 9)           [x, y, z, w, l, h, yaw, vx, vy] current lidar frame (boxes.py)
    gt_labels         int64   (K,)             index into ``class_names``
    sample_token, scene_token  str

:func:`collate_nuscenes` stacks a batch: ``img`` (B, T, N, 3, H, W), ``lidar2img`` (B, T, N, 4, 4),
``can_bus`` (B, T, 18), ``ego_motion`` (B, T, 4, 4), ``history_valid`` (B, T),
``lidar2global`` (B, 4, 4), ``img_shape`` (B, 2), ``timestamps`` (B, T, N); ``gt_boxes``, ``gt_labels``,
``sample_token``, ``scene_token`` stay lists of length B.

``can_bus[t]``, frame t's absolute vector (BEVFormer's ``get_data_info`` layout; see can_bus.py)::

    [0:3]   ego position, global frame (m)      [3:7]   ego rotation quaternion wxyz, global frame
    [7:10]  accel   [10:13] rotation_rate   [13:16] vel   (CAN bus pose message; 0 without CAN data)
    [16]    ego yaw ("patch angle") in radians  [17]    the same in degrees, in [0, 360)

BEVFormer's ``union2one`` (``[0:3]`` and ``[17]`` become the change since the previous frame of the
queue, 0 at a queue or scene start; not wrapped) is the model's business
(:func:`bev.temporal_alignment.published_can_bus`): frame t continues frame t-1 (BEVFormer's
``prev_bev_exists``) exactly when ``history_valid[t - 1]``. ``can_bus`` stays float64 (the infos'
precision) so that the deltas of global positions (~600 m) are exact, as the original's numpy ones.

Training options (BEVFormer's recipe): ``random_history`` picks the ``num_history`` history frames at
random among the previous ``num_history + 1`` frames of the scene (oldest first, as the original's
queue of ``queue_length = num_history + 1``; positions before the scene start are padding), and
``photometric`` distorts every camera image of every frame independently
(:class:`datasets.nuscenes.augment.PhotoMetricDistortion`, before the resize, as the original distorts
before ``RandomScaleImageMultiViewImage``). Both draw from a generator seeded with
``(seed, epoch, index)`` (call :meth:`NuScenesMultiViewDataset.set_epoch`), so a resumed run sees the
same samples.

PETRv2 (``prev_frame``, :class:`datasets.nuscenes.prev_frame.PrevFrame`; T = 1): the N = 12 views are the
6 current cameras, then the same 6 cameras of an earlier frame picked among the sample's camera sweeps
(infos format 2), whose ``lidar2img`` maps the CURRENT lidar frame into the earlier images (ego motion
folded in, float64: :func:`datasets.nuscenes.infos.sweep_lidar2img`) and whose ``timestamps`` are current
lidar time - earlier image time (about +1.25 s at test time). At a scene's first sample the current images
and matrices are reused with ``timestamps`` + ``pad_offset_s``. The model takes ``batch[key][:, -1]``
(B, 12, ...) of ``img``, ``lidar2img`` and ``timestamps``.

PETR's geometric augmentations: ``image_crop`` (:class:`datasets.nuscenes.augment.ResizeCropFlip`, one
draw per sample for all N images; without a ``resize_range`` the test-time resize + bottom crop; replaces
``image_size``) and ``scene_aug`` (:class:`datasets.nuscenes.augment.GlobalRotScale`: the boxes and every
lidar2img, after the ``pc_range`` filter as in the original).

Every camera file named by the infos must exist when the dataset is built (one error lists how many are
missing and names one); a truncated or undecodable camera image raises an error naming the file, the
camera and the sample token, or is skipped and counted (``on_bad_image="skip"``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.files import BadImagePolicy, OnBadImage, missing_files, read_rgb
from datasets.nuscenes.augment import (
    GlobalRotScale,
    ImageCrop,
    PhotoMetricDistortion,
    ResizeCropFlip,
    resize_camera,
    rotate_scale_scene,
)
from datasets.nuscenes.constants import CLASS_NAMES, PC_RANGE
from datasets.nuscenes.infos import check_camera_matrices, check_sweeps, load_infos, sweep_lidar2img
from datasets.nuscenes.prev_frame import PrevFrame
from datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

_STACKED_KEYS = (
    "img",
    "lidar2img",
    "timestamps",
    "can_bus",
    "ego_motion",
    "history_valid",
    "lidar2global",
    "img_shape",
)
_LISTED_KEYS = ("gt_boxes", "gt_labels", "sample_token", "scene_token")


class NuScenesMultiViewDataset(Dataset):
    """Six resized, normalized camera images per frame plus ground truth (shapes in the module docstring).

    Args:
        infos: path of an infos JSON (``tools/create_data.py nuscenes``) or the loaded dict.
        data_root: directory the infos' relative paths start from (default: the infos' ``dataroot``).
        image_size: (width, height) every image is resized to; None keeps the stored size.
        num_history: previous frames of the same scene supplied before the current one.
        class_names: classes kept, in label order.
        pc_range: [x_min, y_min, z_min, x_max, y_max, z_max]; boxes whose centre is outside are
            dropped.
        use_valid_flag: drop boxes without any lidar or radar point (as BEVFormer trains).
        on_bad_image: ``"raise"`` (default): a truncated or undecodable camera image raises ``ValueError``
            naming the file, camera and sample. ``"skip"``: the next sample whose images are all good
            is returned instead, a warning names the file and :attr:`num_skipped_images` counts it.
        random_history: pick the history frames at random among the previous ``num_history + 1``
            (BEVFormer's training queue); False: the ``num_history`` frames just before.
        photometric: distortion applied to every camera image (training), or None.
        seed: seed of the random history and distortion (with the epoch and the sample index).
        bgr: give the network BGR images (caffe-style weights; mmcv's ``to_rgb=False``); ``mean`` and
            ``std`` are in the network's channel order.
        prev_frame: PETRv2's earlier frame (12 views; needs ``num_history`` 0 and infos with sweeps), or
            None.
        image_crop: PETR's resize / crop / flip of every image (``image_size`` must then be None), or None.
        scene_aug: PETR's global rotation and scaling of the scene (training), or None.
    """

    def __init__(
        self,
        infos: str | Path | dict[str, Any],
        data_root: str | Path | None = None,
        image_size: tuple[int, int] | None = (800, 450),
        num_history: int = 0,
        class_names: Sequence[str] = CLASS_NAMES,
        pc_range: Sequence[float] = PC_RANGE,
        use_valid_flag: bool = True,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        on_bad_image: OnBadImage = "raise",
        random_history: bool = False,
        photometric: PhotoMetricDistortion | None = None,
        seed: int = 0,
        bgr: bool = False,
        prev_frame: PrevFrame | None = None,
        image_crop: ResizeCropFlip | None = None,
        scene_aug: GlobalRotScale | None = None,
    ) -> None:
        self.infos = infos if isinstance(infos, dict) else load_infos(infos)
        source = (
            f"infos of split {self.infos.get('split')!r}"
            if isinstance(infos, dict)
            else f"infos file {infos}"
        )
        if isinstance(infos, dict):
            check_camera_matrices(self.infos, source)  # load_infos checked a file's
        self.bad_images = BadImagePolicy(on_bad_image, source)
        self.samples = self.infos["samples"]
        if not self.samples:
            raise ValueError(f"infos of split {self.infos.get('split')!r} hold no samples")
        if num_history < 0:
            raise ValueError(f"num_history must be >= 0, got {num_history}")
        if prev_frame is not None:
            if num_history:
                raise ValueError(f"prev_frame (PETRv2) takes no history frame; num_history is {num_history}")
            check_sweeps(self.infos, source)
        if image_crop is not None and image_size is not None:
            raise ValueError(
                f"image_crop (final size {image_crop.final_size}) replaces image_size {tuple(image_size)}: "
                "pass image_size=None"
            )
        if len(pc_range) != 6:
            raise ValueError(f"pc_range must have 6 values, got {len(pc_range)}")
        self.data_root = Path(data_root if data_root is not None else self.infos["dataroot"])
        self.image_size = image_size
        self.num_history = num_history
        self.class_names = list(class_names)
        self.pc_range = np.asarray(pc_range, dtype=np.float64)
        self.use_valid_flag = use_valid_flag
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0
        self.camera_names = list(self.infos["camera_names"])
        self.random_history = random_history
        self.photometric = photometric
        self.seed = seed
        self.epoch = 0
        self.bgr = bgr
        self.prev_frame = prev_frame
        self.image_crop = image_crop
        self.scene_aug = scene_aug
        self._scene_position = self._index_scenes()
        self._check_camera_files(source)

    @property
    def num_skipped_images(self) -> int:
        """Samples skipped for a bad image so far (``on_bad_image="skip"``), DataLoader workers included."""
        return self.bad_images.num_skipped

    def _check_camera_files(self, source: str) -> None:
        """Every keyframe image and, with ``prev_frame``, every test-time earlier image must exist (a
        training sweep that is missing raises when it is drawn, naming the file)."""
        entries = {
            self.data_root / sample["cameras"][channel]["path"]: (channel, sample["token"])
            for sample in self.samples
            for channel in self.camera_names
        }
        if self.prev_frame is not None:
            test_choice = PrevFrame(self.prev_frame.test_offset_s, None, self.prev_frame.pad_offset_s)
            for sample in self.samples:
                chosen = test_choice.choose(self.sweep_offsets(sample), np.random.default_rng(0))
                if chosen is not None:
                    entries.update(
                        {
                            self.data_root / camera["path"]: (f"{channel} sweep", sample["token"])
                            for channel, camera in sample["sweeps"][chosen].items()
                        }
                    )
        missing = missing_files(entries)
        if missing:
            channel, token = entries[missing[0]]
            raise FileNotFoundError(
                f"{len(missing)} camera image file(s) named by the {source} not found under data_root "
                f"{self.data_root}, e.g. {missing[0]} ({channel} of sample {token})"
            )

    def _index_scenes(self) -> list[tuple[list[int], int]]:
        """For each sample index: (sample indices of its scene in time order, its position in that list)."""
        scenes: dict[str, list[int]] = {}
        for index, sample in enumerate(self.samples):
            scenes.setdefault(sample["scene_token"], []).append(index)
        positions: list[tuple[list[int], int]] = [([], 0)] * len(self.samples)
        for indices in scenes.values():
            indices.sort(key=lambda i: self.samples[i]["timestamp"])
            for position, index in enumerate(indices):
                positions[index] = (indices, position)
        return positions

    def set_epoch(self, epoch: int) -> None:
        """Select the random history and distortion stream of ``epoch``."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def history_offsets(self, rng: np.random.Generator) -> list[int]:
        """How many frames before the current one each history frame is, oldest first: the
        ``num_history`` previous frames, or (``random_history``) all but one random frame of the previous
        ``num_history + 1`` (BEVFormer drops one of its shuffled queue indices)."""
        if not self.random_history:
            return list(range(self.num_history, 0, -1))
        dropped = 1 + int(rng.integers(self.num_history + 1))
        return [offset for offset in range(self.num_history + 1, 0, -1) if offset != dropped]

    @staticmethod
    def sweep_offsets(sample: dict) -> np.ndarray:
        """(K,) seconds each of the sample's earlier frames (``sweeps``) is back: the mean over the
        cameras of (current image time - earlier image time)."""
        current = np.array([camera["timestamp"] for camera in sample["cameras"].values()], np.float64)
        return (
            np.array(
                [
                    current.mean() - np.mean([camera["timestamp"] for camera in sweep.values()])
                    for sweep in sample["sweeps"]
                ],
                dtype=np.float64,
            ).reshape(-1)
            * 1e-6
        )

    def _views(self, sample: dict, rng: np.random.Generator) -> list[tuple[dict, str, np.ndarray, float]]:
        """(camera entry, description, lidar2img float64, timestamp s) of each view of a frame: the 6
        cameras and, with ``prev_frame``, the 6 cameras of the earlier frame."""
        lidar_time = sample["lidar"]["timestamp"]
        views = [
            (
                sample["cameras"][channel],
                f"{channel} of sample {sample['token']}",
                np.asarray(sample["cameras"][channel]["lidar2img"], dtype=np.float64),
                (lidar_time - sample["cameras"][channel]["timestamp"]) * 1e-6,
            )
            for channel in self.camera_names
        ]
        if self.prev_frame is None:
            return views
        chosen = self.prev_frame.choose(self.sweep_offsets(sample), rng)
        if chosen is None:  # a scene's first sample: the current images again
            return views + [(c, d, m, t + self.prev_frame.pad_offset_s) for c, d, m, t in views]
        sweep = sample["sweeps"][chosen]
        lidar2global = np.asarray(sample["lidar2global"], dtype=np.float64)
        return views + [
            (
                sweep[channel],
                f"{channel} sweep {chosen} of sample {sample['token']}",
                sweep_lidar2img(lidar2global, sweep[channel]),
                (lidar_time - sweep[channel]["timestamp"]) * 1e-6,
            )
            for channel in self.camera_names
        ]

    def _load_camera(
        self,
        camera: dict,
        what: str,
        lidar2img: np.ndarray,
        rng: np.random.Generator,
        crop: ImageCrop | None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Normalized CHW float32 image and the resized lidar2img (4, 4) of one camera image (distorted
        first, with ``photometric``; then resized to ``image_size`` or transformed by ``crop``)."""
        path = self.data_root / camera["path"]
        image = read_rgb(path, what)
        if image.shape[:2] != (camera["height"], camera["width"]):
            raise ValueError(
                f"image {path} is {image.shape[1]}x{image.shape[0]} but the database says "
                f"{camera['width']}x{camera['height']}; its intrinsic would be wrong"
            )
        image = image.astype(np.float32)
        if self.photometric is not None:
            image = self.photometric(image, rng)
        if crop is not None:
            image, lidar2img = crop.apply(image), crop.matrix() @ lidar2img
        elif self.image_size is not None and tuple(self.image_size) != (camera["width"], camera["height"]):
            image, lidar2img = resize_camera(image, lidar2img, tuple(self.image_size))
        if self.bgr:
            image = image[..., ::-1]
        image = (image - self.mean) / self.std
        return image.transpose(2, 0, 1), lidar2img

    def _ground_truth(self, sample: dict) -> tuple[np.ndarray, np.ndarray]:
        gt = sample["gt"]
        boxes = np.asarray(gt["boxes"], dtype=np.float64).reshape(-1, 9)
        known = np.array([name in self.class_names for name in gt["names"]], dtype=bool)
        low, high = self.pc_range[:3], self.pc_range[3:]
        keep = known & np.all((boxes[:, :3] >= low) & (boxes[:, :3] < high), axis=1)
        if self.use_valid_flag:
            keep &= np.asarray(gt["valid_flag"], dtype=bool).reshape(-1)
        labels = np.array(
            [self.class_names.index(name) for name, k in zip(gt["names"], keep, strict=True) if k],
            dtype=np.int64,
        )
        return boxes[keep], labels

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.item(index)

    def item(self, index: int, stream: int | None = None) -> dict[str, Any]:
        """Sample ``index`` (under ``on_bad_image="skip"`` the next good one). Its random draws come from
        ``(seed, epoch, index)``, or with a ``stream`` from ``(seed, epoch, index, stream)``: a resampled
        copy of the sample (:class:`datasets.nuscenes.cbgs.ClassBalancedDataset`) draws its own."""
        return self.bad_images.get(index, len(self), lambda i: self._item(i, stream))

    def _item(self, index: int, stream: int | None) -> dict[str, Any]:
        key = (self.seed, self.epoch, index) if stream is None else (self.seed, self.epoch, index, stream)
        rng = np.random.default_rng(key)
        scene_indices, position = self._scene_position[index]
        offsets = [*self.history_offsets(rng), 0]
        history_valid = np.array([position - offset >= 0 for offset in offsets])
        frames = [self.samples[scene_indices[max(position - offset, 0)]] for offset in offsets]
        images, lidar2img, timestamps = [], [], []
        for frame in frames:
            views = self._views(frame, rng)
            crop = None
            if self.image_crop is not None:
                first = views[0][0]
                crop = self.image_crop.draw((first["width"], first["height"]), rng)
            loaded = [self._load_camera(camera, what, matrix, rng, crop) for camera, what, matrix, _ in views]
            images.append(np.stack([image for image, _ in loaded]))
            lidar2img.append(np.stack([matrix for _, matrix in loaded]))
            timestamps.append([timestamp for *_, timestamp in views])
        lidar2global = np.array([frame["lidar2global"] for frame in frames], dtype=np.float64)
        ego_motion = np.tile(np.eye(4), (len(frames), 1, 1))
        for t in range(1, len(frames)):
            if history_valid[t - 1]:
                ego_motion[t] = np.linalg.solve(lidar2global[t], lidar2global[t - 1])
        sample = frames[-1]
        boxes, labels = self._ground_truth(sample)
        lidar2img = np.stack(lidar2img)
        if self.scene_aug is not None:
            boxes, lidar2img = rotate_scale_scene(boxes, lidar2img, *self.scene_aug.draw(rng))
        return {
            "img": torch.from_numpy(np.stack(images)),
            "lidar2img": torch.from_numpy(lidar2img.astype(np.float32)),
            "timestamps": torch.tensor(timestamps, dtype=torch.float32),
            "can_bus": torch.tensor([frame["can_bus"] for frame in frames], dtype=torch.float64),
            "ego_motion": torch.from_numpy(ego_motion.astype(np.float32)),
            "history_valid": torch.from_numpy(history_valid),
            "lidar2global": torch.from_numpy(lidar2global[-1]),
            "img_shape": torch.tensor(images[-1].shape[-2:], dtype=torch.int64),
            "gt_boxes": torch.from_numpy(boxes.astype(np.float32)),
            "gt_labels": torch.from_numpy(labels),
            "sample_token": sample["token"],
            "scene_token": sample["scene_token"],
        }


def collate_nuscenes(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of dataset items into a batch (shapes in the module docstring)."""
    if not batch:
        raise ValueError("collate_nuscenes got an empty batch")
    shapes = {tuple(item["img"].shape) for item in batch}
    if len(shapes) != 1:
        raise ValueError(f"collate_nuscenes needs equal image tensors, got shapes {sorted(shapes)}")
    collated: dict[str, Any] = {key: torch.stack([item[key] for item in batch]) for key in _STACKED_KEYS}
    collated.update({key: [item[key] for item in batch] for key in _LISTED_KEYS})
    return collated
