# The legacy baseline: what every legacy table held just before the migration's first write, kept in
# production so that "the migration changed no legacy value" is PROVEN, row by row, afterwards.
#
# The application keeps writing while the runbook works (Supabase's auth service signs users in even
# when the app is scaled to 0; in online mode the old app runs throughout). So the proof cannot be
# "the table is identical". It is, per row, keyed by the primary key:
#   - a row that is gone: loss (the migration never deletes) -> failure;
#   - a row whose legacy values changed, when an attribution column (updated_at, last_sign_in_at)
#     moved to or past the baseline's time: an application write, reported as such (the migration
#     never moves those: it holds off the updated_at triggers);
#   - a row whose legacy values changed any other way: a change the migration cannot account for
#     -> failure;
#   - a row that is new: an application insert (the migration never inserts legacy rows), reported.
# Each table's multiset checksum and its triggers / policies / RLS are kept too. A table without a
# primary key gets only the checksum (any change fails: nothing can be attributed). An explicit,
# recorded re-baseline (state=rebaselined, with a reason) takes a new reference when the operator
# has explained what changed.
"""The legacy baseline: per-row hashes, checksums and structure; the attributed comparison; re-baselining."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    from psycopg import sql
except ImportError:  # pragma: no cover - reported by the module through vdp_pg.connect
    sql = None  # type: ignore[assignment]

from ansible.module_utils.vdp_ledger import ensure_runbook_schema
from ansible.module_utils.vdp_legacy import (
    LEGACY_TABLES,
    PINNED_SETTINGS,
    split_name,
    table_columns,
    table_exists,
    table_ident,
)
from ansible.module_utils.vdp_names import ADDED_PROFILE_COLUMNS, BASELINE_KEY, FEATURE_FLAGS, RUNBOOK_SCHEMA

# Columns whose move to (or past) the baseline time marks a row as written by the application.
ATTRIBUTION_COLUMNS: tuple[str, ...] = ("updated_at", "last_sign_in_at")

# Legacy tables with no such column whose writes a journal records (the online sync's trigger,
# migrations/20250103_assignment_sync_expand.sql: a relationship the app ENDS changes `active` and nothing else):
# table -> (journal, the journal's column holding the row's id). A journaled write since the baseline by a session
# that is not this runbook's (`by_runbook`: application_name vdp-runbook...) marks the row as the application's.
JOURNALS: dict[str, tuple[str, str]] = {
    "public.sponsor_practitioner_relationships": (f"{RUNBOOK_SCHEMA}.relationship_writes", "relationship_id"),
}

_BASELINE_EXTRA_DDL = f"""
ALTER TABLE {RUNBOOK_SCHEMA}.baseline ADD COLUMN IF NOT EXISTS pk_columns text[];
ALTER TABLE {RUNBOOK_SCHEMA}.baseline ADD COLUMN IF NOT EXISTS rows_table text;
ALTER TABLE {RUNBOOK_SCHEMA}.baseline ADD COLUMN IF NOT EXISTS attribution_since timestamptz;
ALTER TABLE {RUNBOOK_SCHEMA}.baseline ADD COLUMN IF NOT EXISTS excluded jsonb NOT NULL DEFAULT '{{}}'::jsonb;
ALTER TABLE {RUNBOOK_SCHEMA}.baseline ADD COLUMN IF NOT EXISTS reason text;
ALTER TABLE {RUNBOOK_SCHEMA}.baseline ADD COLUMN IF NOT EXISTS migration_since timestamptz;
CREATE TABLE IF NOT EXISTS {RUNBOOK_SCHEMA}.baseline_history (
  id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  baseline_key text NOT NULL,
  replaced_at timestamptz NOT NULL DEFAULT now(),
  replaced_by text NOT NULL,
  run_id      text,
  reason      text NOT NULL,
  previous    jsonb NOT NULL,
  differences jsonb NOT NULL
);
"""

# The baseline's reference time: now, or earlier if an application transaction was already open
# (its writes carry its start time in updated_at yet commit after the snapshot).
_SINCE_SQL = """
SELECT least(now(), (SELECT min(xact_start) FROM pg_stat_activity
                     WHERE pid <> pg_backend_pid() AND datname = current_database() AND xact_start IS NOT NULL))
