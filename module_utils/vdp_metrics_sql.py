# The monitor gate's PostgreSQL source (the production database, read-only): connections against
# max_connections, long-running queries, lock waits, deadlock and rollback counters, recent sign-ins
# (wherever last_sign_in_at lives), Supabase's audit-log logins, pg_stat_statements' top queries when
# installed - and the writer of vdp_monitoring.alerts rows.
"""PostgreSQL metric source and alert writer of the vdp_monitor gate."""

from __future__ import annotations

import time
from typing import Any

from ansible.module_utils.vdp_metrics import MetricSpec, Sample, SourceDefaults, SourceUnreachable, utc_now
from ansible.module_utils.vdp_pg import APPLICATION_NAME_PREFIX, ConnectionFailure, connect

try:
    import psycopg
    from psycopg import sql
except ImportError:  # pragma: no cover - vdp_pg.connect reports the missing package
    psycopg = None  # type: ignore[assignment]

ALERTS_TABLE = "vdp_monitoring.alerts"
MONITORING_VERSION = "20250104_monitoring"
# Counting sign-ins scans auth.users (no index on last_sign_in_at): at most once a minute.
SIGN_IN_EVERY_SECONDS = 60.0

CONNECTIONS_SQL = """
SELECT count(*) FILTER (WHERE backend_type = 'client backend'), current_setting('max_connections')::integer
FROM pg_stat_activity
"""

# Active queries by query age, sessions idle in a transaction by transaction age; never our own session.
LONG_RUNNING_SQL = """
SELECT pid, coalesce(application_name, ''), state, coalesce(wait_event_type, ''),
       extract(EPOCH FROM clock_timestamp() - CASE WHEN state = 'active' THEN query_start ELSE xact_start END)::float8
FROM pg_stat_activity
WHERE backend_type = 'client backend' AND datname = current_database() AND pid <> pg_backend_pid()
  AND state IS DISTINCT FROM 'idle'
  AND CASE WHEN state = 'active' THEN query_start ELSE xact_start END < clock_timestamp() - make_interval(secs => %s)
ORDER BY 5 DESC
"""

LOCK_WAITS_SQL = """
SELECT a.pid, pg_blocking_pids(a.pid), l.mode, l.locktype, l.relation::regclass::text, coalesce(a.application_name, ''),
       extract(EPOCH FROM clock_timestamp() - coalesce(l.waitstart, a.query_start))::float8
FROM pg_stat_activity AS a INNER JOIN pg_locks AS l ON l.pid = a.pid AND NOT l.granted
WHERE a.datname = current_database()
ORDER BY 7 DESC
"""

COUNTERS_SQL = "SELECT xact_commit, xact_rollback, deadlocks FROM pg_stat_database WHERE datname = current_database()"

DETECT_SQL = """
SELECT
  EXISTS (SELECT 1 FROM information_schema.columns
          WHERE table_schema = 'auth' AND table_name = 'users' AND column_name = 'last_sign_in_at'),
  EXISTS (SELECT 1 FROM information_schema.columns
          WHERE table_schema = 'public' AND table_name = 'profiles' AND column_name = 'last_sign_in_at'),
  to_regclass('auth.audit_log_entries') IS NOT NULL,
  (SELECT n.nspname FROM pg_extension AS x INNER JOIN pg_namespace AS n ON n.oid = x.extnamespace
   WHERE x.extname = 'pg_stat_statements')
"""

SIGN_INS_SQL = "SELECT count(*) FROM {} WHERE last_sign_in_at > now() - make_interval(mins => %s)"
# Supabase's audit log records successful logins only (action 'login'): no failure ratio from it.
AUDIT_LOGINS_SQL = """
SELECT count(*) FROM auth.audit_log_entries
WHERE created_at > now() - make_interval(mins => %s) AND payload ->> 'action' = 'login'
"""

TOP_QUERIES_SQL = """
SELECT queryid::text, left(query, 300), calls, round({total}::numeric, 1)::float8, round({mean}::numeric, 2)::float8
FROM {view} ORDER BY {total} DESC LIMIT 5
"""

PGSS_COLUMNS_SQL = """
SELECT EXISTS (SELECT 1 FROM information_schema.columns
               WHERE table_schema = %s AND table_name = 'pg_stat_statements' AND column_name = 'total_exec_time')
"""


def gate_application_name(run_id: str | None) -> str:
    return f"{APPLICATION_NAME_PREFIX} monitor {run_id or ''}".strip()[:63]


