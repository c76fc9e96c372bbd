# One run at a time, for the whole run: the run lease.
#
# The advisory lock of vdp_pg excludes two WRITING modules at the same moment, but a run is more
# than that: preflight, backup, the staging restore and rehearsal, the production phases, the
# report. Two runs interleaving those (the second dropping staging under the first) is what the
# lease prevents. It is one row in production's vdp_runbook.run_lease: taken at preflight, renewed
# at the start of every phase (and by long steps as they go), released by the report.
#
# Whether a holder is alive is decided from evidence, never assumed:
#   - sessions of the run are connected to production (their application_name carries the run id):
#     alive, whatever else is true (ansible-playbook may be gone while its modules still run);
#   - the holder's controller process (ansible-playbook) is on this host and gone: dead;
#   - its heartbeat is older than its TTL: stale.
# A stale lease is taken over only when the operator names it (vdp_lease_takeover=<run id>), or
# resumed by re-running with the same run id; never silently. A cancel request on the lease row
# makes the batch loops stop cleanly between batches (playbooks/stop.yml).
"""The run lease (one run at a time), its liveness evidence, heartbeats and the cancel request."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ansible.module_utils.vdp_errors import OperatorError

RUNBOOK_SCHEMA = "vdp_runbook"
LEASE_TTL_SECONDS = 1800

_LEASE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {RUNBOOK_SCHEMA};
REVOKE ALL ON SCHEMA {RUNBOOK_SCHEMA} FROM PUBLIC;
CREATE TABLE IF NOT EXISTS {RUNBOOK_SCHEMA}.run_lease (
  singleton           boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  run_id              text NOT NULL,
  holder              text NOT NULL,
  controller_host     text NOT NULL,
  controller_pid      integer,
  phase               text,
  taken_at            timestamptz NOT NULL DEFAULT now(),
  heartbeat_at        timestamptz NOT NULL DEFAULT now(),
  ttl_seconds         integer NOT NULL CHECK (ttl_seconds > 0),
  released_at         timestamptz,
  cancel_requested_at timestamptz,
  cancel_requested_by text
);
CREATE TABLE IF NOT EXISTS {RUNBOOK_SCHEMA}.run_lease_log (
  id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at      timestamptz NOT NULL DEFAULT now(),
  run_id  text NOT NULL,
  event   text NOT NULL,
  holder  text NOT NULL,
  detail  text
);
"""

_READ_SQL = f"""
SELECT l.run_id, l.holder, l.controller_host, l.controller_pid, l.phase, l.taken_at, l.heartbeat_at, l.ttl_seconds,
       l.released_at, l.cancel_requested_at, l.cancel_requested_by,
       floor(extract(epoch FROM now() - l.heartbeat_at))::bigint,
       (SELECT count(*) FROM pg_stat_activity a
        WHERE a.pid <> pg_backend_pid() AND right(coalesce(a.application_name, ''), length(l.run_id) + 5) = ' run ' || l.run_id)
FROM {RUNBOOK_SCHEMA}.run_lease l
"""

_SESSIONS_SQL = """
SELECT a.pid, coalesce(a.application_name, ''), coalesce(a.state, ''), coalesce(a.datname::text, ''),
       to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')
FROM pg_stat_activity a
WHERE a.pid <> pg_backend_pid() AND right(coalesce(a.application_name, ''), length(%(run)s) + 5) = ' run ' || %(run)s
ORDER BY a.backend_start
"""

_TAKE_SQL = f"""
INSERT INTO {RUNBOOK_SCHEMA}.run_lease AS l (singleton, run_id, holder, controller_host, controller_pid, phase, ttl_seconds)
VALUES (true, %(run_id)s, %(holder)s, %(host)s, %(pid)s, %(phase)s, %(ttl)s)
ON CONFLICT (singleton) DO UPDATE SET
  run_id = excluded.run_id, holder = excluded.holder, controller_host = excluded.controller_host,
  controller_pid = excluded.controller_pid, phase = excluded.phase, ttl_seconds = excluded.ttl_seconds,
  taken_at = now(), heartbeat_at = now(), released_at = NULL, cancel_requested_at = NULL, cancel_requested_by = NULL
"""

_RENEW_SQL = f"""
UPDATE {RUNBOOK_SCHEMA}.run_lease SET heartbeat_at = now(), phase = coalesce(%(phase)s, phase),
  controller_host = %(host)s, controller_pid = %(pid)s, holder = %(holder)s, ttl_seconds = %(ttl)s
WHERE run_id = %(run_id)s AND released_at IS NULL
"""

