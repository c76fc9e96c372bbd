# Progress of the long steps on the operator's screen, WHILE they run. The long modules (backup, its verification,
# restore, the data batches) write a progress file (module_utils/vdp_progress.py); this action plugin runs the module
# exactly as Ansible's own `normal` action does - synchronously, so killing ansible-playbook is never undone by a
# detached async job that keeps migrating - and, in a thread of the worker, reads that file every
# vdp_progress_interval seconds and prints its line through Ansible's Display (the worker hands it to
# ansible-playbook's output, in order with the task banners), only when it changed:
#     data / membership: 120000 of 1000000 profiles (12 %), 41000.0/s, ETA 21 s
# Each wrapped module has a one-line action plugin of its own name that is this class.
# When the task gives no progress_file and the run has a record folder (vdp_run_dir), the file is
# <vdp_run_dir>/progress/<phase>-<module>.json (the phase the run record says is running), where status.yml finds it.
# Check mode: no progress file, no lines. Arguments, check mode, diff and no_log are the normal action's, untouched.
"""Action plugin: run a long vdp_* module and print its progress file's line while it runs."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from ansible.errors import AnsibleError
from ansible.plugins.action.normal import ActionModule as NormalAction
from ansible.utils.display import Display

display = Display()

INTERVAL_DEFAULT = 10  # seconds between two lines; vdp_progress_interval changes it, 0 = quiet
PROGRESS_DIR = "progress"


def interval_of(value: Any) -> tuple[int, str | None]:
    """vdp_progress_interval as whole seconds, or why it is not usable (in the operator's words)."""
    if value is None or value == "":
        return INTERVAL_DEFAULT, None
    try:
        seconds = int(str(value).strip())
    except ValueError:
        seconds = -1
    if isinstance(value, bool) or seconds < 0 or seconds > 3600:
        return 0, (
            f"vdp_progress_interval must be a whole number of seconds from 0 to 3600 (0 = no progress lines), got "
            f"{str(value)[:40]!r}: fix it in the inventory or -e; nothing was run"
        )
    return seconds, None


def running_phase(run_dir: str) -> str | None:
    """The phase the run record (run.json) says is running, the most recently started one; None when there is none."""
    try:
        with open(os.path.join(run_dir, "run.json"), encoding="utf-8") as handle:
            phases = (json.load(handle) or {}).get("phases") or {}
    except (OSError, ValueError, AttributeError):
        return None
    running = [
        (str(entry.get("started_at") or ""), str(name))
        for name, entry in phases.items()
        if isinstance(entry, dict) and entry.get("status") == "running"
    ]
    return max(running)[1] if running else None


def default_path(run_dir: Any, action: str) -> tuple[str | None, str | None]:
    """(<run dir>/progress/<phase>-<module>.json, phase); (None, None) when the run has no record folder."""
    if not isinstance(run_dir, str) or not run_dir or not os.path.isdir(run_dir):
        return None, None
    module = action.rpartition(".")[2]
    short = module[len("vdp_") :] if module.startswith("vdp_") else module
    phase = running_phase(run_dir)
    name = f"{phase}-{short}" if phase and phase != short else short
    return os.path.join(run_dir, PROGRESS_DIR, f"{name}.json"), phase


class ProgressWatch:
    """Reads a progress file every `interval` seconds in a thread and prints its line when it changed.

    A file older than the watch (a previous attempt's) is never shown. After the module, the final line is shown
    when at least one line was: a quick step stays quiet.
    """

    def __init__(self, path: str, phase: str | None, interval: int) -> None:
        self.path, self.phase, self.interval = path, phase, interval
        self.since = time.time() - 1
        self.shown: str | None = None
        self.lines = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vdp-progress", daemon=True)

    def start(self) -> ProgressWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if self.lines:
            self.show()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.show()

    def read(self) -> dict[str, Any] | None:
        try:
            if os.stat(self.path).st_mtime < self.since:
                return None
            with open(self.path, encoding="utf-8") as handle:
                data = json.load(handle)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("line"), str) else None

    def show(self) -> None:
        data = self.read()
        if data is None or data["line"] == self.shown:
            return
        self.shown = data["line"]
        what = str(data.get("what") or "progress")
        label = f"{self.phase} / {what}" if self.phase and self.phase != what else what
        display.display(f"    {label}: {data['line']}")
        self.lines += 1


class ActionModule(NormalAction):
    """The normal action (the module, run synchronously) with its progress printed while it runs."""

    def _var(self, task_vars: dict[str, Any], name: str) -> Any:
        value = task_vars.get(name)
        try:
            return self._templar.template(value)
        except AnsibleError:
            return value

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        task_vars = task_vars or {}
        interval, problem = interval_of(self._var(task_vars, "vdp_progress_interval"))
        if problem:
            return dict(failed=True, changed=False, msg=problem)
        if self._play_context.check_mode:  # a dry run writes no progress file
            return super().run(tmp, task_vars)
        path, phase = self._task.args.get("progress_file"), None
        if not path:
            path, phase = default_path(self._var(task_vars, "vdp_run_dir"), self._task.action)
            if path:
                self._task.args = dict(self._task.args, progress_file=path)
        if not path or interval == 0:
            return super().run(tmp, task_vars)
        watch = ProgressWatch(str(path), phase, interval).start()
        try:
            return super().run(tmp, task_vars)
        finally:
            watch.stop()
