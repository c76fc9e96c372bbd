"""Watchers that run beside a timed step: row-lock holds on profiles, an application-like probe, controller memory.

LockSampler  samples pg_locks + pg_stat_activity every `interval` seconds (its own session) and keeps, for every
             transaction of another session that holds RowExclusiveLock (it wrote profiles: its updated rows stay
             locked until it ends) or RowShareLock (SELECT ... FOR KEY SHARE: the foreign-key checks of an insert
             that references profiles) on public.profiles, how long it held it: the server's clock_timestamp() at the
             last sample that saw it, minus the one at the first sample that saw it less one interval (never before
             the transaction's start). A hold may be off by up to one interval either way.
Probe        what a user editing their profile does: every `period` seconds UPDATE one random profile (the legacy
             updated_at trigger fires, as in the app), autocommit, no lock_timeout. Latency is measured from the
             moment the update was DUE, not from when it could be sent: a probe stuck behind a lock delays the next
             ones, and their wait counts too (no coordinated omission). Same schedule on both sides.
TreeMemory   samples /proc every `interval` seconds: the resident memory of a process and all its descendants (the
             controller: ansible-playbook, its workers, the modules, pg_dump/pg_restore), the peak of the sum and the
             peak single process with its name.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_common import BENCH_APP, Sandbox

LOCKS_SQL = """
SELECT a.pid, extract(epoch FROM clock_timestamp())::float8, extract(epoch FROM a.xact_start)::float8,
       bool_or(l.mode = 'RowExclusiveLock'), coalesce(a.application_name, ''), left(a.query, 120)
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'relation' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.relation = 'public.profiles'::regclass AND l.granted AND l.mode IN ('RowExclusiveLock', 'RowShareLock')
  AND a.xact_start IS NOT NULL AND coalesce(a.application_name, '') NOT LIKE %(mine)s
