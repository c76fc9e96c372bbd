"""Preflight on the real test sandbox (PostgreSQL x2 + SeaweedFS): shape, counts, anomalies, go/no-go, failures.

Module-level tests call library/vdp_preflight.py as Ansible does (fast); the playbook tests run
ansible-playbook as a subprocess and grep everything it printed for the passwords.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fixtures import generate_legacy as gl
from tests.support.sandbox import Sandbox

PG_BINDIR = "/usr/lib/postgresql/15/bin"
MIGRATIONS = str(Path(__file__).resolve().parents[2] / "migrations")
MIGRATION_LOCK_KEY = 0x56445020_4F524731  # module_utils/vdp_pg.MIGRATION_LOCK_KEY


def module_args(box: Sandbox, db: dict[str, Any], **extra: Any) -> dict[str, Any]:
    staging = box.pg("staging", "virtue")
    args: dict[str, Any] = dict(
        login_host=db["host"],
        login_port=db["port"],
        login_db=db["dbname"],
        login_user=db["user"],
        login_password=db["password"],
        staging=dict(
            host=staging["host"], port=staging["port"], dbname=staging["dbname"], user="postgres", password=box.password
        ),
        s3=dict(box.s3),
        pg_bindir=PG_BINDIR,
        migrations_dir=MIGRATIONS,
    )
    args.update(extra)
    return args


def preflight_with_staging(run_module: Callable[..., Any], box: Sandbox, db: dict[str, Any], **staging: Any) -> Any:
    """vdp_preflight on `db`, its staging connection (the sandbox's staging, as postgres) changed as given."""
    args = module_args(box, db)
    args["staging"].update(staging)
    return run_module("vdp_preflight", args)


def scalar(db: dict[str, Any], query: str) -> Any:
    with psycopg.connect(**db) as conn:
        row = conn.execute(query).fetchone()
        assert row is not None
        return row[0]


def checks_by_name(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


# --------------------------------------------------------------------------- module against loaded legacy dbs


@pytest.mark.parametrize(("shape", "source"), [("supabase", "auth.users"), ("seed", "profiles")])
def test_shape_counts_and_anomalies_match_sql(
    shape: str, source: str, sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], run_module: Callable[..., Any]
) -> None:
    db = legacy_db(shape)
    with psycopg.connect(**db) as conn:
        before = gl.content_checksum(conn)
    result = run_module("vdp_preflight", module_args(sandbox, db), check=True)
    assert not result.failed, result
    assert result["go"] is True, result["blocking"]
    assert result["changed"] is False
    assert result["legacy"] == {"sign_in_source": source, "shape": shape}
    assert result["counts"] == {
        "Total Users": scalar(db, "SELECT count(*) FROM public.profiles"),
        "Active Sponsor Relationships": scalar(db, "SELECT count(*) FROM public.sponsor_practitioner_relationships WHERE active"),
        "Total Virtue Progress Records": scalar(db, "SELECT count(*) FROM public.user_virtue_progress"),
    }
    anomalies = result["anomalies"]
    assert anomalies["self_relationships"]["count"] == scalar(
        db, "SELECT count(*) FROM public.sponsor_practitioner_relationships WHERE sponsor_id = practitioner_id"
    )
    assert anomalies["orphan_relationships"]["count"] == scalar(
        db,
        "SELECT count(*) FROM public.sponsor_practitioner_relationships r "
        "WHERE NOT EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.practitioner_id)",
    )
    assert anomalies["duplicate_active_pairs"]["count"] == scalar(
        db,
        "SELECT count(*) FROM (SELECT 1 FROM public.sponsor_practitioner_relationships WHERE active "
        "AND sponsor_id <> practitioner_id GROUP BY sponsor_id, practitioner_id HAVING count(*) > 1) d",
    )
    for kind in ("self_relationships", "orphan_relationships", "duplicate_active_pairs"):
        assert anomalies[kind]["count"] > 0 and anomalies[kind]["sample"], kind
    assert anomalies["over_capacity"] == {
        "users": 2000,
        "max_users": 1000,
        "max_users_source": "max_users setting; the default organization does not exist yet",
        "over_by": 1000,
        "policy": "raise",  # the data step's policy (vdp_capacity_policy), whose default raises with 10 % headroom
        "max_users_after": 2200,
    }
    names = " ".join(result["warning_messages"])
    for word in ("self_relationships", "orphan_relationships", "duplicate_active_pairs", "over_capacity"):
        assert word in names
    checks = checks_by_name(result)
    assert checks["S3 bucket"]["status"] == "ok"
    assert checks["staging connection"]["status"] == "ok"
    assert result["migration"]["state"] == "not_applied"
    assert result["production"]["settings"]["work_mem"]
    assert result["tools"]["pg_dump"]["major"] == 15
    with psycopg.connect(**db) as conn:
        assert gl.content_checksum(conn) == before, "preflight must not write"
        assert conn.execute("SELECT to_regnamespace('vdp_runbook') IS NULL").fetchone()[0]


def test_capacity_policy_fail_blocks_and_the_default_organization_capacity_wins(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], run_module: Callable[..., Any]
) -> None:
    db = legacy_db("supabase")
    blocked = run_module("vdp_preflight", module_args(sandbox, db, capacity_policy="fail"))
    assert blocked["go"] is False
    assert any("over_capacity" in b and "max_users 1000" in b for b in blocked["blocking"])
    with psycopg.connect(**db) as conn:
        conn.execute(
            "CREATE TABLE public.organizations (id uuid PRIMARY KEY DEFAULT gen_random_uuid(), slug text UNIQUE, max_users int)"
        )
        conn.execute("INSERT INTO public.organizations (slug, max_users) VALUES ('individual-users', 5000)")
    fits = run_module("vdp_preflight", module_args(sandbox, db, capacity_policy="fail"))
    assert fits["go"] is True, fits["blocking"]
    assert fits["anomalies"]["over_capacity"]["max_users"] == 5000
    assert fits["anomalies"]["over_capacity"]["over_by"] == 0
    assert fits["migration"]["state"] == "partial"


