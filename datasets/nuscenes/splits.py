"""Split names -> scenes and sample tokens, for the devkit's predefined splits and custom ``splits.json``."""

from __future__ import annotations

from pathlib import Path

from nuscenes import NuScenes
from nuscenes.utils.splits import create_splits_scenes

from datasets.files import read_json

#: Which version suffix each predefined split needs (the same rule the devkit's evaluation asserts).
SPLIT_VERSION_SUFFIX: dict[str, str] = {
    "train": "trainval",
    "val": "trainval",
    "train_detect": "trainval",
    "train_track": "trainval",
    "mini_train": "mini",
    "mini_val": "mini",
    "test": "test",
}


def custom_splits_path(nusc: NuScenes) -> Path:
    """Where the devkit (>= 1.2.0) looks for custom splits: ``<root>/<version>/splits.json``."""
    return Path(nusc.dataroot) / nusc.version / "splits.json"


def available_splits(nusc: NuScenes) -> list[str]:
    """Predefined splits that fit the database's version, followed by the custom splits of ``splits.json``."""
    names = [
        name
        for name, suffix in SPLIT_VERSION_SUFFIX.items()
        if nusc.version.endswith(suffix) and name not in ("train_detect", "train_track")
    ]
    path = custom_splits_path(nusc)
    if path.is_file():
        names += list(read_json(path, "nuScenes custom splits"))
    return names


def scene_names_of_split(nusc: NuScenes, split: str) -> list[str]:
    """Scene names of ``split``; ValueError if the split does not fit the version or is unknown."""
    if split in SPLIT_VERSION_SUFFIX:
        suffix = SPLIT_VERSION_SUFFIX[split]
        if not nusc.version.endswith(suffix):
            raise ValueError(f"split {split!r} needs a version ending in {suffix!r}, got {nusc.version!r}")
        return list(create_splits_scenes()[split])
    path = custom_splits_path(nusc)
    if not path.is_file():
        raise ValueError(
            f"unknown split {split!r}: not a predefined split ({sorted(SPLIT_VERSION_SUFFIX)}) "
            f"and no custom splits file {path}"
        )
    custom = read_json(path, "nuScenes custom splits")
    if split not in custom:
        raise ValueError(f"unknown split {split!r}: not predefined and not in {path} (has {sorted(custom)})")
    if not isinstance(custom[split], list):
        raise ValueError(f"split {split!r} in {path} must be a list of scene names")
    return list(custom[split])


def sample_tokens_of_split(nusc: NuScenes, split: str) -> list[str]:
    """Sample tokens of ``split`` ordered by scene (database order) and time; ValueError if there are none."""
    names = set(scene_names_of_split(nusc, split))
    tokens = []
    for scene in nusc.scene:
        if scene["name"] in names:
            token = scene["first_sample_token"]
            while token:
                tokens.append(token)
                token = nusc.get("sample", token)["next"]
    if not tokens:
        raise ValueError(
            f"split {split!r} is empty in {nusc.dataroot}/{nusc.version}: none of its "
            f"{len(names)} scenes is in the database"
        )
    return tokens


def splits_with_samples(nusc: NuScenes) -> list[str]:
    """Those of :func:`available_splits` that have at least one scene in the database."""
    present = {scene["name"] for scene in nusc.scene}
    return [split for split in available_splits(nusc) if present & set(scene_names_of_split(nusc, split))]
