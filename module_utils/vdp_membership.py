# The membership batches of the data step: every profile not yet in an organization joins the
# default organization with its roles, is_active and last_activity, in keyset batches of one short
# transaction each, the profiles' UPDATE triggers held off inside each batch (so updated_at, a legacy
# column, is never rewritten). Resumable: it only ever takes rows whose organization_id is NULL.
"""Membership batches: plan (read-only), trigger hold-off, keyset batches with lock retry and progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - reported by the module through vdp_pg.connect
    psycopg = None  # type: ignore[assignment]

from ansible.module_utils.vdp_batching import BatchSizer
from ansible.module_utils.vdp_errors import EngineError
from ansible.module_utils.vdp_lease import heartbeat
from ansible.module_utils.vdp_lockwait import LockPolicy
from ansible.module_utils.vdp_rules import (
    COACH_ROLES_SQL,
    PIN_BATCH_PLAN,
    ROLE_SOURCES_SQL,
    membership_batch_sql,
)


def membership_plan(conn: Any, org_id: Any, schema_ready: bool = True, with_roles: bool = True) -> dict[str, int]:
    """Read-only counts: profiles still to migrate and the roles they would get; current members.

    With schema_ready=False (check mode before the schema phase ran) every profile is pending.
    With with_roles=False (a real run: the batches count the roles they give) the role counts are
    0 and the role aggregation over every profile and relationship is not paid for.
    """
    if schema_ready:  # a re-run (nothing pending) must not pay for the role aggregation
        with conn.cursor() as cur:
            cur.execute(
                "SELECT count(*) FILTER (WHERE organization_id IS NULL), count(*) FILTER (WHERE organization_id = %s), "
                "count(*) FROM public.profiles",
                (org_id,),
            )
            pending, members, total = cur.fetchone()
        if pending == 0 or not with_roles:
            return dict(
                pending=int(pending),
                coach_only=0,
                coach_and_practitioner=0,
                practitioner_only=0,
                members=int(members),
                total=int(total),
            )
    org_column = "p.organization_id" if schema_ready else "NULL::uuid"
    query = f"""
    WITH src AS ({ROLE_SOURCES_SQL}),
    x AS (
      SELECT {org_column} AS organization_id, coalesce(s.is_coach, false) AS c, coalesce(s.is_active_practitioner, false) AS ap
      FROM public.profiles p LEFT JOIN src s ON s.id = p.id)
    SELECT count(*) FILTER (WHERE organization_id IS NULL),
           count(*) FILTER (WHERE organization_id IS NULL AND c AND NOT ap),
           count(*) FILTER (WHERE organization_id IS NULL AND c AND ap),
           count(*) FILTER (WHERE organization_id IS NULL AND NOT c),
           count(*) FILTER (WHERE organization_id = %(org)s),
           count(*)
    FROM x
    """
    with conn.cursor() as cur:
        cur.execute(query, dict(org=org_id))
        pending, coach_only, both, practitioner_only, members, total = cur.fetchone()
    return dict(
        pending=int(pending),
        coach_only=int(coach_only),
        coach_and_practitioner=int(both),
        practitioner_only=int(practitioner_only),
        members=int(members),
        total=int(total),
    )


def pending_profiles(conn: Any) -> int:
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.profiles WHERE organization_id IS NULL")
        return int(cur.fetchone()[0])


# Session-local tables (role lookup, pair list) are read by every batch: room for them in the
# session's local buffers (default 8MB) avoids re-reading and re-writing their pages. Only takes
# effect before the session's first use of a temporary table, and only what is used is allocated.
TEMP_BUFFERS = "64MB"


def set_temp_buffers(conn: Any) -> None:
    """Raise the session's temp_buffers (a no-op once the session has used a temporary table)."""
    conn.commit()
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT set_config('temp_buffers', %s, false)", (TEMP_BUFFERS,))
    except psycopg.errors.InvalidParameterValue:  # temporary tables already used in this session
        pass