"""

_PK_SQL = """
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
ORDER BY array_position(i.indkey::int2[], a.attnum)
"""


@dataclass
class TableComparison:
    """One legacy table now versus its baseline (counts, samples of primary keys, structure)."""

    table: str
    rows_before: int
    rows_after: int | None
    checksum_before: str
    checksum_after: str | None
    per_row: bool
    inserted: int = 0
    app_updated: int = 0
    deleted: int = 0
    changed: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)
    structure_lost: list[str] = field(default_factory=list)

    @property
    def unchanged_by_migration(self) -> bool:
        if self.rows_after is None:
            return False
        if not self.per_row:
            return self.rows_before == self.rows_after and self.checksum_before == self.checksum_after
        return self.deleted == 0 and self.changed == 0

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__, unchanged_by_migration=self.unchanged_by_migration)


# --------------------------------------------------------------------------- reading the legacy tables


def legacy_columns(conn: Any, table: str) -> list[str]:
    columns = table_columns(conn, table)
    if table == "public.profiles":
        columns = [c for c in columns if c not in ADDED_PROFILE_COLUMNS]
    return columns


def primary_key(conn: Any, table: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(_PK_SQL, (table_ident(table).as_string(conn),))
        return [str(r[0]) for r in cur.fetchall()]


def structure(conn: Any, table: str) -> dict[str, Any]:
    """Triggers (name -> enabled state), policies and RLS flag of a table: what must survive."""
    regclass = table_ident(table).as_string(conn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal "
            "AND tgname NOT LIKE 'vdp\\_%%' ORDER BY tgname",
            (regclass,),
        )
        triggers = {r[0]: str(r[1]) for r in cur.fetchall()}
        cur.execute("SELECT polname FROM pg_policy WHERE polrelid = to_regclass(%s) ORDER BY polname", (regclass,))
        policies = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (regclass,))
        row = cur.fetchone()
    return dict(triggers=triggers, policies=policies, rls=bool(row and row[0]))


def exclusions(flags: Sequence[str]) -> dict[str, tuple[str, list[str]]]:
    """Rows that are the migration's own, not legacy content: its feature flags."""
    return {"public.feature_flags": ("flag_name", list(flags))}


def _row_hash(columns: Sequence[str]) -> Any:
    cols = sql.SQL(", ").join(sql.SQL("t.{}").format(sql.Identifier(c)) for c in columns)
    return sql.SQL("md5(ROW({})::text)::uuid").format(cols)


def _where(exclude: tuple[str, list[str]] | None) -> tuple[Any, dict[str, Any]]:
    if not exclude:
        return sql.SQL(""), {}
    return sql.SQL("WHERE t.{} <> ALL(%(excluded)s)").format(sql.Identifier(exclude[0])), dict(excluded=list(exclude[1]))


def rows_table_name(table: str) -> str:
    schema, name = split_name(table)
    return f"baseline_rows__{schema}__{name}"[:63]


_SUMS_SQL = """
SELECT count(*),
       coalesce(sum(('x' || substr(replace(h::text, '-', ''), 1, 15))::bit(60)::bigint::numeric), 0),
       coalesce(sum(('x' || substr(replace(h::text, '-', ''), 16, 15))::bit(60)::bigint::numeric), 0)
FROM ({source}) s
"""


def _checksum_of(conn: Any, source: Any, args: dict[str, Any]) -> tuple[int, str]:
    """(rows, multiset checksum) of a relation with a uuid column h: order-independent sums of two 60-bit slices."""
    with conn.cursor() as cur:
        cur.execute(sql.SQL(_SUMS_SQL).format(source=source), args)
        rows, part1, part2 = cur.fetchone()
    return int(rows), f"{int(part1):x}-{int(part2):x}"


def _pin_settings(conn: Any) -> None:
    """Text renderings that depend on session settings, pinned so every client hashes the same content alike."""
    with conn.cursor() as cur:
        for name, value in PINNED_SETTINGS:
            cur.execute("SELECT set_config(%s, %s, true)", (name, value))


def current_rows(
    conn: Any, table: str, columns: Sequence[str], pk: Sequence[str], exclude: Any, since: Any = None
) -> tuple[Any, dict[str, Any]]:
    """SELECT <pk>, h[, app] FROM the table: legacy columns hashed, the migration's own rows left out, and with
    `since` whether an attribution column moved to or past it (the application wrote the row)."""
    where, args = _where(exclude)
    items = [sql.SQL("t.{}").format(sql.Identifier(c)) for c in pk] + [sql.SQL("{} AS h").format(_row_hash(columns))]
    join = sql.SQL("")
    if since is not None:
        present = [c for c in ATTRIBUTION_COLUMNS if c in table_columns(conn, table)]
        marks = [sql.SQL("t.{} >= %(since)s").format(sql.Identifier(c)) for c in present]
        journal = _journal_join(conn, table, pk)
        if journal is not None:
            join = journal
            marks.append(sql.SQL("j.row_id IS NOT NULL"))
        app = sql.SQL(" OR ").join(marks) if marks else None
        items.append(sql.SQL("coalesce({}, false) AS app").format(app) if app else sql.SQL("false AS app"))
        args["since"] = since
    query = sql.SQL("SELECT {items} FROM {table} t {join} {where}").format(
        items=sql.SQL(", ").join(items), table=table_ident(table), join=join, where=where
    )
    return query, args