_LOG_SQL = f"INSERT INTO {RUNBOOK_SCHEMA}.run_lease_log (run_id, event, holder, detail) VALUES (%s, %s, %s, %s)"
# The release of a migrate.yml run that deployed, validated, watched and contracted says so in the log's detail.
COMPLETE = "migration complete"
# The last lease event before `run_id` last took the lease (before anything, when it has not): whoever ran then.
_LAST_BEFORE_SQL = f"""
SELECT run_id, event, detail, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS "UTC"')
FROM {RUNBOOK_SCHEMA}.run_lease_log
WHERE id < coalesce((SELECT max(id) FROM {RUNBOOK_SCHEMA}.run_lease_log
                     WHERE run_id = %s AND event IN ('taken', 'taken_over', 'resumed')), 9223372036854775807)
ORDER BY id DESC
LIMIT 1
"""


class LeaseHeld(OperatorError):
    """Another run holds the lease and is (or may be) alive."""


class RunCancelled(OperatorError):
    """The operator asked the run to stop (playbooks/stop.yml); the step stopped between batches."""


@dataclass(frozen=True)
class Controller:
    """Who is asking: the operator (user@host or the AWX job) and the ansible-playbook process."""

    holder: str
    host: str
    pid: int | None


@dataclass
class Lease:
    run_id: str
    holder: str
    controller_host: str
    controller_pid: int | None
    phase: str | None
    taken_at: datetime
    heartbeat_at: datetime
    ttl_seconds: int
    released_at: datetime | None
    cancel_requested_at: datetime | None
    cancel_requested_by: str | None
    heartbeat_age: int
    active_sessions: int
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items()}
        for key in ("taken_at", "heartbeat_at", "released_at", "cancel_requested_at"):
            out[key] = out[key].isoformat() if out[key] is not None else None
        return out

    def describe(self) -> str:
        pid = f" pid {self.controller_pid}" if self.controller_pid else ""
        return (
            f"run {self.run_id} ({self.holder}, controller {self.controller_host}{pid}, phase {self.phase or '?'}, "
            f"heartbeat {self.heartbeat_age} s ago, {self.active_sessions} session(s) of it connected)"
        )


# --------------------------------------------------------------------------- who is asking


def controller_pid() -> int | None:
    """PID of the ansible-playbook process this module runs under (walking up /proc), None when there is none.

    The OUTERMOST one: Ansible's workers are forks of ansible-playbook (same command line) that live for one
    task, so the nearest such ancestor is a worker that is gone by the next task - a live run would look dead.
    """
    pid, found = os.getppid(), None
    for _ in range(16):
        if pid <= 1:
            break
        if "ansible-playbook" in _cmdline(pid):
            found = pid
        pid = _parent(pid)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return handle.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def process_alive(pid: int | None) -> bool:
    """True when `pid` runs an ansible-playbook on this host (a recycled PID running something else is dead)."""
    return bool(pid) and "ansible-playbook" in _cmdline(int(pid))  # type: ignore[arg-type]


def this_controller(operator: str | None = None) -> Controller:
    host = socket.gethostname()
    return Controller(operator or f"{os.environ.get('USER') or 'unknown'}@{host}", host, controller_pid())


# --------------------------------------------------------------------------- reading


def lease_table_exists(conn: Any) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{RUNBOOK_SCHEMA}.run_lease",))
        return bool(cur.fetchone()[0])


def read_lease(conn: Any, for_update: bool = False) -> Lease | None:
    if not lease_table_exists(conn):
        return None
    with conn.cursor() as cur:
        cur.execute(_READ_SQL + (" FOR UPDATE OF l" if for_update else ""))
        row = cur.fetchone()
        if row is None:
            return None
        lease = Lease(*row[:11], heartbeat_age=int(row[11]), active_sessions=int(row[12]))
        cur.execute(_SESSIONS_SQL, dict(run=lease.run_id))
        keys = ("pid", "application_name", "state", "database", "connected_since")
        lease.sessions = [dict(zip(keys, r, strict=True)) for r in cur.fetchall()]
    return lease


def staleness(lease: Lease, me: Controller) -> str | None:
    """Why the lease's holder is gone (None while it is, or may be, alive)."""
    if lease.released_at is not None:
        return "released"
    if lease.active_sessions:
        return None
    if lease.controller_host == me.host and lease.controller_pid and not process_alive(lease.controller_pid):
        where = f"pid {lease.controller_pid} on {lease.controller_host}"
        return f"its ansible-playbook ({where}) is gone and no session of it is connected"
    if lease.heartbeat_age > lease.ttl_seconds:
        return f"no heartbeat for {lease.heartbeat_age} s (TTL {lease.ttl_seconds} s) and none of its sessions is connected"
    return None


