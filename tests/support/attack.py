"""Helpers of the issue-7 attack tests (no tests here): playbooks in the background, killing them, the run lease.

Imported by tests/integration/test_run_lease.py, test_live_writes.py, test_lock_waits.py and
test_validation_scale.py. Ansible's workers fork from ansible-playbook and setsid, so "the process
tree" is found through /proc parent links, not through process groups.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import IO, Any

import psycopg
import yaml

from tests.support.engine import scalar, wait_until
from tests.support.sandbox import ROOT, Sandbox

PG_BINDIR = "/usr/lib/postgresql/15/bin"


class Background:
    """An ansible-playbook started in the background, its output in a file (read it with .output())."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path, handle: IO[bytes]) -> None:
        self.proc, self.log, self._handle = proc, log, handle

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self._handle.close()


def start_playbook(box: Sandbox, world: dict[str, Any], playbook: str, *args: str, log: Path) -> Background:
    """ansible-playbook <playbook> -e @vars <args> in its own session, stdout+stderr to `log`."""
    handle = log.open("wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ansible-playbook"), playbook, "-e", f"@{world['vars_file']}", *args],
        cwd=ROOT,
        env=box.env,
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return Background(proc, log, handle)


def descendants(pid: int) -> list[int]:
    """pid and every process below it (by parent links: Ansible's workers are in their own sessions)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, []))
    return tree


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and all its descendants (what a crashed controller host does to a run)."""
    tree = descendants(pid)
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return tree


def run_sessions(info: dict[str, Any], run_id: str) -> list[tuple[int, str]]:
    """Sessions of the run connected to the database's cluster (application_name ends with ' run <id>')."""
    with psycopg.connect(**info, autocommit=True) as conn:
        return [
            (int(r[0]), str(r[1]))
            for r in conn.execute(
                "SELECT pid, application_name FROM pg_stat_activity WHERE application_name LIKE %s ORDER BY pid",
                (f"% run {run_id}",),
            ).fetchall()
        ]


def wait_sessions_gone(info: dict[str, Any], run_id: str, timeout: float = 60) -> bool:
    return wait_until(lambda: not run_sessions(info, run_id), timeout=timeout, step=0.2)


def lease(info: dict[str, Any]) -> dict[str, Any] | None:
    """The run lease row of the database, or None."""
    with psycopg.connect(**info, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('vdp_runbook.run_lease') IS NOT NULL").fetchone()[0]:
            return None
        cur = conn.execute("SELECT * FROM vdp_runbook.run_lease")
        row = cur.fetchone()
        return dict(zip([c.name for c in cur.description or []], row, strict=True)) if row else None


def lease_log(info: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(run_id, event, detail) of vdp_runbook.run_lease_log, oldest first."""
    with psycopg.connect(**info, autocommit=True) as conn:
        if not conn.execute("SELECT to_regclass('vdp_runbook.run_lease_log') IS NOT NULL").fetchone()[0]:
            return []
        return [tuple(r) for r in conn.execute("SELECT run_id, event, detail FROM vdp_runbook.run_lease_log ORDER BY id")]


def migrated(info: dict[str, Any]) -> int:
    return int(scalar(info, "SELECT count(*) FROM public.profiles WHERE organization_id IS NOT NULL"))


def other_run(world: dict[str, Any], run_id: str) -> list[str]:
    """Extra-vars that make a playbook run of the same world a different run (its own id and record folder)."""
    return ["-e", f"vdp_run_id={run_id}", "-e", f"vdp_run_dir={world['run_dir'].parent / run_id}"]


def failure_of(output: str) -> dict[str, Any]:
    """The result of the first `fatal: [...]: FAILED! =>` in an ansible-playbook output (ansible.cfg prints it as YAML)."""
    body = output[output.index("FAILED! => ") + len("FAILED! => ") :].lstrip(" ")
    if body.startswith("{"):
        return json.JSONDecoder().raw_decode(body)[0]
    return yaml.safe_load(textwrap.dedent(body.split("\n\n", 1)[0]))


def restart_production(box: Sandbox) -> None:
    """pg_ctl restart -m fast of the sandbox's production cluster, as the postgres user (as roles/sandbox runs it)."""
    cluster = box.dir / "pg" / "production"
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*run_as, f"{PG_BINDIR}/pg_ctl", "restart", "-w", "-t", "60", "-m", "fast", "-D", str(cluster / "data"),
         "-l", str(cluster / "postgresql.log")],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    assert wait_until(predicate, timeout=timeout, step=0.1), f"timed out after {timeout} s waiting for {what}"


def elapsed(started: float) -> float:
    return round(time.monotonic() - started, 2)