def test_migration_state_partial_then_applied(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], run_module: Callable[..., Any]
) -> None:
    db = legacy_db("seed")
    with psycopg.connect(**db) as conn:
        conn.execute("CREATE SCHEMA vdp_runbook")
        conn.execute(
            "CREATE TABLE vdp_runbook.schema_migrations (version text PRIMARY KEY, kind text, checksum text, "
            "applied_at timestamptz DEFAULT now(), duration_ms bigint DEFAULT 1, applied_by text DEFAULT 'test', "
            "run_id text, details jsonb DEFAULT '{}')"
        )
        conn.execute(
            "INSERT INTO vdp_runbook.schema_migrations (version, kind, checksum) "
            "VALUES ('20250103_organizational_model_schema', 'schema', 'x')"
        )
        conn.execute("ALTER TABLE public.profiles ADD COLUMN organization_id uuid")
    partial = run_module("vdp_preflight", module_args(sandbox, db))
    state = partial["migration"]
    assert state["state"] == "partial" and state["ledger_exists"] and state["organization_id_column"]
    assert "20250103_organizational_model_indexes" in state["pending_versions"]
    assert checks_by_name(partial)["migration state"]["status"] == "warning"
    with psycopg.connect(**db) as conn:
        conn.execute(
            "ALTER TABLE public.profiles ADD COLUMN roles text[], ADD COLUMN is_active boolean, "
            "ADD COLUMN last_activity timestamptz"
        )
        conn.execute("CREATE TABLE public.organizations (id uuid PRIMARY KEY, slug text, max_users int)")
        conn.execute("CREATE TABLE public.practitioner_assignments (id uuid PRIMARY KEY)")
        conn.execute(
            "INSERT INTO vdp_runbook.schema_migrations (version, kind, checksum) "
            "VALUES ('20250103_organizational_model_indexes', 'indexes', 'y')"
        )
    # Every file applied but the data step not recorded (e.g. killed mid-batch): still partial.
    schema_only = run_module("vdp_preflight", module_args(sandbox, db))
    assert schema_only["migration"]["state"] == "partial"
    assert schema_only["migration"]["pending_versions"] == ["20250103_organizational_model_data"]
    with psycopg.connect(**db) as conn:
        conn.execute(
            "INSERT INTO vdp_runbook.schema_migrations (version, kind, checksum) "
            "VALUES ('20250103_organizational_model_data', 'data', 'z')"
        )
    applied = run_module("vdp_preflight", module_args(sandbox, db))
    assert applied["migration"]["state"] == "applied", applied["migration"]
    assert applied["go"] is True


