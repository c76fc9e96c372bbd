# The organizational-model migration engine: the ledger of versioned SQL files, the legacy
# baseline, the data step's rules (membership + roles, coach assignments) and the post-migration
# invariants, as SQL constants next to the small functions that run them. The vdp_* modules are
# thin: argument parsing, check mode, results; the SQL and its reasoning live here.
"""Engine code shared by the vdp_* migration modules: ledger, baseline, data-step rules, invariants."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - reported by the module through vdp_pg.connect
    psycopg = None  # type: ignore[assignment]

from ansible.module_utils.vdp_legacy import (
    LEGACY_CHECKSUM_EXCLUDE,
    LEGACY_TABLES,
    relationship_anomalies,
    relationship_classes_given_orphans,
    seed_pre_migration_counts,
    table_checksums,
    table_columns,
    table_exists,
)
from ansible.module_utils.vdp_pg import (
    APPLICATION_NAME_PREFIX,
    ConnectionFailure,
    LockHeld,
    connect,
    migration_lock,
    redact,
    with_lock_retry,
)

RUNBOOK_SCHEMA = "vdp_runbook"
MIGRATION_NAME = "20250103_organizational_model"
SCHEMA_VERSION = f"{MIGRATION_NAME}_schema"
DATA_VERSION = f"{MIGRATION_NAME}_data"
INDEXES_VERSION = f"{MIGRATION_NAME}_indexes"
BASELINE_KEY = "organizational_model"
DEFAULT_ORG_SLUG = "individual-users"  # fixed by the schema file's sign-up trigger
COACH_ROLE = "coach"
PRACTITIONER_ROLE = "practitioner"
# Columns the schema migration adds to profiles: never part of the legacy content checksum.
ADDED_PROFILE_COLUMNS: tuple[str, ...] = ("organization_id", "roles", "is_active", "last_activity")
NO_TRANSACTION_MARKER = "vdp:no-transaction"


class EngineError(Exception):
    """A refusal or failure the operator must act on; `details` go into the module result."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


# --------------------------------------------------------------------------- module plumbing


def application_name(params: dict[str, Any], component: str) -> str:
    """application_name naming the component and run id (what a lock holder message shows)."""
    given = params.get("application_name") or APPLICATION_NAME_PREFIX
    if given != APPLICATION_NAME_PREFIX:
        return given[:63]
    run_id = params.get("run_id")
    name = f"{APPLICATION_NAME_PREFIX}/{component}" + (f" run {run_id}" if run_id else "")
    return name[:63]


def applied_by(conn: Any, run_id: str | None) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        user = cur.fetchone()[0]
    who = f"{user} from {socket.gethostname()}"
    return f"{who} (run {run_id})" if run_id else who


def error_message(exc: BaseException, password: str | None = None) -> tuple[str, dict[str, Any]]:
    """One line for fail_json (no secret), plus structured details."""
    if isinstance(exc, EngineError):
        return redact(str(exc), password), dict(exc.details)
    if isinstance(exc, (ConnectionFailure, LockHeld)):
        return redact(str(exc), password), {}
    if psycopg is not None and isinstance(exc, psycopg.errors.LockNotAvailable):
        return (
            "timed out waiting for a lock (lock_timeout) after the bounded retries: another session holds a "
            "conflicting lock; find it in pg_locks / pg_stat_activity, let it finish or stop it, then re-run "
            f"({_first_line(exc)})",
            dict(sqlstate=exc.sqlstate),
        )
    if psycopg is not None and isinstance(exc, psycopg.Error):
        state = getattr(exc, "sqlstate", None)
        return redact(
            f"PostgreSQL error {state}: {_first_line(exc)} -- nothing of the failed step was committed; fix the cause "
            "and re-run (completed batches are kept)",
            password,
        ), dict(sqlstate=state)
    return redact(f"{type(exc).__name__}: {_first_line(exc)}", password), {}


def fail_cleanly(module: Any, exc: BaseException, result: dict[str, Any]) -> None:
    """fail_json with one secret-free line, the structured details and what the module had done so far."""
    msg, details = error_message(exc, module.params.get("login_password"))  # no_log options: never printed
    if not isinstance(exc, EngineError):
        details["exception"] = traceback.format_exc()
    result.pop("diff", None)
    module.fail_json(msg=msg, **{k: v for k, v in dict(result, **details).items() if k not in ("msg", "failed")})


def run_locked(
    module: Any, params: dict[str, Any], result: dict[str, Any], work: Callable[[Any, Any, dict[str, Any]], None]
) -> None:
    """The life of a writing module: connect with `params`, hold the migration lock while work(module, conn, result)
    runs, close; any failure becomes one clear line (fail_cleanly); the diff is returned only with --diff."""
    try:
        conn = connect(params)
        try:
            with migration_lock(conn):
                work(module, conn, result)
        finally:
            conn.close()
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear, secret-free line
        fail_cleanly(module, exc, result)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def kind_of(version: str) -> str:
    for kind in ("schema", "data", "indexes"):
        if version.endswith(f"_{kind}"):
            return kind
    return "other"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- migration files


@dataclass
class Statement:
    text: str
    line: int


@dataclass
class MigrationFile:
    version: str
    path: Path
    checksum: str
    transactional: bool
    kind: str
    revert_path: Path | None

    @property
    def name(self) -> str:
        return self.path.name


