# Progress of a long step, as a small JSON file the step rewrites while it runs: what it is doing, how far it is
# (bytes, rows, profiles, pairs or steps, of a total when one is known), its rate and ETA, when it last wrote.
# The runbook's action plugin (action_plugins/vdp_progress_action.py) reads it while the module runs and prints a
# line; playbooks/status.yml reads it afterwards (a step killed mid-way leaves its last count and time there).
# Written atomically (temporary file + rename, mode 0640), at most about once a second, never with a secret in it:
# only counts, times and the module's own fixed notes. A progress file that cannot be written never stops the step.
"""Progress files of long steps: throttled atomic writes, rate and ETA, one human line; reading them back."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from ansible.module_utils.vdp_workdir import atomic_file

UNITS: tuple[str, ...] = ("bytes", "rows", "profiles", "pairs", "steps")
STATES: tuple[str, ...] = ("running", "done", "failed", "stopped")
WRITE_EVERY_SECONDS = 1.0  # at most one write a second while counts move
KEEPALIVE_SECONDS = 15.0  # an unchanged count is rewritten this often by tick(): updated_at says the step lives
STALE_AFTER_SECONDS = 120  # status.yml: a running step without an update for this long, its run gone, was interrupted
_KEEP: Any = object()


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: Any) -> float | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class ProgressFile:
    """The progress of one step, written to `path` (nothing at all when `path` is None: a dry run, or no run dir).

    start()/stage() begin a measure (the rate counts from there, so a resumed step's ETA is its own), update() sets
    the count (written at most every WRITE_EVERY_SECONDS), tick() only proves the step alive, finish() ends it.
    """

    def __init__(
        self,
        path: str | None,
        what: str,
        unit: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        every: float = WRITE_EVERY_SECONDS,
    ) -> None:
        if unit not in UNITS:
            raise ValueError(f"unit {unit!r} is not one of {', '.join(UNITS)}")
        self.path, self.what, self.unit = path, what, unit
        self._clock, self._wall, self._every = clock, wall, every
        self.done, self.total, self.note, self.state = 0, None, "", "running"
        self._base, self._begun, self._started_at = 0, clock(), iso(wall())
        self._written_at: float | None = None
        self.error: str | None = None  # why the file could not be written (the step went on)

    @property
    def enabled(self) -> bool:
        return self.path is not None and self.error is None

    def start(self, total: int | None = None, done: int = 0, note: str = "") -> None:
        """Begin: `done` is what earlier runs did (not counted in the rate)."""
        self.stage(self.what, self.unit, total, done, note)

    def stage(self, what: str, unit: str, total: int | None, done: int = 0, note: str = "") -> None:
        """Begin a new stage of the same step (e.g. download, then restore), written at once."""
        if unit not in UNITS:
            raise ValueError(f"unit {unit!r} is not one of {', '.join(UNITS)}")
        self.what, self.unit, self.total, self.done, self.note = what, unit, total, int(done), note
        self._base, self._begun, self._started_at = int(done), self._clock(), iso(self._wall())
        self._write()

    def update(self, done: int, total: Any = _KEEP, note: str | None = None) -> None:
        """The count now (and the total or note when they change); written when the last write is a second old, or
        at once when the note changes (a new step)."""
        self.done = int(done)
        if total is not _KEEP:
            self.total = total
        news = note is not None and note != self.note  # a new step is written at once
        if note is not None:
            self.note = note
        if news or self._written_at is None or self._clock() - self._written_at >= self._every:
            self._write()

    def advance(self, amount: int) -> None:
        self.update(self.done + int(amount))

    def tick(self, note: str | None = None) -> None:
        """Nothing counted, but the step is alive (a long pg_restore): rewritten every KEEPALIVE_SECONDS."""
        if note is not None and note != self.note:
            self.note = note
            self._write()
        elif self._written_at is None or self._clock() - self._written_at >= KEEPALIVE_SECONDS:
            self._write()

    def finish(self, state: str = "done", note: str | None = None) -> None:
        if state not in STATES:
            raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
        self.state = state
        if note is not None:
            self.note = note
        if state == "done" and self.unit == "steps" and self.total is not None:
            self.done = int(self.total)  # every step ran
        self._write()

    # ------------------------------------------------------------------ the document

    def snapshot(self) -> dict[str, Any]:
        """The file's content now (pure: no write)."""
        elapsed = max(self._clock() - self._begun, 0.0)
        moved = self.done - self._base
        rate = round(moved / elapsed, 1) if elapsed >= 0.5 and moved > 0 else None
        eta = None
        if self.total is not None and self.state == "running":
            left = max(int(self.total) - self.done, 0)
            eta = 0 if left == 0 else (round(left / rate) if rate else None)
        data: dict[str, Any] = dict(
            what=self.what,
            unit=self.unit,
            done=self.done,
            total=self.total,
            started_at=self._started_at,
            updated_at=iso(self._wall()),
            elapsed_seconds=round(elapsed, 1),
            rate_per_s=rate,
            eta_seconds=eta,
            note=self.note,
            state=self.state,
            finished=self.state != "running",
        )
        data["line"] = describe(data)
        return data

    def _write(self) -> None:
        if not self.enabled:
            return
        data = self.snapshot()
        self._written_at = self._clock()
        try:
            write_atomically(str(self.path), data)
        except OSError as exc:  # progress is for the operator's eyes: a full disk must not stop the migration
            self.error = f"{type(exc).__name__}: {exc}"


def write_atomically(path: str, data: dict[str, Any]) -> None:
    """Whole or nothing: a reader never sees half a file (temporary file in the same folder, then rename), mode 0640."""
    with atomic_file(path, ".progress-", folder_mode=0o750) as out:
        json.dump(data, out)


@contextmanager
def progress_file(path: str | None, what: str, unit: str, check_mode: bool = False) -> Iterator[ProgressFile]:
    """A ProgressFile for a module's run: none in check mode (a dry run writes no progress); when the block raises,
    the file says where the step stopped - `stopped` on a stop request, else `failed` - and the error goes on."""
    progress = ProgressFile(None if check_mode else path, what, unit)
    try:
        yield progress
    except BaseException as exc:
        # vdp_lease.RunCancelled (playbooks/stop.yml), named rather than imported: this file needs only the stdlib
        progress.finish("stopped" if type(exc).__name__ == "RunCancelled" else "failed")
        raise
    if progress.state == "running":
        progress.finish("done", note="")


# --------------------------------------------------------------------------- words


def amount(value: float | None, unit: str) -> str:
    """1234567 bytes -> '1.2 MiB'; 120000 profiles -> '120000'."""
    if value is None:
        return "?"
    if unit != "bytes":
        return str(int(value))
    size = float(value)
    for name in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or name == "TiB":
            return f"{int(size)} B" if name == "B" else f"{size:.1f} {name}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


def duration(seconds: float | None) -> str:
    """21 -> '21 s'; 200 -> '3 min 20 s'; 3900 -> '1 h 5 min'."""
    if seconds is None:
        return "?"
    whole = round(float(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s" if whole % 60 else f"{whole // 60} min"
    return f"{whole // 3600} h {(whole % 3600) // 60} min"


def counts(data: dict[str, Any]) -> str:
    """'120000 of 1000000 profiles (12 %)', or '48.0 MiB (total unknown)'."""
    unit, done, total = str(data.get("unit") or ""), data.get("done"), data.get("total")
    noun = "" if unit == "bytes" else f" {unit}"
    if total is None:
        return f"{amount(done, unit)}{noun} (total unknown)"
    share = f" ({int(100 * int(done or 0) / int(total))} %)" if int(total) else ""
    return f"{amount(done, unit)} of {amount(total, unit)}{noun}{share}"


def describe(data: dict[str, Any]) -> str:
    """One line: '120000 of 1000000 profiles (12 %), 41000/s, ETA 21 s' (with the note when there is one)."""
    text, state = counts(data), data.get("state") or "running"
    if state == "running":
        if data.get("rate_per_s"):
            text += f", {amount(data['rate_per_s'], str(data.get('unit')))}/s"
        if data.get("eta_seconds") is not None:
            text += f", ETA {duration(data['eta_seconds'])}"
    else:
        text += f", {state} after {duration(data.get('elapsed_seconds'))}"
    note = data.get("note")
    return f"{text} - {note}" if note else text


# --------------------------------------------------------------------------- reading them back (status.yml)


def read_progress(path: str) -> dict[str, Any] | None:
    """A progress file's content, None when it is missing or not a progress document."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("unit") in UNITS and "done" in data else None


def judge(name: str, data: dict[str, Any], now: float, run_connected: bool, stale_after: float) -> dict[str, Any]:
    """Where one step stands: running, stalled (no update, but the run is connected), interrupted (no update and
    nothing of the run connected), or the state it finished in; with the line status.yml prints."""
    updated = parse_iso(data.get("updated_at"))
    age = None if updated is None else max(int(now - updated), 0)
    shown = dict(data)
    state = str(data.get("state") or "running")
    if state == "running":
        old = age is None or age > stale_after
        state = "interrupted" if old and not run_connected else ("stalled" if old else "running")
        if shown.get("eta_seconds") is not None and age is not None:
            shown["eta_seconds"] = max(int(shown["eta_seconds"]) - age, 0)
    when = f"{data.get('updated_at') or '?'} ({duration(age)} ago)"
    if state == "interrupted":
        note = f" - {data['note']}" if data.get("note") else ""
        line = f"INTERRUPTED at {counts(data)} after {duration(data.get('elapsed_seconds'))}{note}; last update {when}"
    elif state == "stalled":
        line = f"no update for {duration(age)}, its run is still connected: {describe(shown)}"
    elif state == "running":
        line = f"running, {describe(shown)} (updated {duration(age)} ago)"
    else:
        line = f"{describe(shown)}, at {data.get('updated_at') or '?'}"
    total = data.get("total")
    percent = int(100 * int(data.get("done") or 0) / int(total)) if total else None
    return dict(data, name=name, state=state, age_seconds=age, percent=percent, line=f"{name}: {line}")


def read_steps(folder: str, now: float, run_connected: bool, stale_after: float = STALE_AFTER_SECONDS) -> list[dict[str, Any]]:
    """Every progress file of a run's progress folder, judged (see judge), oldest first."""
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json") and not n.startswith("."))
    except OSError:
        return []
    steps = []
    for name in names:
        data = read_progress(os.path.join(folder, name))
        if data is not None:
            steps.append(judge(name[: -len(".json")], data, now, run_connected, stale_after))
    return sorted(steps, key=lambda s: str(s.get("started_at") or ""))