def test_long_transactions_and_a_held_migration_lock(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], run_module: Callable[..., Any]
) -> None:
    db = legacy_db("supabase")
    with psycopg.connect(**db, application_name="stuck-report") as stuck, psycopg.connect(**db, autocommit=True) as holder:
        stuck.execute("SELECT count(*) FROM public.profiles")  # opens the transaction (xact_start)
        holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
        time.sleep(2.2)
        report = run_module("vdp_preflight", module_args(sandbox, db, long_transaction_seconds=1))
        strict = run_module("vdp_preflight", module_args(sandbox, db, long_transaction_seconds=1, long_transaction_policy="fail"))
        stuck_pid = stuck.info.backend_pid
        holder_pid = holder.info.backend_pid
    assert [t["pid"] for t in report["long_transactions"]] == [stuck_pid]
    assert report["long_transactions"][0]["application_name"] == "stuck-report"
    checks = checks_by_name(report)
    assert checks["long-running transactions"]["status"] == "warning"
    assert checks["migration lock"]["status"] == "blocking"
    assert f"pid {holder_pid}" in checks["migration lock"]["detail"]
    assert report["go"] is False
    assert checks_by_name(strict)["long-running transactions"]["status"] == "blocking"


def test_staging_pointing_at_production_is_blocking(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], run_module: Callable[..., Any]
) -> None:
    db = legacy_db("supabase")
    result = preflight_with_staging(run_module, sandbox, db, host="localhost", port=db["port"], dbname=db["dbname"])
    assert result["go"] is False
    assert checks_by_name(result)["staging is not production"]["status"] == "blocking"


def test_staging_database_not_created_yet_is_fine_but_an_unknown_role_is_not(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], run_module: Callable[..., Any]
) -> None:
    db = legacy_db("supabase")
    result = preflight_with_staging(run_module, sandbox, db, dbname="staging_not_restored_yet")
    checks = checks_by_name(result)
    assert checks["staging connection"]["status"] == "ok", checks["staging connection"]
    assert "does not exist yet: the restore creates it" in checks["staging connection"]["detail"]
    assert checks["staging database creatable"]["status"] == "ok"
    assert result["go"] is True
    # Anything else wrong with the staging login stays blocking.
    refused = preflight_with_staging(run_module, sandbox, db, dbname="staging_not_restored_yet", user="no_such_role")
    assert refused["go"] is False and checks_by_name(refused)["staging connection"]["status"] == "blocking"


@pytest.mark.parametrize(
    ("s3_change", "status", "needle"),
    [
        ({"secret_key": "definitely-Wrong-Secret-123"}, "blocking", "credentials were refused"),
        ({"bucket": "no-such-bucket-here"}, "blocking", "does not exist"),
        ({"bucket": "no-such-bucket-here", "create_bucket": True}, "warning", "will create it"),
        ({"endpoint_url": "http://127.0.0.1:1"}, "blocking", "unreachable"),
    ],
)
def test_s3_problems_are_one_line_without_secrets(
    s3_change: dict[str, Any],
    status: str,
    needle: str,
    sandbox: Sandbox,
    legacy_db: Callable[..., dict[str, Any]],
    run_module: Callable[..., Any],
) -> None:
    db = legacy_db("supabase")
    args = module_args(sandbox, db)
    args["s3"].update(s3_change)
    result = run_module("vdp_preflight", args)
    check = checks_by_name(result)["S3 bucket"]
    assert check["status"] == status, check
    assert needle in check["detail"]
    assert "\n" not in check["detail"]
    text = json.dumps(result)
    for secret in (sandbox.s3_secret_key, sandbox.s3_access_key, "definitely-Wrong-Secret-123", sandbox.password):
        assert secret not in text


def test_version_skew_of_a_fake_old_pg_dump_is_refused(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], run_module: Callable[..., Any], tmp_path: Path
) -> None:
    for tool in ("pg_dump", "pg_restore"):
        fake = tmp_path / tool
        fake.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) 13.16'\n")
        fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    result = run_module("vdp_preflight", module_args(sandbox, legacy_db("supabase"), pg_bindir=str(tmp_path)))
    assert result["go"] is False
    skew = [b for b in result["blocking"] if b.startswith("pg_dump version")]
    assert skew and "pg_dump 13 is older than the server (PostgreSQL 15)" in skew[0]
    assert "postgresql-client-15" in skew[0] and "vdp_pg_bindir" in skew[0]
    assert any(b.startswith("pg_restore version") for b in result["blocking"])