def build_role_sources(conn: Any) -> None:
    """Session-local table of the coaches' roles (one pass over relationships), so batches use index lookups."""
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS pg_temp.vdp_coach_roles")
        cur.execute(f"CREATE TEMP TABLE vdp_coach_roles AS {COACH_ROLES_SQL}")
        cur.execute("ALTER TABLE pg_temp.vdp_coach_roles ADD PRIMARY KEY (id)")
        cur.execute("ANALYZE pg_temp.vdp_coach_roles")
    conn.commit()


_UPDATE_TRIGGERS_SQL = """
SELECT t.tgname, t.tgenabled FROM pg_trigger t
WHERE t.tgrelid = 'public.profiles'::regclass AND NOT t.tgisinternal AND t.tgenabled <> 'D'
  AND (t.tgtype & 16) <> 0
ORDER BY t.tgname
"""

_ENABLE_MODE = {"O": "ENABLE TRIGGER", "A": "ENABLE ALWAYS TRIGGER", "R": "ENABLE REPLICA TRIGGER"}

# Enabled UPDATE rules of profiles (ev_type 2): session_replication_role = replica would silence an
# origin-mode rule that ALTER TABLE ... DISABLE TRIGGER leaves on; with one, the ALTER path is used.
_UPDATE_RULES_SQL = """
SELECT count(*) FROM pg_rewrite
WHERE ev_class = 'public.profiles'::regclass AND ev_type = '2' AND ev_enabled <> 'D'
"""

SUPPRESS_AUTO = "auto"
SUPPRESS_REPLICA = "session_replication_role"
SUPPRESS_ALTER = "alter_table"
SUPPRESS_NONE = "none"  # profiles has no enabled UPDATE trigger: nothing to hold off


def profile_update_triggers(conn: Any) -> list[tuple[str, str]]:
    """Enabled user triggers that fire on UPDATE of profiles (e.g. the updated_at stamper)."""
    with conn.cursor() as cur:
        cur.execute(_UPDATE_TRIGGERS_SQL)
        return [(r[0], str(r[1])) for r in cur.fetchall()]


def _can_set_replica_role(conn: Any) -> bool:
    """Whether this session may SET session_replication_role (superuser, GRANT SET ON PARAMETER, or
    a provider's equivalent): tried for real in a transaction that is rolled back."""
    conn.commit()
    try:
        with conn.cursor() as cur:
            cur.execute("SET LOCAL session_replication_role = replica")
        return True
    except psycopg.errors.InsufficientPrivilege:
        return False
    finally:
        conn.rollback()


def replica_role_obstacle(conn: Any, triggers: list[tuple[str, str]]) -> str | None:
    """Why session_replication_role = replica would NOT hold off exactly the same as disabling the triggers
    (None when it would): ALWAYS/REPLICA triggers fire in replica mode, an UPDATE rule would be silenced, or
    the role may not set it."""
    odd = [name for name, mode in triggers if mode in ("A", "R")]
    if odd:
        return f"UPDATE trigger(s) {', '.join(odd)} of profiles are ENABLE ALWAYS/REPLICA (they fire in replica mode)"
    with conn.cursor() as cur:
        cur.execute(_UPDATE_RULES_SQL)
        if int(cur.fetchone()[0]):
            return "profiles has an UPDATE rule"
    if not _can_set_replica_role(conn):
        return "the role may not set session_replication_role (superuser or GRANT SET ON PARAMETER needed)"
    return None


def choose_trigger_suppression(conn: Any, wanted: str, triggers: list[tuple[str, str]]) -> str:
    """How each batch holds off the profiles' UPDATE triggers: SUPPRESS_REPLICA, SUPPRESS_ALTER or SUPPRESS_NONE."""
    if not triggers:
        return SUPPRESS_NONE
    if wanted == SUPPRESS_ALTER:
        return SUPPRESS_ALTER
    obstacle = replica_role_obstacle(conn, triggers)
    if obstacle is None:
        return SUPPRESS_REPLICA
    if wanted == SUPPRESS_REPLICA:
        raise EngineError(
            f"trigger_suppression={SUPPRESS_REPLICA} cannot be used here: {obstacle}; use {SUPPRESS_AUTO} or {SUPPRESS_ALTER}"
        )
    return SUPPRESS_ALTER


