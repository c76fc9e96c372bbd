# Locating the PostgreSQL client programs (pg_dump, pg_restore, psql) and reading their major
# version, so every module checks client/server skew the same way.
"""PostgreSQL client tools: where they are and which major version they are."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

# Debian/Ubuntu install versioned binaries here; PATH may hold an older client (e.g. psql 13).
_CANDIDATE_DIRS = ("/usr/lib/postgresql/{major}/bin", "/usr/pgsql-{major}/bin", "/opt/homebrew/opt/postgresql@{major}/bin")


class ToolNotFound(Exception):
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
