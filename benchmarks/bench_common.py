"""What every benchmark part shares: the sandbox's servers, scratch databases, module runs, timings.

Credentials come from the environment only (PGPASSWORD, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, exported by
scripts/bench.sh from the sandbox's secrets folder); nothing secret is ever put on a command line or printed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.support.modrun import run_module  # noqa: E402

PG_BIN = "/usr/lib/postgresql/15/bin"
# Session names of the benchmark's own watchers: the lock sampler leaves them out of what it measures.
BENCH_APP = "vdp-bench"


@dataclass(frozen=True)
class Sandbox:
    """The embedded sandbox the benchmark runs on (ports from its base, as roles/sandbox lays them out)."""

    base: int
    box: Path
    host: str = "127.0.0.1"
    user: str = "postgres"

    @property
    def prod_port(self) -> int:
        return self.base + 2

    @property
    def staging_port(self) -> int:
        return self.base + 3

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.base + 4}"

    @property
    def app_url(self) -> str:
        return f"http://{self.host}:{self.base + 14}"

    def login(self, port: int, db: str) -> dict[str, Any]:
        """Module connection options (the password travels as PGPASSWORD in the module's environment)."""
        return dict(login_host=self.host, login_port=port, login_user=self.user, login_db=db)

    def connect(self, port: int, db: str = "postgres", app: str = BENCH_APP, autocommit: bool = True) -> psycopg.Connection[Any]:
        return psycopg.connect(
            host=self.host, port=port, user=self.user, dbname=db, autocommit=autocommit, application_name=app
        )

    def env(self, port: int, db: str) -> dict[str, str]:
        """libpq environment of a client program (psql, pg_dump, pg_restore) against port/db."""
        return dict(os.environ, PGHOST=self.host, PGPORT=str(port), PGUSER=self.user, PGDATABASE=db)


def recreate(sb: Sandbox, port: int, db: str, template: str | None = None) -> None:
    """Drop db and create it empty, or as a file copy of template (no WAL of the copy: fast at 1M users)."""
    with sb.connect(port) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        if template:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(sql.Identifier(db), sql.Identifier(template))
            )
        else:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))


def drop(sb: Sandbox, port: int, db: str) -> None:
    with sb.connect(port) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def checkpoint(sb: Sandbox, port: int) -> None:
    """Flush the cluster's dirty pages, so a timed step never pays for the previous step's writes."""
    with sb.connect(port) as conn:
        conn.execute("CHECKPOINT")


def set_database(sb: Sandbox, port: int, db: str, setting: str, value: str) -> None:
    """ALTER DATABASE db SET setting = value: every later session of db (modules, psql) gets it."""
    with sb.connect(port) as conn:
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET {} = {}").format(sql.Identifier(db), sql.Identifier(setting), sql.Literal(value))
        )


def database_tag(sb: Sandbox, port: int, db: str) -> str | None:
    """The comment a kept database was tagged with (what it was built from), None when absent."""
    with sb.connect(port) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (db,)).fetchone()
    return None if row is None else str(row[0] or "")


def set_tag(sb: Sandbox, port: int, db: str, tag: str) -> None:
    with sb.connect(port) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(db), sql.Literal(tag)))


def sources_digest(*paths: Path) -> str:
    """sha256 (16 hex) of files: a kept database is reused only while what built it is unchanged."""
    digest = hashlib.sha256()
    for path in paths:
        for item in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if item.is_file() and "__pycache__" not in item.parts:
                digest.update(item.name.encode() + b"\0" + item.read_bytes())
    return digest.hexdigest()[:16]


def vacuum_analyze(sb: Sandbox, port: int, db: str) -> None:
    with sb.connect(port, db) as conn:
        conn.execute("VACUUM (ANALYZE)")


def module(name: str, args: dict[str, Any], what: str | None = None, timeout: float = 7200) -> dict[str, Any]:
    """Run library/<name>.py as Ansible runs it (its own process); a failure stops the benchmark, naming the step."""
    result = run_module(name, args, timeout=timeout)
    if result.get("failed"):
        raise SystemExit(f"{what or name} failed: {result.get('msg')}")
    return result


def timed_module(name: str, args: dict[str, Any], what: str | None = None) -> tuple[float, dict[str, Any]]:
    started = time.monotonic()
    result = module(name, args, what)
    return time.monotonic() - started, result


def role_default(role: str, key: str) -> Any:
    """A role's default (roles/<role>/defaults/main.yml): the benchmark applies what the runbook applies."""
    data = yaml.safe_load((ROOT / "roles" / role / "defaults" / "main.yml").read_text())
    return data[key]


def run(cmd: list[str], env: dict[str, str] | None = None, stdout: Any = None) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run a program (argv, never a shell); (seconds, completed process). The caller judges the exit code."""
    started = time.monotonic()
    proc = subprocess.run(
        cmd, env=env, stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE, text=True, check=False
    )
    return time.monotonic() - started, proc


def first_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr or "").splitlines() if line.strip()]
    errors = [line for line in lines if "ERROR" in line or "error" in line]
    return (errors or lines or [""])[0][:300]


def load_average() -> str:
    """The machine's load (uptime's three figures): the benchmark shares its 2 cores with others."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])
