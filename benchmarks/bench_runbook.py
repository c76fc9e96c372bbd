"""The whole runbook (migrate.yml) on the sandbox inventory at a size, then again (a no-op re-run), with the
controller's memory watched.

Before each size, the sandbox's world is reset to the legacy platform of that size: production's `virtue` database
becomes a file copy of the benchmark's fixture (bench_fx_<users>, the same data the other measures use), the stand-in
app goes back to release legacy-1 without maintenance or faults. Then `ansible-playbook migrate.yml` runs exactly as
`make migrate` does (preflight, verified backup to S3, staging rehearsal, maintenance, schema, data + indexes, deploy,
validate, monitor, report), with monitor_period_seconds / monitor_interval_seconds shortened (the monitor watches
for a fixed time, which says nothing about scale), and once more with nothing left to do.

Controller memory: the peak resident memory of the largest single process of the run (ansible-playbook, its
workers, the modules, pg_dump / pg_restore: the kernel's ru_maxrss over every descendant, via wait4) and the peak of
the whole process tree's sum (sampled every 0.25 s from /proc).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from bench_common import ROOT, Sandbox, recreate
from bench_watch import TreeMemory

RUNS = ROOT / "artifacts" / "runs"


def app_admin(sb: Sandbox, path: str, body: dict[str, Any]) -> None:
    """POST to the stand-in app's admin API (its token from the sandbox's secrets, never printed)."""
    token = (sb.box / "secrets" / "app_admin_token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the sandbox's own http://127.0.0.1 URL
        sb.app_url + path, data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:  # noqa: S310
        reply.read()


def reset_world(sb: Sandbox, fx: str) -> None:
    """Production's virtue = a copy of the fixture; the stand-in app back on legacy-1, no maintenance, no faults."""
    recreate(sb, sb.prod_port, "virtue", template=fx)
    app_admin(sb, "/admin/release", {"version": "legacy-1"})
    app_admin(sb, "/admin/maintenance", {"enabled": False})
    app_admin(sb, "/admin/faults", {})


def play(sb: Sandbox, run_id: str, extra: dict[str, Any], log: Path) -> dict[str, Any]:
    """ansible-playbook migrate.yml with this run id; wall seconds, exit code, memory, the run record's phases."""
    env = dict(os.environ, VDP_SANDBOX_DIR=str(sb.box), VDP_SANDBOX_PORT_BASE=str(sb.base),
               ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0")
    cmd = [str(ROOT / ".venv" / "bin" / "ansible-playbook"), "migrate.yml", "-e", f"vdp_run_id={run_id}"]
    for key, value in extra.items():
        cmd += ["-e", f"{key}={value}"]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        memory = TreeMemory(proc.pid).start()
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        memory.stop()
    result = dict(run_id=run_id, seconds=round(seconds, 1), exit_code=proc.returncode, log=str(log.relative_to(ROOT)),
                  memory=dict(memory.summary(), peak_single_process_mb=round(usage.ru_maxrss / 1024, 1)))
    return dict(result, **run_record(run_id))


def run_record(run_id: str) -> dict[str, Any]:
    """What run.json says: outcome, verdict, seconds per phase, the budgets with their measure."""
    path = RUNS / run_id / "run.json"
    if not path.exists():
        return dict(outcome="no run record", phases={}, budgets=[])
    record = json.loads(path.read_text())
    phases = {name: p.get("seconds") for name, p in record.get("phases", {}).items() if not name.startswith("rehearsal_")}
    budgets = [{k: b.get(k) for k in ("id", "name", "minutes", "phases", "seconds", "met")} for b in record.get("budgets", [])]
    return dict(outcome=record.get("outcome"), verdict=record.get("verdict"), phases=phases, budgets=budgets)


def runbook(
    sb: Sandbox, users: int, fx: str, stamp: str, extra: dict[str, Any], logs: Path, again: bool = True,
    partial: dict[str, Any] | None = None, save: Any = None,
) -> dict[str, Any]:
    """First run and (again=True) the no-op re-run and the recheck at one size; `partial` filled and save() called
    after each run."""
    reset_world(sb, fx)
    out: dict[str, Any] = partial if partial is not None else dict(users=users)
    return runs(sb, out, ("first", "again", "recheck") if again else ("first",), stamp, extra, logs, save)


# The re-runs after a first run: the no-op one (the first run completed the migration: nothing to do), and one with
# -e vdp_recheck=true (the deploy finds its release live, validation and the monitor gate run again).
RERUNS = {"again": {}, "recheck": {"vdp_recheck": "true"}}


def runs(
    sb: Sandbox, out: dict[str, Any], attempts: tuple[str, ...], stamp: str, extra: dict[str, Any], logs: Path, save: Any
) -> dict[str, Any]:
    """migrate.yml once per attempt on the world as it stands (first, again, recheck), into `out`."""
    users = out["users"]
    for attempt in attempts:
        run_id = f"bench-{stamp}-{users}-{attempt}"
        print(f"  migrate.yml at {users} users ({attempt} run, run id {run_id})", flush=True)
        out[attempt] = play(sb, run_id, dict(extra, **RERUNS.get(attempt, {})), logs / f"{run_id}.log")
        print(f"    {out[attempt]['seconds']} s, exit {out[attempt]['exit_code']}: {out[attempt].get('verdict')}", flush=True)
        if attempt == "again":
            out["rerun_ratio"] = round(out["again"]["seconds"] / out["first"]["seconds"], 3)
        if save is not None:
            save()
        if out[attempt]["exit_code"]:
            raise SystemExit(f"migrate.yml failed at {users} users ({attempt} run): see {out[attempt]['log']}")
    return out


def rerun(sb: Sandbox, out: dict[str, Any], stamp: str, extra: dict[str, Any], logs: Path, save: Any) -> dict[str, Any]:
    """--only rerun: the re-runs again on the world a resumed runbook part left (no reset): a recheck first (it
    leaves the completion mark in the lease's log, which a run by code older than the mark did not), then the no-op
    re-run. The re-run measured before, if any, is kept as again_before."""
    if out.get("again") and "again_before" not in out:
        out["again_before"] = out.pop("again")
    return runs(sb, out, ("recheck", "again"), stamp, extra, logs, save)


def own_peak_mb() -> float:
    """This benchmark process's own peak (it loads the fixture): reported beside, never mixed into, the controller's."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
