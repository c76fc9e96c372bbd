"""The legacy fixture generator's pure parts: ids, timestamps, and the relationship plan's exact tallies.

The plan is recomputed here from the rows it yields (in memory, small N), independently of the
generator's own running tallies, so a bookkeeping slip in the generator fails these tests.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
import sys
from collections import Counter
from dataclasses import asdict

import pytest

from fixtures import generate_legacy as gl

NOW = dt.datetime(2026, 1, 15, 12, 0, tzinfo=dt.UTC)
NOW_US = int(NOW.timestamp()) * gl.US
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def plan(users: int, seed: int = 7) -> tuple[list[gl.Rel], gl.PlanTally, set[str]]:
    d, tl = gl.Derive(seed), gl.Timeline(users, NOW_US)
    tally = gl.PlanTally()
    rows = list(gl.relationships(d, tl, users, seed, tally))
    uids = {gl.make_user(d, tl, i).uid for i in range(users)}
    return rows, tally, uids


def recount(rows: list[gl.Rel], uids: set[str]) -> dict[str, int]:
    """Each count definition of the generator's docstring, computed from scratch."""
    active_pairs = Counter((r.sponsor, r.practitioner) for r in rows if r.active)
    by_sponsor: dict[str, list[bool]] = {}
    for r in rows:
        by_sponsor.setdefault(r.sponsor, []).append(r.active)
    sponsors = set(by_sponsor)
    practitioner_of_other_active = {r.practitioner for r in rows if r.active and r.sponsor != r.practitioner}
    involved = {r.sponsor for r in rows} | {r.practitioner for r in rows}
    return dict(
        relationships=len(rows),
        active_relationships=sum(r.active for r in rows),
        sponsors=len(sponsors),
        sponsors_also_practitioners=len(sponsors & practitioner_of_other_active),
        sponsors_all_inactive=sum(1 for flags in by_sponsor.values() if not any(flags)),
        duplicate_active_pairs=sum(1 for n in active_pairs.values() if n > 1),
        duplicate_active_extra_rows=sum(n - 1 for n in active_pairs.values() if n > 1),
        self_relationships=sum(r.sponsor == r.practitioner for r in rows),
        orphan_relationships=sum(r.practitioner not in uids for r in rows),
        users_without_relationships=len(uids - involved),
        expected_assignments=sum(1 for (s, p) in active_pairs if s != p and p in uids),
    )


@pytest.mark.parametrize("users", [0, 1, 2, 25, 3000])
def test_plan_tallies_equal_an_independent_recount(users: int) -> None:
    rows, tally, uids = plan(users)
    assert asdict(tally) == recount(rows, uids)


def test_small_fixtures_still_hold_every_messy_case() -> None:
    rows, tally, uids = plan(25)
    for name, value in asdict(tally).items():
        assert value > 0, f"{name} is 0 in a 25-user fixture"
    assert all(r.sponsor in uids for r in rows), "sponsor_id has a FK: it must always be a user"


def test_proportions_are_realistic_and_scale_with_users() -> None:
    small = asdict(plan(2000)[1])
    large = asdict(plan(20000)[1])
    for name in gl.MESSY_RELATIONSHIP_CASES:
        share = large[name] / 20000
        assert 0.0005 < share < 0.10, f"{name}: {large[name]} of 20000 users is not 'a few %'"
        assert 5 < large[name] / max(small[name], 1) < 20, f"{name} does not scale with N: {small[name]} -> {large[name]}"


def test_same_seed_same_plan_other_seed_other_plan() -> None:
    a, b, c = plan(500, seed=1)[0], plan(500, seed=1)[0], plan(500, seed=2)[0]
    assert a == b
    assert a != c


def test_uuids_are_version_4_and_distinct() -> None:
    d = gl.Derive(1)
    ids = [d.uuid(b"uid", i) for i in range(5000)]
    assert all(UUID4.match(u) for u in ids)
    assert len(set(ids)) == len(ids)
    assert gl.Derive(2).uuid(b"uid", 0) != ids[0]


@pytest.mark.parametrize("moment", ["1970-01-01T00:00:00", "2024-02-29T23:59:59.999999", "2026-11-25T09:15:00.000123"])
def test_timestamp_text_matches_datetime(moment: str) -> None:
    when = dt.datetime.fromisoformat(moment).replace(tzinfo=dt.UTC)
    us = int(when.timestamp()) * gl.US + when.microsecond
    assert gl.ts(us) == when.strftime("%Y-%m-%d %H:%M:%S.%f") + "+00"


def test_users_timeline_is_in_the_past_and_recent_sessions_inside_the_hour() -> None:
    d, tl = gl.Derive(3), gl.Timeline(4000, NOW_US)
    recent = 0
    for i in range(4000):
        u = gl.make_user(d, tl, i)
        assert tl.start <= u.created <= u.updated < NOW_US
        if u.last_sign_in is not None:
            assert u.created <= u.last_sign_in < NOW_US
        if u.recent_session is not None:
            recent += 1
            assert NOW_US - 50 * 60 * gl.US <= u.recent_session <= NOW_US - 60 * gl.US
        else:
            assert u.last_sign_in is None or u.last_sign_in <= NOW_US - 2 * gl.HOUR_US
    assert 0 < recent < 400


def test_cli_rejects_bad_input_without_touching_a_database() -> None:
    script = gl.__file__
    for args, expected in ((["--users", "-1"], "--users must be >= 0"), (["--shape", "weird"], "invalid choice")):
        proc = subprocess.run(
            [sys.executable, script, "--dsn", "host=127.0.0.1 port=1", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 2
        assert expected in proc.stderr


def test_cli_unreachable_database_is_one_line_and_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, gl.__file__, "--dsn", "host=127.0.0.1 port=1 connect_timeout=2", "--users", "1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("generate_legacy: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_load_legacy_rejects_unknown_shape_before_connecting() -> None:
    with pytest.raises(gl.FixtureError, match="unknown shape"):
        gl.load_legacy("host=127.0.0.1 port=1", shape="nope", users=1)
