"""A caching allocator for large CPU buffers, open while an inference scope is (``cpu_arena``).

glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh mapping and unmaps
it when it is freed, so a detector's activation maps cost page faults on every forward (the kernel
zeroes each new page). Inside ``with cpu_arena():`` CPU allocations of at least 256 KiB come from a
cache of blocks freed earlier: the smallest cached block that fits, if it is at most 1/4 larger than the
request (sizes are rounded to size classes, less than 1/8 slack), else a fresh mapping. Blocks return to
the cache when their tensors are freed, inside the scope or after. The cache follows what the calls
need: the arena's footprint (bytes in use plus cached) never exceeds 3/2 of the most ever in use at once
(``peak_in_use``), so when the input size changes, the least recently freed blocks (those the old size
left behind) are unmapped to make room for the new ones, and a stream of varying sizes costs no more
memory than 3/2 of its largest call; :func:`set_cpu_arena_limit` caps the cache further (4 GiB unless set).
Outside every scope, allocations go to PyTorch's
CPU allocator unchanged. Scopes nest and count process-wide (every thread's allocations while one is
open). The native library (``ops/csrc/cpu_arena.cpp``) installs itself in front of PyTorch's CPU
allocator on the first scope; without the native library a scope does nothing and yields False.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch

from .extension import load_native


class CpuArenaStats(NamedTuple):
    """Bytes held by live tensors (``in_use``) and by the cache (``cached``), the most ever in use,
    allocations served from the cache (``hits``) and fresh (``misses``), the cache limit, open scopes."""

    in_use: int
    cached: int
    peak_in_use: int
    hits: int
    misses: int
    limit: int
    open_scopes: int


def cpu_arena_available() -> bool:
    """Whether the native library is loaded and has the arena (a library built before it has not)."""
    return load_native().cpu and hasattr(torch.ops.deformbev_native, "cpu_arena_enter")


@torch.compiler.disable
def enter_cpu_arena() -> bool:
    """Open a scope (see :func:`cpu_arena`); returns whether it opened. Each True needs one
    :func:`exit_cpu_arena`. ``torch.compile`` runs it as it is, outside any graph."""
    return cpu_arena_available() and bool(torch.ops.deformbev_native.cpu_arena_enter())


@torch.compiler.disable
def exit_cpu_arena() -> None:
    """Close a scope that :func:`enter_cpu_arena` opened; RuntimeError when none is open."""
    torch.ops.deformbev_native.cpu_arena_exit()


@contextlib.contextmanager
def cpu_arena() -> Iterator[bool]:
    """Serve large CPU allocations from the arena inside the ``with`` block; yields whether it is on."""
    on = enter_cpu_arena()
    try:
        yield on
    finally:
        if on:
            exit_cpu_arena()


def cpu_arena_stats() -> CpuArenaStats:
    """The arena's counters (all zero before its first scope or without the native library)."""
    if not cpu_arena_available():
        return CpuArenaStats(0, 0, 0, 0, 0, 0, 0)
    return CpuArenaStats(*torch.ops.deformbev_native.cpu_arena_stats())


def release_cpu_arena() -> int:
    """Free every cached block (live tensors keep theirs); returns the bytes freed."""
    return int(torch.ops.deformbev_native.cpu_arena_release()) if cpu_arena_available() else 0


def set_cpu_arena_limit(bytes_: int) -> None:
    """Cache at most ``bytes_`` of freed blocks (the least recently freed go back to the system)."""
    if cpu_arena_available():
        torch.ops.deformbev_native.cpu_arena_set_limit(int(bytes_))
