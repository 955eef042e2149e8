"""Atomic files: a file is either its old content or the complete new one, never a torn write."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

logger = logging.getLogger(__name__)

_TEMPORARY_NAME = re.compile(r"\.(?P<name>.+)\.tmp\.(?P<pid>[0-9]+)")


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write a file so that ``path`` holds either its old content or the complete new one.

    ``write`` fills a temporary file ``.NAME.tmp.PID`` in the same folder, which is flushed, fsynced and
    renamed over ``path`` (``os.replace`` is atomic); the folder is fsynced so the rename survives a
    power cut. On an exception the temporary file is removed; one left by a killed process is removed
    by :func:`remove_stale_temporaries` when the next run starts.

    Raises:
        OSError: a write, flush or rename failed in the operating system (disk full, no permission):
            the message names ``path`` and the OS reason (e.g. "No space left on device"), the errno is
            kept, and the original error is chained.
    """
    path = Path(path)
    tmp = temporary_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        cause = _os_error(error) if isinstance(error, Exception) else None  # not KeyboardInterrupt
        if cause is None:
            raise
        reason = cause.strerror or str(cause)
        raise OSError(
            cause.errno, f"cannot write {path} (through {tmp.name}): {reason}; {path} is left unchanged"
        ) from error
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _os_error(error: BaseException) -> OSError | None:
    """The operating-system error behind ``error``: itself or one it was raised from or while handling
    (``torch.save`` turns a failed write, e.g. ENOSPC, into "unexpected pos ..." raised while handling it)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj)`` to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = None) -> None:
    """``obj`` as JSON to ``path`` through :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=indent).encode()))


def temporary_path(path: str | os.PathLike) -> Path:
    """Where ``path`` is written before it is renamed into place: ``.NAME.tmp.PID`` in the same folder."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp.{os.getpid()}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (True when that cannot be told, so nothing is removed)."""
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # exists under another user / not a pid at all
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries (:func:`temporary_path`) in ``folder`` whose writer process no longer runs.

    A write killed before its rename (``kill -9``, power cut) leaves ``.NAME.tmp.PID`` behind. Those of a
    live process (on this machine) are kept: it may still be writing. Each removal is logged.

    Returns:
        The removed files (none if ``folder`` does not exist).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        match = _TEMPORARY_NAME.fullmatch(path.name)
        if match and path.is_file() and not process_alive(int(match["pid"])):
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            logger.warning(
                "removed %s (%d bytes): the temporary of %s left by process %s, which no longer runs",
                path,
                size,
                folder / match["name"],
                match["pid"],
            )
            removed.append(path)
    return removed
