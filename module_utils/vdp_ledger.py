# The ledger: which versions of the migration are applied to a database, with their checksums,
# timings, attempts and who applied them (vdp_runbook.schema_migrations), and the runners that
# apply a SQL file and record it in the SAME transaction (or, for a file that cannot run in one -
# CREATE INDEX CONCURRENTLY - statement by statement, recorded when every statement succeeded),
# each attempt bounded by lock_timeout and retried with backoff.
"""The schema-migrations ledger and the runners that apply (and revert) versioned SQL files."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - reported by the module through vdp_pg.connect
    psycopg = None  # type: ignore[assignment]

from ansible.module_utils.vdp_legacy import table_exists
from ansible.module_utils.vdp_lockwait import LockPolicy
from ansible.module_utils.vdp_names import RUNBOOK_SCHEMA
from ansible.module_utils.vdp_sqlfiles import MigrationFile, Statement

# --------------------------------------------------------------------------- runbook schema

_RUNBOOK_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {RUNBOOK_SCHEMA};
REVOKE ALL ON SCHEMA {RUNBOOK_SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {RUNBOOK_SCHEMA}.schema_migrations (
  version       text PRIMARY KEY,
  name          text NOT NULL,
  kind          text NOT NULL CHECK (kind IN ('schema', 'data', 'indexes', 'other')),
  checksum      text NOT NULL CHECK (checksum ~ '^[0-9a-f]{{64}}$'),
  applied_at    timestamptz NOT NULL DEFAULT now(),
  duration_ms   bigint NOT NULL,
  applied_by    text NOT NULL,
  run_id        text,
  transactional boolean NOT NULL DEFAULT true,
  attempts      integer NOT NULL DEFAULT 1,
  details       jsonb NOT NULL DEFAULT '{{}}'::jsonb
);
CREATE TABLE IF NOT EXISTS {RUNBOOK_SCHEMA}.baseline (
  baseline_key text NOT NULL,
  table_name   text NOT NULL,
  columns      text[] NOT NULL,
  row_count    bigint NOT NULL,
  checksum     text NOT NULL,
  structure    jsonb NOT NULL DEFAULT '{{}}'::jsonb,
  captured_at  timestamptz NOT NULL DEFAULT now(),
  run_id       text,
  PRIMARY KEY (baseline_key, table_name)
);
"""


def runbook_ready(conn: Any) -> bool:
    return table_exists(conn, f"{RUNBOOK_SCHEMA}.schema_migrations") and table_exists(conn, f"{RUNBOOK_SCHEMA}.baseline")


def ensure_runbook_schema(conn: Any) -> bool:
    """Create vdp_runbook and its tables when missing (commits). True when something was created."""
    if runbook_ready(conn):
        return False
    with conn.cursor() as cur:
        cur.execute(_RUNBOOK_DDL)
    conn.commit()
    return True


# --------------------------------------------------------------------------- ledger


@dataclass
class LedgerRow:
    version: str
    kind: str
    checksum: str
    applied_at: str
    duration_ms: int
    applied_by: str
    run_id: str | None
    details: dict[str, Any]


def ledger(conn: Any) -> dict[str, LedgerRow]:
    """Applied versions ({} when the ledger does not exist yet)."""
    if not table_exists(conn, f"{RUNBOOK_SCHEMA}.schema_migrations"):
        return {}
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT version, kind, checksum, applied_at, duration_ms, applied_by, run_id, details "
            f"FROM {RUNBOOK_SCHEMA}.schema_migrations ORDER BY version"
        )
        rows = cur.fetchall()
    return {r[0]: LedgerRow(r[0], r[1], r[2], r[3].isoformat(), int(r[4]), r[5], r[6], dict(r[7] or {})) for r in rows}


_RECORD_SQL = f"""
INSERT INTO {RUNBOOK_SCHEMA}.schema_migrations
  (version, name, kind, checksum, duration_ms, applied_by, run_id, transactional, attempts, details)
VALUES (%(version)s, %(name)s, %(kind)s, %(checksum)s, %(duration_ms)s, %(applied_by)s, %(run_id)s,
        %(transactional)s, %(attempts)s, %(details)s::jsonb)
"""


def record_version(conn: Any, **row: Any) -> None:
    row = dict(row)
    row["details"] = json.dumps(row.get("details") or {}, default=str, sort_keys=True)
    row.setdefault("transactional", True)
    row.setdefault("attempts", 1)
    with conn.cursor() as cur:
        cur.execute(_RECORD_SQL, row)


