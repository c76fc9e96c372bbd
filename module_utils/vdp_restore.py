# The steps of a restore, each one small: the database marker that makes a restore idempotent,
# dropping and recreating the target (only after the production guard allowed it and the backup was
# proven end to end), creating the roles the dump needs, running pg_restore (from a proven local
# file with parallel jobs, or streamed with one job), and the row-count parity with the manifest.
"""Restore steps: marker, drop/recreate, roles, pg_restore (file or stream), parity with the manifest."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from typing import Any

from ansible.module_utils.vdp_archive import HashingReader
from ansible.module_utils.vdp_dump import count_rows, iso, utcnow
from ansible.module_utils.vdp_errors import OperatorError, first_line, redact
from ansible.module_utils.vdp_names import TARGET_TABLES
from ansible.module_utils.vdp_pg import connect, target_from_params
from ansible.module_utils.vdp_pgtools import StderrTail, child_env, conninfo

try:
    from psycopg import sql
except ImportError:  # pragma: no cover - connect() reports it
    sql = None  # type: ignore[assignment]

MARKER_PREFIX = "vdp-restore "


class RestoreFailure(OperatorError):
    """The restore could not be done; one secret-free line."""


def maintenance_params(p: dict[str, Any]) -> dict[str, Any]:
    return dict(p, login_db=p["maintenance_db"])


# --------------------------------------------------------------------------- marker (idempotence)


def marker_text(manifest: dict[str, Any]) -> str:
    return MARKER_PREFIX + json.dumps(
        {"key": manifest["key"], "sha256": manifest["sha256"], "run_id": manifest.get("run_id"), "restored_at": iso(utcnow())},
        sort_keys=True,
    )


def current_marker(p: dict[str, Any], dbname: str) -> dict[str, Any] | None:
    with connect(maintenance_params(p), autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (dbname,)
        ).fetchone()
    if not row or not row[0] or not str(row[0]).startswith(MARKER_PREFIX):
        return None
    try:
        return json.loads(str(row[0])[len(MARKER_PREFIX) :])
    except ValueError:
        return None


def recreate_database(p: dict[str, Any], dbname: str, database: dict[str, Any], warnings: list[str]) -> None:
    """Terminate the target's sessions, drop it, create it from template0 with the source's encoding/locale."""
    with connect(maintenance_params(p), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (dbname,)
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        base = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(dbname))
        encoding = database.get("encoding")
        with_locale = base
        if encoding:
            base = sql.SQL("{} ENCODING {}").format(base, sql.Literal(encoding))
            with_locale = base
            if database.get("collate") and database.get("ctype"):
                with_locale = sql.SQL("{} LC_COLLATE {} LC_CTYPE {}").format(
                    base, sql.Literal(database["collate"]), sql.Literal(database["ctype"])
                )
        try:
            conn.execute(with_locale)
        except Exception as exc:  # noqa: BLE001 - a locale the staging host lacks: fall back, and say so
            warnings.append(
                f"could not create the database with the source's locale ({str(exc).strip().splitlines()[0]}): used the default"
            )
            conn.execute(base)


def needed_roles(manifest: dict[str, Any], owners: set[str]) -> list[str]:
    return sorted(set(manifest.get("roles") or []) | owners)


def missing_roles(p: dict[str, Any], roles: list[str]) -> list[str]:
    with connect(maintenance_params(p), autocommit=True) as conn:
        rows = conn.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (roles,)).fetchall()
    present = {str(r[0]) for r in rows}
    return [r for r in roles if r not in present]


def create_roles(p: dict[str, Any], roles: list[str]) -> None:
    with connect(maintenance_params(p), autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def restore_command(pg_restore: str, p: dict[str, Any], jobs: int, path: str | None) -> list[str]:
    cmd = [pg_restore, "--no-password", "-d", conninfo(target_from_params(p), p, "vdp-runbook-restore")]
    if jobs > 1:
        cmd += ["-j", str(jobs)]
    if p["exit_on_error"]:
        cmd.append("--exit-on-error")
    if p["no_owner"]:
        cmd.append("--no-owner")
    if p["no_privileges"]:
        cmd.append("--no-privileges")
    if path:
        cmd.append(path)
    return cmd


def check_restore_exit(p: dict[str, Any], rc: int, err: str, warnings: list[str]) -> None:
    """Fail on a pg_restore error; with exit_on_error=false, errors pg_restore skipped become a warning (parity decides)."""
    if rc == 0:
        return
    if not p["exit_on_error"] and rc == 1 and "errors ignored on restore" in err:
        warnings.append(f"pg_restore skipped errors (exit_on_error=false), row-count parity decides: {err[-1500:]}")
        return
    raise RestoreFailure(f"pg_restore failed (exit {rc}): {err[-2000:] or 'no message'}")


def _wait(proc: subprocess.Popen[bytes], check: Callable[[], None] | None) -> int:
    """Wait for a child, calling `check` (a stop request) every second; the child is killed if anything raises."""
    try:
        while True:
            try:
                return proc.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if check is not None:
                    check()
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def run_restore_file(
    pg_restore: str,
    p: dict[str, Any],
    path: str,
    secrets: list[str],
    warnings: list[str],
    check: Callable[[], None] | None = None,
) -> None:
    """pg_restore -j from the local file that was proven (hashes and full decode) while it was downloaded."""
    proc = subprocess.Popen(
        restore_command(pg_restore, p, p["jobs"], path),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(p.get("login_password")),
    )
    tail = StderrTail(proc.stderr)  # type: ignore[arg-type]
    rc = _wait(proc, check)
    check_restore_exit(p, rc, tail.text(secrets), warnings)


def run_restore_stream(
    client: Any,
    pg_restore: str,
    p: dict[str, Any],
    manifest: dict[str, Any],
    secrets: list[str],
    warnings: list[str],
    check: Callable[[], None] | None = None,
) -> str:
    """Stream the object into pg_restore's stdin (one job, no disk), hashing it again; returns the SHA-256 read."""
    body = client.get_object(Bucket=p["bucket"], Key=manifest["key"])["Body"]
    reader = HashingReader(body)
    proc = subprocess.Popen(
        restore_command(pg_restore, p, 1, None),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=child_env(p.get("login_password")),
    )
    tail = StderrTail(proc.stderr)  # type: ignore[arg-type]
    broken = False
    try:
        while data := reader.read(1024 * 1024):
            if check is not None:
                check()
            if not broken:
                try:
                    proc.stdin.write(data)  # type: ignore[union-attr]
                except (BrokenPipeError, OSError):
                    broken = True
        proc.stdin.close()  # type: ignore[union-attr]
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    rc = _wait(proc, check)
    check_restore_exit(p, rc, tail.text(secrets), warnings)
    return reader.hash.hexdigest()


