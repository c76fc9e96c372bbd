# The coach assignments of the data step: one assignment per distinct valid active (sponsor,
# practitioner) pair, assigned_at the pair's earliest created_at, inserted in batches of one
# transaction each with ON CONFLICT DO NOTHING (re-runs insert nothing). Self and orphan
# relationships are never converted: they are counted and listed. A batch that fails on one bad
# row is redone row by row, so one bad row never sinks the rest.
"""Coach assignments: plan (read-only), the session's pair table, batched inserts with a row-by-row fallback."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    import psycopg
except ImportError:  # pragma: no cover - reported by the module through vdp_pg.connect
    psycopg = None  # type: ignore[assignment]

from ansible.module_utils.vdp_batching import BatchSizer
from ansible.module_utils.vdp_errors import first_line
from ansible.module_utils.vdp_lease import heartbeat
from ansible.module_utils.vdp_legacy import relationship_classes_given_orphans
from ansible.module_utils.vdp_lockwait import LockPolicy
from ansible.module_utils.vdp_membership import set_temp_buffers
from ansible.module_utils.vdp_rules import (
    ALL_PAIRS_SQL,
    ASSIGNMENT_EXISTS,
    INSERT_ASSIGNMENTS_SQL,
    INSERT_BATCH_SQL,
    ORPHAN_PAIRS,
    PAIR_BATCH_SQL,
    VALID_PAIRS_SQL,
)
from ansible.module_utils.vdp_workdir import atomic_file

# The valid pairs with their assignment, if any: one hash join against the organization's coach assignments (at most
# one per pair: the unique key), not one index probe per pair - a re-run with nothing to insert pays one pass.
_PLAN_SQL = f"""
WITH v AS ({VALID_PAIRS_SQL})
SELECT count(*), count(a.practitioner_id), coalesce(sum(v.source_rows), 0), count(*) FILTER (WHERE v.source_rows > 1)
FROM v LEFT JOIN public.practitioner_assignments a
  ON a.practitioner_id = v.practitioner_id AND a.supervisor_id = v.sponsor_id
 AND a.supervisor_role = 'coach' AND a.organization_id = %(org)s
