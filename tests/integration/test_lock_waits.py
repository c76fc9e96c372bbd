"""Issue 7 item 7, reproduced on the real sandbox: the schema step behind a session that holds a lock on profiles.

The blocker holds ACCESS SHARE on profiles in an open transaction (what any long report query or an idle-in-
transaction client does): the schema file's ALTER TABLE must wait for it, and while it waits every new query
on profiles queues behind it (PostgreSQL grants locks in order). An "application" reads profiles all along.

Before (issue 7): each attempt waited lock_timeout = 5 s, so the application's SELECTs took 4-5 s; after 6
attempts the step failed in ~90 s with "lock timeout", not naming the blocking pid.
After: each attempt waits about a second (module_utils/vdp_lockwait.py), backs off with jitter, and the
failure names the blocker - pid, application_name, user, state and since when.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.attack import failure_of
from tests.support.engine import scalar
from tests.support.sandbox import Sandbox
from tests.support.world import play

pytestmark = pytest.mark.slow  # ansible-playbook runs against the sandbox

RETRIES = 3  # 4 attempts


class ApplicationReader:
    """Reads one profile by primary key in a loop, as the app does, and keeps each query's wall time."""

    def __init__(self, info: dict[str, Any]) -> None:
        self.conn = psycopg.connect(**info, autocommit=True, application_name="attack-app-reader")
        self.ids = [r[0] for r in self.conn.execute("SELECT id FROM public.profiles ORDER BY id LIMIT 50").fetchall()]
        self.reads: list[tuple[float, float]] = []  # (started, seconds)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            started = time.monotonic()
            self.conn.execute("SELECT full_name FROM public.profiles WHERE id = %s", (self.ids[i % len(self.ids)],))
            self.reads.append((started, time.monotonic() - started))
            i += 1
            self._stop.wait(0.05)

    def __enter__(self) -> ApplicationReader:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self.conn.close()


def test_schema_step_behind_a_lock_waits_briefly_names_the_blocker_and_keeps_the_application_responsive(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path
) -> None:
    prod = world["vdp_production_db"]
    blocker = psycopg.connect(**prod, application_name="attack-blocker")
    blocker.execute("SELECT 1 FROM public.profiles LIMIT 1")  # ACCESS SHARE, held: SELECTs pass, ALTER TABLE waits
    blocker_pid = blocker.info.backend_pid
    try:
        with ApplicationReader(prod) as app:
            result = play(sandbox, world, "playbooks/schema.yml", "-e", f"vdp_lock_retries={RETRIES}")
        assert blocker.info.transaction_status == psycopg.pq.TransactionStatus.INTRANS  # it held on throughout
    finally:
        blocker.close()
    (tmp_path / "schema.log").write_text(result.stdout)
    assert result.returncode != 0, result.stdout[-3000:]
    msg = failure_of(result.stdout)["msg"]
    # The failure says how often it tried and who was in the way, in words an operator can act on.
    assert f"timed out waiting for a lock {RETRIES + 1} times" in msg, msg
    assert f"blocked by pid {blocker_pid} (attack-blocker, user postgres, idle in transaction since 20" in msg, msg
    assert "pg_terminate_backend" in msg and "re-run" in msg, msg
    # The application's reads queued behind each attempt for about a second at most, never for 4-5 s.
    queued = [(t, d) for t, d in app.reads if d > 0.3]
    assert queued, "no application read ever queued behind the schema step: the attack did not happen"
    worst = max(d for _, d in app.reads)
    # Short attempts: from the first read that queued to the end of the last one, 4 x ~1 s plus the backoffs
    # (0.5 s doubling, capped by jitter), not 6 x 5 s.
    window = queued[-1][0] + queued[-1][1] - queued[0][0]
    print(f"{len(app.reads)} application reads, {len(queued)} queued behind the schema step, worst {worst:.2f} s; "
          f"attempts spanned {window:.1f} s")  # fmt: skip
    assert worst < 1.5, f"an application read waited {worst:.2f} s behind the schema step"
    assert window < 15, f"the schema step's attempts spanned {window:.1f} s"
    # Nothing of the schema file is left behind.
    assert scalar(prod, "SELECT to_regclass('public.organizations')") is None
    assert scalar(prod, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'profiles' "
                        "AND column_name = 'organization_id'") == 0  # fmt: skip
