"""Opens a nuScenes database with the devkit after checking the root, version and tables by name; a table the
devkit cannot read (empty, binary, truncated, not a list of records) is named in the error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from nuscenes import NuScenes
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

from datasets.files import read_json
from datasets.nuscenes.constants import LIDAR_NAME

#: The 13 tables ``NuScenes()`` reads from ``<root>/<version>/``.
REQUIRED_TABLES: tuple[str, ...] = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)


def check_nuscenes_root(root: str | Path, version: str) -> Path:
    """Raise FileNotFoundError naming the problem if ``root/version`` is not a complete nuScenes database;
    return the table directory."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"nuScenes root {root} does not exist or is not a directory")
    table_dir = root / version
    if not table_dir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "sample.json").is_file())
        raise FileNotFoundError(
            f"nuScenes version {version!r} not found: no directory {table_dir}; "
            f"versions found in {root}: {found}"
        )
    missing = [name for name in REQUIRED_TABLES if not (table_dir / f"{name}.json").is_file()]
    if missing:
        raise FileNotFoundError(
            f"nuScenes database {table_dir} is missing table(s): "
            + ", ".join(f"{name}.json" for name in missing)
        )
    return table_dir


def _table_problem(table_dir: Path) -> str | None:
    """Why one of the tables cannot be read as a JSON list of records (naming its file), or None."""
    for name in REQUIRED_TABLES:
        path = table_dir / f"{name}.json"
        try:
            records = read_json(path, f"nuScenes {name} table")
        except ValueError as error:
            return str(error)
        if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
            return f"nuScenes {name} table {path} is not a JSON list of records (objects)"
    return None


def open_nuscenes(root: str | Path, version: str, verbose: bool = False) -> NuScenes:
    """Check ``root``/``version`` (see :func:`check_nuscenes_root`) and load it with the devkit.

    Raises:
        FileNotFoundError: see :func:`check_nuscenes_root`.
        ValueError: the devkit failed on a table; the message names the table file that is empty, binary,
            truncated or not a list of records (or the table folder when every table parses).
    """
    table_dir = check_nuscenes_root(root, version)
    try:
        return NuScenes(version=version, dataroot=str(root), verbose=verbose)
    except (
        ValueError,
        TypeError,
        KeyError,
        IndexError,
    ) as error:  # JSON/Unicode decode errors are ValueErrors
        problem = _table_problem(table_dir) or (
            f"nuscenes-devkit could not load the database {table_dir}: {type(error).__name__}: {error}"
        )
        raise ValueError(problem) from error


def pose_matrix(record: dict) -> np.ndarray:
    """(4, 4) transform of a ``calibrated_sensor`` (sensor -> ego) or ``ego_pose`` (ego -> global) record."""
    return transform_matrix(np.array(record["translation"]), Quaternion(record["rotation"]))


def sample_lidar2global(nusc: NuScenes, sample_token: str) -> np.ndarray:
    """(4, 4) transform from the LIDAR_TOP keyframe frame of a sample to the global frame."""
    data = nusc.get("sample_data", nusc.get("sample", sample_token)["data"][LIDAR_NAME])
    ego2global = pose_matrix(nusc.get("ego_pose", data["ego_pose_token"]))
    return ego2global @ pose_matrix(nusc.get("calibrated_sensor", data["calibrated_sensor_token"]))