"""
_PLAN_NONE_PRESENT_SQL = f"""
WITH v AS ({VALID_PAIRS_SQL})
SELECT count(*), 0, coalesce(sum(v.source_rows), 0), count(*) FILTER (WHERE v.source_rows > 1) FROM v
"""


def assignments_plan(conn: Any, org_id: Any, schema_ready: bool = True) -> dict[str, int]:
    """Read-only: valid distinct active pairs, how many already have their assignment, source rows.

    With schema_ready=False or no organization yet (check mode before those exist) none is present.
    """
    query = _PLAN_SQL if schema_ready and org_id is not None else _PLAN_NONE_PRESENT_SQL
    with conn.cursor() as cur:
        cur.execute(query, dict(org=org_id))
        pairs, present_count, rows, duplicated = cur.fetchone()
    return dict(
        valid_pairs=int(pairs),
        already_present=int(present_count),
        pending=int(pairs) - int(present_count),
        valid_active_rows=int(rows),
        duplicate_pairs=int(duplicated),
        duplicate_rows_collapsed=int(rows) - int(pairs),
    )


def has_coach_assignments(conn: Any, org_id: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM public.practitioner_assignments WHERE supervisor_role = 'coach' "
            "AND organization_id = %s)",
            (org_id,),
        )
        return bool(cur.fetchone()[0])


def build_pairs(
    conn: Any, org_id: Any, sample_limit: int = 20, none_present: bool = False
) -> tuple[dict[str, int], dict[str, Any]]:
    """Session-local table of every non-self pair (one read pass); the valid ones still without their
    assignment are flagged `pending`. Returns (the counts of assignments_plan, relationship_classes' result),
    both computed from this table: no second pass over the relationships.

    none_present: the organization has no coach assignment yet (checked under the migration lock), so no
    pair needs the existence probe.
    The pairs are stored and batched in (practitioner_id, sponsor_id) order, the leading columns of
    the assignments' unique key: each batch inserts into a narrow range of that index and reads the
    pair table sequentially (measured at 1M users, with the sponsor order inside each batch, see
    INSERT_BATCH_SQL: ~1.5 s less than batches in (sponsor_id, practitioner_id) order).
    """
    valid = "NOT v.orphan AND v.source_rows > 0"
    pending = valid if none_present else f"CASE WHEN {valid} THEN NOT {ASSIGNMENT_EXISTS.format(v='v')} ELSE false END"
    set_temp_buffers(conn)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS pg_temp.vdp_pairs")
        cur.execute(
            f"CREATE TEMP TABLE vdp_pairs AS SELECT v.*, {pending} AS pending FROM ({ALL_PAIRS_SQL}) v "
            "ORDER BY v.practitioner_id, v.sponsor_id",
            dict(org=org_id),
        )
        cur.execute("ALTER TABLE pg_temp.vdp_pairs ADD PRIMARY KEY (practitioner_id, sponsor_id)")
        cur.execute("ANALYZE pg_temp.vdp_pairs")
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE pending), coalesce(sum(source_rows), 0), "
            "count(*) FILTER (WHERE source_rows > 1) FROM pg_temp.vdp_pairs WHERE NOT orphan AND source_rows > 0"
        )
        pairs, todo, rows, duplicated = cur.fetchone()
    classes = relationship_classes_given_orphans(conn, ORPHAN_PAIRS, sample_limit)
    conn.commit()
    plan = dict(
        valid_pairs=int(pairs),
        already_present=int(pairs) - int(todo),
        pending=int(todo),
        valid_active_rows=int(rows),
        duplicate_pairs=int(duplicated),
        duplicate_rows_collapsed=int(rows) - int(pairs),
    )
    return plan, classes


def drop_pairs(conn: Any) -> None:
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS pg_temp.vdp_pairs")
    conn.commit()


@dataclass
class AssignmentProgress:
    inserted: int = 0
    batches: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    failed_count: int = 0
    lock_retries: int = 0
    max_batch_ms: int = 0  # the longest batch transaction (the committed attempt: how long its FK checks' locks lasted)
    sizes: dict[str, int] = field(default_factory=dict)  # BatchSizer.summary(): the sizes the batches took


def _insert_rows(conn: Any, org_id: Any, rows: list[tuple[Any, Any, Any]]) -> int:
    with conn.cursor() as cur:
        cur.execute(
            INSERT_ASSIGNMENTS_SQL,
            dict(org=org_id, sponsors=[r[0] for r in rows], practitioners=[r[1] for r in rows], assigned=[r[2] for r in rows]),
        )
        return int(cur.rowcount)


def _keyset(after: tuple[Any, Any] | None) -> tuple[str, dict[str, Any]]:
    """Keyset condition after the (practitioner_id, sponsor_id) of the previous batch's last pair."""
    if after is None:
        return "", {}
    return "AND (practitioner_id, sponsor_id) > (%(p)s, %(s)s)", dict(p=after[0], s=after[1])


def _insert_one_by_one(
    conn: Any, org_id: Any, after: tuple[Any, Any] | None, batch_size: int, progress: AssignmentProgress, sample_limit: int
) -> tuple[Any, Any] | None:
    """The fallback for a batch that failed on a data error: each row alone, failures reported."""
    cond, args = _keyset(after)
    with conn.cursor() as cur:
        cur.execute(PAIR_BATCH_SQL.format(cond=cond), dict(args, limit=batch_size))
        rows = cur.fetchall()
    conn.commit()
    for row in rows:
        try:
            progress.inserted += _insert_rows(conn, org_id, [row])
            conn.commit()
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError) as exc:
            conn.rollback()
            progress.failed_count += 1
            if len(progress.failed) < sample_limit:
                progress.failed.append(dict(sponsor_id=str(row[0]), practitioner_id=str(row[1]), error=first_line(exc)))
    return (rows[-1][1], rows[-1][0]) if rows else None  # (practitioner_id, sponsor_id)


