# The connection helper every vdp_* module uses: one way to connect (community.postgresql's option
# names, the libpq environment as fallback so AWX credentials can inject it), errors described in
# the operator's words (the inventory key to fix, not the module option), session timeouts, and the
# session advisory lock that keeps two writing modules from ever overlapping.
"""Connection, timeouts and the migration's advisory lock, shared by the vdp_* modules."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ansible.module_utils.vdp_errors import OperatorError, first_line, redact
from ansible.module_utils.vdp_lockwait import LOCK_TIMEOUT
from ansible.module_utils.vdp_names import APPLICATION_NAME_PREFIX

try:
    import psycopg
    from psycopg import sql  # re-exported: the modules compose their SQL with it (psycopg.sql.Identifier)

    HAS_PSYCOPG = True
    PSYCOPG_IMPORT_ERROR: str | None = None
except ImportError as exc:  # pragma: no cover - reported by the module through fail_json
    HAS_PSYCOPG = False
    PSYCOPG_IMPORT_ERROR = str(exc)
    sql = None

# One advisory lock key for the whole migration, whoever runs it: two writing modules against the
# same database can never overlap (the second fails fast and names the holder). A fixed 64-bit
# number spelling "VDP ORG1".
MIGRATION_LOCK_KEY = 0x56445020_4F524731


# The inventory's database dicts (vdp_production_db, vdp_staging_db): a role passes the whole dict as `db`
# and the module maps it onto the login_* options here, once, instead of six lines in every task.
DB_OPTIONS: dict[str, Any] = dict(
    host=dict(type="str", required=True),
    port=dict(type="int", default=5432),
    dbname=dict(type="str", required=True),
    user=dict(type="str"),
    password=dict(type="str", no_log=True),
    ssl_mode=dict(type="str", default="prefer", choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]),
    ca_cert=dict(type="path"),
)
_DB_TO_LOGIN = {
    "host": "login_host",
    "port": "login_port",
    "dbname": "login_db",
    "user": "login_user",
    "password": "login_password",
    "ssl_mode": "ssl_mode",
    "ca_cert": "ca_cert",
}


def apply_db(params: dict[str, Any]) -> dict[str, Any]:
    """params with the `db` dict (when given) spread onto the login_* options it names."""
    db = params.get("db") or {}
    merged = dict(params)
    for key, option in _DB_TO_LOGIN.items():
        if db.get(key) not in (None, ""):
            merged[option] = db[key]
    return merged


def pg_connection_argument_spec() -> dict[str, Any]:
    """Connection options, named as community.postgresql names them, with libpq env fallback."""
    return dict(
        db=dict(type="dict", options=DB_OPTIONS),
        login_host=dict(type="str", aliases=["host"], fallback=(_env, ["PGHOST"])),
        login_port=dict(type="int", aliases=["port"], fallback=(_env_int, ["PGPORT"])),
        login_user=dict(type="str", aliases=["user"], fallback=(_env, ["PGUSER"])),
        login_password=dict(type="str", no_log=True, aliases=["password"], fallback=(_env, ["PGPASSWORD"])),
        login_db=dict(type="str", aliases=["dbname"], fallback=(_env, ["PGDATABASE"])),
        ssl_mode=dict(
            type="str",
            default="prefer",
            choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
        ),
        ca_cert=dict(type="path", aliases=["ssl_rootcert"]),
        connect_timeout=dict(type="int", default=10),
        application_name=dict(type="str", default=APPLICATION_NAME_PREFIX),
        lock_timeout=dict(type="str", default=LOCK_TIMEOUT),
        statement_timeout=dict(type="str", default="0"),
        inventory_key=dict(type="str", default="", no_log=False),
        connection_hint=dict(type="str", default=""),
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

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}/{self.dbname}"


def target_from_params(params: dict[str, Any]) -> Target:
    return Target(
        host=params.get("login_host") or "localhost",
        port=int(params.get("login_port") or 5432),
        dbname=params.get("login_db") or params.get("login_user") or "postgres",
        user=params.get("login_user") or "postgres",
    )


class ConnectionFailure(OperatorError):
    """A connection that could not be made, described in one line without any secret.

    `missing_database` tells a missing database (the server answered) from every other failure,
    for callers that can create it (a restore) or must only say so (preflight of staging).
    """

    def __init__(self, message: str, missing_database: bool = False) -> None:
        super().__init__(message)
        self.missing_database = missing_database


def connect(params: dict[str, Any], autocommit: bool = False) -> Any:
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
        raise ConnectionFailure(describe_connection_error(target, text, params), missing) from None
    _apply_timeouts(conn, params)
    return conn


def describe_connection_error(target: Target, error: str, params: dict[str, Any]) -> str:
    """libpq's error in one line: where, why, and which setting to fix (named as the operator sets it)."""
    text = redact(first_line(error) or "unknown error", params.get("login_password"))
    key = params.get("inventory_key") or ""
    where = lambda field, env: f"{key}.{field}" if key else env  # noqa: E731 - two words of wording
    low = error.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = (
            f"check the password of role '{target.user}' ({where('password', 'PGPASSWORD')} - from the vault file or the "
            "AWX credential)"
        )
    elif "does not exist" in low and "database" in low:
        hint = f"database '{target.dbname}' does not exist on that server: check {where('dbname', 'PGDATABASE')}"
    elif "role" in low and "does not exist" in low:
        hint = f"role '{target.user}' does not exist: check {where('user', 'PGUSER')}"
    elif "no pg_hba.conf entry" in low:
        hint = "the server's pg_hba.conf does not admit this client: ask the DBA to allow it"
    elif "connection refused" in low or "could not connect" in low or "no such file" in low:
        hint = (
            f"is the server running and listening there? check {where('host', 'PGHOST')} and "
            f"{where('port', 'PGPORT')}, firewalls and pg_hba.conf"
        )
    elif "timeout" in low or "timed out" in low:
        hint = f"the server did not answer in time: check {where('host', 'PGHOST')} and the network path"
    else:
        hint = f"check the connection settings ({key or 'PGHOST / PGPORT / PGUSER / PGDATABASE'})"
    extra = params.get("connection_hint") or ""
    return f"cannot connect to PostgreSQL at {target.address} as {target.user}: {text} -- {hint}" + (
        f"; {extra}" if extra else ""
    )