def _journal_join(conn: Any, table: str, pk: Sequence[str]) -> Any:
    """LEFT JOIN of the rows the table's journal shows the application wrote since %(since)s (j.row_id), or None."""
    journal = JOURNALS.get(table)
    if journal is None or list(pk) != ["id"] or not table_exists(conn, journal[0]):
        return None
    return sql.SQL(
        "LEFT JOIN (SELECT DISTINCT w.{key} AS row_id FROM {journal} w WHERE w.at >= %(since)s AND NOT w.by_runbook) j "
        "ON j.row_id = t.id"
    ).format(key=sql.Identifier(journal[1]), journal=sql.Identifier(*split_name(journal[0])))


def legacy_snapshot(
    conn: Any,
    tables: Iterable[str] = LEGACY_TABLES,
    columns: dict[str, list[str]] | None = None,
    flags: Sequence[str] = FEATURE_FLAGS,
) -> dict[str, dict[str, Any]]:
    """Row count, multiset checksum (legacy columns only) and structure of every legacy table that exists."""
    excluded = exclusions(flags)
    out: dict[str, dict[str, Any]] = {}
    with conn.transaction():
        _pin_settings(conn)
        for table in tables:
            if not table_exists(conn, table):
                continue
            cols = (columns or {}).get(table) or legacy_columns(conn, table)
            query, args = current_rows(conn, table, cols, [], excluded.get(table))
            rows, checksum = _checksum_of(conn, query, args)
            out[table] = dict(rows=rows, checksum=checksum, columns=list(cols), structure=structure(conn, table))
    return out


# --------------------------------------------------------------------------- capturing


def ensure_baseline_tables(conn: Any) -> None:
    ensure_runbook_schema(conn)
    with conn.cursor() as cur:
        cur.execute(_BASELINE_EXTRA_DDL)
    conn.commit()


def read_baseline(conn: Any, key: str = BASELINE_KEY) -> dict[str, dict[str, Any]]:
    if not table_exists(conn, f"{RUNBOOK_SCHEMA}.baseline"):
        return {}
    columns = table_columns(conn, f"{RUNBOOK_SCHEMA}.baseline")
    has_rows, has_start = "pk_columns" in columns, "migration_since" in columns
    extra = (", pk_columns, rows_table, attribution_since, excluded, reason" if has_rows else "") + (
        ", migration_since" if has_start else ""
    )
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT table_name, columns, row_count, checksum, structure, captured_at, run_id{extra} "
            f"FROM {RUNBOOK_SCHEMA}.baseline WHERE baseline_key = %s ORDER BY table_name",
            (key,),
        )
        rows = cur.fetchall()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = dict(
            columns=list(r[1]),
            rows=int(r[2]),
            checksum=r[3],
            structure=dict(r[4] or {}),
            captured_at=r[5].isoformat(),
            run_id=r[6],
            pk_columns=[],
            rows_table=None,
            attribution_since=None,
            excluded={},
            reason=None,
            migration_since=None,
        )
        if has_rows:
            entry.update(
                pk_columns=list(r[7] or []), rows_table=r[8], attribution_since=r[9], excluded=dict(r[10] or {}), reason=r[11]
            )
        if has_start:
            entry["migration_since"] = r[-1]
        out[r[0]] = entry
    return out


def ensure_baseline(conn: Any, run_id: str | None, key: str = BASELINE_KEY, flags: Sequence[str] = FEATURE_FLAGS) -> bool:
    """Capture the baseline once, before the migration's first write (commits). True when captured now."""
    if read_baseline(conn, key):
        return False
    capture(conn, run_id, key, flags)
    return True


