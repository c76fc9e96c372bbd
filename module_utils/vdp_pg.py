# Shared PostgreSQL plumbing for the runbook's modules: one connection helper, the run's
# session advisory lock, statement/lock timeouts, DDL retry and keyset batching.
# Every module imports this; nothing here is specific to one module.
"""Connection, advisory lock, timeouts and batching shared by the vdp_* modules."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

try:
    import psycopg
    from psycopg import sql

    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - reported by the module through fail_json
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR = str(exc)

# One advisory lock key for the whole migration, whoever runs it: two runs of the runbook
# against the same database can never overlap (the second fails fast and names the holder).
# The key is a fixed 64-bit number derived from the text 'vdp-organizational-migration'.
MIGRATION_LOCK_KEY = 0x56445020_4F524731  # "VDP ORG1"

APPLICATION_NAME_PREFIX = "vdp-runbook"


def pg_connection_argument_spec() -> dict[str, Any]:
    """Connection options, named as community.postgresql names them, with libpq env fallback."""
    return dict(
        login_host=dict(type="str", aliases=["host"], fallback=(_env, ["PGHOST"])),
        login_port=dict(type="int", aliases=["port"], fallback=(_env_int, ["PGPORT"])),
        login_user=dict(type="str", aliases=["user"], fallback=(_env, ["PGUSER"])),
        login_password=dict(type="str", no_log=True, aliases=["password"], fallback=(_env, ["PGPASSWORD"])),
        login_db=dict(type="str", aliases=["db", "dbname"], fallback=(_env, ["PGDATABASE"])),
        ssl_mode=dict(
            type="str",
            default="prefer",
            choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
        ),
        ca_cert=dict(type="path", aliases=["ssl_rootcert"]),
        connect_timeout=dict(type="int", default=10),
        application_name=dict(type="str", default=APPLICATION_NAME_PREFIX),
        lock_timeout=dict(type="str", default="5s"),
        statement_timeout=dict(type="str", default="0"),
    )


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


@dataclass(frozen=True)
class Target:
    """Where a module connects, without the password: safe to print and to put in reports."""

    host: str
    port: int
    dbname: str
    user: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"


def target_from_params(params: dict[str, Any]) -> Target:
    return Target(
        host=params.get("login_host") or "localhost",
        port=int(params.get("login_port") or 5432),
        dbname=params.get("login_db") or params.get("login_user") or "postgres",
        user=params.get("login_user") or "postgres",
    )


class ConnectionFailure(Exception):
    """A connection that could not be made, described in one line without any secret.

    `missing_database` tells a missing database (the server answered) from every other failure,
    for callers that can create it (a restore) or must only say so (preflight of staging).
    """

    def __init__(self, message: str, missing_database: bool = False) -> None:
        super().__init__(message)
        self.missing_database = missing_database


def connect(params: dict[str, Any], autocommit: bool = False) -> psycopg.Connection[Any]:
    """Open a psycopg connection from module params; errors become one secret-free line."""
    if not HAS_PSYCOPG:
        raise ConnectionFailure(f"the Python package psycopg (3.x) is required on the controller: {PSYCOPG_IMPORT_ERROR}")
    target = target_from_params(params)
    kwargs: dict[str, Any] = dict(
        host=target.host,
        port=target.port,
        dbname=target.dbname,
        user=target.user,
        sslmode=params.get("ssl_mode") or "prefer",
        connect_timeout=params.get("connect_timeout") or 10,
        application_name=params.get("application_name") or APPLICATION_NAME_PREFIX,
        autocommit=autocommit,
    )
    if params.get("login_password"):
        kwargs["password"] = params["login_password"]
    if params.get("ca_cert"):
        kwargs["sslrootcert"] = params["ca_cert"]
    try:
        conn = psycopg.connect(**kwargs)
    except psycopg.OperationalError as exc:
        text = str(exc)
        missing = "does not exist" in text and f'database "{target.dbname}"' in text
        raise ConnectionFailure(describe_connection_error(target, text, params.get("login_password")), missing) from None
    _apply_timeouts(conn, params)
    return conn


def describe_connection_error(target: Target, error: str, password: str | None = None) -> str:
    """Turn libpq's error into one line that names the target and what to check."""
    text = redact(error, password).strip().splitlines()[0] if error.strip() else "unknown error"
    low = error.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = f"check the password for user '{target.user}' (login_password / PGPASSWORD / vault / AWX credential)"
    elif "does not exist" in low and "database" in low:
        hint = f"database '{target.dbname}' does not exist on the server: check login_db / PGDATABASE"
    elif "role" in low and "does not exist" in low:
        hint = f"role '{target.user}' does not exist: check login_user / PGUSER"
    elif "connection refused" in low or "could not connect" in low or "no such file" in low:
        hint = "is the server running and listening there? check login_host/login_port, firewalls and pg_hba.conf"
    elif "timeout" in low or "timed out" in low:
        hint = "the server did not answer in time: check the network path and connect_timeout"
    elif "no pg_hba.conf entry" in low:
        hint = "the server's pg_hba.conf does not admit this client: ask the DBA to allow it"
    else:
        hint = "check the connection settings"
    return f"cannot connect to PostgreSQL at {target.host}:{target.port}/{target.dbname} as {target.user}: {text} -- {hint}"