def discover(directory: str | Path) -> list[MigrationFile]:
    """Forward migration files (<version>.sql, not *.revert.sql), in version order."""
    root = Path(directory)
    if not root.is_dir():
        raise EngineError(f"migrations directory {root} does not exist: set the path to the project's migrations/ folder")
    files: list[MigrationFile] = []
    for path in sorted(root.glob("*.sql")):
        if path.name.endswith(".revert.sql"):
            continue
        data = path.read_bytes()
        version = path.name[: -len(".sql")]
        revert = path.with_name(f"{version}.revert.sql")
        files.append(
            MigrationFile(
                version=version,
                path=path,
                checksum=sha256_hex(data),
                transactional=not declares_no_transaction(data.decode("utf-8")),
                kind=kind_of(version),
                revert_path=revert if revert.exists() else None,
            )
        )
    return files


def declares_no_transaction(text: str) -> bool:
    """A file opts out of the single transaction with a comment line `-- vdp:no-transaction`."""
    return any(
        line.strip().lstrip("-").strip() == NO_TRANSACTION_MARKER for line in text.splitlines() if line.strip().startswith("--")
    )


_DOLLAR_TAG = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*\$|\$\$")


def split_statements(text: str) -> list[Statement]:
    """Split SQL into statements on top-level semicolons (quotes, comments, dollar quotes aware)."""
    statements: list[Statement] = []
    buf: list[str] = []
    i, n, line, start_line = 0, len(text), 1, None
    while i < n:
        ch = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if ch == "-" and nxt == "-":
            end = text.find("\n", i)
            end = n if end < 0 else end
            i = end
            continue
        if ch == "/" and nxt == "*":
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            line += text.count("\n", i, end)
            i = end
            buf.append(" ")
            continue
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if text[end] == ch and end + 1 < n and text[end + 1] == ch:
                    end += 2
                    continue
                if text[end] == ch:
                    break
                end += 1
            end = min(end + 1, n)
            chunk = text[i:end]
        elif ch == "$" and (m := _DOLLAR_TAG.match(text, i)):
            tag = m.group(0)
            close = text.find(tag, m.end())
            end = n if close < 0 else close + len(tag)
            chunk = text[i:end]
        elif ch == ";":
            stmt = "".join(buf).strip()
            if stmt:
                statements.append(Statement(stmt, start_line or line))
            buf, start_line = [], None
            i += 1
            continue
        else:
            chunk = ch
            end = i + 1
        if start_line is None and not chunk.isspace():
            start_line = line
        buf.append(chunk)
        line += chunk.count("\n")
        i = end
    stmt = "".join(buf).strip()
    if stmt:
        statements.append(Statement(stmt, start_line or line))
    return statements


_SET_LOCK_TIMEOUT = re.compile(r"^SET\s+(LOCAL\s+|SESSION\s+)?lock_timeout\b", re.IGNORECASE)


def body_statements(path: Path, transactional: bool) -> list[Statement]:
    """The statements to run: a transactional file's own BEGIN/COMMIT are left to the runner.

    A file's own `SET [LOCAL] lock_timeout` (there for squawk and for runs by hand) is skipped: the
    module's lock_timeout is authoritative, so the operator tunes it per environment, and the
    bounded retries are what make a short lock_timeout safe.
    """
    statements = [s for s in split_statements(path.read_text(encoding="utf-8")) if not _SET_LOCK_TIMEOUT.match(s.text)]
    if transactional:
        if statements and statements[0].text.upper() in ("BEGIN", "START TRANSACTION", "BEGIN TRANSACTION"):
            statements = statements[1:]
        if statements and statements[-1].text.upper() in ("COMMIT", "END", "COMMIT TRANSACTION"):
            statements = statements[:-1]
        inner = [s for s in statements if s.text.upper() in ("BEGIN", "COMMIT", "ROLLBACK", "END")]
        if inner:
            raise EngineError(
                f"{path.name} line {inner[0].line}: a transaction statement inside the file's body; a transactional "
                "file may only open with BEGIN and end with COMMIT (or declare '-- vdp:no-transaction')"
            )
    return statements


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
    retries: int,
    backoff: float,
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

    def once() -> int:
        count = attempt()
        return count

    def on_retry() -> None:
        conn.rollback()

    count, attempts = with_lock_retry(once, on_retry, retries=retries, backoff_seconds=backoff)
    duration = int((time.monotonic() - started) * 1000)
    if ledger_row is not None:
        record_version(conn, **ledger_row(duration, attempts))
    if delete_ledger:
        delete_version(conn, delete_ledger)
    conn.commit()
    return ApplyOutcome(mf.version, attempts, duration, count)


def run_autocommit(conn: Any, mf: MigrationFile, statements: list[Statement], retries: int, backoff: float) -> ApplyOutcome:
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

            _, attempts = with_lock_retry(work, lambda: None, retries=retries, backoff_seconds=backoff)
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


# --------------------------------------------------------------------------- baseline


def _structure(conn: Any, table: str) -> dict[str, Any]:
    """Triggers (name -> enabled state), policies and RLS flag of a table: what must survive."""
    regclass = sql.Identifier(*table.split(".", 1)).as_string(conn)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT tgname, tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND NOT tgisinternal ORDER BY tgname",
            (regclass,),
        )
        triggers = {r[0]: str(r[1]) for r in cur.fetchall()}
        cur.execute("SELECT polname FROM pg_policy WHERE polrelid = to_regclass(%s) ORDER BY polname", (regclass,))
        policies = [r[0] for r in cur.fetchall()]
        cur.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (regclass,))
        row = cur.fetchone()
    return dict(triggers=triggers, policies=policies, rls=bool(row and row[0]))


def legacy_columns(conn: Any, table: str) -> list[str]:
    columns = table_columns(conn, table)
    if table == "public.profiles":
        columns = [c for c in columns if c not in ADDED_PROFILE_COLUMNS]
    return columns