def capture(conn: Any, run_id: str | None, key: str, flags: Sequence[str], reason: str | None = None) -> dict[str, Any]:
    """Store every legacy table's row hashes, checksum and structure from ONE snapshot; replaces `key`. Commits."""
    ensure_baseline_tables(conn)
    excluded = exclusions(flags)
    conn.isolation_level = 3  # REPEATABLE READ: every table from the same snapshot
    try:
        with conn.transaction():
            _pin_settings(conn)
            # A re-baseline takes a new reference, not a new start: the application's writes since the FIRST
            # baseline (the migration's first write) stay attributable by the rule checks (vdp_invariants).
            started = {t: b["migration_since"] or b["attribution_since"] for t, b in read_baseline(conn, key).items()}
            with conn.cursor() as cur:
                cur.execute(_SINCE_SQL)
                since = cur.fetchone()[0]
                cur.execute(f"DELETE FROM {RUNBOOK_SCHEMA}.baseline WHERE baseline_key = %s", (key,))
            summary = {
                t: _capture_table(conn, t, key, run_id, (since, started.get(t) or since), excluded.get(t), reason)
                for t in LEGACY_TABLES
                if table_exists(conn, t)
            }
    finally:
        conn.isolation_level = None
    return summary


def _capture_table(
    conn: Any, table: str, key: str, run_id: str | None, times: tuple[Any, Any], exclude: Any, reason: str | None
) -> dict[str, Any]:
    """One table's row hashes and summary; times = (attribution_since, migration_since)."""
    columns, pk = legacy_columns(conn, table), primary_key(conn, table)
    query, args = current_rows(conn, table, columns, pk, exclude)
    rows_table = rows_table_name(table) if pk else None
    with conn.cursor() as cur:
        if rows_table:
            target = sql.Identifier(RUNBOOK_SCHEMA, rows_table)
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(target))
            cur.execute(sql.SQL("CREATE TABLE {} AS {}").format(target, query), args)
            keys = sql.SQL(", ").join(map(sql.Identifier, pk))
            cur.execute(sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(target, keys))
            source, source_args = sql.SQL("SELECT h FROM {}").format(target), {}
        else:
            source, source_args = query, args
    rows, checksum = _checksum_of(conn, source, source_args)
    shape = structure(conn, table)
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {RUNBOOK_SCHEMA}.baseline (baseline_key, table_name, columns, row_count, checksum, structure, "
            "run_id, pk_columns, rows_table, attribution_since, excluded, reason, migration_since) "
            "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s, %s, %s::jsonb, %s, %s)",
            (
                key,
                table,
                columns,
                rows,
                checksum,
                json.dumps(shape),
                run_id,
                pk,
                rows_table,
                times[0],
                json.dumps({exclude[0]: exclude[1]} if exclude else {}),
                reason,
                times[1],
            ),
        )
    return dict(rows=rows, checksum=checksum, per_row=bool(pk))


# --------------------------------------------------------------------------- comparing

_COMPARE_SQL = """
WITH j AS (
  SELECT b.h AS bh, c.h AS ch, coalesce(c.app, false) AS app, {pk_text} AS pk
  FROM {rows} b FULL JOIN ({current}) c USING ({pk})
)
SELECT count(*) FILTER (WHERE bh IS NULL),
       count(*) FILTER (WHERE ch IS NULL),
       count(*) FILTER (WHERE bh <> ch AND app),
       count(*) FILTER (WHERE bh <> ch AND NOT app),
       (array_agg(pk ORDER BY pk) FILTER (WHERE bh IS NULL))[1:%(limit)s],
       (array_agg(pk ORDER BY pk) FILTER (WHERE ch IS NULL))[1:%(limit)s],
       (array_agg(pk ORDER BY pk) FILTER (WHERE bh <> ch AND app))[1:%(limit)s],
       (array_agg(pk ORDER BY pk) FILTER (WHERE bh <> ch AND NOT app))[1:%(limit)s]
FROM j
"""


def compare_table(conn: Any, table: str, base: dict[str, Any], sample_limit: int) -> TableComparison:
    """The table now against its baseline: per row when it has row hashes, else its checksum only."""
    exclude = tuple(next(iter(base["excluded"].items()))) if base.get("excluded") else None
    pk = base.get("pk_columns") or []
    query, args = current_rows(conn, table, base["columns"], [], exclude)
    rows_after, checksum_after = _checksum_of(conn, query, args)
    result = TableComparison(table, base["rows"], rows_after, base["checksum"], checksum_after, bool(base.get("rows_table")))
    if result.per_row and not (rows_after == base["rows"] and checksum_after == base["checksum"]):
        _compare_rows(conn, table, base, exclude, pk, result, sample_limit)
    return result


