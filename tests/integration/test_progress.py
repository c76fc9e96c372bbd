"""Issue 10 item 6, on the real sandbox: long steps show their progress WHILE they run, and status.yml says where a
running or interrupted migration stands.

- The data step slowed down (batches of 50 with a pause): ansible-playbook's own output carries progress lines of
  the membership batches with rising counts, each arriving while the task still runs (timestamped as they are read
  from its stdout), and the progress files end at done == total, state done. A dry run writes no progress file.
- The backup (no_log) and the staging restore write theirs too, to the byte and to the last step, with no secret in
  the output and the no_log result still hidden.
- A run killed mid-data (its whole process tree, as a crashed controller): status.yml shows the phase the run record
  says was running and the step's progress; once the file is older than the staleness limit with nothing of the run
  connected, it says INTERRUPTED at the count the file holds, and how to resume.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.support.attack import kill_tree, migrated, run_sessions, start_playbook, wait_for, wait_sessions_gone
from tests.support.engine import apply_schema, scalar
from tests.support.sandbox import ROOT, Sandbox
from tests.support.world import play

PROGRESS_LINE = re.compile(r"^    data / membership: (\d+) of (\d+) profiles \((\d+) %\)")


def slow_data(pause: float) -> list[str]:
    """2000 profiles in 40 batches of 50, `pause` s apart; a progress line every second."""
    return ["-e", "vdp_batch_size=50", "-e", f"org_data_migration_pause_between_batches={pause}", "-e", "vdp_progress_interval=1"]


def progress_of(world: dict[str, Any], name: str) -> dict[str, Any]:
    return json.loads((world["run_dir"] / "progress" / f"{name}.json").read_text())


def adhoc(box: Sandbox, world: dict[str, Any], module: str, args: str, *extra: str) -> subprocess.CompletedProcess[str]:
    """One module through its action plugin, with the world's vars (secrets from the vars file, never the command line)."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible"), "controller", "-e", f"@{world['vars_file']}",
         "-m", module, "-a", args, *extra],
        cwd=ROOT, env=box.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    for secret in (box.password, box.s3_secret_key, box.s3_access_key):
        assert secret not in proc.stdout + proc.stderr, f"a secret leaked in {module}'s output"
    return proc


