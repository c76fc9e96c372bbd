# How big the data step's next batch is. A batch is one transaction, and for its whole length it holds row locks on
# profiles: the rows a membership batch updated (the application's writes to them wait) or, for an assignments
# batch, FOR KEY SHARE on the profiles its rows reference (the foreign-key checks; a DELETE or a key UPDATE of those
# profiles waits). A fixed number of rows takes a different time on every machine, at every size and under every
# load (20000 rows: 0.15 s on an idle machine at 1M users, 1.9 s on a loaded one), so, as pt-online-schema-change's
# --chunk-time does, each batch is sized from how fast the last ones went, to take BATCH_TARGET_SECONDS:
#   next = rows per second (the smaller of the last batch's and the running average) x BATCH_TARGET_SECONDS,
#   never more than the configured batch size (the upper bound, vdp_batch_size), never more than BATCH_GROWTH times
#   the last one, never less than BATCH_FLOOR_ROWS (or the batch size, if smaller).
# A slow batch shrinks the next one at once; fast ones grow it gradually. Only the attempt that committed is timed:
# time spent waiting for a lock (retried, see vdp_lockwait) says nothing about the batch's own cost.
"""Time-targeted batch sizes for the data step's transactions (chunk-time sizing)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# The time one batch transaction of the data step aims at (seconds): the longest the application waits behind it,
# with four times that of room before the 1 s limit when the machine slows down between two batches.
BATCH_TARGET_SECONDS = 0.25
# The smallest batch (rows): below it, per-transaction costs (round trips, commit, heartbeat) dominate. A batch of
# 500 profiles takes about 10-30 ms on the development machine.
BATCH_FLOOR_ROWS = 500
# The first batch (rows), before anything is measured; then sized by time.
BATCH_START_ROWS = 1000
# How much bigger than the last batch the next one may be (a fast batch of few rows may have been lucky).
BATCH_GROWTH = 2.0
# Weight of the latest batch in the running rows-per-second average.
RATE_WEIGHT = 0.25


@dataclass
class BatchSizer:
    """The size of each next batch, from the rows and seconds of the last ones (record())."""

    limit: int
    target: float = BATCH_TARGET_SECONDS
    floor: int = BATCH_FLOOR_ROWS
    start: int = BATCH_START_ROWS
    clock: Callable[[], float] = time.monotonic
    size: int = field(init=False)
    rate: float | None = field(init=False, default=None)
    batches: int = field(init=False, default=0)
    smallest: int = field(init=False, default=0)
    largest: int = field(init=False, default=0)
    slowest: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.limit < 1 or self.target <= 0:
            raise ValueError("a batch size limit >= 1 and a target > 0 s are needed")
        self.floor = max(1, min(self.floor, self.limit))
        self.size = max(self.floor, min(self.start, self.limit))

    def record(self, rows: int, seconds: float) -> int:
        """A batch of `rows` committed in `seconds` (its transaction, first statement to commit): the next size."""
        if rows <= 0:
            return self.size
        self.batches += 1
        self.smallest = rows if not self.smallest else min(self.smallest, rows)
        self.largest = max(self.largest, rows)
        self.slowest = max(self.slowest, seconds)
        latest = rows / max(seconds, 1e-6)
        self.rate = latest if self.rate is None else (1 - RATE_WEIGHT) * self.rate + RATE_WEIGHT * latest
        wanted = int(min(latest, self.rate) * self.target)
        self.size = max(self.floor, min(wanted, int(rows * BATCH_GROWTH), self.limit))
        return self.size

    def summary(self) -> dict[str, int]:
        """What the module reports: the bound, the target, the smallest and largest batch, the slowest (ms)."""
        return dict(
            limit=self.limit, target_ms=round(self.target * 1000), smallest=self.smallest, largest=self.largest,
            slowest_ms=round(self.slowest * 1000),
        )