# The organization row the batch points profiles at, locked as the foreign key's check would lock it,
# once per batch (replica mode skips the per-row check; see migrate_membership).
_LOCK_ORGANIZATION_SQL = "SELECT 1 FROM public.organizations WHERE id = %s FOR KEY SHARE"
_ORGANIZATION_GONE = "the organization was deleted during the run: create it again (vdp_organization) and re-run"


@dataclass
class MembershipProgress:
    migrated: int = 0
    coach_only: int = 0
    coach_and_practitioner: int = 0
    batches: int = 0
    lock_retries: int = 0
    max_batch_ms: int = 0  # the longest batch transaction (the committed attempt: how long it held its rows)
    trigger_suppression: str = SUPPRESS_ALTER
    sizes: dict[str, int] = field(default_factory=dict)  # BatchSizer.summary(): the sizes the batches took

    def add_batch(self, migrated: int, coach_only: int, both: int) -> None:
        """A batch committed: count it."""
        self.batches += 1
        self.migrated += migrated
        self.coach_only += coach_only
        self.coach_and_practitioner += both


def _batch_prologue(mode: str, triggers: list[tuple[str, str]]) -> sql.Composed:
    if mode == SUPPRESS_REPLICA:
        hold_off = [sql.SQL("SET LOCAL session_replication_role = replica")]
    else:
        hold_off = [sql.SQL("ALTER TABLE public.profiles DISABLE TRIGGER {}").format(sql.Identifier(n)) for n, _ in triggers]
    return sql.SQL("; ").join([*hold_off, sql.SQL(PIN_BATCH_PLAN)])


def _batch_epilogue(mode: str, triggers: list[tuple[str, str]]) -> sql.Composed | None:
    if mode == SUPPRESS_REPLICA or not triggers:
        return None  # SET LOCAL ends with the transaction
    return sql.SQL("; ").join(
        sql.SQL("ALTER TABLE public.profiles {} {}").format(sql.SQL(_ENABLE_MODE.get(m, "ENABLE TRIGGER")), sql.Identifier(n))
        for n, m in triggers
    )


@dataclass
class BatchPlan:
    """What every batch of one membership run does: where, how the triggers are held off."""

    org_id: Any
    source: str | None
    mode: str
    prologue: Any
    epilogue: Any


