"""Run logging: console + file logging on the main process, and the JSON-lines metrics log."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any


def setup_logging(log_file: str | Path | None, is_main: bool) -> None:
    """Log INFO to stderr (and to ``log_file``, appending) on the main process; WARNING elsewhere."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_deformbev", False):
            root.removeHandler(handler)
            handler.close()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None and is_main:
        handlers.append(logging.FileHandler(log_file))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._deformbev = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(logging.INFO if is_main else logging.WARNING)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (flushed and fsynced: a crash loses no line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


class MetricsLog:
    """The run's metrics on the main process: ``log.jsonl`` (one JSON object per line: ``{"iter": ...}``
    every ``train.log_every`` iterations and ``{"epoch": ...}`` after every epoch) and, when the optional
    ``tensorboard`` package is installed, TensorBoard event files in ``out_dir/tensorboard``.

    Other processes get a ``MetricsLog`` that writes nothing.
    """

    def __init__(self, out_dir: str | Path, is_main: bool, tensorboard: bool = True) -> None:
        self.path = Path(out_dir) / "log.jsonl" if is_main else None
        self.writer = None
        if is_main and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the optional extra is absent: JSON lines only
                logging.getLogger(__name__).info("tensorboard not installed: metrics go to log.jsonl only")
            else:
                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, record: dict[str, Any], step: int, prefix: str) -> None:
        """Append ``record`` to ``log.jsonl`` and its numbers (nested dicts flattened with ``/``) to
        TensorBoard under ``prefix`` at ``step``."""
        if self.path is None:
            return
        append_jsonl(self.path, record)
        if self.writer is not None:
            for key, value in _flatten(record).items():
                self.writer.add_scalar(f"{prefix}/{key}", value, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            flat[f"{prefix}{key}"] = float(value)
    return flat