GROUP BY a.pid, a.xact_start, a.application_name, a.query
"""


@dataclass
class Hold:
    """One transaction seen holding a row-level lock mode on profiles: server clock at the first and last sample."""

    pid: int
    xact_start: float
    first: float
    last: float
    wrote: bool
    application: str
    query: str
    seen_at: float

    def seconds(self, interval: float) -> float:
        """From when it was first seen (less one interval: it may have started just after the previous sample, but not
        before its transaction) to the last sample that saw it."""
        return self.last - max(self.xact_start, self.first - interval)


class Watcher:
    """A daemon thread running `tick` every interval until stop(); errors are kept, not raised in the thread."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self) -> Watcher:
        """Start the thread; return once it is set up (its connection open), so the timed step starts watched."""
        self._thread.start()
        self._ready.wait()
        if self.error is not None:
            raise RuntimeError(f"{type(self).__name__} could not start: {self.error}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        if self.error is not None:
            raise RuntimeError(f"{type(self).__name__} failed: {self.error}")

    def setup(self) -> None:
        """Prepare in the thread (connections), before the first tick."""

    def teardown(self) -> None:
        """Release in the thread, after the last tick."""

    def tick(self) -> None:
        raise NotImplementedError

    def _loop(self) -> None:
        try:
            try:
                self.setup()
            finally:
                self._ready.set()
            due = time.monotonic()
            while not self._stop.is_set():
                self.tick()
                due += self.interval
                self._stop.wait(max(0.0, due - time.monotonic()))
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
        finally:
            self.teardown()


class LockSampler(Watcher):
    def __init__(self, sb: Sandbox, db: str, interval: float = 0.02) -> None:
        super().__init__(interval)
        self.sb, self.db = sb, db
        self.holds: dict[tuple[int, Any], Hold] = {}
        self.samples = 0
        self.conn: Any = None

    def setup(self) -> None:
        self.conn = self.sb.connect(self.sb.prod_port, self.db, app=f"{BENCH_APP}-locks")

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def tick(self) -> None:
        rows = self.conn.execute(LOCKS_SQL, dict(mine=f"{BENCH_APP}%")).fetchall()
        now = time.monotonic()
        self.samples += 1
        for pid, clock, xact_start, wrote, app, query in rows:
            key = (pid, xact_start)
            held = self.holds.get(key)
            if held is None:
                self.holds[key] = Hold(pid, xact_start, clock, clock, wrote, app, query, now)
            else:
                held.last, held.seen_at = clock, now
                if wrote and not held.wrote:  # it also holds rows it updated now: it counts as a writer
                    held.wrote, held.query = True, query

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        """Longest hold of a writer (row updates) and of a key-share holder (FK checks), in [since, until]."""
        window = [h for h in self.holds.values() if since <= h.seen_at <= until]
        out: dict[str, Any] = dict(samples=self.samples, interval_ms=round(self.interval * 1000), transactions=len(window))
        for kind, holds in (("write", [h for h in window if h.wrote]), ("key_share", [h for h in window if not h.wrote])):
            top = max(holds, key=lambda h: h.seconds(self.interval), default=None)
            out[kind] = None if top is None else dict(
                seconds=round(top.seconds(self.interval), 3), transactions=len(holds), application=top.application,
                query=top.query,
            )
        longest = [out[k]["seconds"] for k in ("write", "key_share") if out[k]]
        out["longest_seconds"] = max(longest, default=0.0)
        return out


class Probe(Watcher):
    """One profile UPDATE every `period` seconds, latency from when it was due."""

    def __init__(self, sb: Sandbox, db: str, period: float = 0.05, sample: int = 5000) -> None:
        super().__init__(period)
        self.sb, self.db, self.sample = sb, db, sample
        self.ids: list[Any] = []
        self.latencies: list[tuple[float, float]] = []  # (due, seconds)
        self.conn: Any = None
        self._rng = random.Random(20250103)
        self._due = 0.0

    def setup(self) -> None:
        self.conn = self.sb.connect(self.sb.prod_port, self.db, app=f"{BENCH_APP}-probe")
        self.ids = [r[0] for r in self.conn.execute("SELECT id FROM public.profiles ORDER BY random() LIMIT %s", (self.sample,))]
        self._due = time.monotonic()

    def teardown(self) -> None:
        if self.conn is not None:
            self.conn.close()

    def tick(self) -> None:
        """Run every update that is due (a late one runs at once; its latency counts from its due time)."""
        now = time.monotonic()
        while self._due <= now:
            due = self._due
            self.conn.execute("UPDATE public.profiles SET full_name = full_name WHERE id = %s", (self._rng.choice(self.ids),))
            self.latencies.append((due, time.monotonic() - due))
            self._due += self.interval
            now = time.monotonic()

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        values = sorted(s for due, s in self.latencies if since <= due <= until)
        if not values:
            return dict(updates=0)

        def pct(p: float) -> float:
            return round(values[min(len(values) - 1, int(p * len(values)))] * 1000, 1)

        return dict(updates=len(values), p50_ms=pct(0.50), p99_ms=pct(0.99), max_ms=round(values[-1] * 1000, 1))


def _children_map() -> tuple[dict[int, list[int]], dict[int, tuple[int, str]]]:
    """(parent -> children, pid -> (rss kB, name)) of every process now; vanished ones are skipped."""
    children: dict[int, list[int]] = {}
    info: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        rss = int(fields.get("VmRSS", "0 kB").split()[0])
        pid, ppid = int(entry.name), int(fields.get("PPid", "0").strip())
        children.setdefault(ppid, []).append(pid)
        info[pid] = (rss, _name(entry, fields.get("Name", "?").strip()))
    return children, info


def _name(entry: Path, fallback: str) -> str:
    """A readable process name: a module's library file, ansible-playbook, or the program (with ansible.cfg's
    pipelining a module is a bare python reading its payload from stdin: named as such)."""
    try:
        argv = (entry / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return fallback
    words = [a.decode(errors="replace") for a in argv if a]
    for word in words:
        if "AnsiballZ_" in word or word.endswith("ansible-playbook") or "/library/vdp_" in word:
            return Path(word).name
    if len(words) == 1 and Path(words[0]).name.startswith("python"):
        return "a module (pipelined: its name is not on its command line)"
    return Path(words[0]).name if words else fallback


class TreeMemory(Watcher):
    def __init__(self, root: int, interval: float = 0.25) -> None:
        super().__init__(interval)
        self.root = root
        self.peak_kb = self.peak_process_kb = 0
        self.peak_process = ""
        self.by_name: dict[str, int] = {}

    def tick(self) -> None:
        children, info = _children_map()
        todo, total = [self.root], 0
        while todo:
            pid = todo.pop()
            rss, name = info.get(pid, (0, "?"))
            total += rss
            self.by_name[name] = max(self.by_name.get(name, 0), rss)
            if rss > self.peak_process_kb:
                self.peak_process_kb, self.peak_process = rss, name
            todo.extend(children.get(pid, []))
        self.peak_kb = max(self.peak_kb, total)

    def summary(self) -> dict[str, Any]:
        top = sorted(self.by_name.items(), key=lambda kv: -kv[1])[:6]
        return dict(
            peak_tree_mb=round(self.peak_kb / 1024, 1),
            peak_process_mb=round(self.peak_process_kb / 1024, 1),
            peak_process=self.peak_process,
            top_processes_mb={k: round(v / 1024, 1) for k, v in top},
        )
