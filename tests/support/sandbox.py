"""The test suite's own sandbox: the project's sandbox role, started in a temporary folder on other ports.

Tests never touch the demo sandbox (.sandbox/, ports 15432-15443): they use VDP_SANDBOX_PORT_BASE
(default 25430) and a folder under the system temp dir, so `make demo` and `make test` can run side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def playbook_env(sandbox_dir: Path, port_base: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        VDP_SANDBOX_DIR=str(sandbox_dir),
        VDP_SANDBOX_PORT_BASE=str(port_base),
        ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        ANSIBLE_FORCE_COLOR="0",
        ANSIBLE_NOCOLOR="1",
    )
    # The tests pass credentials explicitly; stray libpq/AWS variables of the developer's shell must not leak in.
    for name in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        env.pop(name, None)
    env.update(extra or {})
    return env


def run_playbook(
    playbook: str | Path,
    *args: str,
    env: dict[str, str],
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    """ansible-playbook from the project root; stdout and stderr captured (never raises on failure)."""
    return subprocess.run(
        [str(VENV_BIN / "ansible-playbook"), str(playbook), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@dataclass
class Sandbox:
    """Connection facts of the running test sandbox."""

    dir: Path
    port_base: int
    password: str
    s3_access_key: str
    s3_secret_key: str
    env: dict[str, str] = field(default_factory=dict)
    bucket: str = "vdp-backups"
    region: str = "us-east-1"

    def pg(self, which: str = "production", dbname: str = "virtue") -> dict[str, Any]:
        """psycopg.connect(**kwargs) for a cluster ('production' or 'staging')."""
        port = self.port_base + (2 if which == "production" else 3)
        return dict(host="127.0.0.1", port=port, dbname=dbname, user="postgres", password=self.password)

    def login(self, which: str = "production", dbname: str = "virtue") -> dict[str, Any]:
        """The same, as the vdp_* modules' login_* options."""
        c = self.pg(which, dbname)
        return dict(login_host=c["host"], login_port=c["port"], login_db=c["dbname"], login_user=c["user"],
                    login_password=c["password"])

    @property
    def s3(self) -> dict[str, Any]:
        return dict(endpoint_url=f"http://127.0.0.1:{self.port_base + 4}", region=self.region, bucket=self.bucket,
                    access_key=self.s3_access_key, secret_key=self.s3_secret_key)

    def playbook(self, playbook: str | Path, *args: str, timeout: float = 900,
                 extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(self.env, **(extra_env or {}))
        return run_playbook(playbook, *args, env=env, timeout=timeout)


def start(sandbox_dir: Path, port_base: int) -> Sandbox:
    env = playbook_env(sandbox_dir, port_base)
    proc = run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=up", "-e", "sandbox_pg_fsync=false", env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"test sandbox did not start:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}")
    secrets = sandbox_dir / "secrets"

    def read(name: str) -> str:
        return (secrets / name).read_text().split()[0]

    return Sandbox(dir=sandbox_dir, port_base=port_base, password=read("postgres_password"),
                   s3_access_key=read("s3_access_key"), s3_secret_key=read("s3_secret_key"), env=env)


def stop(sandbox: Sandbox) -> subprocess.CompletedProcess[str]:
    return run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=down", env=sandbox.env)
