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

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.attack import (
    elapsed,
    failure_of,
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
from tests.support.engine import apply_schema, clone, drop, full_migration, login, migrated_state, scalar
from tests.support.sandbox import Sandbox
from tests.support.world import play, recap, record

pytestmark = pytest.mark.slow  # ansible-playbook runs against the sandbox

# migrate.yml's phases up to validation (the app deploy and monitor gate have their own tests and targets).
PHASES = ["--tags", "preflight,backup,rehearsal,schema,data,validate"]


# The data step slowed down so a test can act between its membership batches: 2000 profiles, 40 batches of 50.
def slow_data(pause: float) -> list[str]:
    return ["-e", "vdp_batch_size=50", "-e", f"org_data_migration_pause_between_batches={pause}"]


# --------------------------------------------------------------------------- item 3: concurrent runs


def test_a_second_run_fails_at_once_naming_the_first_and_never_touches_staging(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path
) -> None:
    prod, first_id = world["vdp_production_db"], world["vdp_run_id"]
    first = start_playbook(sandbox, world, "migrate.yml", *PHASES, log=tmp_path / "first.log")
    try:
        wait_for(lambda: (lease(prod) or {}).get("run_id") == first_id, 120, "the first run to take the lease")
        # The holder is ansible-playbook itself, not the short-lived worker that ran the lease task (a worker is
        # gone by the next task: the live run would look dead and be offered for takeover).
        assert lease(prod)["controller_pid"] == first.pid  # type: ignore[index]
        time.sleep(2)  # the second run starts 2 s later, as in the attack
        started = time.monotonic()
        second = play(sandbox, world, "migrate.yml", *PHASES, *other_run(world, "second-run"))
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
    released = lease(prod)  # by the first run's report (also under --tags), never by the refused run
    assert released is not None and released["run_id"] == first_id and released["released_at"] is not None
    assert [e[1] for e in lease_log(prod) if e[0] == first_id] == ["taken", "released"]


def test_a_crashed_run_leaves_a_stale_lease_that_is_resumed_or_taken_over_only_explicitly(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path, run_module: Any
) -> None:
    prod, run_a = world["vdp_production_db"], world["vdp_run_id"]
    assert not apply_schema(run_module, prod).failed

    def crash(name: str, at_least: int) -> int:
        """data.yml of run A, its whole process tree SIGKILLed between membership batches; the profiles it committed."""
        proc = start_playbook(sandbox, world, "playbooks/data.yml", *slow_data(0.3), log=tmp_path / f"{name}.log")
        try:
            wait_for(lambda: migrated(prod) >= at_least, 180, f"{name} to migrate {at_least} profiles")
        finally:
            kill_tree(proc.pid)
            proc.wait(timeout=60)
        assert wait_sessions_gone(prod, run_a), run_sessions(prod, run_a)
        return migrated(prod)

    at_crash = crash("crashed-1", 300)
    stale = lease(prod)
    assert stale is not None and stale["run_id"] == run_a and stale["released_at"] is None

    # Another run is refused: the lease is stale (its ansible-playbook is gone), and it says how to take it over.
    refused = play(sandbox, world, "playbooks/data.yml", *other_run(world, "run-b"))
    assert refused.returncode != 0
    msg = failure_of(refused.stdout)["msg"]
    assert f"the run lease is held by run {run_a} (" in msg and "is gone and no session of it is connected" in msg, msg
    assert f"-e vdp_lease_takeover={run_a}" in msg and f"-e vdp_run_id={run_a}" in msg, msg
    assert migrated(prod) == at_crash, "the refused run migrated profiles"

    # The same run id resumes (logged), and carries on where the batches stopped; then it crashes again.
    at_second_crash = crash("crashed-2", at_crash + 300)
    assert (run_a, "resumed") in [e[:2] for e in lease_log(prod)], lease_log(prod)
    assert "resumed the run lease" in (tmp_path / "crashed-2.log").read_text()
    assert at_crash < at_second_crash < 2000 and at_second_crash % 50 == 0

    # An explicit takeover by another run is accepted on the record, and that run finishes the data step.
    taken = play(sandbox, world, "playbooks/data.yml", *other_run(world, "run-b"), "-e", f"vdp_lease_takeover={run_a}")
    assert taken.returncode == 0, taken.stdout[-4000:]
    assert f"run run-b took over the run lease from run {run_a} (" in taken.stdout, taken.stdout[-4000:]
    events = lease_log(prod)
    takeover = [e for e in events if e[:2] == ("run-b", "taken_over")]
    assert len(takeover) == 1 and f"run {run_a} (" in (takeover[0][2] or ""), events
    assert events[-1][:2] == ("run-b", "released"), events
    assert migrated(prod) == 2000
    assert scalar(prod, "SELECT count(*) FROM vdp_runbook.schema_migrations WHERE version LIKE '%%_data'") == 1


# --------------------------------------------------------------------------- item 8: stopping a run


def test_a_module_left_running_by_a_killed_ansible_playbook_is_shown_kept_from_takeover_and_stopped(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path, run_module: Any, legacy_template: Any
) -> None:
    prod, run_a = world["vdp_production_db"], world["vdp_run_id"]
    reference = clone(sandbox, legacy_template())
    try:
        full_migration(run_module, reference, batch_size=50)
        expected = migrated_state(reference)
    finally:
        drop(sandbox, reference)
    assert not apply_schema(run_module, prod).failed
    proc = start_playbook(sandbox, world, "playbooks/data.yml", *slow_data(2.0), log=tmp_path / "killed.log")
    wait_for(lambda: migrated(prod) >= 300, 180, "the membership batches")
    os.kill(proc.pid, signal.SIGKILL)  # ansible-playbook alone: its worker (setsid) and the module live on
    proc.wait(timeout=60)
    before_status = migrated(prod)
    assert run_sessions(prod, run_a), "the module did not outlive ansible-playbook (nothing to attack)"

    # status.yml: the lease's holder and the module still running, by pid and application_name.
    status = play(sandbox, world, "playbooks/status.yml")
    (tmp_path / "status.log").write_text(status.stdout)
    assert status.returncode == 0, status.stdout[-3000:]
    assert f"Run lease: HELD by run {run_a}" in status.stdout and "phase data" in status.stdout, status.stdout[-3000:]
    assert "still running: pid " in status.stdout and f"vdp-runbook/membership run {run_a}" in status.stdout
    assert migrated(prod) > before_status, "the module was not running any more"

    # A takeover is refused while the holder's sessions are connected.
    refused = play(sandbox, world, "playbooks/data.yml", *other_run(world, "run-b"), "-e", f"vdp_lease_takeover={run_a}")
    assert refused.returncode != 0
    msg = failure_of(refused.stdout)["msg"]
    assert f"another migration run holds the run lease and is running: run {run_a} (" in msg, msg
    assert "session(s) of it connected" in msg and "vdp_lease_takeover" not in msg, msg

    # stop.yml: the module stops between batches; what it committed stays.
    started = time.monotonic()
    stop = play(sandbox, world, "playbooks/stop.yml")
    took = elapsed(started)
    (tmp_path / "stop.log").write_text(stop.stdout)
    assert stop.returncode == 0, stop.stdout[-3000:]
    assert f"asked run {run_a} to stop" in stop.stdout and "its steps have stopped" in stop.stdout, stop.stdout[-3000:]
    assert f"re-run with -e vdp_run_id={run_a} to resume" in stop.stdout
    assert not run_sessions(prod, run_a) and took < 60
    kept = migrated(prod)
    time.sleep(2)
    assert migrated(prod) == kept and 300 <= kept < 2000 and kept % 50 == 0, kept
    assert (run_a, "cancel_requested") in [e[:2] for e in lease_log(prod)]

    # The same run id resumes and ends exactly where an uninterrupted run ends.
    resumed = play(sandbox, world, "playbooks/data.yml", "-e", "vdp_batch_size=50")
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert f"({kept} already done" in resumed.stdout, resumed.stdout[-4000:]
    assert migrated_state(prod) == expected


def test_the_module_says_it_stopped_cleanly_and_what_its_committed_batches_migrated(
    sandbox: Sandbox, world: dict[str, Any], run_module: Any
) -> None:
    """The module's own result when stop.yml asks its run to stop (a killed ansible-playbook cannot show it)."""
    prod, run_a = world["vdp_production_db"], world["vdp_run_id"]
    assert not apply_schema(run_module, prod).failed
    assert not run_module("vdp_organization", dict(login(prod), slug="individual-users", name="Individual Users")).failed
    assert run_module("vdp_run_lease", dict(login(prod), run_id=run_a, phase="data"))["action"] == "taken"
    outcome: dict[str, Any] = {}
    worker = threading.Thread(
        target=lambda: outcome.update(
            run_module("vdp_org_membership", dict(login(prod), run_id=run_a, batch_size=100, pause_between_batches=0.4))
        )
    )
    worker.start()
    try:
        wait_for(lambda: migrated(prod) >= 300, 120, "the membership batches")
        stop = play(sandbox, world, "playbooks/stop.yml", "-e", f"vdp_stop_run_id={run_a}")
    finally:
        worker.join(timeout=120)
    assert stop.returncode == 0 and "its steps have stopped" in stop.stdout, stop.stdout[-3000:]
    assert outcome.get("failed"), outcome
    assert f"run {run_a} was asked to stop by " in outcome["msg"], outcome["msg"]
    assert "stopped cleanly between batches (what was committed is kept)" in outcome["msg"], outcome["msg"]
    assert outcome["migrated"] == migrated(prod) and outcome["migrated"] % 100 == 0 and outcome["migrated"] >= 300
    assert outcome["batches"]["count"] == outcome["migrated"] // 100
