# Lock waits that do not hurt the application, and that say who is in the way.
#
# A DDL statement or a batch that waits for a lock makes every later query on that table queue
# behind it (PostgreSQL grants locks in order). So each attempt waits only `lock_timeout` (about a
# second, as the online-migration tools do), then backs off with jitter and tries again, a bounded
# number of times. While an attempt waits, a watcher on a second connection samples
# pg_blocking_pids() of the waiting session, so a final failure names the sessions that blocked it
# (pid, user, application_name, state, since when) instead of "lock timeout".
"""Short lock waits with backoff and jitter, and the names of the sessions that blocked them."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ansible.module_utils.vdp_errors import OperatorError, first_line

try:
    import psycopg

    HAS_PSYCOPG = True
except ImportError:  # pragma: no cover - vdp_pg.connect reports the missing package
    HAS_PSYCOPG = False

# Defaults of every module's lock options (one source: doc fragments vdp_postgres and vdp_run document them).
LOCK_TIMEOUT = "1s"
LOCK_RETRIES = 10
LOCK_RETRY_BACKOFF = 0.5
BACKOFF_CAP_SECONDS = 15.0
WATCH_INTERVAL = 0.1  # seconds between two looks at who blocks a waiting session
# The watcher connects only when the work is still running after this long: a batch sized to take about 0.25 s
# (vdp_batching) then opens no second connection, while a lock wait (lock_timeout, about a second) is still watched.
WATCH_DELAY = 0.3

_BLOCKERS_SQL = """
SELECT a.pid, coalesce(a.usename::text, ''), coalesce(a.application_name, ''), coalesce(a.state, ''),
       to_char(coalesce(a.xact_start, a.query_start) AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
       coalesce(a.wait_event_type, ''), a.backend_type
FROM pg_stat_activity a
WHERE a.pid = ANY (pg_blocking_pids(%s))
ORDER BY a.pid
"""


@dataclass(frozen=True)
class Blocker:
    """A session that held a lock the runbook waited for (no query text: it may hold data)."""

    pid: int
    user: str
    application_name: str
    state: str
    since: str
    wait_event_type: str
    backend_type: str

    def describe(self) -> str:
        app = self.application_name or "no application_name"
        return f"pid {self.pid} ({app}, user {self.user or '?'}, {self.state or '?'} since {self.since})"


class LockWaitExhausted(OperatorError):
    """Every attempt timed out waiting for a lock; the message names the blocking sessions."""


def is_lock_timeout(exc: BaseException) -> bool:
    return bool(HAS_PSYCOPG and isinstance(exc, psycopg.errors.LockNotAvailable))


def backoff_delay(attempt: int, base: float, cap: float = BACKOFF_CAP_SECONDS, rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter: uniform in [base, min(cap, base * 2**(attempt-1))]."""
    high = min(cap, base * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(min(base, high), high) if high > 0 else 0.0


def _sample_blockers(connect: Callable[[], Any], pid: int, seen: dict[int, Blocker], stop: threading.Event) -> None:
    """Until `stop`, every WATCH_INTERVAL seconds: the sessions blocking `pid`, into `seen` (on its own connection,
    opened only when the work outlasts WATCH_DELAY)."""
    if stop.wait(WATCH_DELAY):
        return
    try:
        conn = connect()
    except Exception:  # noqa: BLE001 - the watch is a diagnostic: without it the work still runs
        return
    try:
        conn.autocommit = True
        while not stop.wait(WATCH_INTERVAL):
            for row in conn.execute(_BLOCKERS_SQL, (pid,)).fetchall():
                seen[int(row[0])] = Blocker(int(row[0]), *[str(v) for v in row[1:]])
    except Exception:  # noqa: BLE001, S110 - a lost watcher connection only loses the diagnosis
        pass
    finally:
        conn.close()


@contextmanager
def watch_blockers(connect: Callable[[], Any] | None, pid: int | None) -> Iterator[dict[int, Blocker]]:
    """A dict that fills with the sessions blocking `pid` while the block runs ({} without a watcher), sampled
    from pg_blocking_pids() on a second connection by a background thread."""
    seen: dict[int, Blocker] = {}
    if connect is None or pid is None:
        yield seen
        return
    stop = threading.Event()
    thread = threading.Thread(target=_sample_blockers, args=(connect, pid, seen, stop), name="vdp-blocker-watch", daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join(timeout=5)


def with_lock_retry(
    work: Callable[[], Any],
    on_retry: Callable[[], None],
    retries: int = LOCK_RETRIES,
    backoff_seconds: float = LOCK_RETRY_BACKOFF,
    what: str = "the step",
    watcher: Callable[[], Any] | None = None,
    pid: int | None = None,
    sleep: Callable[[float], Any] | None = None,
) -> tuple[Any, int]:
    """Run `work`; on a lock timeout call `on_retry` (the rollback), back off with jitter, retry.

    Returns (result, attempts). After `retries` retries raises LockWaitExhausted naming the
    sessions that blocked the attempts (sampled by a watcher connection when `watcher` and the
    waiting session's `pid` are given).
    """
    pause = sleep or threading.Event().wait
    attempt = 0
    with watch_blockers(watcher, pid) as blockers:
        while True:
            attempt += 1
            try:
                return work(), attempt
            except Exception as exc:
                if not is_lock_timeout(exc):
                    raise
                on_retry()
                if attempt > retries:
                    raise exhausted(what, attempt, list(blockers.values()), exc) from None
                pause(backoff_delay(attempt, backoff_seconds))


def exhausted(what: str, attempts: int, blockers: list[Blocker], exc: BaseException) -> LockWaitExhausted:
    if blockers:
        who = "; ".join(b.describe() for b in blockers[:5]) + (f" and {len(blockers) - 5} more" if len(blockers) > 5 else "")
        hint = f"blocked by {who}: let it finish, or end it (SELECT pg_terminate_backend(pid)), then re-run"
    else:
        hint = "the blocking session was not caught in the act: look in pg_locks / pg_stat_activity, then re-run"
    return LockWaitExhausted(
        f"{what} timed out waiting for a lock {attempts} times (lock_timeout each, with backoff): {hint} "
        f"(completed work is kept; {first_line(exc)})",
        blockers=[b.__dict__ for b in blockers],
        attempts=attempts,
    )


@dataclass(frozen=True)
class LockPolicy:
    """How a module waits for locks: retries, first backoff, and a way to open a watcher connection."""

    retries: int = LOCK_RETRIES
    backoff: float = LOCK_RETRY_BACKOFF
    watcher: Callable[[], Any] | None = None

    def run(self, conn: Any, work: Callable[[], Any], on_retry: Callable[[], None], what: str) -> tuple[Any, int]:
        """with_lock_retry for work on `conn`, its blockers watched from a second connection."""
        pid = conn.info.backend_pid if self.watcher is not None else None
        return with_lock_retry(work, on_retry, self.retries, self.backoff, what=what, watcher=self.watcher, pid=pid)
