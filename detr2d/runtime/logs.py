"""Run logging: console + file logging on the main process, and the JSON-lines metrics log."""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


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


def plural(count: int, word: str, plural_form: str | None = None) -> str:
    """``"1 detection"``, ``"2 detections"``: ``count`` and ``word`` in the number that fits
    (``plural_form`` where adding "s" is wrong, e.g. ``plural(n, "process", "processes")``)."""
    return f"{count} {word if count == 1 else plural_form or word + 's'}"


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (flushed and fsynced: a crash loses no line)."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one a line; a line that is not one (cut by a killed write) is skipped
    with a warning naming the file and line."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            logger.warning("%s line %d is not a JSON object (a write cut short?): skipped", path, number)
            continue
        records.append(record)
    return records


def _superseded(record: dict[str, Any], resumed: dict[str, Any]) -> bool:
    """Whether an earlier attempt's ``record`` lies at or after the point a ``resumed`` record restarts
    from: an iteration after its ``iter``, or an epoch from its ``from_epoch`` on."""
    if "iter" in record:
        return record["iter"] > resumed["iter"]
    return "epoch" in record and record["epoch"] >= resumed["from_epoch"]


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``log.jsonl`` (:class:`MetricsLog`) with redone work resolved: every
    ``{"resumed": ...}`` record drops the earlier attempts' records from its resume point on (they are
    redone after it), so each iteration and epoch appears once, as its latest attempt logged it.

    Returns:
        The ``{"iter": ...}`` and ``{"epoch": ...}`` records in file order, each with its ``attempt``
        (records of logs written before attempts were counted have none); ``resumed`` records left out.
    """
    records: list[dict[str, Any]] = []
    for record in _read_lines(Path(path)):
        if "resumed" in record:
            records = [r for r in records if not _superseded(r, record["resumed"])]
        else:
            records.append(record)
    return records


class MetricsLog:
    """The run's metrics on the main process: ``log.jsonl`` (one JSON object per line: ``{"iter": ...}``
    every ``train.log_every`` iterations and ``{"epoch": ...}`` after every epoch) and, when the optional
    ``tensorboard`` package is installed, TensorBoard event files in ``out_dir/tensorboard``.

    Every record carries the ``attempt`` that wrote it: 0 for a run's first start, then one more for each
    start that appends to the same log (``--resume``, or a fresh start after a run killed before its first
    checkpoint). Such a start first appends ``{"resumed": {"from_epoch": E, "iter": I, "checkpoint": ...,
    "time": ...}, "attempt": A}``: the run goes on after iteration I (the last of epoch E - 1). The rule
    for a reader: a ``resumed`` record voids the records before it that lie after its point (iterations
    after I, epochs from E on; their work is redone), so each iteration (epoch) counts once, as its latest
    attempt logged it; :func:`read_log` applies it.

    Other processes get a ``MetricsLog`` that writes nothing.
    """

    def __init__(
        self,
        out_dir: str | Path,
        is_main: bool,
        tensorboard: bool = True,
        from_epoch: int = 0,
        from_iter: int = 0,
        checkpoint: str | Path | None = None,
    ) -> None:
        """Open the log of ``out_dir`` for a run starting at epoch ``from_epoch`` = iteration ``from_iter``
        (0 for a fresh run), resumed from ``checkpoint`` (None for a fresh run)."""
        self.path = Path(out_dir) / "log.jsonl" if is_main else None
        self.writer = None
        self.attempt = 0
        if self.path is None:
            return
        earlier = _read_lines(self.path) if self.path.is_file() else []
        if earlier or checkpoint is not None:
            self.attempt = 1 + max((r.get("attempt", 0) for r in earlier), default=0)
            if self.path.is_file() and not self.path.read_bytes().endswith(b"\n"):
                with open(self.path, "a") as f:  # end a line cut by a killed write
                    f.write("\n")
            resumed = {
                "from_epoch": from_epoch,
                "iter": from_iter,
                "checkpoint": None if checkpoint is None else str(checkpoint),
                "time": datetime.now().astimezone().isoformat(timespec="seconds"),
            }
            append_jsonl(self.path, {"resumed": resumed, "attempt": self.attempt})
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the optional extra is absent: JSON lines only
                logger.info("tensorboard not installed: metrics go to log.jsonl only")
            else:
                self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def write(self, record: dict[str, Any], step: int, prefix: str) -> None:
        """Append ``record`` with this run's ``attempt`` to ``log.jsonl`` and its numbers (nested dicts
        flattened with ``/``) to TensorBoard under ``prefix`` at ``step``."""
        if self.path is None:
            return
        append_jsonl(self.path, {**record, "attempt": self.attempt})
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
