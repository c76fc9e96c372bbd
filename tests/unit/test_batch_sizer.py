"""The data step's batch sizing by time (module_utils/vdp_batching.py): every batch transaction aims at
BATCH_TARGET_SECONDS, bounded by the configured batch size and a floor, whatever the machine's speed. Pure: the
durations are given, nothing is timed."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.code import module_utils

vb: Any = module_utils("vdp_batching")


def run(sizer: Any, seconds_per_row: float, batches: int) -> list[int]:
    """The sizes the sizer asks for when every row costs `seconds_per_row` (plus 2 ms per transaction)."""
    sizes = []
    for _ in range(batches):
        size = sizer.size
        sizes.append(size)
        sizer.record(size, 0.002 + size * seconds_per_row)
    return sizes


def test_the_target_is_a_quarter_second_well_under_the_one_second_hold_limit() -> None:
    assert vb.BATCH_TARGET_SECONDS == 0.25
    sizer = vb.BatchSizer(20000)
    assert sizer.target == vb.BATCH_TARGET_SECONDS and sizer.size == vb.BATCH_START_ROWS


def test_batches_converge_on_the_target_time_and_stay_within_the_bound() -> None:
    sizer = vb.BatchSizer(20000)
    sizes = run(sizer, 50e-6, 12)  # 50 us a row: 20000 rows would take 1 s
    assert sizes[:3] == [1000, 2000, 4000]  # at most doubling
    assert 4800 <= sizes[3] <= sizes[-1] <= 4960  # then the target's rows: 0.248 s of rows + 2 ms a transaction
    assert max(0.002 + s * 50e-6 for s in sizes) <= vb.BATCH_TARGET_SECONDS


def test_a_slower_machine_shrinks_the_next_batch_at_once() -> None:
    sizer = vb.BatchSizer(20000)
    run(sizer, 10e-6, 10)
    assert sizer.size == 20000  # a fast machine: the configured batch size bounds it
    sizer.record(20000, 2.0)  # the machine got 10x slower: that batch took 2 s
    assert sizer.size == 2500  # the next one takes about the target again (not the running average's 9000 rows)
    sizes = run(sizer, 100e-6, 6)  # and stays there while the machine is slow
    assert max(0.002 + s * 100e-6 for s in sizes) <= 1.01 * vb.BATCH_TARGET_SECONDS


def test_the_floor_and_the_configured_size_bound_it() -> None:
    slow = vb.BatchSizer(20000)
    assert run(slow, 0.01, 4) == [1000, 500, 500, 500]  # 10 ms a row: 25 rows would meet the target; the floor is 500
    small = vb.BatchSizer(150)  # a batch size under the floor and the start: every batch is that size
    assert run(small, 0.01, 3) == [150, 150, 150]
    assert vb.BatchSizer(300, floor=50, start=100).size == 100


def test_what_it_reports() -> None:
    sizer = vb.BatchSizer(20000)
    sizer.record(1000, 0.05)
    sizer.record(2000, 0.4)
    sizer.record(0, 0.0)  # nothing taken (the end): not a batch
    assert sizer.batches == 2
    assert sizer.summary() == dict(limit=20000, target_ms=250, smallest=1000, largest=2000, slowest_ms=400)
    assert sizer.size == 1250  # 5000 rows/s x 0.25 s


@pytest.mark.parametrize("limit, target", [(0, 0.25), (100, 0.0)])
def test_refuses_a_bound_or_target_that_cannot_work(limit: int, target: float) -> None:
    with pytest.raises(ValueError):
        vb.BatchSizer(limit, target=target)
