"""The chaos suite's faults (no tests here): when each strikes during a migrate.yml run, and what it does.

Each injector runs in a thread beside the run, watches the run's own traces (ansible-playbook's output, run.json's
phases, the progress files) for its moment, strikes, and writes what it did to `Strike.note`. The operator's recovery
after the run ended (starting a stopped server again, `playbooks/stop.yml` for modules left running) is in
tests/support/chaos.py.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from tests.support.attack import PG_BINDIR, Background, descendants, kill_tree, restart_production
from tests.support.sandbox import Sandbox

KINDS = ("kill_tree", "kill_controller", "pg_restart", "s3_stop", "staging_stop", "lock_profiles")


@dataclass
class Fault:
    kind: str
    task: int = 0  # kills: strike once the task-th "TASK [" header of the run is printed ...
    delay: float = 0.0  # ... and this many seconds later (mid-module, most of the time)

    @property
    def label(self) -> str:
        return {
            "kill_tree": f"SIGKILL process tree @ task {self.task} +{self.delay:.1f}s",
            "kill_controller": f"SIGKILL ansible-playbook alone @ task {self.task} +{self.delay:.1f}s",
            "pg_restart": "PostgreSQL restart mid data batches",
            "s3_stop": "S3 stopped during the backup upload",
            "staging_stop": "staging server stopped during the restore",
            "lock_profiles": "session locking profiles during schema",
            "none": "none (a second uninterrupted run)",
        }[self.kind]


@dataclass
class Strike:
    """What an injector did: whether it struck, the task it struck in, and a note for the table."""

    struck: bool = False
    note: str = ""
    done: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)


def plan(seed: int, kills: int, total_tasks: int, others: list[str]) -> list[Fault]:
    """`kills` kill points at random tasks of a run of `total_tasks` tasks (half of the whole tree, half of
    ansible-playbook alone), then the other faults. The same seed and task count give the same plan."""
    rng = random.Random(seed)
    span = range(2, max(3, total_tasks - 1))
    tasks = sorted(rng.sample(span, min(kills, len(span))))
    kinds = ["kill_tree" if i % 2 == 0 else "kill_controller" for i in range(len(tasks))]
    rng.shuffle(kinds)
    faults = [Fault(kind, task, round(rng.uniform(0.0, 1.5), 1)) for kind, task in zip(kinds, tasks, strict=True)]
    return faults + [Fault(kind) for kind in others]


def task_count(output: str) -> int:
    return sum(1 for line in output.splitlines() if line.startswith("TASK ["))


def _phases(run_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("phases", {})
    except (OSError, ValueError):
        return {}


def _wait(strike: Strike, run: Background, predicate: Any, step: float = 0.05) -> bool:
    """Wait until predicate() holds; False when the run ended or the engine gave up first."""
    while not strike.stop.is_set() and run.proc.poll() is None:
        if predicate():
            return True
        time.sleep(step)
    return False


# --------------------------------------------------------------------------- the injectors


def _kill(strike: Strike, run: Background, fault: Fault, world: dict[str, Any]) -> None:
    if not _wait(strike, run, lambda: task_count(run.output()) >= fault.task, step=0.02):
        strike.note = f"the run ended before task {fault.task}"
        return
    time.sleep(fault.delay)
    lines = [line for line in run.output().splitlines() if line.startswith("TASK [")]
    where = lines[-1].removeprefix("TASK [").rstrip(" *").removesuffix("]")[:90] if lines else "?"
    if fault.kind == "kill_tree":
        killed = kill_tree(run.pid)
        strike.note = f"killed {len(killed)} processes in {where}"
    else:
        left = len(descendants(run.pid)) - 1
        os.kill(run.pid, signal.SIGKILL)
        strike.note = f"killed ansible-playbook in {where} ({left} processes below it kept running)"
    strike.struck = True


def _pg_restart(strike: Strike, run: Background, box: Sandbox, world: dict[str, Any]) -> None:
    prod, total = world["vdp_production_db"], None

    def mid_batches() -> bool:
        nonlocal total
        if "data" not in _phases(world["run_dir"]):
            return False
        try:
            with psycopg.connect(**prod, autocommit=True, connect_timeout=5) as conn:
                done, total = conn.execute(
                    "SELECT count(*) FILTER (WHERE organization_id IS NOT NULL), count(*) FROM public.profiles"
                ).fetchone()
        except psycopg.Error:
            return False
        return 0 < done < total

    if not _wait(strike, run, mid_batches, step=0.05):
        strike.note = "the data batches never ran while watched"
        return
    started = time.monotonic()
    restart_production(box)
    strike.struck, strike.note = True, f"production restarted mid-batches ({time.monotonic() - started:.1f} s down)"


def _progress(world: dict[str, Any], pattern: str) -> bool:
    return any((world["run_dir"] / "progress").glob(pattern))


def _uploading(box: Sandbox, world: dict[str, Any]) -> Any:
    """A predicate: the run's backup has its S3 multipart upload open (created, not completed yet); the rehearsal
    starting first means the upload was missed (then S3 dies under the rehearsal's download instead)."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=box.s3["endpoint_url"], region_name=box.region,
                      aws_access_key_id=box.s3_access_key, aws_secret_access_key=box.s3_secret_key)  # fmt: skip
    prefix = world["vdp_s3"]["prefix"]

    def check() -> bool:
        phases = _phases(world["run_dir"])
        if "backup" not in phases:
            return False
        return "rehearsal" in phases or bool(s3.list_multipart_uploads(Bucket=box.bucket, Prefix=prefix).get("Uploads"))

    return check