def legacy_snapshot(
    conn: Any, tables: Iterable[str] = LEGACY_TABLES, columns: dict[str, list[str]] | None = None
) -> dict[str, dict[str, Any]]:
    """Checksums (legacy columns only) and structure of every legacy table that exists."""
    existing = [t for t in tables if table_exists(conn, t)]
    cols = {t: (columns or {}).get(t) or legacy_columns(conn, t) for t in existing}
    sums = table_checksums(conn, existing, columns=cols, exclude=LEGACY_CHECKSUM_EXCLUDE)
    for table in sums:
        sums[table]["structure"] = _structure(conn, table)
    return sums


def read_baseline(conn: Any, key: str = BASELINE_KEY) -> dict[str, dict[str, Any]]:
    if not table_exists(conn, f"{RUNBOOK_SCHEMA}.baseline"):
        return {}
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT table_name, columns, row_count, checksum, structure, captured_at, run_id "
            f"FROM {RUNBOOK_SCHEMA}.baseline WHERE baseline_key = %s ORDER BY table_name",
            (key,),
        )
        rows = cur.fetchall()
    return {
        r[0]: dict(
            columns=list(r[1]),
            rows=int(r[2]),
            checksum=r[3],
            structure=dict(r[4] or {}),
            captured_at=r[5].isoformat(),
            run_id=r[6],
        )
        for r in rows
    }


def ensure_baseline(conn: Any, run_id: str | None, key: str = BASELINE_KEY) -> bool:
    """Capture the legacy tables' checksums once, before the migration's first write (commits)."""
    if read_baseline(conn, key):
        return False
    ensure_runbook_schema(conn)
    snapshot = legacy_snapshot(conn)
    with conn.cursor() as cur:
        for table, snap in snapshot.items():
            cur.execute(
                f"INSERT INTO {RUNBOOK_SCHEMA}.baseline "
                "(baseline_key, table_name, columns, row_count, checksum, structure, run_id) "
                "VALUES (%s, %s, %s, %s, %s, %s::jsonb, %s) ON CONFLICT DO NOTHING",
                (key, table, snap["columns"], snap["rows"], snap["checksum"], json.dumps(snap["structure"]), run_id),
            )
    conn.commit()
    return True


def drop_baseline(conn: Any, key: str = BASELINE_KEY) -> None:
    if table_exists(conn, f"{RUNBOOK_SCHEMA}.baseline"):
        with conn.cursor() as cur:
            cur.execute(f"DELETE FROM {RUNBOOK_SCHEMA}.baseline WHERE baseline_key = %s", (key,))


# --------------------------------------------------------------------------- target schema checks


def target_schema_missing(conn: Any) -> list[str]:
    """What of the target schema is missing (the data step needs the schema migration first)."""
    missing = [t for t in ("public.organizations", "public.practitioner_assignments") if not table_exists(conn, t)]
    present = set(table_columns(conn, "public.profiles"))
    missing += [f"public.profiles.{c}" for c in ADDED_PROFILE_COLUMNS if c not in present]
    return missing


def require_target_schema(conn: Any) -> None:
    missing = target_schema_missing(conn)
    if missing:
        raise EngineError(
            f"the target schema is not there ({', '.join(missing)} missing): apply {SCHEMA_VERSION} first "
            "(role schema_migration / playbooks/schema.yml)",
            missing=missing,
        )


def organization_id(conn: Any, slug: str) -> Any:
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM public.organizations WHERE slug = %s", (slug,))
        row = cur.fetchone()
    return row[0] if row else None


def require_organization(conn: Any, slug: str) -> Any:
    org = organization_id(conn, slug)
    if org is None:
        raise EngineError(
            f"organization {slug!r} does not exist: create it first (module vdp_organization, role org_data_migration)",
            organization_slug=slug,
        )
    return org


# --------------------------------------------------------------------------- roles rule
#
# DESIGN §4 roles rule. Seed meaning kept for "coach": anyone who is the sponsor of ANY
# relationship (active or not; the seed reads DISTINCT sponsor_id from all relationships),
# except a self-relationship (sponsoring oneself is not coaching anyone). "practitioner": anyone
# who is not a coach, or who is the practitioner of an ACTIVE relationship with someone else.
# A relationship whose practitioner has no profile still makes its sponsor a coach (the sponsor
# did coach someone; that person's account is gone).

ROLE_SOURCES_SQL = """
SELECT s.id, bool_or(s.coach) AS is_coach, bool_or(s.practitioner) AS is_active_practitioner
FROM (
  SELECT r.sponsor_id AS id, true AS coach, false AS practitioner
  FROM public.sponsor_practitioner_relationships r WHERE r.sponsor_id <> r.practitioner_id
  UNION ALL
  SELECT r.practitioner_id, false, true
  FROM public.sponsor_practitioner_relationships r WHERE r.active AND r.sponsor_id <> r.practitioner_id
) s GROUP BY s.id
"""

ROLES_EXPR = """CASE
  WHEN coalesce({s}.is_coach, false) AND coalesce({s}.is_active_practitioner, false) THEN ARRAY['coach', 'practitioner']::text[]
  WHEN coalesce({s}.is_coach, false) THEN ARRAY['coach']::text[]
  ELSE ARRAY['practitioner']::text[] END"""


