# Local work folders of the backup, verification and restore: they can hold a plaintext copy of
# production's data, so each is private (mode 0700), named after the process that owns it, removed on
# every exit path (including SIGTERM / SIGINT / SIGHUP, which AWX and operators send), and a folder
# left by a process that was killed outright (SIGKILL) is removed by the next run.
# And the one way the modules write a local file a reader may open at any moment (run record, progress file,
# list of relationships not converted): whole or not at all.
"""Private, self-cleaning work folders for dumps, the cleanup of a killed run's leftovers, atomic file writes."""

from __future__ import annotations

import os
import re
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

PREFIXES = ("vdp-restore-", "vdp-verify-", "vdp-backup-")
_OWNED = re.compile(r"^(?P<prefix>vdp-(?:restore|verify|backup)-)(?P<pid>\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(parent: str | None = None) -> list[str]:
    """Remove work folders whose owning process is gone (a killed run's dumps). Returns the paths removed."""
    base = parent or tempfile.gettempdir()
    removed = []
    try:
        names = os.listdir(base)
    except OSError:
        return removed
    for name in names:
        match = _OWNED.match(name)
        path = os.path.join(base, name)
        if match and os.path.isdir(path) and not _alive(int(match.group("pid"))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


class _Terminated(SystemExit):
    """Raised in place of a terminating signal so that `finally` blocks (cleanup) run."""


def _raise_on_signal(signum: int, _frame: Any) -> None:
    raise _Terminated(128 + signum)


@contextmanager
def private_workdir(prefix: str, parent: str | None = None) -> Iterator[str]:
    """A mode-0700 folder named <prefix><pid>-..., removed when the block ends, however it ends (but SIGKILL:
    then the next work folder made in the same parent - by a backup, a verification or a restore - removes it)."""
    remove_stale(parent)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)}
    for sig in previous:
        signal.signal(sig, _raise_on_signal)
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent)
    os.chmod(path, 0o700)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def atomic_file(path: str, prefix: str = ".tmp-", folder_mode: int = 0o777) -> Iterator[TextIO]:
    """A text file that appears at `path` whole or not at all, mode 0640: the block writes a temporary file in the
    same folder (created with folder_mode, less the umask, when missing), renamed over `path` when the block ends
    without error, removed when it raises. A reader never sees half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=folder_mode, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=prefix, dir=folder)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            yield out
        os.chmod(temp, 0o640)
        os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