def _alive_elsewhere(lease: Lease, me: Controller) -> bool:
    """The same run id held by another live ansible-playbook on this host (two invocations of one run)."""
    return (
        lease.controller_host == me.host
        and bool(lease.controller_pid)
        and lease.controller_pid != me.pid
        and process_alive(lease.controller_pid)
    )


# --------------------------------------------------------------------------- taking and releasing


@dataclass
class LeaseOutcome:
    action: str  # taken | renewed | resumed | taken_over | released | none | would_take
    lease: Lease | None
    message: str = ""

    @property
    def changed(self) -> bool:
        return self.action in ("taken", "taken_over", "released", "resumed")


def acquire(
    conn: Any,
    run_id: str,
    me: Controller,
    phase: str | None = None,
    ttl: int = LEASE_TTL_SECONDS,
    takeover: str | None = None,
    check_mode: bool = False,
) -> LeaseOutcome:
    """Take, renew, resume or take over the lease for `run_id`; LeaseHeld when another run may be alive. Commits."""
    if not lease_table_exists(conn):
        if check_mode:
            return LeaseOutcome("would_take", None, f"would take the run lease for run {run_id}")
        with conn.cursor() as cur:
            cur.execute(_LEASE_DDL)
        conn.commit()
    current = read_lease(conn, for_update=not check_mode)
    action = _decide(current, run_id, me, takeover)
    if check_mode:
        conn.rollback()
        return LeaseOutcome("would_take" if action != "renewed" else "renewed", current, _would(action, current, run_id))
    args = dict(run_id=run_id, holder=me.holder, host=me.host, pid=me.pid, phase=phase, ttl=ttl)
    with conn.cursor() as cur:
        cur.execute(_RENEW_SQL if action == "renewed" else _TAKE_SQL, args)
        if action != "renewed":
            detail = current.describe() if current is not None and action != "taken" else None
            cur.execute(_LOG_SQL, (run_id, action, me.holder, detail))
    conn.commit()
    return LeaseOutcome(action, read_lease(conn), _would(action, current, run_id, done=True))


def _decide(current: Lease | None, run_id: str, me: Controller, takeover: str | None) -> str:
    if current is None or current.released_at is not None:
        return "taken"
    if current.run_id == run_id:
        if _alive_elsewhere(current, me):
            raise LeaseHeld(
                f"run {run_id} is already running on this controller (ansible-playbook pid {current.controller_pid}): "
                "wait for it, or stop it (playbooks/stop.yml)",
                lease=current.as_dict(),
            )
        same = current.controller_host == me.host and current.controller_pid in (None, me.pid)
        return "renewed" if same else "resumed"
    stale = staleness(current, me)
    running_here = current.controller_host == me.host and process_alive(current.controller_pid)
    if stale is None and (current.active_sessions or running_here):
        where = f" (its ansible-playbook, pid {current.controller_pid}, runs on this host)" if running_here else ""
        raise LeaseHeld(
            f"another migration run holds the run lease and is running: {current.describe()}{where}. Wait for it to "
            f"finish, or stop it: ansible-playbook playbooks/stop.yml -e vdp_stop_run_id={current.run_id}",
            lease=current.as_dict(),
        )
    if takeover != current.run_id:
        why = stale or "it may still be alive (fresh heartbeat)"
        raise LeaseHeld(
            f"the run lease is held by {current.describe()}; {why}. If that run is really gone, take the lease over "
            f"explicitly with -e vdp_lease_takeover={current.run_id}, or resume that run with -e vdp_run_id={current.run_id}",
            lease=current.as_dict(),
        )
    return "taken_over"


def _would(action: str, current: Lease | None, run_id: str, done: bool = False) -> str:
    verbs = {
        "taken": ("took", "would take"),
        "renewed": ("renewed", "holds"),
        "resumed": ("resumed", "would resume"),
        "taken_over": ("took over", "would take over"),
    }
    verb = verbs[action][0 if done else 1]
    suffix = f" from {current.describe()}" if action == "taken_over" and current else ""
    return f"run {run_id} {verb} the run lease{suffix}"


