"""The CPU arena (ops.arena): large buffers reused inside a scope, everything else unchanged.

The arena counts process-wide, so every check compares counters before and after."""

from __future__ import annotations

import resource
import threading

import pytest
import torch

from ops.arena import (
    cpu_arena,
    cpu_arena_available,
    cpu_arena_stats,
    release_cpu_arena,
    set_cpu_arena_limit,
)

pytestmark = pytest.mark.skipif(not cpu_arena_available(), reason="the CPU arena needs the native library")

MB = 2**20


def test_a_freed_block_serves_the_next_allocation_of_its_size_class():
    release_cpu_arena()  # no block cached by earlier tests: the first allocation maps its own size class
    with cpu_arena() as on:
        assert on and cpu_arena_stats().open_scopes >= 1
        first = torch.empty(MB)  # 4 MiB
        pointer = first.data_ptr()
        del first
        before = cpu_arena_stats()
        second = torch.empty(MB - 1000)  # same size class (1/16 of 4 MiB slack)
        after = cpu_arena_stats()
    assert second.data_ptr() == pointer
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 0)
    assert after.in_use - before.in_use == 4 * MB


def test_small_buffers_and_buffers_outside_a_scope_do_not_use_the_arena():
    before = cpu_arena_stats()
    big = torch.empty(4 * MB)
    with cpu_arena():
        small = torch.empty(1000)
    assert cpu_arena_stats()[:5] == before[:5]
    del big, small


def test_scopes_nest_close_on_errors_and_blocks_freed_after_a_scope_return_to_the_cache():
    base = cpu_arena_stats().open_scopes
    with cpu_arena(), cpu_arena():
        assert cpu_arena_stats().open_scopes == base + 2
        kept = torch.ones(3 * MB)
    with pytest.raises(RuntimeError, match="boom"), cpu_arena():
        raise RuntimeError("boom")
    assert cpu_arena_stats().open_scopes == base
    if base == 0:
        with pytest.raises(RuntimeError, match="no scope is open"):
            torch.ops.deformbev_native.cpu_arena_exit()
        assert cpu_arena_stats().open_scopes == 0
    before = cpu_arena_stats()
    assert kept.sum().item() == 3 * MB  # the data outlives the scope
    del kept
    after = cpu_arena_stats()
    assert before.in_use - after.in_use == 12 * MB and after.cached - before.cached == 12 * MB


def test_the_limit_bounds_the_cache_and_release_empties_it():
    released = release_cpu_arena()
    assert released >= 0 and cpu_arena_stats().cached == 0
    set_cpu_arena_limit(5 * MB)
    try:
        with cpu_arena():
            blocks = [torch.empty(MB) for _ in range(2)]  # 4 MiB each
        del blocks  # one 4 MiB block fits under 5 MiB
        assert cpu_arena_stats().cached == 4 * MB
        assert release_cpu_arena() == 4 * MB and cpu_arena_stats().cached == 0
        with pytest.raises(RuntimeError, match="must be >= 0"):
            set_cpu_arena_limit(-1)
    finally:
        set_cpu_arena_limit(4 * 2**30)


