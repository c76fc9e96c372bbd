"""Progress files of the long steps (module_utils/vdp_progress.py) and the action plugin's pure parts
(action_plugins/vdp_progress_action.py): rate and ETA, the throttle, atomic writes, the states a module leaves, how
status.yml judges a file (running, stalled, interrupted), and the plugin's interval, phase and default path."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.support.code import ROOT, module_utils

vp: Any = module_utils("vdp_progress")


def action_plugin() -> Any:
    path = ROOT / "action_plugins" / "vdp_progress_action.py"
    spec = importlib.util.spec_from_file_location("vdp_progress_action_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Clock:
    """A monotonic clock and a wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def mono(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_800_000_000.0 + self.now


def progress(path: Path | None, clock: Clock, what: str = "membership", unit: str = "profiles") -> Any:
    return vp.ProgressFile(None if path is None else str(path), what, unit, clock=clock.mono, wall=clock.wall)


def on_disk(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


# --------------------------------------------------------------------------- rate, ETA, words


def test_rate_and_eta_count_only_this_run_and_the_line_says_it(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "p.json"
    p = progress(path, clock)
    p.start(total=1000, done=200)  # 200 migrated by an earlier, interrupted run: not this run's speed
    clock.now += 2
    p.update(400)
    data = on_disk(path)
    assert (data["done"], data["total"], data["rate_per_s"], data["eta_seconds"]) == (400, 1000, 100.0, 6)
    assert data["line"] == "400 of 1000 profiles (40 %), 100/s, ETA 6 s"
    assert data["state"] == "running" and data["finished"] is False
    assert set(data) >= {"what", "unit", "done", "total", "started_at", "updated_at", "rate_per_s", "eta_seconds", "note"}


def test_unknown_total_has_no_eta_and_bytes_read_as_sizes(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "p.json"
    p = progress(path, clock, "backup", "bytes")
    p.start(None, 0, "the database is 310.0 MiB on disk")
    clock.now += 4
    p.update(48 * 1024 * 1024)
    data = on_disk(path)
    assert data["total"] is None and data["eta_seconds"] is None and data["rate_per_s"] == 12 * 1024 * 1024
    assert data["line"] == "48.0 MiB (total unknown), 12.0 MiB/s - the database is 310.0 MiB on disk"


def test_no_rate_before_anything_moved_and_eta_zero_when_all_is_done(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "p.json"
    p = progress(path, clock)
    p.start(total=50, done=50)
    assert on_disk(path)["rate_per_s"] is None and on_disk(path)["eta_seconds"] == 0


@pytest.mark.parametrize(
    ("seconds", "words"), [(None, "?"), (0, "0 s"), (59.6, "1 min"), (200, "3 min 20 s"), (3900, "1 h 5 min")]
)
def test_durations_in_words(seconds: float | None, words: str) -> None:
    assert vp.duration(seconds) == words


@pytest.mark.parametrize(
    ("value", "words"), [(512, "512 B"), (1536, "1.5 KiB"), (5 * 1024**3, "5.0 GiB"), (3 * 1024**5, "3072.0 TiB")]
)
def test_sizes_in_words(value: int, words: str) -> None:
    assert vp.amount(value, "bytes") == words


def test_an_unknown_unit_or_state_is_refused() -> None:
    with pytest.raises(ValueError, match="unit 'widgets'"):
        vp.ProgressFile(None, "x", "widgets")
    with pytest.raises(ValueError, match="state 'maybe'"):
        vp.ProgressFile(None, "x", "rows").finish("maybe")


# --------------------------------------------------------------------------- throttle


def test_counts_are_written_at_most_once_a_second_but_a_new_step_at_once(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "p.json"
    p = progress(path, clock, "restore", "steps")
    p.start(total=5, note="dropping and creating the database")
    for done in range(1, 100):  # a hundred batches in 0.99 s: none of them written
        clock.now += 0.01
        p.update(done)
    assert on_disk(path)["done"] == 0
    clock.now += 0.02
    p.update(100)
    assert on_disk(path)["done"] == 100
    clock.now += 0.1
    p.update(101, note="pg_restore (2 job(s))")  # a new step: shown at once, not a second later
    assert on_disk(path)["note"] == "pg_restore (2 job(s))"


def test_tick_keeps_a_quiet_step_alive_every_keepalive_period(tmp_path: Path) -> None:
    clock, path = Clock(), tmp_path / "p.json"
    p = progress(path, clock, "restore", "steps")
    p.start(total=5)
    first = on_disk(path)["updated_at"]
    clock.now += vp.KEEPALIVE_SECONDS - 1
    p.tick()
    assert on_disk(path)["updated_at"] == first
    clock.now += 2
    p.tick()
    assert on_disk(path)["updated_at"] > first


# --------------------------------------------------------------------------- atomic writes


def test_writes_are_whole_private_and_leave_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "progress" / "data-org_membership.json"  # the folder is created
    p = vp.ProgressFile(str(path), "membership", "profiles", every=0.0)
    p.start(total=10**9)
    seen: list[int] = []
    errors: list[str] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.append(json.loads(path.read_text())["done"])
            except ValueError as exc:  # half a file
                errors.append(str(exc))

    reader = threading.Thread(target=read)
    reader.start()
    for done in range(2000):
        p.update(done)
    stop.set()
    reader.join()
    assert not errors and seen, errors[:3]
    assert seen == sorted(seen)  # never an older content after a newer one
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert sorted(os.listdir(path.parent)) == ["data-org_membership.json"]


def test_a_file_that_cannot_be_written_never_stops_the_step(tmp_path: Path) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("x")
    p = vp.ProgressFile(str(blocked / "p.json"), "membership", "profiles")
    p.start(total=10)
    p.update(5)
    p.finish()
    assert p.error and not p.enabled


def test_no_path_writes_nothing(tmp_path: Path) -> None:
    clock = Clock()
    p = progress(None, clock)
    p.start(total=10)
    p.update(10)
    p.finish()
    assert not p.enabled and list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- the states a module leaves


def test_the_module_context_writes_done_failed_or_stopped_and_nothing_in_check_mode(tmp_path: Path) -> None:
    done, failed, stopped, dry = (tmp_path / f"{n}.json" for n in ("done", "failed", "stopped", "dry"))
    with vp.progress_file(str(done), "assignments", "pairs") as p:
        p.start(total=4, note="reading the relationships")
        p.update(4)
    assert on_disk(done)["state"] == "done" and on_disk(done)["finished"] and on_disk(done)["note"] == ""
    assert on_disk(done)["line"].startswith("4 of 4 pairs (100 %), done after ")

    with pytest.raises(RuntimeError), vp.progress_file(str(failed), "assignments", "pairs") as p:
        p.start(total=4)
        p.update(1, note="batch")
        raise RuntimeError("boom")
    assert on_disk(failed)["state"] == "failed" and on_disk(failed)["done"] == 1 and on_disk(failed)["note"] == "batch"
    assert "boom" not in failed.read_text()  # the error's text (which could name anything) stays out

    class RunCancelled(Exception):  # vdp_lease's, as the context recognises it
        pass

    with pytest.raises(RunCancelled), vp.progress_file(str(stopped), "membership", "profiles") as p:
        p.start(total=4)
        raise RunCancelled("asked to stop")
    assert on_disk(stopped)["state"] == "stopped"

    with vp.progress_file(str(dry), "membership", "profiles", check_mode=True) as p:
        p.start(total=4)
        p.update(4)
    assert not dry.exists()


# --------------------------------------------------------------------------- status.yml's judgement


def written(tmp_path: Path, name: str, **change: Any) -> Path:
    clock = Clock()
    p = progress(tmp_path / "progress" / f"{name}.json", clock)
    p.start(total=2000, done=0)
    clock.now += 10
    p.update(1200)
    data = dict(p.snapshot(), **change)
    vp.write_atomically(str(tmp_path / "progress" / f"{name}.json"), data)
    return tmp_path / "progress"


def test_status_tells_running_stalled_interrupted_and_done(tmp_path: Path) -> None:
    folder = written(tmp_path, "data-org_membership")
    updated = vp.parse_iso(on_disk(folder / "data-org_membership.json")["updated_at"])
    fresh = vp.read_steps(str(folder), updated + 5, run_connected=False)
    assert [s["state"] for s in fresh] == ["running"] and fresh[0]["percent"] == 60
    assert fresh[0]["line"] == "data-org_membership: running, 1200 of 2000 profiles (60 %), 120/s, ETA 2 s (updated 5 s ago)"
    late = vp.read_steps(str(folder), updated + 600, run_connected=False)[0]
    assert late["state"] == "interrupted" and late["age_seconds"] == 600
    assert late["line"].startswith("data-org_membership: INTERRUPTED at 1200 of 2000 profiles (60 %) after 10 s; last update ")
    assert late["line"].endswith("(10 min ago)")
    stalled = vp.read_steps(str(folder), updated + 600, run_connected=True)[0]
    assert stalled["state"] == "stalled" and stalled["line"].startswith("data-org_membership: no update for 10 min, its run")
    written(tmp_path, "data-org_membership", state="done", finished=True)
    done = vp.read_steps(str(folder), updated + 600, run_connected=False)[0]
    assert done["state"] == "done" and "1200 of 2000 profiles (60 %), done after 10 s, at " in done["line"]


def test_status_skips_what_is_not_a_progress_file(tmp_path: Path) -> None:
    folder = written(tmp_path, "backup")
    (folder / "notes.json").write_text('{"hello": 1}')
    (folder / "broken.json").write_text("{")
    (folder / ".progress-tmp.json").write_text("{}")
    assert [s["name"] for s in vp.read_steps(str(folder), 0, False)] == ["backup"]
    assert vp.read_steps(str(tmp_path / "absent"), 0, False) == []


# --------------------------------------------------------------------------- the action plugin's pure parts


@pytest.mark.parametrize(("value", "seconds"), [(None, 10), ("", 10), (0, 0), ("5", 5), (" 30 ", 30)])
def test_the_interval_from_the_inventory(value: Any, seconds: int) -> None:
    assert action_plugin().interval_of(value) == (seconds, None)


@pytest.mark.parametrize("value", ["soon", -1, 3601, True, "1.5"])
def test_a_bad_interval_is_refused_in_the_operators_words(value: Any) -> None:
    _, problem = action_plugin().interval_of(value)
    assert problem and problem.startswith("vdp_progress_interval must be a whole number of seconds from 0 to 3600")


def test_the_default_path_names_the_running_phase_and_the_module(tmp_path: Path) -> None:
    plugin = action_plugin()
    run = dict(
        phases=dict(
            preflight=dict(status="go", started_at="2026-12-01T10:00:00Z"),
            data=dict(status="running", started_at="2026-12-01T09:00:00Z"),  # left running by a killed attempt
            rehearsal=dict(status="running", started_at="2026-12-01T10:05:00Z"),
        )
    )
    (tmp_path / "run.json").write_text(json.dumps(run))
    path, phase = plugin.default_path(str(tmp_path), "vdp_org_membership")
    assert (path, phase) == (str(tmp_path / "progress" / "rehearsal-org_membership.json"), "rehearsal")
    run["phases"]["backup"] = dict(status="running", started_at="2026-12-01T10:09:00Z")
    (tmp_path / "run.json").write_text(json.dumps(run))
    assert plugin.default_path(str(tmp_path), "ansible.legacy.vdp_backup")[0] == str(tmp_path / "progress" / "backup.json")
    (tmp_path / "run.json").write_text("{")
    assert plugin.default_path(str(tmp_path), "vdp_restore") == (str(tmp_path / "progress" / "restore.json"), None)
    assert plugin.default_path(str(tmp_path / "absent"), "vdp_restore") == (None, None)
    assert plugin.default_path(None, "vdp_restore") == (None, None)