# --------------------------------------------------------------------------- the playbook


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_preflight(box: Sandbox, tmp_path: Path, overrides: dict[str, Any], *args: str) -> tuple[int, str, Path]:
    run_dir = tmp_path / "run"
    variables = dict(vdp_run_dir=str(run_dir), vdp_run_id="test-run", **overrides)
    vars_file = tmp_path / "vars.json"
    vars_file.write_text(json.dumps(variables))
    vars_file.chmod(0o600)
    proc = box.playbook("playbooks/preflight.yml", "-e", f"@{vars_file}", *args, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr, run_dir / "preflight.json"


def test_playbook_writes_the_report_and_sets_the_fact(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    db = legacy_db("seed")
    prod = dict(host=db["host"], port=db["port"], dbname=db["dbname"], user="postgres", password=sandbox.password)
    (tmp_path / "run").mkdir()
    rc, out, report = run_preflight(sandbox, tmp_path, {"preflight_production_db": prod}, "--check")
    assert rc == 0, out[-3000:]
    assert json.loads(report.read_text())["go"] is True, "a dry run records what it found"
    assert "changed=0" in out
    report.unlink()
    rc, out, report = run_preflight(sandbox, tmp_path, {"preflight_production_db": prod})
    assert rc == 0, out[-3000:]
    data = json.loads(report.read_text())
    assert data["go"] is True and data["run_id"] == "test-run"
    assert data["legacy"]["shape"] == "seed"
    assert data["counts"]["Total Users"] == 2000
    assert data["anomalies"]["over_capacity"]["over_by"] == 1000
    assert "changed=0" in out
    assert sandbox.password not in out + report.read_text()
    assert sandbox.s3_secret_key not in out + report.read_text()


@pytest.mark.parametrize("failure", ["stopped server", "wrong password", "missing database"])
def test_playbook_connection_failures_are_one_line_without_the_password(
    failure: str, sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    db = legacy_db("supabase")
    wrong = "Wr0ng-Passw0rd-Sentinel-77"
    prod = dict(host="127.0.0.1", port=db["port"], dbname=db["dbname"], user="postgres", password=sandbox.password)
    if failure == "stopped server":
        prod["port"] = _free_port()
        prod["password"] = wrong
    elif failure == "wrong password":
        prod["password"] = wrong
    else:
        prod["dbname"] = "no_such_database_here"
    rc, out, report = run_preflight(sandbox, tmp_path, {"preflight_production_db": prod, "preflight_check_s3": False})
    assert rc != 0
    # ansible-core prints the failure once as an [ERROR] line (the message whole) and again in the result.
    lines = [line for line in out.splitlines() if line.startswith("[ERROR]") and "Preflight NO-GO" in line]
    assert len(lines) == 1, out[-3000:]
    assert lines[0].count("cannot connect") == 1 and "|" not in lines[0], "one reason only"
    where = f"127.0.0.1:{prod['port']}/{prod['dbname']}"
    assert where in lines[0]
    hint = {
        "stopped server": "is the server running",
        "wrong password": "check the password",
        "missing database": "does not exist",
    }[failure]
    assert hint in lines[0]
    for secret in (wrong, sandbox.password):
        assert secret not in out, f"a password leaked into the output ({failure})"
    assert report.exists(), "the no-go report is still recorded"
    for secret in (wrong, sandbox.password):
        assert secret not in report.read_text()


def test_playbook_refuses_an_old_pg_dump_from_vdp_pg_bindir(
    sandbox: Sandbox, legacy_db: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for tool in ("pg_dump", "pg_restore"):
        fake = bindir / tool
        fake.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) 12.20'\n")
        fake.chmod(0o755)
    db = legacy_db("supabase")
    prod = dict(host=db["host"], port=db["port"], dbname=db["dbname"], user="postgres", password=sandbox.password)
    rc, out, _ = run_preflight(sandbox, tmp_path, {"preflight_production_db": prod, "vdp_pg_bindir": str(bindir)})
    assert rc != 0
    line = next(line for line in out.splitlines() if line.startswith("[ERROR]") and "Preflight NO-GO" in line)
    assert "pg_dump 12 is older than the server (PostgreSQL 15)" in line
    assert "Install postgresql-client-15" in line and "vdp_pg_bindir" in line
    assert sandbox.password not in out