def migrate_membership(
    conn: Any,
    org_id: Any,
    source: str | None,
    batch_size: int,
    progress: MembershipProgress,
    policy: LockPolicy,
    pause: float = 0.0,
    max_batches: int = 0,
    trigger_suppression: str = SUPPRESS_AUTO,
    run_id: str | None = None,
    report: Callable[[int], None] | None = None,
    sizer: BatchSizer | None = None,
) -> MembershipProgress:
    """Keyset-batched UPDATE of profiles not yet migrated; one short transaction (commit) per batch.

    Each batch is sized by time (`sizer`, by default a BatchSizer bounded by batch_size: see vdp_batching), so its
    transaction - and the row locks it holds on the profiles it updated - lasts about BATCH_TARGET_SECONDS
    whatever the machine's load and the table's size.

    `progress` is filled as batches COMMIT, so a failure half-way still reports what was committed; `report`, when
    given, is called after each committed batch with the profiles migrated so far (the progress file).
    Between batches the run's lease gets a heartbeat and a stop request (playbooks/stop.yml) ends
    the loop cleanly (RunCancelled).

    Why the triggers are held off per batch: the legacy BEFORE UPDATE trigger stamps
    updated_at = now(), which would rewrite every user's updated_at (a legacy column). Each batch
    holds off exactly the enabled user UPDATE triggers of profiles INSIDE its own transaction; no
    other session ever sees them off, and a crash ends it with the batch. Two ways, same effect:

    - session_replication_role = replica (SET LOCAL; default where allowed): origin-mode triggers do
      not fire for this transaction. No table lock at all. Also skips the per-row foreign-key check
      of organization_id, which is NOT VALID until the indexes step VALIDATEs every row; the batch
      locks the organization row FOR KEY SHARE itself (what each row's check would do), so it cannot
      be deleted under the batch. Used only when nothing else differs: no ENABLE ALWAYS/REPLICA
      UPDATE trigger, no UPDATE rule, and the role may set it (superuser or GRANT SET ON PARAMETER).
    - ALTER TABLE ... DISABLE TRIGGER <each> and ENABLE (each to its own mode) before COMMIT: needs
      only table ownership; takes SHARE ROW EXCLUSIVE on profiles for the batch (writers wait one
      batch, readers never), bounded by lock_timeout with retries; foreign-key checks stay on.
    """
    set_temp_buffers(conn)
    build_role_sources(conn)
    triggers = profile_update_triggers(conn)
    mode = choose_trigger_suppression(conn, trigger_suppression, triggers)
    plan = BatchPlan(org_id, source, mode, _batch_prologue(mode, triggers), _batch_epilogue(mode, triggers))
    sizer = sizer or BatchSizer(batch_size)
    progress.trigger_suppression = mode
    after: Any = None
    while True:
        heartbeat(conn, run_id)
        (done, coach_only, both, last, seconds), attempts = policy.run(
            conn, lambda after=after: _one_batch(conn, plan, after, sizer), conn.rollback, what="a membership batch"
        )
        progress.lock_retries += attempts - 1
        if last is None:
            break
        sizer.record(done, seconds)
        progress.max_batch_ms, progress.sizes = round(sizer.slowest * 1000), sizer.summary()
        progress.add_batch(done, coach_only, both)
        if report is not None:
            report(progress.migrated)
        after = last
        if max_batches and progress.batches >= max_batches:
            break
        if pause > 0:
            time.sleep(pause)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS pg_temp.vdp_coach_roles")
    conn.commit()
    return progress


def _one_batch(conn: Any, plan: BatchPlan, after: Any, sizer: BatchSizer) -> tuple[int, int, int, Any, float]:
    """One batch in one transaction: hold off the triggers, update up to sizer.size profiles, commit. Returns the
    counts, the last id taken (None: nothing left) and the transaction's seconds."""
    started = sizer.clock()
    with conn.cursor() as cur:
        cur.execute(plan.prologue)
        if plan.mode == SUPPRESS_REPLICA:
            cur.execute(_LOCK_ORGANIZATION_SQL, (plan.org_id,))
            if cur.fetchone() is None:
                raise EngineError(_ORGANIZATION_GONE)
        cur.execute(membership_batch_sql(plan.source, after is None), dict(after=after, limit=sizer.size, org=plan.org_id))
        row = cur.fetchone()
        if plan.epilogue is not None:
            cur.execute(plan.epilogue)
    conn.commit()
    return int(row[0]), int(row[1]), int(row[2]), row[3], sizer.clock() - started


_ROLE_TOTALS_SQL = """
SELECT count(*) FILTER (WHERE roles = ARRAY['coach']::text[]),
       count(*) FILTER (WHERE roles = ARRAY['coach', 'practitioner']::text[]),
       count(*) FILTER (WHERE roles = ARRAY['practitioner']::text[]),
       count(*)
FROM public.profiles WHERE organization_id = %s
"""


def role_totals(conn: Any, org_id: Any) -> dict[str, int]:
    """The roles of every member of the organization, counted in the database (whatever run gave them)."""
    with conn.cursor() as cur:
        cur.execute(_ROLE_TOTALS_SQL, (org_id,))
        coach, both, practitioner, members = cur.fetchone()
    return dict(
        coach_only=int(coach), coach_and_practitioner=int(both), practitioner_only=int(practitioner), members=int(members)
    )
