"""PETRv2's earlier frame: which of a sample's camera sweeps (infos ``sweeps``) joins the current images.

The original (``LoadMultiViewImageFromMultiSweepsFiles`` with ``sweeps_num=1, sweep_range=[3, 27],
pad_empty_sweeps=True`` over 30 earlier frames at ~12 Hz) takes the 15th earlier frame at test time
(about 1.25 s back), a uniform one of the 4th..27th in training (about 0.33..2.25 s back), the oldest
one when the scene has not gone back that far yet, and at a scene's first sample (no earlier frame) the
current images again with timestamps shifted by ``15 x 0.083`` s. Here the choice is by time, so that a
dropped camera frame does not shift it: the frame's offset is the mean over the cameras of (current
image time - earlier image time).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class PrevFrame:
    """The choice of PETRv2's earlier frame (config ``data.prev_frame``).

    Args:
        test_offset_s: the frame nearest to this many seconds back is taken at test time (and in
            training without ``train_range_s``).
        train_range_s: (low, high) seconds: training takes a uniform one of the frames whose offset is in
            this range (the frame nearest to the range when none is); None: the test-time choice.
        pad_offset_s: time gap given to the current images reused as the earlier frame at a scene's first
            sample (the original's 1.245 s; PETRv2 divides velocities by the gap, so it must not be 0).
    """

    test_offset_s: float = 1.25
    train_range_s: Sequence[float] | None = None
    pad_offset_s: float = 1.245

    def __post_init__(self) -> None:
        if self.test_offset_s <= 0 or self.pad_offset_s <= 0:
            raise ValueError(
                f"prev_frame test_offset_s and pad_offset_s must be > 0 s, got {self.test_offset_s}, "
                f"{self.pad_offset_s}"
            )
        if self.train_range_s is not None:
            low, high = (float(v) for v in self.train_range_s)
            if not 0 <= low <= high:
                raise ValueError(
                    f"prev_frame train_range_s must be (low, high) with 0 <= low <= high seconds, got "
                    f"{tuple(self.train_range_s)}"
                )
            object.__setattr__(self, "train_range_s", (low, high))

    def choose(self, offsets: np.ndarray, rng: np.random.Generator) -> int | None:
        """Index of the earlier frame among ``offsets`` (K,) seconds back (newest first), or None when
        K = 0 (reuse the current images). Draws from ``rng`` only in training with a candidate."""
        offsets = np.asarray(offsets, dtype=np.float64)
        if offsets.size == 0:
            return None
        if self.train_range_s is None:
            return int(np.argmin(np.abs(offsets - self.test_offset_s)))
        low, high = self.train_range_s
        inside = np.flatnonzero((offsets >= low) & (offsets <= high))
        if inside.size:
            return int(inside[rng.integers(inside.size)])
        return int(np.argmin(np.maximum(low - offsets, offsets - high)))
