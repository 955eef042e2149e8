"""CBGS: class-balanced resampling of the training samples (Zhu et al., "Class-balanced Grouping and
Sampling for Point Cloud 3D Object Detection", 2019), as mmdetection3d's ``CBGSDataset`` (v0.17 / 1.x)
does it for PETRv2's ``..._trainval_cbgs`` recipe.

The rule (:func:`cbgs_indices`): each class of ``classes`` collects the indices of the samples whose
ground truth holds it (a sample once per class it holds; names outside ``classes`` ignored). With
``n_c`` samples of class c, ``N = sum_c n_c`` and ``K = len(classes)``, class c's ratio is
``(1 / K) / (n_c / N)`` and it draws ``int(n_c * ratio)`` (about ``N / K``) of its indices uniformly with
replacement; the draws are concatenated in class order. So every class gets about ``1 / K`` of the
draws, the resampled length is about ``N`` (not the number of samples), and a sample with no box of the
classes is never drawn. The draw happens once, when the dataset is built.

The original draws with numpy's global RNG (``np.random.choice``), so its list depends on whatever
seeded that state; here the draw takes an explicit generator (the data side seeds it with
``train.seed``), so every process and every resumed run builds the same list. A class that no sample
holds draws nothing here (the original divides by zero).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from datasets.nuscenes.dataset import NuScenesMultiViewDataset


def ground_truth_classes(samples: Sequence[dict[str, Any]], use_valid_flag: bool) -> list[set[str]]:
    """The class names of each sample's ground truth (infos ``gt.names``), with ``use_valid_flag`` only
    those of boxes with a lidar or radar point (``gt.valid_flag``), as mmdet3d's ``get_cat_ids``."""
    classes = []
    for sample in samples:
        gt = sample["gt"]
        valid = gt["valid_flag"] if use_valid_flag else [True] * len(gt["names"])
        classes.append({name for name, keep in zip(gt["names"], valid, strict=True) if keep})
    return classes


def cbgs_indices(
    sample_classes: Sequence[set[str]], classes: Sequence[str], rng: np.random.Generator
) -> list[int]:
    """The CBGS sample indices (the rule in the module docstring).

    Args:
        sample_classes: per sample, the class names its ground truth holds (unknown names are ignored).
        classes: the dataset's classes, in label order (the order of the draws).
        rng: the generator of the draws.

    Returns:
        Indices into ``sample_classes``, class by class, each class's about ``N / K`` draws.

    Raises:
        ValueError: no sample holds any of ``classes`` (there is nothing to balance).
    """
    holders: dict[str, list[int]] = {name: [] for name in classes}
    for index, names in enumerate(sample_classes):
        for name in names:
            if name in holders:
                holders[name].append(index)
    total = sum(len(indices) for indices in holders.values())
    if total == 0:
        raise ValueError(
            f"CBGS: none of the {len(sample_classes)} samples holds a box of the classes {list(classes)}"
        )
    share = 1.0 / len(classes)
    drawn: list[int] = []
    for indices in holders.values():
        if indices:
            ratio = share / (len(indices) / total)
            drawn.extend(rng.choice(indices, int(len(indices) * ratio), replace=True).tolist())
    return drawn


class ClassBalancedDataset(Dataset):
    """A :class:`NuScenesMultiViewDataset` seen through its CBGS index list (:func:`cbgs_indices` of its
    samples' valid ground truth, drawn once from ``np.random.default_rng(seed)``).

    Item ``i`` is sample ``indices[i]`` with its history frames and augmentations; each resampled copy
    draws its own augmentation stream (``stream=i``), as the original's copies draw afresh. ``set_epoch``
    and the bad-image count are the wrapped dataset's.
    """

    def __init__(self, dataset: NuScenesMultiViewDataset, seed: int) -> None:
        self.dataset = dataset
        sample_classes = ground_truth_classes(dataset.samples, dataset.use_valid_flag)
        self.indices = cbgs_indices(sample_classes, dataset.class_names, np.random.default_rng(seed))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.dataset.item(self.indices[index], stream=index)

    def set_epoch(self, epoch: int) -> None:
        """Select the wrapped dataset's random streams of ``epoch``."""
        self.dataset.set_epoch(epoch)

    @property
    def num_skipped_images(self) -> int:
        """The wrapped dataset's count of skipped bad images (``on_bad_image="skip"``)."""
        return self.dataset.num_skipped_images
