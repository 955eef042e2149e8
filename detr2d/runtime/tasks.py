"""The task table shared by ``tools/train.py``, ``tools/test.py`` and ``tools/predict.py``.

A config names its task (``task = "coco_detection"``); the table maps it to ``"module:Class"`` and the
module is imported only when used, so the runtime imports no detector. A config may also name a task
class directly (``task = "mypackage.task:MyTask"``). Checkpoints store the task name, so names never change.
"""

from __future__ import annotations

import importlib
from typing import Any

from .task import Task

TASKS = {
    "coco_detection": "detr2d.task:CocoDetectionTask",
    "nuscenes_detection": "bev.task:NuScenesDetectionTask",
    "nuscenes_petr": "bev.petr_task:PETRTask",
}

_DATASETS_HINT = (
    "'import datasets' found {found}, not deformbev's datasets package (another package named "
    "'datasets', e.g. Hugging Face's, comes first on sys.path). Run the tools from the repository "
    "(python tools/train.py ...), or put the repository first: PYTHONPATH=/path/to/deformbev"
)


def require_project_datasets() -> None:
    """Raise ``ImportError`` with what to do when ``import datasets`` finds another package."""
    import datasets

    if not getattr(datasets, "IS_DEFORMBEV", False):
        raise ImportError(_DATASETS_HINT.format(found=getattr(datasets, "__file__", datasets)))


def task_class(name: str) -> type[Task]:
    """The :class:`Task` subclass of a table name or a ``"module:Class"`` path.

    Raises:
        ValueError: an unknown name, or a path that is not a Task subclass.
    """
    target = TASKS.get(name, name)
    if ":" not in target:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)} (or 'module:Class')")
    require_project_datasets()
    module, _, attribute = target.partition(":")
    cls = getattr(importlib.import_module(module), attribute, None)
    if not (isinstance(cls, type) and issubclass(cls, Task)):
        raise ValueError(f"task {name!r}: {target} is not a detr2d.runtime.task.Task subclass")
    return cls


def build_task(config: dict[str, Any]) -> Task:
    """The task of ``config["task"]`` over ``config``."""
    if "task" not in config:
        raise KeyError("the config has no 'task' key (e.g. task = 'coco_detection')")
    return task_class(config["task"])(config)