def sign_in_expr(source: str | None, profile_alias: str = "p", key: str = "p.id") -> tuple[str, str]:
    """(join clause, COALESCE expression) for last_activity from wherever the sign-in lives."""
    if source == "profiles":
        return "", f"coalesce({profile_alias}.last_sign_in_at, {profile_alias}.created_at)"
    if source == "auth.users":
        return f"LEFT JOIN auth.users u ON u.id = {key}", f"coalesce(u.last_sign_in_at, {profile_alias}.created_at)"
    return "", f"{profile_alias}.created_at"


# --------------------------------------------------------------------------- membership


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


# The batches' role lookup. Only coaches need a row: whoever is not a coach gets {practitioner}
# whatever else is true (ROLES_EXPR), so the table holds the sponsors (about a sixth of the users
# in the fixture) with their final roles, not every user with two flags. Same rule as
# ROLE_SOURCES_SQL + ROLES_EXPR, written differently on purpose: validation recomputes the roles
# with those, so a mistake in either formulation shows up as a roles_rule failure.
COACH_ROLES_SQL = """
SELECT c.id,
       CASE WHEN EXISTS (SELECT 1 FROM public.sponsor_practitioner_relationships a
                         WHERE a.practitioner_id = c.id AND a.active AND a.sponsor_id <> a.practitioner_id)
            THEN ARRAY['coach', 'practitioner']::text[] ELSE ARRAY['coach']::text[] END AS roles
FROM (SELECT DISTINCT r.sponsor_id AS id FROM public.sponsor_practitioner_relationships r
      WHERE r.sponsor_id <> r.practitioner_id) c
"""
NON_COACH_ROLES = "ARRAY['practitioner']::text[]"

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


def _batch_sql(source: str | None, first: bool) -> str:
    join, activity = sign_in_expr(source, profile_alias="t", key="b.id")
    after = "" if first else "AND p.id > %(after)s"
    return f"""
    WITH batch AS (
      SELECT p.id FROM public.profiles p
      WHERE p.organization_id IS NULL {after}
      ORDER BY p.id LIMIT %(limit)s
    ), upd AS (
      UPDATE public.profiles t
      SET organization_id = %(org)s,
          roles = coalesce(s.roles, {NON_COACH_ROLES}),
          is_active = true,
          last_activity = {activity}
      FROM batch b
      LEFT JOIN pg_temp.vdp_coach_roles s ON s.id = b.id
      {join}
      WHERE t.id = b.id AND t.organization_id IS NULL
      RETURNING t.roles
    )
    SELECT (SELECT count(*) FROM upd),
           (SELECT count(*) FROM upd WHERE roles = ARRAY['coach']::text[]),
           (SELECT count(*) FROM upd WHERE roles = ARRAY['coach', 'practitioner']::text[]),
           (SELECT b.id FROM batch b ORDER BY b.id DESC LIMIT 1)
    """


# Every batch is planned as index nested loops: a batch touches batch_size profiles, and a hash or
# merge join would read the whole table (1M rows) per batch, which the planner picks for batches of
# ~20000 and more (its random_page_cost assumes uncached index probes). Transaction-local.
_PIN_BATCH_PLAN = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"

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
    max_batch_ms: int = 0
    trigger_suppression: str = SUPPRESS_ALTER


def _batch_prologue(mode: str, triggers: list[tuple[str, str]]) -> sql.Composed:
    if mode == SUPPRESS_REPLICA:
        hold_off = [sql.SQL("SET LOCAL session_replication_role = replica")]
    else:
        hold_off = [sql.SQL("ALTER TABLE public.profiles DISABLE TRIGGER {}").format(sql.Identifier(n)) for n, _ in triggers]
    return sql.SQL("; ").join([*hold_off, sql.SQL(_PIN_BATCH_PLAN)])


def _batch_epilogue(mode: str, triggers: list[tuple[str, str]]) -> sql.Composed | None:
    if mode == SUPPRESS_REPLICA or not triggers:
        return None  # SET LOCAL ends with the transaction
    return sql.SQL("; ").join(
        sql.SQL("ALTER TABLE public.profiles {} {}").format(sql.SQL(_ENABLE_MODE.get(m, "ENABLE TRIGGER")), sql.Identifier(n))
        for n, m in triggers
    )


def migrate_membership(
    conn: Any,
    org_id: Any,
    source: str | None,
    batch_size: int,
    pause: float = 0.0,
    retries: int = 5,
    backoff: float = 1.0,
    max_batches: int = 0,
    trigger_suppression: str = SUPPRESS_AUTO,
) -> MembershipProgress:
    """Keyset-batched UPDATE of profiles not yet migrated; one short transaction (commit) per batch.

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
    prologue, epilogue = _batch_prologue(mode, triggers), _batch_epilogue(mode, triggers)
    progress = MembershipProgress(trigger_suppression=mode)
    after: Any = None
    while True:

        def one_batch(after: Any = after) -> tuple[int, int, int, Any]:
            with conn.cursor() as cur:
                cur.execute(prologue)
                if mode == SUPPRESS_REPLICA:
                    cur.execute(_LOCK_ORGANIZATION_SQL, (org_id,))
                    if cur.fetchone() is None:
                        raise EngineError(_ORGANIZATION_GONE)
                cur.execute(_batch_sql(source, after is None), dict(after=after, limit=batch_size, org=org_id))
                row = cur.fetchone()
                if epilogue is not None:
                    cur.execute(epilogue)
            conn.commit()
            return int(row[0]), int(row[1]), int(row[2]), row[3]

        started = time.monotonic()
        (done, coach_only, both, last), attempts = with_lock_retry(
            one_batch, conn.rollback, retries=retries, backoff_seconds=backoff
        )
        progress.lock_retries += attempts - 1
        progress.max_batch_ms = max(progress.max_batch_ms, int((time.monotonic() - started) * 1000))
        if last is None:
            break
        progress.batches += 1
        progress.migrated += done
        progress.coach_only += coach_only
        progress.coach_and_practitioner += both
        after = last
        if max_batches and progress.batches >= max_batches:
            break
        if pause > 0:
            time.sleep(pause)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS pg_temp.vdp_coach_roles")
    conn.commit()
    return progress


# --------------------------------------------------------------------------- capacity


def organization_capacity(conn: Any, org_id: Any) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SELECT max_users FROM public.organizations WHERE id = %s", (org_id,))
        row = cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


def set_capacity(conn: Any, org_id: Any, max_users: int) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE public.organizations SET max_users = %s WHERE id = %s", (max_users, org_id))
    conn.commit()


# --------------------------------------------------------------------------- coach assignments

VALID_PAIRS_SQL = """
SELECT r.sponsor_id, r.practitioner_id, min(r.created_at) AS assigned_at, count(*) AS source_rows
FROM public.sponsor_practitioner_relationships r
WHERE r.active AND r.sponsor_id <> r.practitioner_id
  AND EXISTS (SELECT 1 FROM public.profiles ps WHERE ps.id = r.sponsor_id)
  AND EXISTS (SELECT 1 FROM public.profiles pp WHERE pp.id = r.practitioner_id)