def release(conn: Any, run_id: str, me: Controller, check_mode: bool = False, complete: bool = False) -> LeaseOutcome:
    """Release the lease if `run_id` holds it (a no-op otherwise), logged as COMPLETE when `complete`. Commits."""
    current = read_lease(conn)
    if current is None or current.run_id != run_id or current.released_at is not None:
        return LeaseOutcome("none", current, f"run {run_id} holds no lease")
    if check_mode:
        return LeaseOutcome("released", current, f"would release run {run_id}'s lease")
    with conn.cursor() as cur:
        cur.execute(
            f"UPDATE {RUNBOOK_SCHEMA}.run_lease SET released_at = now() WHERE run_id = %s AND released_at IS NULL", (run_id,)
        )
        cur.execute(_LOG_SQL, (run_id, "released", me.holder, COMPLETE if complete else None))
    conn.commit()
    return LeaseOutcome("released", read_lease(conn), f"run {run_id} released the run lease")


def completed_by(conn: Any, run_id: str | None) -> dict[str, str] | None:
    """The run that completed the migration, when no run touched production since: the last lease event before this
    run took the lease is that run's release, logged COMPLETE. Any later run (a rollback, a deploy or validation alone,
    a crashed run) makes it None."""
    if not lease_table_exists(conn):
        return None
    with conn.cursor() as cur:
        cur.execute(_LAST_BEFORE_SQL, (run_id or "",))
        row = cur.fetchone()
    if row is None or row[1] != "released" or row[2] != COMPLETE:
        return None
    return dict(run_id=row[0], at=row[3])


def request_cancel(conn: Any, run_id: str, me: Controller, check_mode: bool = False) -> bool:
    """Ask `run_id`'s steps to stop between batches. True when the request was (or would be) recorded."""
    if not lease_table_exists(conn):
        return False
    with conn.cursor() as cur:
        cur.execute(
            f"SELECT cancel_requested_at IS NULL FROM {RUNBOOK_SCHEMA}.run_lease WHERE run_id = %s AND released_at IS NULL",
            (run_id,),
        )
        row = cur.fetchone()
        if row is None or not row[0] or check_mode:
            conn.rollback()
            return bool(row and row[0])
        cur.execute(
            f"UPDATE {RUNBOOK_SCHEMA}.run_lease SET cancel_requested_at = now(), cancel_requested_by = %s WHERE run_id = %s",
            (me.holder, run_id),
        )
        cur.execute(_LOG_SQL, (run_id, "cancel_requested", me.holder, None))
    conn.commit()
    return True


# --------------------------------------------------------------------------- for long steps


def heartbeat(conn: Any, run_id: str | None) -> None:
    """Renew `run_id`'s heartbeat in this database and raise RunCancelled if a stop was requested. Commits.

    Called between batches. A no-op without a run id or a lease table (a database the lease does not
    live in, e.g. a staging copy whose lease row belongs to production's run: it is still checked for a cancel).
    """
    if not run_id or not lease_table_exists(conn):
        return
    with conn.cursor() as cur:
        cur.execute(
            f"UPDATE {RUNBOOK_SCHEMA}.run_lease SET heartbeat_at = now() WHERE run_id = %s AND released_at IS NULL "
            "RETURNING cancel_requested_at, cancel_requested_by",
            (run_id,),
        )
        row = cur.fetchone()
    conn.commit()
    if row is not None and row[0] is not None:
        raise RunCancelled(
            f"run {run_id} was asked to stop by {row[1]} at {row[0]:%Y-%m-%d %H:%M:%S %Z}: stopped cleanly between batches "
            "(what was committed is kept). Re-run with the same run id to resume, or roll back"
        )


class HeartbeatThread:
    """Renews a run's lease every `interval` seconds from its own connection while a long step runs, and notes
    a stop request (`cancelled`) for the step to act on at its next safe point. A no-op without a run id."""

    def __init__(self, connect: Any, run_id: str | None, interval: float = 30.0) -> None:
        import threading

        self.connect, self.run_id, self.interval = connect, run_id, interval
        self.cancelled: RunCancelled | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vdp-lease-heartbeat", daemon=True)

    def _run(self) -> None:
        try:
            conn = self.connect()
        except Exception:  # noqa: BLE001 - without the heartbeat the step still runs; the lease TTL covers it
            return
        try:
            while True:
                try:
                    heartbeat(conn, self.run_id)
                except RunCancelled as exc:
                    self.cancelled = exc
                    return
                if self._stop.wait(self.interval):
                    return
        except Exception:  # noqa: BLE001, S110 - a lost heartbeat connection is not the step's failure
            pass
        finally:
            conn.close()

    def check(self) -> None:
        """Raise the stop request, if one came in."""
        if self.cancelled is not None:
            raise self.cancelled

    def __enter__(self) -> HeartbeatThread:
        if self.run_id:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
