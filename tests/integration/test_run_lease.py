"""Issue 7 items 3 and 8, reproduced on the real sandbox: runs that overlap, crash, are killed, and are stopped.

Item 3 - one run at a time: a second migrate.yml started while the first runs fails at once, naming the
first (run id, holder, phase), and never reaches staging; a run whose whole process tree is SIGKILLed
leaves a stale lease that the next run refuses (saying how to take it over), that the same run id
resumes, and that `-e vdp_lease_takeover=<id>` takes over on the record (vdp_runbook.run_lease_log); a
takeover is refused while the holder's sessions are still connected.

Item 8 - stopping a run: ansible-playbook SIGKILLed alone (its worker and module live on: Ansible's
workers setsid) - status.yml shows the module still running, stop.yml stops it between batches, the
committed batches are kept, a re-run resumes and ends where an uninterrupted run ends.

Before (issue 7): the advisory lock was held only while a data/schema module ran; two migrate.yml 2 s
apart both ran preflight, backup and rehearsal and the second dropped staging under the first; nothing
showed or stopped a module left running by a killed ansible-playbook.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.support.attack import (
    elapsed,
    kill_tree,
    lease,
    lease_log,
    migrated,
    other_run,
    run_sessions,
    start_playbook,
    wait_for,
    wait_sessions_gone,
)
from tests.support.engine import apply_schema, clone, drop, full_migration, migrated_state, scalar
from tests.support.sandbox import Sandbox
from tests.support.world import play, recap, record

# The data step slowed down so a test can act between its membership batches: 2000 profiles, 20 batches.
SLOW_DATA = ["-e", "vdp_batch_size=100", "-e", "org_data_migration_pause_between_batches=0.4"]


# --------------------------------------------------------------------------- item 3: concurrent runs


def test_a_second_run_fails_at_once_naming_the_first_and_never_touches_staging(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path
) -> None:
    prod, first_id = world["vdp_production_db"], world["vdp_run_id"]
    first = start_playbook(sandbox, world, "migrate.yml", log=tmp_path / "first.log")
    try:
        wait_for(lambda: (lease(prod) or {}).get("run_id") == first_id, 120, "the first run to take the lease")
        # The holder is ansible-playbook itself, not the short-lived worker that ran the lease task (a worker is
        # gone by the next task: the live run would look dead and be offered for takeover).
        assert lease(prod)["controller_pid"] == first.pid  # type: ignore[index]
        time.sleep(2)  # the second run starts 2 s later, as in the attack
        started = time.monotonic()
        second = play(sandbox, world, "migrate.yml", *other_run(world, "second-run"))
        took = elapsed(started)
    finally:
        rc_first = first.wait(timeout=900)
    out = second.stdout
    (tmp_path / "second.log").write_text(out)
    # Refused at its first task, in the operator's words: who holds the lease and where that run is.
    assert second.returncode != 0, out[-3000:]
    assert "TASK [preflight" not in out and "TASK [backup" not in out and "TASK [staging_restore" not in out, out[-4000:]
    assert f"run {first_id} (" in out, out[-3000:]
    assert "another migration run holds the run lease and is running" in out, out[-3000:]
    assert "phase preflight" in out or "phase backup" in out or "phase rehearsal" in out, out[-3000:]
    assert "@" in out.split(f"run {first_id} (", 1)[1][:200]  # the holder, user@host
    assert "vdp_lease_takeover" not in out, "a live run's lease must not be offered for takeover:\n" + out[-3000:]
    assert "playbooks/stop.yml" in out, out[-3000:]
    assert "Finalization of task args" not in out, "the refused run's report crashed:\n" + out[-3000:]
    assert recap(out)["failed"] == 1, out[-3000:]  # one failure: the lease, nothing after it
    assert took < 45, f"the second run took {took} s to be refused"
    # The first run went through, rehearsal included: nothing dropped staging under it.
    assert rc_first == 0, first.output()[-4000:]
    run = record(world, "run")
    assert run["phases"]["rehearsal"]["status"] == "go" and run["phases"]["validate"]["status"] == "passed"
    assert [e for e in lease_log(prod) if e[0] == "second-run"] == [], "the refused run wrote to the lease log"
    released = lease(prod)
    assert released is not None and released["run_id"] == first_id and released["released_at"] is not None