GROUP BY r.sponsor_id, r.practitioner_id
"""

_ASSIGNMENT_EXISTS = """EXISTS (SELECT 1 FROM public.practitioner_assignments a
  WHERE a.practitioner_id = {v}.practitioner_id AND a.supervisor_id = {v}.sponsor_id
    AND a.supervisor_role = 'coach' AND a.organization_id = %(org)s)"""


def assignments_plan(conn: Any, org_id: Any, schema_ready: bool = True) -> dict[str, int]:
    """Read-only: valid distinct active pairs, how many already have their assignment, source rows.

    With schema_ready=False or no organization yet (check mode before those exist) none is present.
    """
    exists = _ASSIGNMENT_EXISTS.format(v="v") if schema_ready and org_id is not None else "false"
    query = f"""
    WITH v AS ({VALID_PAIRS_SQL})
    SELECT count(*), count(*) FILTER (WHERE {exists}), coalesce(sum(source_rows), 0), count(*) FILTER (WHERE source_rows > 1)
    FROM v
    """
    with conn.cursor() as cur:
        cur.execute(query, dict(org=org_id))
        pairs, present, rows, duplicated = cur.fetchone()
    return dict(
        valid_pairs=int(pairs),
        already_present=int(present),
        pending=int(pairs) - int(present),
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


# Every non-self pair of the relationships, in one pass with two hash joins to profiles: whether a
# person of the pair has no profile (orphan), its active rows and their earliest created_at. The
# valid pairs are what assignments_plan's VALID_PAIRS_SQL selects (not orphan, an active row); the
# orphan pairs give the report's orphan relationships without a second pass over every row.
ALL_PAIRS_SQL = """
SELECT r.practitioner_id, r.sponsor_id,
       ps.id IS NULL OR pp.id IS NULL AS orphan,
       min(r.created_at) FILTER (WHERE r.active) AS assigned_at,
       count(*) FILTER (WHERE r.active) AS source_rows
FROM public.sponsor_practitioner_relationships r
LEFT JOIN public.profiles ps ON ps.id = r.sponsor_id
LEFT JOIN public.profiles pp ON pp.id = r.practitioner_id
WHERE r.sponsor_id <> r.practitioner_id
GROUP BY r.practitioner_id, r.sponsor_id, ps.id IS NULL OR pp.id IS NULL
"""
ORPHAN_PAIRS = "(SELECT sponsor_id, practitioner_id FROM pg_temp.vdp_pairs WHERE orphan)"


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
    _INSERT_BATCH_SQL: ~1.5 s less than batches in (sponsor_id, practitioner_id) order).
    """
    valid = "NOT v.orphan AND v.source_rows > 0"
    pending = valid if none_present else f"CASE WHEN {valid} THEN NOT {_ASSIGNMENT_EXISTS.format(v='v')} ELSE false END"
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


_PAIR_BATCH_SQL = """
SELECT sponsor_id, practitioner_id, assigned_at FROM pg_temp.vdp_pairs
WHERE pending {cond} ORDER BY practitioner_id, sponsor_id LIMIT %(limit)s
"""

# One statement per batch, server side: the batch is read from the session's pair table and
# inserted without a round trip of its rows through the controller. The batch is a range of
# practitioners (keyset order); its rows are inserted in sponsor order, which is the order the
# foreign-key checks run in (after the statement, one per row and key): the sponsors' profiles are
# then looked up in one ascending sweep instead of at random (measured at 1M users: ~1 s less).
_INSERT_BATCH_SQL = f"""
WITH batch AS ({_PAIR_BATCH_SQL}),
ins AS (
  INSERT INTO public.practitioner_assignments
    (practitioner_id, supervisor_id, supervisor_role, organization_id, assigned_at, active)
  SELECT b.practitioner_id, b.sponsor_id, 'coach', %(org)s, b.assigned_at, true FROM batch b ORDER BY b.sponsor_id
  ON CONFLICT (practitioner_id, supervisor_id, supervisor_role, organization_id) DO NOTHING
  RETURNING 1
),
last AS (SELECT practitioner_id, sponsor_id FROM batch ORDER BY practitioner_id DESC, sponsor_id DESC LIMIT 1)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM batch), (SELECT practitioner_id FROM last), (SELECT sponsor_id FROM last)
"""