def _compare_rows(
    conn: Any, table: str, base: dict[str, Any], exclude: Any, pk: list[str], result: TableComparison, limit: int
) -> None:
    """Classify every differing row: inserted, deleted, changed by the application (attributed) or not."""
    since = base.get("attribution_since")
    current, args = current_rows(conn, table, base["columns"], pk, exclude, since=since)
    if since is None:  # a baseline from before attribution existed: nothing can be attributed
        current = sql.SQL("SELECT x.*, false AS app FROM ({}) x").format(current)
    keys = sql.SQL(", ").join(sql.Identifier(c) for c in pk)
    pk_text = sql.Identifier(pk[0]) if len(pk) == 1 else sql.SQL("ROW({})").format(keys)
    statement = sql.SQL(_COMPARE_SQL).format(
        current=current,
        pk_text=sql.SQL("({})::text").format(pk_text),
        rows=sql.Identifier(RUNBOOK_SCHEMA, base["rows_table"]),
        pk=keys,
    )
    with conn.cursor() as cur:
        cur.execute(statement, dict(args, limit=max(limit, 0)))
        row = cur.fetchone()
    result.inserted, result.deleted, result.app_updated, result.changed = (int(v) for v in row[:4])
    result.samples = {
        name: list(v or []) for name, v in zip(("inserted", "deleted", "app_updated", "changed"), row[4:], strict=True)
    }


def structure_lost(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """Triggers, policies and RLS of the baseline that are gone or changed."""
    lost = []
    for trig, state in (before.get("triggers") or {}).items():
        if now["triggers"].get(trig) != state:
            lost.append(f"trigger {trig} ({state} -> {now['triggers'].get(trig)})")
    lost += [f"policy {p}" for p in before.get("policies", []) if p not in now["policies"]]
    if before.get("rls") and not now["rls"]:
        lost.append("row level security")
    return lost


def compare_legacy(conn: Any, key: str = BASELINE_KEY, sample_limit: int = 10) -> list[TableComparison] | None:
    """Every legacy table of the baseline against now (None when there is no baseline)."""
    baseline = read_baseline(conn, key)
    if not baseline:
        return None
    out = []
    with conn.transaction():
        _pin_settings(conn)
        with conn.cursor() as cur:
            cur.execute("SET LOCAL work_mem = '64MB'")  # the full joins are hash joins over every row
        for table, base in baseline.items():
            if not table_exists(conn, table):
                out.append(TableComparison(table, base["rows"], None, base["checksum"], None, bool(base.get("rows_table"))))
                continue
            comparison = compare_table(conn, table, base, sample_limit)
            comparison.structure_lost = structure_lost(base["structure"], structure(conn, table))
            out.append(comparison)
    return out


# --------------------------------------------------------------------------- re-baselining


def rebaseline(
    conn: Any, run_id: str | None, who: str, reason: str, key: str = BASELINE_KEY, flags: Sequence[str] = FEATURE_FLAGS
) -> dict[str, Any]:
    """Replace the baseline with the legacy tables as they are now, recording why, by whom and what differed. Commits."""
    before = read_baseline(conn, key)
    differences = [c.as_dict() for c in (compare_legacy(conn, key) or [])]
    conn.commit()
    summary = capture(conn, run_id, key, flags, reason=reason)
    previous = {
        t: dict(rows=b["rows"], checksum=b["checksum"], captured_at=b["captured_at"], run_id=b["run_id"])
        for t, b in before.items()
    }
    with conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO {RUNBOOK_SCHEMA}.baseline_history (baseline_key, replaced_by, run_id, reason, previous, differences) "
            "VALUES (%s, %s, %s, %s, %s::jsonb, %s::jsonb)",
            (key, who, run_id, reason, json.dumps(previous, default=str), json.dumps(differences, default=str)),
        )
    conn.commit()
    return dict(previous=previous, differences=differences, captured=summary)


def archive_baseline(conn: Any, key: str, archived_key: str) -> bool:
    """Keep the baseline's summary (rows, checksums) under `archived_key` and drop its row tables: after a
    rollback, a later migration starts from a fresh baseline. True when there was one to archive. No commit."""
    baseline = read_baseline(conn, key)
    if not baseline:
        return False
    for entry in baseline.values():
        if entry.get("rows_table"):
            with conn.cursor() as cur:
                cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(RUNBOOK_SCHEMA, entry["rows_table"])))
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {RUNBOOK_SCHEMA}.baseline WHERE baseline_key = %s", (archived_key,))
        cur.execute(
            f"UPDATE {RUNBOOK_SCHEMA}.baseline SET baseline_key = %s, rows_table = NULL WHERE baseline_key = %s",
            (archived_key, key),
        )
    return True
