# The PostgreSQL client programs (pg_dump, pg_restore, psql) as child processes: where they are and
# which major version they are (so every module checks client/server skew the same way), the
# environment and conninfo they get (the password only in PGPASSWORD, never on argv), and the tail
# of what they say on stderr.
"""PostgreSQL client tools: location, version skew, child environment, conninfo and stderr tail."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable
from typing import IO, Any

from ansible.module_utils.vdp_errors import OperatorError, redact

# Debian/Ubuntu install versioned binaries here; PATH may hold an older client (e.g. psql 13).
_CANDIDATE_DIRS = ("/usr/lib/postgresql/{major}/bin", "/usr/pgsql-{major}/bin", "/opt/homebrew/opt/postgresql@{major}/bin")


class ToolNotFound(OperatorError):
    """The requested client program is not installed where we looked."""


def pg_tool_path(name: str, bindir: str | None = None, server_major: int | None = None) -> str:
    """Path of a client program: `bindir` if given, else the server's major's usual dirs, else PATH."""
    if bindir:
        path = os.path.join(bindir, name)
        if os.access(path, os.X_OK):
            return path
        raise ToolNotFound(f"{name} not found in {bindir}: set the PostgreSQL client bin directory (vdp_pg_bindir) right")
    if server_major:
        for pattern in _CANDIDATE_DIRS:
            path = os.path.join(pattern.format(major=server_major), name)
            if os.access(path, os.X_OK):
                return path
    found = shutil.which(name)
    if found:
        return found
    raise ToolNotFound(f"{name} not found on PATH: install the PostgreSQL client (e.g. apt-get install postgresql-client-15)")


def pg_tool_version(path: str) -> tuple[int, str]:
    """(major, full version text) of a client program, e.g. (15, '15.18')."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, check=True, timeout=30).stdout
    # "pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)" -> 15, "15.18"
    match = re.search(r"\)\s+(\d+)(?:\.(\d+))?", out) or re.search(r"(\d+)(?:\.(\d+))?", out)
    if not match:
        raise ToolNotFound(f"cannot read the version of {path}: it printed {out.strip()!r}")
    return int(match.group(1)), match.group(0).lstrip(") \t")


def skew_problem(tool: str, tool_major: int, server_major: int) -> str | None:
    """A message when the client is older than the server (pg_dump refuses newer servers), else None."""
    if tool_major >= server_major:
        return None
    return (
        f"{tool} {tool_major} is older than the server (PostgreSQL {server_major}): {tool} cannot dump or restore a "
        f"newer server reliably. Install postgresql-client-{server_major} (or newer) on the controller / execution "
        f"environment, or point vdp_pg_bindir at its bin directory."
    )


class StderrTail:
    """Collect the last lines a child writes to stderr, in a thread (so the pipe never fills)."""

    def __init__(self, stream: IO[bytes], keep: int = 20) -> None:
        self.lines: list[str] = []
        self._keep = keep
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip())
            del self.lines[: -self._keep]

    def text(self, secrets: Iterable[str | None] = ()) -> str:
        self._thread.join(timeout=5)
        return redact(" | ".join(line for line in self.lines if line), *secrets)


# pg_dump/pg_restore need none of these; they never reach the child.
_CHILD_ENV_DROP = frozenset({"PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"})


def child_env(password: str | None) -> dict[str, str]:
    """The child's environment: the password only here (never argv, never output)."""
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    if password:
        env["PGPASSWORD"] = password
    return env


def conninfo(target: Any, params: dict[str, Any], application: str) -> str:
    """A libpq conninfo string WITHOUT the password (it goes through PGPASSWORD)."""

    def quote(value: Any) -> str:
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"

    items = {
        "host": target.host,
        "port": target.port,
        "dbname": target.dbname,
        "user": target.user,
        "sslmode": params.get("ssl_mode") or "prefer",
        "connect_timeout": params.get("connect_timeout") or 10,
        "application_name": application,
    }
    if params.get("ca_cert"):
        items["sslrootcert"] = params["ca_cert"]
    return " ".join(f"{k}={quote(v)}" for k, v in items.items())