def _apply_timeouts(conn: Any, params: dict[str, Any]) -> None:
    with conn.cursor() as cur:
        cur.execute("SELECT set_config('lock_timeout', %s, false)", (params.get("lock_timeout") or LOCK_TIMEOUT,))
        cur.execute("SELECT set_config('statement_timeout', %s, false)", (params.get("statement_timeout") or "0",))
    if not conn.autocommit:
        conn.commit()


# --------------------------------------------------------------------------- advisory lock


class LockHeld(OperatorError):
    """The migration lock is held by another session; the message names the holder."""


_HOLDER_SQL = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.usename::text, ''),
       coalesce(a.client_addr::text, 'local'), a.backend_start, a.state
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted
  AND l.classid = %s AND l.objid = %s AND l.objsubid = 1
LIMIT 1
"""


def lock_holder(conn: Any, key: int = MIGRATION_LOCK_KEY) -> str | None:
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
def migration_lock(conn: Any, key: int = MIGRATION_LOCK_KEY) -> Iterator[None]:
    """Hold the migration's session advisory lock for the block; fail fast naming the holder."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
        row = cur.fetchone()
    if not conn.autocommit:
        conn.commit()
    if not row or not row[0]:
        holder = lock_holder(conn, key) or "another session (it has just released it: retry)"
        raise LockHeld(
            f"another migration run holds the migration lock on this database: {holder}. "
            "Wait for it to finish, or stop it (playbooks/stop.yml, or SELECT pg_terminate_backend(pid) if it is stale)."
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
