# The run record on disk: run.json (the run's identity, targets, and each phase's status and timing) beside one
# <phase>.json per phase. Every write goes to a temporary file renamed over the old one, so run.json is always a
# whole JSON document, and it is rewritten at every step: a run killed at any point leaves its record up to there.
"""Run record files: open the run, record a phase (status, timing, budget), close the run - atomically."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.vdp_workdir import atomic_file

RUN_JSON = "run.json"


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None


def write_json(path: str, data: Any) -> None:
    """Write `data` as JSON to `path` atomically (temporary file + rename), mode 0640."""
    with atomic_file(path) as out:
        json.dump(data, out, indent=2, sort_keys=False, default=str)
        out.write("\n")


def read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def runbook_version(project_dir: str | None) -> dict[str, Any]:
    """The git commit of the runbook (and whether the checkout has local changes); 'unknown' without git."""
    git = shutil.which("git")
    if not project_dir or not git:
        return dict(commit="unknown", dirty=None)
    try:
        commit = subprocess.run([git, "-C", project_dir, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                                check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run([git, "-C", project_dir, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return dict(commit="unknown", dirty=None)
    return dict(commit=commit, dirty=bool(dirty))


def open_run(p: dict[str, Any]) -> dict[str, Any]:
    """Create run.json, or resume it (a re-run with the same run id keeps its start and its phases)."""
    path = os.path.join(p["run_dir"], RUN_JSON)
    run = read_json(path)
    resumed = bool(run)
    if run.get("check_mode") and not p.get("check_mode_run"):
        run["phases"] = {}  # a real run after a dry run with the same id: what the dry run planned is not history
    run.setdefault("run_id", p["run_id"])
    run.setdefault("started_at", now())
    run.setdefault("phases", {})
    run.setdefault("attempts", [])
    run["attempts"].append(dict(started_at=now(), operator=p.get("operator") or _default_operator(),
                                check_mode=bool(p.get("check_mode_run"))))  # fmt: skip
    run.update(
        environment=p.get("environment") or run.get("environment") or "unknown",
        check_mode=bool(p.get("check_mode_run")),
        operator=p.get("operator") or _default_operator(),
        runbook_version=runbook_version(p.get("project_dir")),
        targets=p.get("targets") or run.get("targets") or {},
        updated_at=now(),
        finished_at=None,
        outcome="running",
    )
    write_json(path, run)
    return dict(run_json=path, resumed=resumed)


def _default_operator() -> str:
    return f"{os.environ.get('USER') or os.environ.get('LOGNAME') or 'unknown'}@{socket.gethostname()}"


def record_phase(p: dict[str, Any]) -> dict[str, Any]:
    """Write <phase>.json (when a record is given) and note the phase's status and timing in run.json."""
    path = os.path.join(p["run_dir"], RUN_JSON)
    run = read_json(path) or dict(run_id=p["run_id"], started_at=now(), phases={}, outcome="running")
    phases = run.setdefault("phases", {})
    entry = phases.get(p["phase"], {})
    status = p.get("status") or "ok"
    if status == "running" or "started_at" not in entry:
        entry["started_at"] = p.get("started_at") or entry.get("started_at") or now()
    entry.update(status=status)
    if p.get("summary") is not None:
        entry["summary"] = p["summary"]
    if status != "running":
        entry["finished_at"] = now()
        started, finished = _parse(entry["started_at"]), _parse(entry["finished_at"])
        entry["seconds"] = round((finished - started).total_seconds(), 1) if started and finished else None
    if p.get("budget_seconds"):
        entry["budget_seconds"] = p["budget_seconds"]
        entry["budget_met"] = None if entry.get("seconds") is None else entry["seconds"] <= p["budget_seconds"]
    phase_file = os.path.join(p["run_dir"], f"{p['phase']}.json")
    if p.get("record") is not None:
        write_json(phase_file, dict(p["record"], phase=p["phase"], run_id=p["run_id"]))
        entry["file"] = f"{p['phase']}.json"
    phases[p["phase"]] = entry
    run["updated_at"] = now()
    write_json(path, run)
    return dict(run_json=path, phase_file=phase_file)


def budget_status(phases: dict[str, Any], budget: dict[str, Any]) -> dict[str, Any]:
    """One time budget of the seed (e.g. the 30 min window for schema + data) against this run: measured from the
    first start to the last end of its phases that ran; met is None when none of them ran (or one is unfinished)."""
    ran = [phases[name] for name in budget.get("phases", []) if name in phases]
    starts = [t for t in (_parse(e.get("started_at")) for e in ran) if t is not None]
    ends = [t for t in (_parse(e.get("finished_at")) for e in ran) if t is not None]
    entry = dict(id=budget.get("id"), name=budget.get("name"), minutes=budget.get("minutes"),
                 phases=[name for name in budget.get("phases", []) if name in phases], seconds=None, met=None)
    if ran and len(starts) == len(ends) == len(ran):
        entry["seconds"] = round((max(ends) - min(starts)).total_seconds(), 1)
        entry["met"] = entry["seconds"] <= float(budget.get("minutes") or 0) * 60
    return entry


def close_run(p: dict[str, Any]) -> dict[str, Any]:
    path = os.path.join(p["run_dir"], RUN_JSON)
    run = read_json(path) or dict(run_id=p["run_id"], phases={})
    run.update(finished_at=now(), updated_at=now(), outcome=p.get("status") or "finished")
    if p.get("summary"):
        run["verdict"] = p["summary"]
    if p.get("budgets") is not None:
        run["budgets"] = [budget_status(run.get("phases", {}), b) for b in p["budgets"]]
    write_json(path, run)
    return dict(run_json=path, budgets=run.get("budgets", []))