def timed_playbook(box: Sandbox, world: dict[str, Any], playbook: str, *args: str) -> tuple[int, list[tuple[float, str]]]:
    """Run ansible-playbook and keep every line of its stdout with the moment it was read."""
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ansible-playbook"), playbook, "-e", f"@{world['vars_file']}", *args],
        cwd=ROOT,
        env=box.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append((time.monotonic(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    rc = proc.wait(timeout=300)
    reader.join(timeout=30)
    text = "\n".join(line for _, line in lines)
    for secret in (box.password, box.s3_secret_key, box.s3_access_key):
        assert secret not in text, f"a secret leaked in {playbook}'s output"
    return rc, lines


def test_the_data_step_shows_its_progress_while_it_runs_and_ends_at_the_total(
    sandbox: Sandbox, world: dict[str, Any], run_module: Any
) -> None:
    prod = world["vdp_production_db"]
    # A dry run of the module through its action plugin (the run folder is known): no progress file.
    args = '{"db": "{{ vdp_production_db }}", "run_id": "{{ vdp_run_id }}"}'
    dry = adhoc(sandbox, world, "vdp_org_membership", args, "--check")
    assert dry.returncode == 0 and "    migrated: 2000\n" in dry.stdout, dry.stdout[-3000:] + dry.stderr[-2000:]
    assert not (world["run_dir"] / "progress").exists(), "a dry run wrote a progress file"
    assert not apply_schema(run_module, prod).failed

    rc, lines = timed_playbook(sandbox, world, "playbooks/data.yml", *slow_data(0.1))
    text = "\n".join(line for _, line in lines)
    assert rc == 0, text[-4000:]
    # The membership task's result line: the first "changed:" after its banner.
    banner = next(i for i, (_, line) in enumerate(lines) if line.startswith("TASK [org_data_migration : Put every profile"))
    result = next(i for i in range(banner + 1, len(lines)) if lines[i][1].startswith(("changed:", "ok:", "fatal:")))
    shown = [(at, PROGRESS_LINE.match(line)) for at, line in lines[banner + 1 : result]]
    counts = [(at, int(m.group(1)), int(m.group(2))) for at, m in shown if m]
    assert len(counts) >= 3, text[-4000:]
    # Read from ansible-playbook's stdout while the task ran: a second or more apart, counts rising, before its result.
    assert [c for _, c, _ in counts] == sorted(c for _, c, _ in counts) and counts[0][1] < counts[-1][1]
    assert counts[-1][0] - counts[0][0] >= 1.5 and lines[result][0] - counts[0][0] >= 1.5, counts
    assert all(total == 2000 for _, _, total in counts)
    assert re.search(r"^    data / membership: 2000 of 2000 profiles \(100 %\), done after \d+", text, re.M), text[-3000:]

    membership = progress_of(world, "data-org_membership")
    assert (membership["state"], membership["done"], membership["total"], membership["finished"]) == ("done", 2000, 2000, True)
    assert membership["unit"] == "profiles" and membership["eta_seconds"] is None
    pairs = scalar(prod, "SELECT count(*) FROM public.practitioner_assignments")
    assignments = progress_of(world, "data-coach_assignments")
    assert (assignments["state"], assignments["done"], assignments["total"]) == ("done", pairs, pairs), assignments
    assert oct((world["run_dir"] / "progress" / "data-org_membership.json").stat().st_mode & 0o777) == "0o640"


def test_backup_and_restore_write_their_progress_without_leaking_anything(sandbox: Sandbox, world: dict[str, Any]) -> None:
    backup = play(sandbox, world, "playbooks/backup.yml", "-v", "-e", "vdp_progress_interval=1")
    assert backup.returncode == 0, backup.stdout[-3000:]
    assert "censored: 'the output has been hidden due to the fact that ''no_log: true''" in backup.stdout  # still hidden
    dumped = progress_of(world, "backup")
    size = json.loads((world["run_dir"] / "backup.json").read_text())["size"]
    assert (dumped["state"], dumped["unit"], dumped["done"], dumped["total"]) == ("done", "bytes", size, size), dumped
    verified = progress_of(world, "backup-backup_verify")
    assert (verified["state"], verified["done"], verified["total"]) == ("done", size, size), verified

    # The restore through its action plugin, as the staging_restore role calls it (no phase is running now).
    args = '{"db": "{{ vdp_staging_db }}", "production": "{{ vdp_production_db }}", "s3": "{{ vdp_s3 }}", '
    args += '"run_id": "{{ vdp_run_id }}"}'
    restore = adhoc(sandbox, world, "vdp_restore", args, "-e", "vdp_progress_interval=1")
    assert restore.returncode == 0 and "restored: true" in restore.stdout, restore.stdout[-3000:]
    restored = progress_of(world, "restore")
    assert (restored["state"], restored["unit"], restored["done"], restored["total"]) == ("done", "steps", 5, 5), restored
    for name in ("backup", "backup-backup_verify", "restore"):
        text = (world["run_dir"] / "progress" / f"{name}.json").read_text()
        for secret in (sandbox.password, sandbox.s3_secret_key, sandbox.s3_access_key):
            assert secret not in text


def test_status_shows_where_a_killed_run_stopped(
    sandbox: Sandbox, world: dict[str, Any], run_module: Any, tmp_path: Path
) -> None:
    prod, run_id = world["vdp_production_db"], world["vdp_run_id"]
    assert not apply_schema(run_module, prod).failed
    proc = start_playbook(sandbox, world, "playbooks/data.yml", *slow_data(0.3), log=tmp_path / "killed.log")
    try:
        wait_for(lambda: migrated(prod) >= 300, 180, "the membership batches")
        time.sleep(1.2)  # the progress file is rewritten at most once a second
    finally:
        kill_tree(proc.pid)  # the controller crashed: ansible-playbook, its worker and the module
        proc.wait(timeout=60)
    assert wait_sessions_gone(prod, run_id), run_sessions(prod, run_id)
    at_kill = migrated(prod)
    status_args = ("-e", f"run_control_artifacts_dir={world['run_dir'].parent}", "-e", "run_control_stale_after_seconds=10")

    fresh = play(sandbox, world, "playbooks/status.yml", *status_args)
    (tmp_path / "status-fresh.log").write_text(fresh.stdout)
    assert fresh.returncode == 0, fresh.stdout[-3000:]
    assert f"Run record {run_id} (" in fresh.stdout and re.search(r"data\s+running\s+since ", fresh.stdout), fresh.stdout[-3000:]
    assert "data-org_membership: running, " in fresh.stdout, fresh.stdout[-3000:]

    membership = progress_of(world, "data-org_membership")
    assert membership["state"] == "running" and 300 <= membership["done"] <= at_kill, (membership, at_kill)
    time.sleep(max(0.0, 11 - (time.time() - _epoch(membership["updated_at"]))))
    late = play(sandbox, world, "playbooks/status.yml", *status_args)
    (tmp_path / "status-late.log").write_text(late.stdout)
    assert late.returncode == 0, late.stdout[-3000:]
    done = membership["done"]
    interrupted = f"data-org_membership: INTERRUPTED at {done} of 2000 profiles ({done * 100 // 2000} %) after "
    assert interrupted in late.stdout, late.stdout[-3000:]
    assert f"INTERRUPTED: run {run_id} stopped in data-org_membership" in late.stdout
    assert f"re-run with -e vdp_run_id={run_id} to resume" in late.stdout


def _epoch(stamp: str) -> float:
    return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
