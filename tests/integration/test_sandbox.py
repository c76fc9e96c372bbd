"""The embedded sandbox: up is idempotent, auth is enforced, down stops exactly what up started."""

from __future__ import annotations

import re
import socket
import tempfile
from pathlib import Path

import boto3
import botocore.exceptions
import psycopg
import pytest

from tests.support import sandbox as sb

# A second sandbox, separate from the session one, so stopping it cannot disturb other tests.
PORT_BASE = 26430


def changed_count(output: str) -> int:
    match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)", output)
    assert match, output[-3000:]
    return int(match.group(1))


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def pids_of(box_dir: Path) -> list[int]:
    pids = [int((box_dir / "s3" / "weed.pid").read_text())]
    for name in ("production", "staging"):
        pids.append(int((box_dir / "pg" / name / "data" / "postmaster.pid").read_text().splitlines()[0]))
    return pids


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has exited: it counts as stopped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.fixture(scope="module")
def box_dir() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="vdp-sandbox-lifecycle-"))
    folder.chmod(0o755)
    return folder


def test_up_down_up_is_idempotent_and_stops_exactly_its_processes(box_dir: Path, sandbox: sb.Sandbox) -> None:
    env = sb.playbook_env(box_dir, PORT_BASE)
    first = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=up", "-e", "sandbox_pg_fsync=false", env=env)
    assert first.returncode == 0, first.stdout[-3000:]
    assert changed_count(first.stdout) > 0
    try:
        second = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=up", "-e", "sandbox_pg_fsync=false", env=env)
        assert second.returncode == 0, second.stdout[-3000:]
        assert changed_count(second.stdout) == 0, "a second `up` must change nothing"

        for port in (PORT_BASE + 2, PORT_BASE + 3, PORT_BASE + 4):
            assert listening(port)
        password = (box_dir / "secrets" / "postgres_password").read_text().split()[0]
        assert oct((box_dir / "secrets" / "postgres_password").stat().st_mode)[-3:] == "600"
        assert password not in first.stdout + first.stderr + second.stdout + second.stderr

        # scram password auth: the right password works, a wrong one is refused.
        with psycopg.connect(host="127.0.0.1", port=PORT_BASE + 2, dbname="virtue", user="postgres", password=password) as conn:
            assert conn.execute("SHOW password_encryption").fetchone()[0] == "scram-sha-256"
            assert conn.execute("SHOW listen_addresses").fetchone()[0] == "127.0.0.1"
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(host="127.0.0.1", port=PORT_BASE + 3, dbname="virtue", user="postgres", password="wrong")

        # S3 requires the generated keys; the backup bucket exists.
        keys = {n: (box_dir / "secrets" / n).read_text().split()[0] for n in ("s3_access_key", "s3_secret_key")}
        s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{PORT_BASE + 4}", region_name="us-east-1",
                          aws_access_key_id=keys["s3_access_key"], aws_secret_access_key=keys["s3_secret_key"])
        assert "vdp-backups" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        bad = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{PORT_BASE + 4}", region_name="us-east-1",
                           aws_access_key_id=keys["s3_access_key"], aws_secret_access_key="not-the-secret")
        with pytest.raises(botocore.exceptions.ClientError):
            bad.list_buckets()

        pids = pids_of(box_dir)
        assert all(alive(p) for p in pids)
    finally:
        down = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=down", env=env)
    assert down.returncode == 0, down.stdout[-3000:]
    assert not any(alive(p) for p in pids), "down must stop every process up started"
    for port in range(PORT_BASE + 2, PORT_BASE + 14):
        assert not listening(port), f"port {port} still open after down"
    # ...and nothing else: the session sandbox on other ports still answers.
    with psycopg.connect(**sandbox.pg()) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)

    again = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=down", env=env)
    assert again.returncode == 0 and changed_count(again.stdout) == 0, "down twice changes nothing"

    status = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=status", env=env)
    assert status.returncode == 0
    assert "production stopped" in status.stdout and "S3 stopped" in status.stdout

    # up after down restarts the same data (the database created the first time is still there).
    up = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=up", "-e", "sandbox_pg_fsync=false", env=env)
    try:
        assert up.returncode == 0, up.stdout[-3000:]
        with psycopg.connect(host="127.0.0.1", port=PORT_BASE + 2, dbname="virtue", user="postgres", password=password) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("virtue",)
    finally:
        sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=down", env=env)


def test_up_refuses_a_port_taken_by_someone_else() -> None:
    folder = Path(tempfile.mkdtemp(prefix="vdp-sandbox-squatted-"))
    folder.chmod(0o755)
    base = 26530
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a TIME_WAIT left by an earlier run is fine
        squatter.bind(("127.0.0.1", base + 4))
        squatter.listen()
        env = sb.playbook_env(folder, base)
        result = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=up", "-e", "sandbox_pg_fsync=false", env=env)
        try:
            assert result.returncode != 0
            assert f"port {base + 4} on 127.0.0.1 is already taken" in result.stdout
        finally:
            sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=down", env=env)