_INSERT_ASSIGNMENTS_SQL = """
INSERT INTO public.practitioner_assignments
  (practitioner_id, supervisor_id, supervisor_role, organization_id, assigned_at, active)
SELECT x.practitioner_id, x.sponsor_id, 'coach', %(org)s, x.assigned_at, true
FROM unnest(%(sponsors)s::uuid[], %(practitioners)s::uuid[], %(assigned)s::timestamptz[])
     AS x(sponsor_id, practitioner_id, assigned_at)
ON CONFLICT (practitioner_id, supervisor_id, supervisor_role, organization_id) DO NOTHING
"""


@dataclass
class AssignmentProgress:
    inserted: int = 0
    batches: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    failed_count: int = 0
    lock_retries: int = 0


def _insert_rows(conn: Any, org_id: Any, rows: list[tuple[Any, Any, Any]]) -> int:
    with conn.cursor() as cur:
        cur.execute(
            _INSERT_ASSIGNMENTS_SQL,
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
        cur.execute(_PAIR_BATCH_SQL.format(cond=cond), dict(args, limit=batch_size))
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
                progress.failed.append(dict(sponsor_id=str(row[0]), practitioner_id=str(row[1]), error=_first_line(exc)))
    return (rows[-1][1], rows[-1][0]) if rows else None  # (practitioner_id, sponsor_id)


def migrate_assignments(
    conn: Any, org_id: Any, batch_size: int, retries: int = 5, backoff: float = 1.0, sample_limit: int = 20
) -> AssignmentProgress:
    """Insert one coach assignment per pending pair of pg_temp.vdp_pairs (see build_pairs), a batch
    per transaction, ON CONFLICT DO NOTHING.

    One bad row never sinks the rest: if a batch fails on a data error (e.g. a profile deleted
    meanwhile: foreign key), it is redone row by row and the failing rows are reported.
    """
    progress = AssignmentProgress()
    after: tuple[Any, Any] | None = None
    while True:
        cond, args = _keyset(after)

        def batch(cond: str = cond, args: dict[str, Any] = args) -> tuple[int, int, Any, Any]:
            with conn.cursor() as cur:
                cur.execute(_INSERT_BATCH_SQL.format(cond=cond), dict(args, limit=batch_size, org=org_id))
                inserted, taken, last_p, last_s = cur.fetchone()
            conn.commit()
            return int(inserted), int(taken), last_p, last_s

        try:
            (inserted, taken, last_p, last_s), attempts = with_lock_retry(
                batch, conn.rollback, retries=retries, backoff_seconds=backoff
            )
        except (psycopg.errors.IntegrityError, psycopg.errors.DataError):
            conn.rollback()
            progress.batches += 1
            after = _insert_one_by_one(conn, org_id, after, batch_size, progress, sample_limit)
            if after is None:
                break
            continue
        if taken == 0:
            break
        progress.batches += 1
        progress.inserted += inserted
        progress.lock_retries += attempts - 1
        after = (last_p, last_s)
        if taken < batch_size:
            break
    drop_pairs(conn)
    return progress


# --------------------------------------------------------------------------- data-step fingerprint


def data_step_checksum() -> str:
    """sha256 of the data step's rules (its SQL): what the ledger records for the _data version."""
    text = "\n".join(
        (
            ROLE_SOURCES_SQL,
            ROLES_EXPR,
            COACH_ROLES_SQL,
            _PIN_BATCH_PLAN,
            _batch_sql("profiles", False),
            _batch_sql("auth.users", False),
            VALID_PAIRS_SQL,
            ALL_PAIRS_SQL,
            _INSERT_BATCH_SQL,
        )
    )
    return sha256_hex(text.encode("utf-8"))


# --------------------------------------------------------------------------- post-migration facts

# The seed's "Post-Migration Validation" and "data integrity" queries, metric names verbatim.
SEED_POST_MIGRATION_SQL = """
SELECT 'Users with Organization' AS metric, COUNT(*) AS count FROM public.profiles WHERE organization_id IS NOT NULL
UNION ALL
SELECT 'Coach Assignments Created', COUNT(*) FROM public.practitioner_assignments WHERE supervisor_role = 'coach'
UNION ALL
SELECT 'Users with Roles Assigned', COUNT(*) FROM public.profiles WHERE roles IS NOT NULL AND array_length(roles, 1) > 0
"""

SEED_INTEGRITY_SQL = """
SELECT 'Orphaned Users' AS issue, COUNT(*) AS count FROM public.profiles WHERE organization_id IS NULL
UNION ALL
SELECT 'Missing Role Assignments', COUNT(*) FROM public.profiles WHERE roles IS NULL OR array_length(roles, 1) = 0
UNION ALL
SELECT 'Invalid Organization References', COUNT(*)
FROM public.profiles p LEFT JOIN public.organizations o ON p.organization_id = o.id
WHERE p.organization_id IS NOT NULL AND o.id IS NULL
"""


def metric_rows(conn: Any, query: str) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute(query)
        return {str(name): int(count) for name, count in cur.fetchall()}


def _count_and_sample(conn: Any, query: str, params: dict[str, Any], limit: int) -> tuple[int, list[Any]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM ({query}) q", params)
        count = int(cur.fetchone()[0])
        cur.execute(f"SELECT * FROM ({query}) q LIMIT %(limit)s", dict(params, limit=limit))
        sample = [[str(v) if v is not None else None for v in row] for row in cur.fetchall()]
    return count, sample


def roles_mismatches_sql() -> str:
    return f"""
    SELECT p.id, p.roles, {ROLES_EXPR.format(s="s")} AS expected
    FROM public.profiles p LEFT JOIN ({ROLE_SOURCES_SQL}) s ON s.id = p.id
    WHERE p.roles IS DISTINCT FROM {ROLES_EXPR.format(s="s")}
    """


def last_activity_mismatches_sql(source: str | None) -> str:
    join, expr = sign_in_expr(source, profile_alias="p", key="p.id")
    return (
        f"SELECT p.id, p.last_activity, {expr} AS expected FROM public.profiles p {join} "
        f"WHERE p.last_activity IS DISTINCT FROM {expr}"
    )


MISSING_ASSIGNMENTS_SQL = f"""
SELECT v.sponsor_id, v.practitioner_id, v.assigned_at FROM ({VALID_PAIRS_SQL}) v
WHERE NOT EXISTS (SELECT 1 FROM public.practitioner_assignments a
  WHERE a.supervisor_id = v.sponsor_id AND a.practitioner_id = v.practitioner_id AND a.supervisor_role = 'coach'
    AND a.organization_id = %(org)s AND a.assigned_at = v.assigned_at AND a.active)
"""

UNEXPECTED_ASSIGNMENTS_SQL = f"""
SELECT a.supervisor_id, a.practitioner_id, a.assigned_at FROM public.practitioner_assignments a
WHERE a.supervisor_role = 'coach' AND a.organization_id = %(org)s
  AND NOT EXISTS (SELECT 1 FROM ({VALID_PAIRS_SQL}) v
                  WHERE v.sponsor_id = a.supervisor_id AND v.practitioner_id = a.practitioner_id)
"""


def _privileges(conn: Any, role: str, table: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone() is None:
            return []
        cur.execute(
            "SELECT p FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE']) p "
            "WHERE has_table_privilege(%s, to_regclass(%s), p)",
            (role, table),
        )
        return [r[0] for r in cur.fetchall()]


def _rls(conn: Any, table: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (table,))
        row = cur.fetchone()
    return bool(row and row[0])


def _trigger_state(conn: Any, table: str, name: str) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s", (table, name))
        row = cur.fetchone()
    return None if row is None else str(row[0])


def _fk_validated(conn: Any) -> bool | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'profiles_organization_id_fkey' "
            "AND conrelid = 'public.profiles'::regclass"
        )
        row = cur.fetchone()
    return None if row is None else bool(row[0])


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    count: int = 0
    sample: list[Any] = field(default_factory=list)
    severity: str = "error"


def compare_legacy(conn: Any, key: str = BASELINE_KEY) -> tuple[list[Check], dict[str, Any]]:
    """Each legacy table's content checksum and structure against the stored baseline."""
    baseline = read_baseline(conn, key)
    if not baseline:
        return [
            Check(
                "legacy_baseline_present",
                False,
                f"no baseline '{key}' in {RUNBOOK_SCHEMA}.baseline: the schema/data "
                "phase stores it before its first write; run them through this runbook",
            )
        ], {}
    current = legacy_snapshot(conn, list(baseline), columns={t: b["columns"] for t, b in baseline.items()})
    checks: list[Check] = []
    report: dict[str, Any] = {}
    for table, base in baseline.items():
        now = current.get(table)
        same = now is not None and now["rows"] == base["rows"] and now["checksum"] == base["checksum"]
        report[table] = dict(
            rows_before=base["rows"],
            rows_after=now and now["rows"],
            checksum_before=base["checksum"],
            checksum_after=now and now["checksum"],
            unchanged=same,
        )
        checks.append(
            Check(
                f"legacy_unchanged:{table}",
                same,
                "content identical to the baseline (legacy columns only)"
                if same
                else f"{table} changed since the baseline: rows {base['rows']} -> {now and now['rows']}, "
                f"checksum {base['checksum']} -> {now and now['checksum']}",
            )
        )
        lost = []
        if now is not None:
            for trig, state in (base["structure"].get("triggers") or {}).items():
                if now["structure"]["triggers"].get(trig) != state:
                    lost.append(f"trigger {trig} ({state} -> {now['structure']['triggers'].get(trig)})")
            lost += [f"policy {p}" for p in base["structure"].get("policies", []) if p not in now["structure"]["policies"]]
            if base["structure"].get("rls") and not now["structure"]["rls"]:
                lost.append("row level security")
        checks.append(
            Check(
                f"legacy_structure_intact:{table}",
                not lost,
                "triggers, policies and RLS as in the baseline" if not lost else "changed: " + ", ".join(lost),
                count=len(lost),
            )
        )
    return checks, report


def reconciliation(conn: Any, org: Any) -> Check:
    """Every active relationship is accounted for: converted, collapsed duplicate, self or orphan."""
    active = seed_pre_migration_counts(conn)["Active Sponsor Relationships"]
    anomalies = relationship_anomalies(conn, 0)
    plan = assignments_plan(conn, org)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM public.practitioner_assignments WHERE supervisor_role = 'coach' AND organization_id = %s",
            (org,),
        )
        created = int(cur.fetchone()[0])
    accounted = (
        created
        + plan["duplicate_rows_collapsed"]
        + anomalies["self_relationships"]["active"]
        + anomalies["orphan_relationships"]["active"]
    )
    detail = (
        f"{active} active relationships = {created} coach assignments + {plan['duplicate_rows_collapsed']} duplicate rows "
        f"collapsed + {anomalies['self_relationships']['active']} self + {anomalies['orphan_relationships']['active']} orphan"
    )
    return Check(
        "active_relationships_reconciled",
        accounted == active,
        detail if accounted == active else f"{detail} = {accounted}: {active - accounted} unaccounted for",
        abs(active - accounted),
    )


def post_migration_checks(
    conn: Any,
    org_slug: str,
    sign_in_source: str | None,
    sample_limit: int = 10,
    capacity_policy: str = "raise",
    require_versions: Iterable[str] = (),
    baseline_key: str = BASELINE_KEY,
) -> tuple[list[Check], dict[str, Any]]:
    """Every invariant of DESIGN §4 as data: [Check], plus a report of supporting figures."""
    checks: list[Check] = []
    report: dict[str, Any] = {}
    missing = target_schema_missing(conn)
    if missing:
        return [Check("target_schema_present", False, f"missing: {', '.join(missing)}; apply {SCHEMA_VERSION} first")], report
    integrity = metric_rows(conn, SEED_INTEGRITY_SQL)
    for metric, name in (
        ("Orphaned Users", "every_profile_has_organization"),
        ("Missing Role Assignments", "every_profile_has_roles"),
        ("Invalid Organization References", "organization_references_valid"),
    ):
        checks.append(Check(name, integrity[metric] == 0, f"seed check '{metric}' = {integrity[metric]}", integrity[metric]))
    org = organization_id(conn, org_slug)
    checks.append(Check("default_organization_exists", org is not None, f"organization {org_slug!r}"))
    params = dict(org=org)
    n, sample = _count_and_sample(conn, roles_mismatches_sql(), {}, sample_limit)
    checks.append(
        Check(
            "roles_rule",
            n == 0,
            "roles follow the rule (coach: sponsors; practitioner: non-sponsors and active practitioners)"
            if n == 0
            else f"{n} profiles have other roles than the rule gives",
            n,
            sample,
        )
    )
    n, sample = _count_and_sample(conn, last_activity_mismatches_sql(sign_in_source), {}, sample_limit)
    checks.append(
        Check(
            "last_activity_rule",
            n == 0,
            f"last_activity = COALESCE(sign-in from {sign_in_source or 'nowhere'}, created_at) for all but {n} profiles",
            n,
            sample,
        )
    )
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.profiles WHERE is_active IS NOT TRUE")
        inactive = int(cur.fetchone()[0])
    checks.append(Check("is_active_set", inactive == 0, f"{inactive} profiles without is_active = true", inactive))
    if org is not None:
        n, sample = _count_and_sample(conn, MISSING_ASSIGNMENTS_SQL, params, sample_limit)
        checks.append(
            Check(
                "assignments_complete",
                n == 0,
                f"{n} valid active pairs without their coach assignment (with the earliest created_at)",
                n,
                sample,
            )
        )
        n, sample = _count_and_sample(conn, UNEXPECTED_ASSIGNMENTS_SQL, params, sample_limit)
        checks.append(
            Check(
                "assignments_only_valid_pairs",
                n == 0,
                f"{n} coach assignments without a valid active pair (self, orphan or inactive)",
                n,
                sample,
            )
        )
        with conn.cursor() as cur:
            cur.execute(
                "SELECT max_users, (SELECT count(*) FROM public.profiles WHERE organization_id = %(org)s) "
                "FROM public.organizations WHERE id = %(org)s",
                params,
            )
            max_users, members = cur.fetchone()
        fits = max_users is None or members <= max_users
        report["capacity"] = dict(max_users=max_users, members=int(members))
        checks.append(
            Check(
                "default_organization_capacity",
                fits,
                f"{members} members, max_users {max_users}",
                0 if fits else int(members) - int(max_users),
                severity="warning" if capacity_policy == "report" else "error",
            )
        )
    for table in ("public.organizations", "public.practitioner_assignments"):
        rls = _rls(conn, table)
        anon = _privileges(conn, "anon", table)
        checks.append(Check(f"rls_enabled:{table}", rls, "row level security enabled" if rls else "row level security is OFF"))
        checks.append(
            Check(f"anon_denied:{table}", not anon, "anon has no privilege" if not anon else f"anon may {', '.join(anon)}")
        )
    state = _trigger_state(conn, "public.profiles", "profiles_vdp_membership_defaults")
    checks.append(Check("signup_defaults_trigger", state not in (None, "D"), f"sign-up defaults trigger state {state}"))
    with conn.cursor() as cur:
        cur.execute(
            "SELECT flag_name, enabled FROM public.feature_flags WHERE flag_name = ANY(%s)",
            (["organizational_model", "multi_role_support"],),
        )
        flags = {r[0]: bool(r[1]) for r in cur.fetchall()}
    report["feature_flags"] = flags
    checks.append(Check("feature_flags_exist", len(flags) == 2, f"flags present: {sorted(flags)}"))
    applied = ledger(conn)
    report["ledger"] = sorted(applied)
    for version in require_versions:
        checks.append(Check(f"ledger:{version}", version in applied, "recorded" if version in applied else "not in the ledger"))
    fk = _fk_validated(conn)
    report["organization_fk_validated"] = fk
    if INDEXES_VERSION in applied:
        checks.append(Check("organization_fk_validated", bool(fk), f"profiles_organization_id_fkey convalidated = {fk}"))
    bad_indexes = invalid_indexes(conn, ["public.profiles", "public.practitioner_assignments", "public.organizations"])
    checks.append(Check("no_invalid_indexes", not bad_indexes, ", ".join(bad_indexes) or "none", len(bad_indexes)))
    if org is not None:
        checks.append(reconciliation(conn, org))
    legacy_checks, legacy_report = compare_legacy(conn, baseline_key)
    checks += legacy_checks
    report["legacy"] = legacy_report
    return checks, report
