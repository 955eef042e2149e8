"""The run folder's lock: one training run writes into an output folder at a time.

Two runs started with the same ``--out`` would interleave their ``log.jsonl`` lines and overwrite each
other's ``config.json`` and checkpoints. The first run takes ``OUT/.lock``: an exclusive ``flock`` on an
open file, which the kernel drops when its process ends in any way, ``kill -9`` included; the file
names the holder (pid, host, start time) for the message another run gets. A lock file that no
process holds any more (its run was killed) is taken over with a warning. POSIX only (``fcntl``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from .distributed import broadcast_object
from .io import process_alive

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"


class RunFolderBusy(RuntimeError):
    """Another process holds the lock of the output folder."""


def _holder(fd: int) -> tuple[str, bool]:
    """The holder recorded in an open lock file, ``pid P on host H, started T`` ("" when empty), and
    whether that process is known to have ended (it ran on this host and runs no more)."""
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 4096).decode(errors="replace").strip()
    if not text:
        return "", False
    try:
        info = json.loads(text)
        holder = f"pid {info['pid']} on host {info['host']}, started {info['started']}"
        ended = info["host"] == socket.gethostname() and not process_alive(int(info["pid"]))
    except (ValueError, KeyError, TypeError):
        return f"unreadable holder record {text[:80]!r}", False
    return holder, ended


class RunLock:
    """The held lock of one run folder (see :func:`lock_run_dir`)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        """Remove the lock file, then drop the lock (in that order, so that a run waiting on this file
        retries on a new one); a second call does nothing."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing the file drops the flock
            self.fd = None


def lock_run_dir(out_dir: str | Path) -> RunLock:
    """Take the lock of ``out_dir`` (created if missing) for this process and record this process in it.

    Raises:
        RunFolderBusy: another live process holds it; the one-line message names the folder and the
            holder (pid, host, start time).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder, ended = _holder(fd)
            holder = holder or "a process that has not recorded itself yet"
            if ended:  # a forked child (data loader worker) still holds the lock, for a few seconds
                holder += "; that process has ended, a child of it exits within seconds"
            os.close(fd)
            raise RunFolderBusy(
                f"{out_dir} is in use by another training run ({holder}; lock file {path}): wait for it "
                "to end or choose another --out"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder released (removed) this file between our open and flock: try again
    stale, _ = _holder(fd)
    if stale:
        logger.warning("%s: taking over the lock of a run that ended without releasing it (%s)", path, stale)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    os.fsync(fd)
    return RunLock(path, fd)


@contextlib.contextmanager
def locked_run_dir(out_dir: str | Path, is_main: bool) -> Iterator[None]:
    """Hold the lock of ``out_dir`` on the main process (the only one writing there) while the block runs;
    released when it ends, also by an exception.

    Raises:
        RunFolderBusy: on every process (the main one's message is shared), when another run holds it.
    """
    lock, busy = None, None
    if is_main:
        try:
            lock = lock_run_dir(out_dir)
        except RunFolderBusy as error:
            busy = str(error)
    busy = broadcast_object(busy)
    if busy is not None:
        raise RunFolderBusy(busy)
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