def delete_version(conn: Any, version: str) -> None:
    with conn.cursor() as cur:
        cur.execute(f"DELETE FROM {RUNBOOK_SCHEMA}.schema_migrations WHERE version = %s", (version,))


_CIC_RE = re.compile(
    r"^\s*CREATE\s+(?:UNIQUE\s+)?INDEX\s+CONCURRENTLY\s+(?:IF\s+NOT\s+EXISTS\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s+ON\s+"
    r"(?:ONLY\s+)?(?:(?P<schema>[A-Za-z_][A-Za-z0-9_]*)\.)?(?P<table>[A-Za-z_][A-Za-z0-9_]*)",
    re.IGNORECASE,
)

_INVALID_INDEX_SQL = """
SELECT n.nspname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relname = %s AND n.nspname = %s AND NOT i.indisvalid
"""


def invalid_index_for(conn: Any, statement: str) -> tuple[str, str] | None:
    """For CREATE INDEX CONCURRENTLY, (schema, name) of a leftover INVALID index of that name."""
    match = _CIC_RE.match(statement)
    if not match:
        return None
    schema = match.group("schema") or "public"
    with conn.cursor() as cur:
        cur.execute(_INVALID_INDEX_SQL, (match.group("name"), schema))
        row = cur.fetchone()
    return (schema, match.group("name")) if row else None


@dataclass
class ApplyOutcome:
    version: str
    attempts: int
    duration_ms: int
    statements: int
    rebuilt_invalid_indexes: list[str] = field(default_factory=list)


def run_transactional(
    conn: Any,
    mf: MigrationFile,
    statements: list[Statement],
    ledger_row: Callable[[int, int], dict[str, Any]] | None,
    policy: LockPolicy,
    delete_ledger: str | None = None,
) -> ApplyOutcome:
    """Run a file's statements and its ledger change in ONE transaction; retry it on lock timeout."""
    started = time.monotonic()

    def attempt() -> int:
        with conn.cursor() as cur:
            for st in statements:
                try:
                    cur.execute(st.text)
                except psycopg.Error as exc:
                    exc.add_note(f"{mf.path.name} line {st.line}")
                    raise
        return len(statements)

    count, attempts = policy.run(conn, attempt, conn.rollback, what=f"{mf.name}")
    duration = int((time.monotonic() - started) * 1000)
    if ledger_row is not None:
        record_version(conn, **ledger_row(duration, attempts))
    if delete_ledger:
        delete_version(conn, delete_ledger)
    conn.commit()
    return ApplyOutcome(mf.version, attempts, duration, count)


def run_autocommit(conn: Any, mf: MigrationFile, statements: list[Statement], policy: LockPolicy) -> ApplyOutcome:
    """Run a no-transaction file statement by statement; rebuild INVALID indexes left by a failed build."""
    started = time.monotonic()
    if conn.info.transaction_status != 0:  # end the read-only transaction of the checks before
        conn.commit()
    previous = conn.autocommit
    conn.autocommit = True
    rebuilt: list[str] = []
    total_attempts = 0
    try:
        for st in statements:

            def work(st: Statement = st) -> None:
                leftover = invalid_index_for(conn, st.text)
                if leftover is not None:
                    rebuilt.append(".".join(leftover))
                    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(*leftover)))
                try:
                    conn.execute(st.text)
                except psycopg.Error as exc:
                    exc.add_note(f"{mf.path.name} line {st.line}")
                    raise

            _, attempts = policy.run(conn, work, lambda: None, what=f"{mf.name} line {st.line}")
            total_attempts = max(total_attempts, attempts)
    finally:
        conn.autocommit = previous
    return ApplyOutcome(mf.version, max(total_attempts, 1), int((time.monotonic() - started) * 1000), len(statements), rebuilt)


def drift(files: Iterable[MigrationFile], applied: dict[str, LedgerRow]) -> list[dict[str, str]]:
    """Applied files whose content changed since: [{version, file, ledger_checksum, file_checksum}]."""
    return [
        dict(version=f.version, file=f.name, ledger_checksum=applied[f.version].checksum, file_checksum=f.checksum)
        for f in files
        if f.version in applied and applied[f.version].checksum != f.checksum
    ]


def invalid_indexes(conn: Any, tables: Iterable[str]) -> list[str]:
    """INVALID indexes (a failed CREATE INDEX CONCURRENTLY) on the given tables."""
    names = [t if "." in t else f"public.{t}" for t in tables]
    with conn.cursor() as cur:
        cur.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i WHERE NOT i.indisvalid "
            "AND i.indrelid = ANY (SELECT to_regclass(x) FROM unnest(%s::text[]) x)",
            (names,),
        )
        return [r[0] for r in cur.fetchall()]
