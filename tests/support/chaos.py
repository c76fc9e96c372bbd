"""The chaos suite's engine (no tests here): migrate.yml under faults, re-run as an operator would, compared with an
uninterrupted run. Used by scripts/chaos.py (`make chaos`, the full suite) and tests/integration/test_chaos.py (the
short one in `make test`).

For each fault, in a world of its own (a clone of the same legacy fixture, its own staging database, S3 prefix, run
id and stand-in app):
1. migrate.yml runs with the fault injected (tests/support/chaos_faults.py);
2. the operator recovers as the README says: a stopped server is started again; modules left running by a killed
   ansible-playbook are stopped with playbooks/stop.yml (`make stop`); then
   - after ansible-playbook alone was killed (or any other fault): the same command again, i.e. the run resumed with
     its run id (`-e vdp_run_id=<its run id>`, in the world's vars file);
   - after the whole tree was killed: a new run (`make migrate` gives every run a new id), which the stale lease
     refuses, naming `-e vdp_lease_takeover=<old run id>` - the operator adds exactly that;
   re-runs until one succeeds (at most MAX_RERUNS);
3. the database must then hold exactly the content of an uninterrupted run (tests/support/chaos_content.py), the app
   be on the new release out of maintenance, no output carry a secret; a run that rolled back must have restored the
   legacy tables exactly (their content before the first run).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.attack import Background, kill_tree, run_sessions, start_playbook, wait_sessions_gone
from tests.support.chaos_content import Content, compare, content
from tests.support.chaos_faults import Fault, inject, task_count
from tests.support.engine import legacy_content, legacy_layout
from tests.support.sandbox import Sandbox
from tests.support.standin import StandIn, app_vars
from tests.support.world import make_world

MAX_RERUNS = 3
RUN_TIMEOUT = 1200
TAKEOVER = re.compile(r"vdp_lease_takeover=([A-Za-z0-9_.:-]+)")
# The same settings for every run, the reference included: the data step in batches of 200 with a short pause, so
# that a fault can land between batches of the 2,000-user fixture.
SETTINGS: dict[str, Any] = {"vdp_batch_size": 200, "org_data_migration_pause_between_batches": 0.2}
# Faults that stop or restart a server every world of the sandbox shares: each runs alone, after the others (a kill
# or a lock touches its own world only, so those may run side by side, `jobs` at a time).
SHARED_SERVER_FAULTS = frozenset({"pg_restart", "s3_stop", "staging_stop"})


@dataclass
class Outcome:
    fault: str
    runs: int = 0
    converged: bool = False
    struck: bool = False
    lost: int = 0
    duplicated: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class Chaos:
    """One sandbox, one legacy template, a folder for the worlds, the extra ansible-playbook arguments and the extra
    vars (`settings`, SETTINGS by default) of every run, the reference's included."""

    box: Sandbox
    template: str
    folder: Path
    args: tuple[str, ...] = ()
    settings: dict[str, Any] = field(default_factory=lambda: dict(SETTINGS))
    reference: Content | None = None
    reference_tasks: int = 0
    log: Any = print

    def secrets(self) -> tuple[str, ...]:
        return (self.box.password, self.box.s3_access_key, self.box.s3_secret_key)

    # ------------------------------------------------------------------ the reference

    def run_reference(self) -> Outcome:
        """An uninterrupted run: its database is the reference, its task count the span of the kill points."""
        outcome = Outcome("(reference: uninterrupted run)")
        with self._world("reference") as (world, app, settings):
            started = time.monotonic()
            run = self._start(world, settings, "reference-1")
            rc = run.wait(RUN_TIMEOUT)
            outcome.runs, outcome.seconds = 1, round(time.monotonic() - started, 1)
            self._check_output(run, outcome)
            if rc != 0:
                raise RuntimeError(f"the uninterrupted reference run failed:\n{run.output()[-4000:]}")
            self.reference = content(world["vdp_production_db"])
            self.reference_tasks = task_count(run.output())
            outcome.converged = self._app_ok(app, outcome)
            outcome.notes.append(f"{self.reference_tasks} tasks in {outcome.seconds:.0f} s")
        return outcome

    # ------------------------------------------------------------------ the faults

    def run_faults(self, faults: list[Fault], jobs: int = 1, done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
        """Every fault in a world of its own, the outcomes in plan order: the faults of one world `jobs` at a time,
        then those of a shared server one by one. `done(outcome)` is called as each ends (under a lock)."""
        outcomes: dict[int, Outcome] = {}
        lock = threading.Lock()

        def one(index: int, fault: Fault) -> None:
            try:
                outcome = self.run_fault(fault, index)
            except Exception as exc:  # noqa: BLE001 - the suite's own failure is a row of the table, not a lost fault
                outcome = Outcome(fault.label, notes=[f"the suite failed: {type(exc).__name__}: {str(exc)[:300]}"])
            with lock:
                outcomes[index] = outcome
                if done:
                    done(outcome)

        plan = list(enumerate(faults, 1))
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="chaos-world") as pool:
            list(pool.map(lambda item: one(*item), [p for p in plan if p[1].kind not in SHARED_SERVER_FAULTS]))
        for index, fault in plan:
            if fault.kind in SHARED_SERVER_FAULTS:
                one(index, fault)
        return [outcomes[index] for index in sorted(outcomes)]

    # ------------------------------------------------------------------ one fault

    def run_fault(self, fault: Fault, index: int) -> Outcome:
        assert self.reference is not None, "run_reference() first"
        outcome = Outcome(fault.label)
        self.log(f"fault {index}: {fault.label}")
        started = time.monotonic()
        with self._world(f"f{index:02d}-{fault.kind}") as (world, app, settings):
            layout = legacy_layout(world["vdp_production_db"])
            before = legacy_content(world["vdp_production_db"], layout)
            run = self._start(world, settings, "run-1")
            strike, thread = inject(fault, run, self.box, world)
            rc = self._wait(run)
            strike.stop.set()
            thread.join(120)
            outcome.runs = 1
            outcome.struck = strike.struck
            outcome.notes.append(strike.note or "no strike")
            self._check_output(run, outcome)
            self._check_rollback(run, world, layout, before, outcome)
            rc = self._recover(fault, rc, world, settings, layout, before, outcome)
            self._judge(rc, world, app, outcome)
        outcome.seconds = round(time.monotonic() - started, 1)
        return outcome

    def _recover(
        self,
        fault: Fault,
        rc: int,
        world: dict[str, Any],
        settings: str,
        layout: dict[str, list[str]],
        before: dict[str, str],
        outcome: Outcome,
    ) -> int:
        """The operator's steps after the faulted run, then re-runs until one succeeds."""
        run_id, extra = world["vdp_run_id"], []
        if fault.kind == "kill_controller":
            stop = self._start(world, settings, "stop", playbook="playbooks/stop.yml")
            stop.wait(300)
            self._check_output(stop, outcome)
            outcome.notes.append("make stop" + ("" if stop.proc.returncode == 0 else f" (rc {stop.proc.returncode})"))
        if not wait_sessions_gone(world["vdp_production_db"], run_id, timeout=300):
            outcome.notes.append(f"sessions of the run still connected: {run_sessions(world['vdp_production_db'], run_id)}")
        if fault.kind == "kill_tree":  # a new run, as `make migrate` starts one
            new_id = f"{run_id}-r"
            extra = ["-e", f"vdp_run_id={new_id}", "-e", f"vdp_run_dir={world['run_dir'].parent / new_id}"]
        attempt = 1
        while rc != 0 and attempt <= MAX_RERUNS:
            attempt += 1
            run = self._start(world, settings, f"run-{attempt}", *extra)
            rc = self._wait(run)
            outcome.runs += 1
            self._check_output(run, outcome)
            self._check_rollback(run, world, layout, before, outcome)
            taken = TAKEOVER.search(run.output())
            if rc != 0 and taken and f"vdp_lease_takeover={taken.group(1)}" not in extra:
                extra += ["-e", f"vdp_lease_takeover={taken.group(1)}"]
                outcome.notes.append(f"re-run refused by the stale lease; took it over (-e vdp_lease_takeover={taken.group(1)})")
            elif rc != 0:
                outcome.notes.append(f"re-run {attempt} failed: {_first_failure(run.output())}")
        return rc

    def _judge(self, rc: int, world: dict[str, Any], app: StandIn, outcome: Outcome) -> None:
        diff = compare(self.reference or Content(), content(world["vdp_production_db"]))
        outcome.lost, outcome.duplicated = diff.lost, diff.duplicated
        outcome.notes += [f"{t}: {why}" for t, why in diff.tables.items()]
        app_ok = self._app_ok(app, outcome)
        outcome.converged = (
            rc == 0
            and diff.equal
            and app_ok
            and not any(n.startswith("LEAK") for n in outcome.notes)
            and not any(n.startswith("rollback NOT exact") for n in outcome.notes)
        )
        if rc != 0:
            outcome.notes.append(f"no run succeeded after {outcome.runs} runs")

    # ------------------------------------------------------------------ helpers

    def _world(self, name: str) -> Any:
        return _WorldContext(self, name)

    def _start(self, world: dict[str, Any], settings: str, name: str, *extra: str, playbook: str = "migrate.yml") -> Background:
        log = world["run_dir"].parent / f"{name}.log"
        self.log(f"    {world['run_dir'].parent.name}/{name}: ansible-playbook {playbook} {' '.join(extra)}".rstrip())
        return start_playbook(self.box, world, playbook, "-e", f"@{settings}", *self.args, *extra, log=log)

    def _wait(self, run: Background) -> int:
        try:
            return run.wait(RUN_TIMEOUT)
        except Exception:  # noqa: BLE001 - a hung run is killed and counted as failed
            kill_tree(run.pid)
            return run.wait(60) or 124

    def _check_output(self, run: Background, outcome: Outcome) -> None:
        text = run.output()
        if any(secret in text for secret in self.secrets()):
            outcome.notes.append(f"LEAK: a secret in the output of {run.log.name}")

    def _check_rollback(
        self, run: Background, world: dict[str, Any], layout: dict[str, list[str]], before: dict[str, str], outcome: Outcome
    ) -> None:
        match = re.search(r"ROLLBACK \((\w+)\): done", run.output())
        if not match:
            return
        exact = legacy_content(world["vdp_production_db"], layout) == before
        outcome.notes.append(
            f"rollback ({match.group(1)}) {'exact' if exact else 'NOT exact'}: legacy checksums "
            f"{'equal' if exact else 'differ from'} the pre-migration ones"
        )
        if not exact:
            outcome.notes.append("rollback NOT exact")

    def _app_ok(self, app: StandIn, outcome: Outcome) -> bool:
        health = app.call("GET", "/health")[1]
        ok = (health.get("version"), health.get("maintenance")) == ("org-2.0", False)
        if not ok:
            outcome.notes.append(f"app not on org-2.0 out of maintenance: {json.dumps(health)[:160]}")
        return ok


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if "FAILED!" in line or line.startswith("fatal:"):
            return re.sub(r"\s+", " ", line)[:200]
    return "see its log"


