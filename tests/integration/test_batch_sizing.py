"""Issue 12: every batch transaction of the data step is sized by time (module_utils/vdp_batching.py), so the row
locks it holds on profiles - the rows a membership batch updated, the FOR KEY SHARE of an assignments batch's
foreign-key checks - last about BATCH_TARGET_SECONDS whatever the load and the size.

No timing is asserted (it would flake on a loaded machine). The sizer is driven to its two extremes instead: a
target no batch can meet (every batch after the first must fall to the floor) and one every batch meets (each next
one doubles, up to the configured size). What each transaction really wrote is read back from the database, not
from the code's own counters: rows written by one transaction share its xmin, so the rows per xmin are the
batches. The result must equal a run with big fixed batches (the migrated state's checksums).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support.code import module_utils
from tests.support.engine import ORG, apply_schema, clone, connect, data_step, drop, login, migrated_state, rows

USERS = 2000
vb: Any = module_utils("vdp_batching")
vm: Any = module_utils("vdp_membership")
va: Any = module_utils("vdp_assignments")
LockPolicy: Any = module_utils("vdp_lockwait").LockPolicy
detect_sign_in_source: Any = module_utils("vdp_legacy").detect_sign_in_source

NEVER_MET = 1e-9  # no transaction commits in a nanosecond: every batch is "too slow"
ALWAYS_MET = 1e6  # every batch is "fast"


@pytest.fixture
def db(sandbox: Any, legacy_template: Any) -> Iterator[Any]:
    made: list[dict[str, Any]] = []

    def make() -> dict[str, Any]:
        info = clone(sandbox, legacy_template("supabase", USERS))
        made.append(info)
        return info

    yield make
    for info in made:
        drop(sandbox, info)


def prepared(run_module: Any, info: dict[str, Any]) -> Any:
    """The schema phase and the default organization, as the runbook leaves them before the batches; its id."""
    assert not apply_schema(run_module, info).failed
    assert not run_module("vdp_organization", dict(login(info), **ORG)).failed
    return rows(info, "SELECT id FROM public.organizations WHERE slug = %s", (ORG["slug"],))[0][0]


def per_transaction(info: dict[str, Any], table: str, where: str = "true") -> list[int]:
    """Rows of `table` per writing transaction (xmin), in commit order: the batches as the database saw them."""
    query = f"SELECT count(*) FROM {table} WHERE {where} GROUP BY xmin ORDER BY xmin::text::bigint"
    return [int(r[0]) for r in rows(info, query)]


def expected(total: int, sizes: list[int], then: int) -> list[int]:
    """Batches of `sizes` first, then of `then` each, until `total` rows are taken."""
    out: list[int] = []
    for size in [*sizes, *[then] * total]:
        if total <= 0:
            break
        out.append(min(size, total))
        total -= out[-1]
    return out


def membership(info: dict[str, Any], org_id: Any, sizer: Any) -> Any:
    progress = vm.MembershipProgress()
    with psycopg.connect(**info) as conn:
        vm.migrate_membership(conn, org_id, detect_sign_in_source(conn), sizer.limit, progress, LockPolicy(retries=0),
                              sizer=sizer)
    return progress


def assignments(info: dict[str, Any], org_id: Any, sizer: Any) -> tuple[Any, int]:
    progress = va.AssignmentProgress()
    with psycopg.connect(**info) as conn:
        plan, _ = va.build_pairs(conn, org_id, none_present=True)
        va.migrate_assignments(conn, org_id, sizer.limit, progress, LockPolicy(retries=0), sizer=sizer)
    return progress, plan["pending"]


@pytest.fixture
def reference(run_module: Any, db: Any) -> dict[str, Any]:
    """The migrated state of a run of the modules with big batches (500 rows each)."""
    info = db()
    assert not apply_schema(run_module, info).failed
    data_step(run_module, info, batch_size=500)
    return migrated_state(info)


def test_batches_that_take_too_long_fall_to_the_floor_and_the_result_is_exact(
    run_module: Any, db: Any, reference: dict[str, Any]
) -> None:
    info = db()
    org_id = prepared(run_module, info)
    sizer = vb.BatchSizer(1000, target=NEVER_MET, floor=50, start=200)
    members = membership(info, org_id, sizer)
    # The first batch is the start size; every later one is cut to the floor, none ever reaches the bound (1000).
    assert per_transaction(info, "public.profiles", "organization_id IS NOT NULL") == expected(USERS, [200], 50)
    assert members.migrated == USERS and members.batches == len(expected(USERS, [200], 50))
    assert members.sizes["largest"] == 200 and members.sizes["smallest"] == 50 and members.sizes["limit"] == 1000

    sizer = vb.BatchSizer(1000, target=NEVER_MET, floor=50, start=200)
    pairs, pending = assignments(info, org_id, sizer)
    assert pending > 500
    assert per_transaction(info, "public.practitioner_assignments") == expected(pending, [200], 50)
    assert pairs.inserted == pending and pairs.batches == len(expected(pending, [200], 50)) and not pairs.failed_count

    state = migrated_state(info)
    assert (state["profiles"], state["assignments"]) == (reference["profiles"], reference["assignments"])


def test_fast_batches_grow_by_doubling_up_to_the_configured_batch_size(
    run_module: Any, db: Any, reference: dict[str, Any]
) -> None:
    info = db()
    org_id = prepared(run_module, info)
    members = membership(info, org_id, vb.BatchSizer(400, target=ALWAYS_MET, floor=50, start=50))
    assert per_transaction(info, "public.profiles", "organization_id IS NOT NULL") == expected(USERS, [50, 100, 200], 400)
    assert members.sizes["largest"] == 400 and members.max_batch_ms >= 0

    pairs, pending = assignments(info, org_id, vb.BatchSizer(400, target=ALWAYS_MET, floor=50, start=50))
    assert per_transaction(info, "public.practitioner_assignments") == expected(pending, [50, 100, 200], 400)
    assert pairs.sizes["largest"] == 400

    state = migrated_state(info)
    assert (state["profiles"], state["assignments"]) == (reference["profiles"], reference["assignments"])


def test_the_modules_batches_never_exceed_the_configured_batch_size(run_module: Any, db: Any) -> None:
    # Through the modules as the runbook calls them, with the default target: whatever the machine's speed, no
    # transaction wrote more rows than vdp_batch_size, and a re-run writes nothing.
    info = db()
    assert not apply_schema(run_module, info).failed
    first = data_step(run_module, info, batch_size=300)
    assert max(per_transaction(info, "public.profiles", "organization_id IS NOT NULL")) <= 300
    assert max(per_transaction(info, "public.practitioner_assignments")) <= 300
    assert first["membership"]["migrated"] == USERS
    with connect(info) as conn:
        before = conn.execute("SELECT count(*), max(xmin::text::bigint) FROM public.practitioner_assignments").fetchone()
    again = data_step(run_module, info, batch_size=300)
    assert not again["membership"].changed and not again["assignments"].changed
    with connect(info) as conn:
        assert conn.execute("SELECT count(*), max(xmin::text::bigint) FROM public.practitioner_assignments").fetchone() == before