def parity(p: dict[str, Any], manifest: dict[str, Any], expected: list[str]) -> dict[str, Any]:
    """Exact row counts of the restored tables against the manifest's (counted in the dump's snapshot)."""
    counted: dict[str, int] = {k: int(v) for k, v in (manifest.get("tables") or {}).items()}
    candidates = sorted(set(counted) | set(expected) | set(TARGET_TABLES))
    with connect(p, autocommit=True) as conn:
        restored, absent = count_rows(conn, candidates)
    table_parity = {
        t: {"manifest": counted[t], "restored": restored.get(t), "equal": restored.get(t) == counted[t]} for t in sorted(counted)
    }
    mismatched = [t for t, v in table_parity.items() if not v["equal"]]
    return dict(
        parity=table_parity,
        parity_ok=not mismatched,
        mismatched_tables=mismatched,
        manifest_missing_tables=sorted(t for t in restored if t not in counted),
        absent_tables=[t for t in absent if t in counted],
    )


def set_marker(p: dict[str, Any], dbname: str, manifest: dict[str, Any]) -> None:
    with connect(maintenance_params(p), autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(dbname), sql.Literal(marker_text(manifest))))


def analyze(p: dict[str, Any]) -> float:
    started = time.monotonic()
    with connect(dict(p, statement_timeout="0"), autocommit=True) as conn:
        conn.execute("ANALYZE")
    return round(time.monotonic() - started, 3)


def failure(target: Any, exc: BaseException, secrets: list[str]) -> RestoreFailure:
    return RestoreFailure(redact(f"the restore into {target} failed, the database is incomplete: {first_line(exc)}", *secrets))