class _WorldContext:
    """A world of its own with the stand-in app on its production database (sign-ins not recorded: the smoke
    check's sign-in would be an application write, and "the same database" is exact here)."""

    def __init__(self, chaos: Chaos, name: str) -> None:
        self.chaos, self.folder = chaos, chaos.folder / name

    def __enter__(self) -> tuple[dict[str, Any], StandIn, str]:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._world = make_world(self.chaos.box, self.chaos.template, self.folder)
        world = self._world.__enter__()
        self.app = StandIn(self.folder / "standin", world["vdp_production_db"])
        assert self.app.call("POST", "/admin/state", {"record_sign_ins": False}, admin=True)[0] == 200
        settings = app_vars(world, self.app, self.folder, **self.chaos.settings)
        return world, self.app, settings

    def __exit__(self, *exc: Any) -> None:
        try:
            self.app.stop()
        finally:
            self._world.__exit__(*exc)


def table(outcomes: list[Outcome]) -> str:
    """The chaos table (Markdown): fault | runs | converged | rows lost | rows duplicated | seconds | what happened."""
    lines = [
        "| fault | runs | converged | rows lost | rows duplicated | seconds | what happened |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        notes = "; ".join(o.notes).replace("|", "/")
        lines.append(
            f"| {o.fault} | {o.runs} | {'yes' if o.converged else 'NO'} | {o.lost} | {o.duplicated} | {o.seconds:.0f} | {notes} |"
        )
    return "\n".join(lines)