def redact(text: str, *secrets: str | None) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "********")
    return text


def _apply_timeouts(conn: psycopg.Connection[Any], params: dict[str, Any]) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, false)", (params.get("lock_timeout") or "5s",))
        cur.execute("SELECT set_config('statement_timeout', %s, false)", (params.get("statement_timeout") or "0",))
    if not conn.autocommit:
        conn.commit()


# --------------------------------------------------------------------------- advisory lock


class LockHeld(Exception):
    """The migration lock is held by another session; the message names the holder."""


_HOLDER_SQL = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
       coalesce(a.client_addr::text, 'local'), a.backend_start, a.state
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
LIMIT 1
"""


def lock_holder(conn: psycopg.Connection[Any], key: int = MIGRATION_LOCK_KEY) -> str | None:
    """Describe who holds the migration lock, or None when nobody does."""
    classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    with conn.cursor() as cur:
        cur.execute(_HOLDER_SQL, (classid, objid))
        row = cur.fetchone()
    if row is None:
        return None
    pid, app, user, addr, since, state = row
    who = app or "no application_name"
    return f"pid {pid} ({who}, user {user}, from {addr}, connected since {since:%Y-%m-%d %H:%M:%S %Z}, {state})"


@contextmanager
def migration_lock(conn: psycopg.Connection[Any], key: int = MIGRATION_LOCK_KEY) -> Iterator[None]:
    """Hold the run's session advisory lock for the block; fail fast naming the holder."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        row = cur.fetchone()
    if not conn.autocommit:
        conn.commit()
    if not row or not row[0]:
        holder = lock_holder(conn, key) or "another session (it has just released it: retry)"
        raise LockHeld(
            f"another migration run holds the migration lock on this database: {holder}. "
            "Wait for it to finish, or stop it (SELECT pg_terminate_backend(pid)) if it is stale."
        )
    try:
        yield
    finally:
        try:
            if not conn.closed:
                if conn.info.transaction_status != 0:  # not idle: end the failed/open transaction first
                    conn.rollback()
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
                if not conn.autocommit:
                    conn.commit()
        except Exception:  # noqa: BLE001, S110 - the session end releases the lock anyway
            pass


# --------------------------------------------------------------------------- DDL retry


def is_lock_timeout(exc: BaseException) -> bool:
    return bool(HAS_PSYCOPG and isinstance(exc, psycopg.errors.LockNotAvailable))


def with_lock_retry(
    work: Callable[[], Any],
    on_retry: Callable[[], None],
    retries: int = 5,
    backoff_seconds: float = 1.0,
) -> tuple[Any, int]:
    """Run `work`; on lock_timeout call `on_retry` (rollback) and retry with backoff.

    Returns (result, attempts). Re-raises the last lock timeout after `retries` retries, so the
    caller can tell the operator which object stayed locked.
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return work(), attempt
        except Exception as exc:
            if not is_lock_timeout(exc) or attempt > retries:
                raise
            on_retry()
            time.sleep(backoff_seconds * (2 ** (attempt - 1)))


# --------------------------------------------------------------------------- batching


def keyset_batches(
    conn: psycopg.Connection[Any],
    query: sql.Composable | str,
    batch_size: int,
    start_after: Any = None,
    params: dict[str, Any] | None = None,
) -> Iterator[list[Any]]:
    """Yield lists of keys in ascending order, `batch_size` at a time, never all at once.

    `query` must select one key column, take %(after)s (NULL for the first batch) and
    %(limit)s, and order by the key, e.g.
    ``SELECT id FROM profiles WHERE (%(after)s::uuid IS NULL OR id > %(after)s) ORDER BY id LIMIT %(limit)s``.
    """
    after = start_after
    while True:
        args = dict(params or {}, after=after, limit=batch_size)
        with conn.cursor() as cur:
            cur.execute(query, args)
            keys = [r[0] for r in cur.fetchall()]
        if not keys:
            return
        yield keys
        after = keys[-1]
        if len(keys) < batch_size:
            return


def qualified(schema: str, name: str) -> sql.Composed:
    """A schema-qualified identifier, quoted safely."""
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def server_version_num(conn: psycopg.Connection[Any]) -> int:
    return int(conn.info.server_version)