def migrate_assignments(
    conn: Any,
    org_id: Any,
    batch_size: int,
    progress: AssignmentProgress,
    policy: LockPolicy,
    sample_limit: int = 20,
    run_id: str | None = None,
    report: Callable[[int], None] | None = None,
    sizer: BatchSizer | None = None,
) -> AssignmentProgress:
    """Insert one coach assignment per pending pair of pg_temp.vdp_pairs (see build_pairs), a batch
    per transaction, ON CONFLICT DO NOTHING. `progress` is filled as batches commit; `report`, when given, is
    called after each batch with the assignments inserted so far (the progress file).

    Each batch is sized by time (`sizer`, by default a BatchSizer bounded by batch_size: see vdp_batching): the
    foreign-key checks of its rows lock the profiles they reference FOR KEY SHARE until it commits, so its
    transaction lasts about BATCH_TARGET_SECONDS whatever the machine's load and the table's size.

    One bad row never sinks the rest: if a batch fails on a data error (e.g. a profile deleted
    meanwhile: foreign key), it is redone row by row and the failing rows are reported. Between
    batches the lease gets a heartbeat and a stop request ends the loop (RunCancelled).
    """
    sizer = sizer or BatchSizer(batch_size)
    after: tuple[Any, Any] | None = None
    while True:
        heartbeat(conn, run_id)
        limit = sizer.size
        try:
            (inserted, taken, last, seconds), attempts = policy.run(
                conn, lambda a=after, n=limit: _insert_batch(conn, org_id, a, n, sizer), conn.rollback,
                what="an assignments batch",
            )
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
            conn.rollback()
            progress.batches += 1
            after = _insert_one_by_one(conn, org_id, after, limit, progress, sample_limit)
            if report is not None:
                report(progress.inserted)
            if after is None:
                break
            continue
        if taken == 0:
            break
        sizer.record(taken, seconds)
        progress.max_batch_ms, progress.sizes = round(sizer.slowest * 1000), sizer.summary()
        progress.batches += 1
        progress.inserted += inserted
        progress.lock_retries += attempts - 1
        if report is not None:
            report(progress.inserted)
        after = last
        if taken < limit:
            break
    drop_pairs(conn)
    return progress


def _insert_batch(
    conn: Any, org_id: Any, after: tuple[Any, Any] | None, limit: int, sizer: BatchSizer
) -> tuple[int, int, tuple[Any, Any], float]:
    """One batch in one transaction: up to `limit` pending pairs after `after` inserted, committed. Returns (inserted,
    pairs taken, the last pair's (practitioner_id, sponsor_id), the transaction's seconds)."""
    cond, args = _keyset(after)
    started = sizer.clock()
    with conn.cursor() as cur:
        cur.execute(INSERT_BATCH_SQL.format(cond=cond), dict(args, limit=limit, org=org_id))
        inserted, taken, last_p, last_s = cur.fetchone()
    conn.commit()
    return int(inserted), int(taken), (last_p, last_s), sizer.clock() - started


# Every relationship the migration does not convert, with the reason: the complete list for the run record.
_NOT_CONVERTED_SQL = """
SELECT r.id::text, r.sponsor_id::text, r.practitioner_id::text, r.active,
       to_char(r.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
       CASE WHEN r.sponsor_id = r.practitioner_id THEN 'self-relationship'
            WHEN ps.id IS NULL AND pp.id IS NULL THEN 'neither person has a profile'
            WHEN ps.id IS NULL THEN 'the sponsor has no profile'
            ELSE 'the practitioner has no profile' END
FROM public.sponsor_practitioner_relationships r
LEFT JOIN public.profiles ps ON ps.id = r.sponsor_id
LEFT JOIN public.profiles pp ON pp.id = r.practitioner_id
WHERE r.sponsor_id = r.practitioner_id OR ps.id IS NULL OR pp.id IS NULL
ORDER BY r.created_at, r.id
"""
_NOT_CONVERTED_KEYS = ("id", "sponsor_id", "practitioner_id", "active", "created_at", "reason")


def write_not_converted(conn: Any, path: str) -> dict[str, Any]:
    """Stream every unconverted relationship into `path` (JSON lines; written whole or not at all). Commits."""
    count = 0
    with atomic_file(path, ".not_converted-") as out:
        with conn.cursor(name="vdp_not_converted") as cur:
            cur.itersize = 5000
            cur.execute(_NOT_CONVERTED_SQL)
            for row in cur:
                out.write(json.dumps(dict(zip(_NOT_CONVERTED_KEYS, row, strict=True))) + "\n")
                count += 1
        conn.commit()
    return dict(path=path, relationships=count)