class SqlSource(SourceDefaults):
    """Read-only samples of the production database; reconnects after a lost connection."""

    name = "sql"

    def __init__(self, params: dict[str, Any], options: dict[str, Any], thresholds: dict[str, Any]) -> None:
        self.params = dict(params, statement_timeout=options["statement_timeout"], lock_timeout="1s")
        self.options = options
        self.thresholds = thresholds
        self.conn: Any = None
        self.base: tuple[int, int, int] | None = None
        self.detected: tuple[bool, bool, bool, str | None] | None = None
        self.last_sign_in_sample = -1e18
        self._notes: list[str] = []

    def specs(self) -> list[MetricSpec]:
        t = self.thresholds
        return [
            MetricSpec("sql", "connections", label="client connections"),
            MetricSpec(
                "sql",
                "connection_usage_ratio",
                threshold=t.get("connection_usage_ratio"),
                threshold_name="connection_usage_ratio",
                unit="ratio",
                label="connections / max_connections",
            ),
            MetricSpec(
                "sql",
                "long_running_queries",
                threshold=t.get("long_running_queries"),
                threshold_name="long_running_queries",
                label=f"queries > {self.options['long_query_seconds']:g} s",
            ),
            MetricSpec("sql", "lock_waits", threshold=t.get("lock_waits"), threshold_name="lock_waits", label="lock waits"),
            MetricSpec(
                "sql", "deadlocks", threshold=t.get("deadlocks"), threshold_name="deadlocks", label="deadlocks since start"
            ),
            MetricSpec("sql", "rollbacks", label="rollbacks since start"),
            MetricSpec("sql", "recent_sign_ins", label=f"users signed in (last {self.options['sign_in_window_minutes']} min)"),
            MetricSpec("sql", "audit_log_logins", label=f"audit-log logins (last {self.options['sign_in_window_minutes']} min)"),
        ]

    def describe(self) -> str:
        return (
            "PostgreSQL (pg_stat_activity, pg_locks, pg_stat_database): client connections vs max_connections, "
            f"queries running > {self.options['long_query_seconds']:g} s, lock waits, deadlocks and rollbacks since the "
            f"gate started; sign-ins in the last {self.options['sign_in_window_minutes']} min where last_sign_in_at exists"
        )

    def _connection(self) -> Any:
        if self.conn is None or self.conn.closed:
            try:
                self.conn = connect(self.params, autocommit=True)
            except ConnectionFailure as exc:
                raise SourceUnreachable(str(exc)) from None
        return self.conn

    def sample(self) -> list[Sample]:
        try:
            conn = self._connection()
            if self.detected is None:
                self.detected = tuple(conn.execute(DETECT_SQL).fetchone())  # type: ignore[assignment]
                self._note_detection()
            return self._sample(conn)
        except SourceUnreachable:
            raise
        except Exception as exc:  # noqa: BLE001 - a lost connection or a failed query is an unanswered sample
            self._drop()
            state = getattr(exc, "sqlstate", None)
            raise SourceUnreachable(f"PostgreSQL query failed{f' ({state})' if state else ''}: {_first_line(exc)}") from None

    def _sample(self, conn: Any) -> list[Sample]:
        now = utc_now()
        out: list[Sample] = []
        used, max_conn = conn.execute(CONNECTIONS_SQL).fetchone()
        out.append(Sample(now, "sql", "connections", float(used), dict(max_connections=max_conn)))
        out.append(Sample(now, "sql", "connection_usage_ratio", used / max_conn if max_conn else None))
        longs = conn.execute(LONG_RUNNING_SQL, (float(self.options["long_query_seconds"]),)).fetchall()
        out.append(
            Sample(
                now,
                "sql",
                "long_running_queries",
                float(len(longs)),
                dict(
                    top=[
                        dict(pid=r[0], application_name=r[1], state=r[2], wait_event_type=r[3], seconds=round(r[4], 1))
                        for r in longs[:5]
                    ]
                ),
            )
            if longs
            else Sample(now, "sql", "long_running_queries", 0.0)
        )
        waits = conn.execute(LOCK_WAITS_SQL).fetchall()
        out.append(
            Sample(
                now,
                "sql",
                "lock_waits",
                float(len(waits)),
                dict(
                    waits=[
                        dict(
                            pid=r[0],
                            blocked_by=list(r[1] or []),
                            mode=r[2],
                            locktype=r[3],
                            relation=r[4],
                            application_name=r[5],
                            seconds=round(r[6] or 0.0, 1),
                        )
                        for r in waits[:5]
                    ]
                ),
            )
            if waits
            else Sample(now, "sql", "lock_waits", 0.0)
        )
        out.extend(self._counters(conn, now))
        out.extend(self._sign_ins(conn, now))
        return out

    def _counters(self, conn: Any, now: str) -> list[Sample]:
        row = conn.execute(COUNTERS_SQL).fetchone()
        if row is None:
            return []
        commits, rollbacks, deadlocks = (int(v or 0) for v in row)
        if self.base is None:
            self.base = (commits, rollbacks, deadlocks)
        d_commit, d_rollback, d_deadlock = commits - self.base[0], rollbacks - self.base[1], deadlocks - self.base[2]
        return [
            Sample(now, "sql", "deadlocks", float(d_deadlock)),
            Sample(now, "sql", "rollbacks", float(d_rollback), dict(commits=d_commit)),
        ]

    def _sign_ins(self, conn: Any, now: str) -> list[Sample]:
        assert self.detected is not None
        auth_users, profiles, audit, _ = self.detected
        if time.monotonic() - self.last_sign_in_sample < SIGN_IN_EVERY_SECONDS:
            return []
        self.last_sign_in_sample = time.monotonic()
        window = int(self.options["sign_in_window_minutes"])
        out: list[Sample] = []
        if auth_users or profiles:
            table = sql.SQL("auth.users") if auth_users else sql.SQL("public.profiles")
            (count,) = conn.execute(sql.SQL(SIGN_INS_SQL).format(table), (window,)).fetchone()
            where = "auth.users" if auth_users else "public.profiles"
            out.append(
                Sample(
                    now, "sql", "recent_sign_ins", float(count), dict(source=f"{where}.last_sign_in_at", window_minutes=window)
                )
            )
        if audit:
            (count,) = conn.execute(AUDIT_LOGINS_SQL, (window,)).fetchone()
            out.append(Sample(now, "sql", "audit_log_logins", float(count), dict(window_minutes=window)))
        return out

    def _note_detection(self) -> None:
        assert self.detected is not None
        auth_users, profiles, audit, pgss = self.detected
        if not (auth_users or profiles):
            self._notes.append("no last_sign_in_at on auth.users or public.profiles: sign-ins not sampled")
        if audit:
            self._notes.append("auth.audit_log_entries records successful logins only: login failures come from Prometheus")
        if not pgss:
            self._notes.append("pg_stat_statements not installed: top queries not sampled")

    def notes(self) -> list[str]:
        return list(self._notes)

    def finish(self) -> dict[str, Any]:
        """pg_stat_statements' top queries (normalised text), when the extension is there and readable."""
        if self.detected is None or not self.detected[3] or self.conn is None or self.conn.closed:
            return {}
        schema = self.detected[3]
        try:
            (exec_cols,) = self.conn.execute(PGSS_COLUMNS_SQL, (schema,)).fetchone()
            total, mean = ("total_exec_time", "mean_exec_time") if exec_cols else ("total_time", "mean_time")
            query = sql.SQL(TOP_QUERIES_SQL).format(
                total=sql.Identifier(total), mean=sql.Identifier(mean), view=sql.Identifier(schema, "pg_stat_statements")
            )
            rows = self.conn.execute(query).fetchall()
        except Exception as exc:  # noqa: BLE001 - e.g. not in shared_preload_libraries: say so, do not fail the gate
            self._notes.append(f"pg_stat_statements present but not readable: {_first_line(exc)}")
            return {}
        return dict(top_queries=[dict(queryid=r[0], query=r[1], calls=r[2], total_ms=r[3], mean_ms=r[4]) for r in rows])

    def _drop(self) -> None:
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:  # noqa: BLE001, S110 - already broken
                pass
        self.conn = None

    def close(self) -> None:
        self._drop()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --------------------------------------------------------------------------- alerts