def _s3_stop(strike: Strike, run: Background, box: Sandbox, world: dict[str, Any]) -> None:
    if not _wait(strike, run, _uploading(box, world), 0.02):
        strike.note = "the backup never ran while watched"
        return
    argv, cwd = stop_s3(box)
    missed = "rehearsal" in _phases(world["run_dir"])
    strike.struck = True
    strike.note = (
        "S3 (SeaweedFS) killed "
        + ("in the rehearsal (the upload was missed)" if missed else "with the backup's multipart upload open")
        + "; started again 10 s later"
    )
    time.sleep(10)
    start_s3(box, argv, cwd)


def _restoring(box: Sandbox, world: dict[str, Any]) -> Any:
    """A predicate: the rehearsal's restore runs (its progress file, or a session in the staging database)."""
    name = world["vdp_staging_db"]["dbname"]

    def check() -> bool:
        if "rehearsal_restore" not in _phases(world["run_dir"]):
            return False
        if _progress(world, "*restore*.json"):
            return True
        try:
            with psycopg.connect(**box.pg("staging", "postgres"), autocommit=True, connect_timeout=5) as conn:
                return bool(conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (name,)).fetchone()[0])
        except psycopg.Error:
            return False

    return check


def _staging_stop(strike: Strike, run: Background, box: Sandbox, world: dict[str, Any]) -> None:
    if not _wait(strike, run, _restoring(box, world), 0.02):
        strike.note = "the restore never ran while watched"
        return
    pg_ctl(box, "staging", "stop", "-m", "immediate")
    strike.struck, strike.note = True, "staging stopped (immediate) during the restore; started again 10 s later"
    time.sleep(10)
    pg_ctl(box, "staging", "start")


def _lock_profiles(strike: Strike, run: Background, box: Sandbox, world: dict[str, Any], hold: float = 15.0) -> None:
    if not _wait(strike, run, lambda: "schema" in _phases(world["run_dir"]), 0.01):
        strike.note = "the schema phase never started while watched"
        return
    with psycopg.connect(**world["vdp_production_db"], application_name="the app, a long transaction") as conn:
        conn.execute("LOCK TABLE public.profiles IN ACCESS SHARE MODE")
        strike.struck = True
        started = time.monotonic()
        while time.monotonic() - started < hold and not strike.stop.is_set():
            time.sleep(0.1)
        conn.rollback()
    strike.note = f"ACCESS SHARE lock on profiles held {time.monotonic() - started:.0f} s from the schema phase's start"


def inject(fault: Fault, run: Background, box: Sandbox, world: dict[str, Any]) -> tuple[Strike, threading.Thread]:
    """Start the fault's injector beside `run`; returns its strike record and thread."""
    strike = Strike()
    target: Any = {
        "kill_tree": lambda: _kill(strike, run, fault, world),
        "kill_controller": lambda: _kill(strike, run, fault, world),
        "pg_restart": lambda: _pg_restart(strike, run, box, world),
        "s3_stop": lambda: _s3_stop(strike, run, box, world),
        "staging_stop": lambda: _staging_stop(strike, run, box, world),
        "lock_profiles": lambda: _lock_profiles(strike, run, box, world),
        "none": lambda: None,
    }[fault.kind]

    def body() -> None:
        try:
            target()
        except Exception as exc:  # noqa: BLE001 - reported in the table, never lost in a thread
            strike.note = f"injector failed: {type(exc).__name__}: {exc}"
        finally:
            strike.done.set()

    thread = threading.Thread(target=body, daemon=True, name=f"chaos-{fault.kind}")
    thread.start()
    return strike, thread


# --------------------------------------------------------------------------- the sandbox's servers


def pg_ctl(box: Sandbox, cluster: str, action: str, *args: str) -> None:
    """pg_ctl <action> on one of the sandbox's clusters, as the postgres user (as roles/sandbox runs it)."""
    folder = box.dir / "pg" / cluster
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    log = ["-l", str(folder / "postgresql.log")] if action in ("start", "restart") else []
    subprocess.run([*run_as, f"{PG_BINDIR}/pg_ctl", action, "-w", "-t", "60", "-D", str(folder / "data"), *log, *args],
                   check=True, capture_output=True, timeout=120)  # fmt: skip


def stop_s3(box: Sandbox) -> tuple[list[str], str]:
    """SIGKILL the sandbox's SeaweedFS; returns its command line and folder to start it again."""
    pidfile = box.dir / "s3" / "weed.pid"
    pid = int(pidfile.read_text().split()[0])
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0").decode().split("\0")
    cwd = os.readlink(f"/proc/{pid}/cwd")
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and "Z" not in _state(pid):
        time.sleep(0.05)
    return argv, cwd


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def start_s3(box: Sandbox, argv: list[str], cwd: str) -> None:
    """Start SeaweedFS again as the sandbox role does (own session, its pid file), and wait for its S3 port."""
    import socket

    folder = box.dir / "s3"
    with open(folder / "weed.log", "ab") as log, open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(argv, stdin=devnull, stdout=log, stderr=subprocess.STDOUT, cwd=cwd,
                                start_new_session=True, close_fds=True)  # fmt: skip
    (folder / "weed.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", box.port_base + 4)) == 0:
                time.sleep(2)  # the filer and the bucket come up right after the port
                return
        time.sleep(0.2)
    raise RuntimeError("SeaweedFS did not come back on its S3 port within 90 s")