def test_beyond_the_limit_the_least_recently_freed_blocks_leave_the_cache():
    release_cpu_arena()
    set_cpu_arena_limit(9 * MB)
    try:
        with cpu_arena():
            old, new = torch.empty(MB), torch.empty(3 * MB // 2)  # 4 MiB, then 6 MiB: two size classes
            new_pointer = new.data_ptr()
            del old
            del new  # 10 MiB would be cached: the 4 MiB block, the older, is freed
            assert cpu_arena_stats().cached == 6 * MB
            before = cpu_arena_stats()
            again = torch.empty(3 * MB // 2)
            assert again.data_ptr() == new_pointer and cpu_arena_stats().hits == before.hits + 1
            del again
        set_cpu_arena_limit(0)  # lowering the limit evicts at once
        assert cpu_arena_stats().cached == 0
    finally:
        set_cpu_arena_limit(4 * 2**30)


def test_a_reused_buffer_costs_no_page_faults():
    """What the arena is for: glibc maps a 64 MiB buffer afresh each time (a page fault per page)."""
    pages = 64 * MB // resource.getpagesize()
    with cpu_arena():
        buffer = torch.empty(16 * MB)
        buffer.fill_(1.0)
        del buffer
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = torch.empty(16 * MB)
        buffer.fill_(2.0)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    assert faults < pages // 100, f"{faults} page faults filling a reused buffer of {pages} pages"
    del buffer


def test_results_are_unchanged_and_threads_share_the_arena_safely():
    a, b = torch.randn(512, 700), torch.randn(700, 600)
    expected = a @ b
    errors: list[BaseException] = []
    before = cpu_arena_stats()

    def work() -> None:
        try:
            for _ in range(20):
                torch.testing.assert_close(a @ b, expected)  # 1.6 MiB results
                torch.ones(MB).add_(1)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    with cpu_arena():
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors
    after = cpu_arena_stats()
    assert after.in_use == before.in_use and after.hits - before.hits >= 100


def test_dataloader_workers_fork_from_inside_a_scope():
    data = torch.utils.data.TensorDataset(torch.arange(8.0))

    def collate(items: list) -> torch.Tensor:
        return torch.full((MB,), float(sum(x[0] for x in items)))

    loader = torch.utils.data.DataLoader(data, batch_size=4, num_workers=2, collate_fn=collate)
    with cpu_arena():
        sums = [batch[0].item() for batch in loader]
    assert sums == [6.0, 22.0]


def _call(scale: float) -> None:
    """One 'model call' of the stream: buffers whose sizes follow the input size, freed at the end."""
    with cpu_arena():
        buffers = [torch.empty(int(scale * n)) for n in (24 * MB, 16 * MB, 8 * MB, 8 * MB)]
        del buffers[1]  # freed mid-call: the next buffers may reuse it
        buffers += [torch.empty(int(scale * n)) for n in (12 * MB, 4 * MB)]
        del buffers


def test_on_a_stream_of_sizes_the_cache_follows_what_the_calls_need():
    """What grew the cache to 4 GB on ten images of different sizes: every size kept its blocks. Now the
    footprint (in use + cached) never exceeds 3/2 of the peak in use, a smaller request is served from a
    larger free block, and a size seen again is served from the cache alone."""
    release_cpu_arena()
    for scale in (1.0, 1.4, 0.7, 1.2, 0.9, 1.5, 0.8, 1.1, 1.3, 0.6):  # up to 1.5 * 72 MiB floats
        _call(scale)
        stats = cpu_arena_stats()
        assert stats.in_use + stats.cached <= 1.5 * stats.peak_in_use, stats
    before = cpu_arena_stats()
    _call(0.6)  # the same size again: no new mapping
    after = cpu_arena_stats()
    assert (after.misses - before.misses, after.hits - before.hits) == (0, 6)
    before = cpu_arena_stats()
    _call(0.55)  # a little smaller: served from the larger free blocks (within 1/4 slack)
    after = cpu_arena_stats()
    assert after.misses == before.misses


def test_a_free_block_serves_smaller_requests_only_within_the_slack_bound():
    release_cpu_arena()
    with cpu_arena():
        block = torch.empty(4 * MB)  # 16 MiB
        pointer = block.data_ptr()
        del block
        before = cpu_arena_stats()
        far_smaller = torch.empty(2 * MB)  # 8 MiB: a 16 MiB block would waste half of it
        assert far_smaller.data_ptr() != pointer and cpu_arena_stats().misses == before.misses + 1
        smaller = torch.empty(7 * MB // 2)  # 14 MiB: the 16 MiB block, 1/7 slack
        assert smaller.data_ptr() == pointer
        assert cpu_arena_stats().in_use - before.in_use == (8 + 16) * MB
        del far_smaller, smaller