INSERT_ALERT_SQL = (
    f"INSERT INTO {ALERTS_TABLE} (run_id, source, metric, value, threshold, severity, message) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id, alert_timestamp"
)


def write_alerts(params: dict[str, Any], rows: list[dict[str, Any]], run_id: str | None) -> dict[str, Any]:
    """Insert one row per alert in one transaction; never raises (the gate's verdict stands without them)."""
    out: dict[str, Any] = dict(table=ALERTS_TABLE, written=0, ids=[])
    if not rows:
        return out
    try:
        conn = connect(dict(params, lock_timeout="5s", statement_timeout="30s"))
    except ConnectionFailure as exc:
        out["not_written"] = f"alerts not recorded: {exc}"
        return out
    try:
        (present,) = conn.execute(f"SELECT to_regclass('{ALERTS_TABLE}') IS NOT NULL").fetchone()
        if not present:
            out["not_written"] = (
                f"alerts not recorded: {ALERTS_TABLE} does not exist - apply migration {MONITORING_VERSION} "
                "(the monitor role does)"
            )
            return out
        with conn.cursor() as cur:
            for r in rows:
                cur.execute(
                    INSERT_ALERT_SQL,
                    (run_id, r["source"], r["metric"], r.get("value"), r.get("threshold"), r["severity"], r["message"]),
                )
                ident, stamp = cur.fetchone()
                out["ids"].append(ident)
                out.setdefault("alert_timestamps", []).append(stamp.isoformat())
        conn.commit()
        out["written"] = len(rows)
    except Exception as exc:  # noqa: BLE001 - reported, never hides the verdict
        conn.rollback()
        out.update(written=0, ids=[], not_written=f"alerts not recorded: {_first_line(exc)}")
    finally:
        conn.close()
    return out
