#!/usr/bin/python
# Restore a verified backup from S3 into the staging database: guard against production, verify
# the object while fetching it, recreate the database, create the roles the dump needs,
# pg_restore with parallel jobs, ANALYZE, and prove row-count parity with the manifest.
"""Ansible module vdp_restore: guarded, verified restore of a vdp backup from S3."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_restore
short_description: Restore a verified vdp backup from S3 into a (staging) database, never onto production
description:
  - Refuses, before anything else, when the target resolves to the same host, port and database as production
    (I(production_host)/I(production_port)/I(production_db); host names are resolved, C(localhost) equals
    C(127.0.0.1)). Only the rollback path may restore production, by setting I(allow_production) to the exact
    phrase C(I understand this overwrites production).
  - Picks a backup written by M(vdp_backup) (this run's, the newest, or an explicit key) and verifies it while
    fetching it - SHA-256 read back against the object metadata and the manifest, size, and C(pg_restore --list)
    with the expected tables. A backup that fails verification is never restored.
  - Terminates the target database's sessions, drops and recreates it from template0 (encoding and locale of the
    source), creates the roles the dump references that the target cluster lacks (NOLOGIN, no password), runs
    C(pg_restore -j jobs --exit-on-error), runs ANALYZE, and compares the exact row count of every table in the
    manifest. Tables the restored database holds that the manifest did not count are reported.
  - I(mode=file) downloads the object to I(workdir) while verifying it (one read of S3) so pg_restore can run
    parallel jobs; I(mode=stream) needs no local disk - it verifies in a first read and streams a second read
    into C(pg_restore) (one job), hashing it again.
  - Idempotent - the restored database carries a comment naming the backup; when it already holds this backup
    with matching row counts, nothing is done (changed=false) unless I(force=true).
version_added: "1.0.0"
author: Virtue platform team
extends_documentation_fragment:
  - vdp_postgres
  - vdp_s3
options:
  production_host:
    description: Host of the production database (vdp_production_db.host), for the guard.
    type: str
    required: true
  production_port:
    description: Port of the production database.
    type: int
    default: 5432
  production_db:
    description: Name of the production database.
    type: str
    required: true
  allow_production:
    description: The exact phrase C(I understand this overwrites production) lets it overwrite production (rollback only).
    type: str
    default: ""
  maintenance_db:
    description: Database on the target cluster to connect to while dropping and creating the target database.
    type: str
    default: postgres
  bucket:
    description: S3 bucket.
    type: str
    required: true
  prefix:
    description: Key prefix of the backups (as given to M(vdp_backup)).
    type: str
    default: ""
  source:
    description: Which backup - C(run) (I(run_id)), C(latest), or C(key) (I(key)).
    type: str
    choices: [run, latest, key]
    default: run
  run_id:
    description: Run id of the backup, for I(source=run).
    type: str
  key:
    description: Key of the dump object (or of its manifest.json), for I(source=key).
    type: str
  mode:
    description: C(file) (download, then parallel pg_restore) or C(stream) (no local disk, one job).
    type: str
    choices: [file, stream]
    default: file
  jobs:
    description: Parallel pg_restore jobs (I(mode=file)).
    type: int
    default: 2
  workdir:
    description: Local folder for I(mode=file) (a temporary folder inside it, removed afterwards).
    type: path
  tables:
    description: Tables (schema.name) that must be in the archive. Default - the legacy tables.
    type: list
    elements: str
  create_roles:
    description: Create the roles the dump references that the target cluster lacks (NOLOGIN).
    type: bool
    default: true
  exit_on_error:
    description:
      - Stop pg_restore at the first error (recommended).
      - When false, pg_restore goes on past errors (e.g. extensions the target lacks); they are reported as a warning
        and the row-count parity with the manifest decides.
    type: bool
    default: true
  no_owner:
    description: Pass C(--no-owner) to pg_restore.
    type: bool
    default: false
  no_privileges:
    description: Pass C(--no-privileges) to pg_restore.
    type: bool
    default: false
  analyze:
    description: Run ANALYZE after the restore (timings on staging are only representative with statistics).
    type: bool
    default: true
  force:
    description: Restore even when the target already holds this backup.
    type: bool
    default: false
  pg_bindir:
    description: Folder of pg_restore; default the server major's usual folder, then PATH.
    type: path
notes:
  - Target connection options follow community.postgresql (login_host, login_port, login_user, login_password, login_db
    = the database to recreate, ...) with PG* environment fallback; the password reaches pg_restore only through PGPASSWORD.
  - S3 options follow amazon.aws (endpoint_url, region, access_key, secret_key, ...) with AWS_* environment fallback.
attributes:
  check_mode:
    support: full
    details: Applies the guard and verifies the backup (read-only); drops, creates and restores nothing.
  diff_mode:
    support: full
    details: Shows which backup the target database would hold.
  platform:
    platforms: posix
requirements:
  - psycopg >= 3.1
  - boto3
  - pg_restore of the server's major version or newer
"""

EXAMPLES = r"""
- name: Restore this run's backup into staging
  vdp_restore:
    login_host: "{{ vdp_staging_db.host }}"
    login_port: "{{ vdp_staging_db.port }}"
    login_user: "{{ vdp_staging_db.user }}"
    login_password: "{{ vdp_staging_db.password | default(omit) }}"
    login_db: "{{ vdp_staging_db.dbname }}"
    production_host: "{{ vdp_production_db.host }}"
    production_port: "{{ vdp_production_db.port }}"
    production_db: "{{ vdp_production_db.dbname }}"
    endpoint_url: "{{ vdp_s3.endpoint_url | default(omit) }}"
    access_key: "{{ vdp_s3.access_key | default(omit) }}"
    secret_key: "{{ vdp_s3.secret_key | default(omit) }}"
    bucket: "{{ vdp_s3.bucket }}"
    prefix: "{{ vdp_s3.prefix }}"
    run_id: "{{ vdp_run_id }}"
    jobs: 4
  no_log: true
"""

RETURN = r"""
restored:
  description: True when the database was (re)created and restored in this task.
  returned: always
  type: bool
target:
  description: The database restored into (user@host:port/db, no password).
  returned: always
  type: str
key:
  description: Key of the dump restored.
  returned: when a backup was found
  type: str
run_id:
  description: Run id of the backup.
  returned: when a backup was found
  type: str
sha256:
  description: SHA-256 of the backup, as verified.
  returned: when a backup was found
  type: str
roles_created:
  description: Roles created on the target cluster (or that would be, in check mode).
  returned: always
  type: list
  elements: str
parity:
  description: Per table - manifest count, restored count, equal.
  returned: when restored or already present
  type: dict
parity_ok:
  description: True when every table of the manifest has the same row count after the restore.
  returned: when restored or already present
  type: bool
mismatched_tables:
  description: Tables whose restored row count differs from the manifest.
  returned: when restored or already present
  type: list
  elements: str
manifest_missing_tables:
  description: Tables the migration touches that the restored database holds but the manifest did not count.
  returned: when restored or already present
  type: list
  elements: str
seconds:
  description: Time per step (verify_download, drop_create, roles, pg_restore, analyze, parity, total).
  returned: always
  type: dict
"""

import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_backup import (
    TARGET_TABLES,
    BackupNotFound,
    HashingReader,
    StderrTail,
    Verdict,
    child_env,
    conninfo,
    count_rows,
    iso,
    locate_backup,
    production_guard,
    s3_call,
    utcnow,
    verify_backup,
)
from ansible.module_utils.vdp_legacy import LEGACY_TABLES
from ansible.module_utils.vdp_pg import ConnectionFailure, connect, pg_connection_argument_spec, redact, target_from_params
from ansible.module_utils.vdp_pgtools import ToolNotFound, pg_tool_path, pg_tool_version, skew_problem
from ansible.module_utils.vdp_s3 import S3Failure, bucket_exists, s3_argument_spec, s3_client, s3_secrets

try:
    import psycopg
    from psycopg import sql

    PG_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error,)
except ImportError:  # pragma: no cover - connect() reports it
    sql = None  # type: ignore[assignment]
    PG_ERRORS = ()

MARKER_PREFIX = "vdp-restore "
PROTECTED_DATABASES = {"template0", "template1"}


class RestoreFailure(Exception):
    """The restore could not be done; one secret-free line."""


def argument_spec() -> dict[str, Any]:
    spec = pg_connection_argument_spec()
    spec.update(s3_argument_spec())
    spec.update(
        production_host=dict(type="str", required=True),
        production_port=dict(type="int", default=5432),
        production_db=dict(type="str", required=True),
        allow_production=dict(type="str", default="", no_log=False),
        maintenance_db=dict(type="str", default="postgres"),
        bucket=dict(type="str", required=True),
        prefix=dict(type="str", default=""),
        source=dict(type="str", choices=["run", "latest", "key"], default="run"),
        run_id=dict(type="str"),
        key=dict(type="str", no_log=False),
        mode=dict(type="str", choices=["file", "stream"], default="file"),
        jobs=dict(type="int", default=2),
        workdir=dict(type="path"),
        tables=dict(type="list", elements="str"),
        create_roles=dict(type="bool", default=True),
        exit_on_error=dict(type="bool", default=True),
        no_owner=dict(type="bool", default=False),
        no_privileges=dict(type="bool", default=False),
        analyze=dict(type="bool", default=True),
        force=dict(type="bool", default=False),
        pg_bindir=dict(type="path"),
    )
    return spec


def input_problem(p: dict[str, Any]) -> str | None:
    target = target_from_params(p)
    if p["source"] == "run" and not p["run_id"]:
        return "source=run needs run_id (the run whose backup to restore)"
    if p["source"] == "key" and not p["key"]:
        return "source=key needs key (the dump's object key, or its manifest.json)"
    if p["jobs"] < 1 or p["jobs"] > 64:
        return f"jobs must be 1-64, got {p['jobs']}"
    if target.dbname in PROTECTED_DATABASES or target.dbname == p["maintenance_db"]:
        return f"refusing to recreate database '{target.dbname}': restore into a dedicated staging database (login_db)"
    if p["workdir"] and not os.path.isdir(p["workdir"]):
        return f"workdir {p['workdir']} is not a folder: create it or point workdir elsewhere"
    return None


def format_problem(p: dict[str, Any], manifest: dict[str, Any]) -> str | None:
    if p["mode"] == "stream" and manifest.get("format") == "directory":
        return (
            f"backup {manifest['key']} is a directory-format dump: pg_restore cannot read it from a stream. "
            "Restore it with mode=file (it needs local disk for the dump)"
        )
    return None


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


# --------------------------------------------------------------------------- steps


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


def run_restore_file(pg_restore: str, p: dict[str, Any], path: str, secrets: list[str], warnings: list[str]) -> None:
    run = subprocess.run(
        restore_command(pg_restore, p, p["jobs"], path), capture_output=True, env=child_env(p.get("login_password")), check=False
    )
    err = redact(run.stderr.decode("utf-8", "replace").strip().replace("\n", " | "), *secrets)
    check_restore_exit(p, run.returncode, err, warnings)


def run_restore_stream(
    client: Any, pg_restore: str, p: dict[str, Any], manifest: dict[str, Any], secrets: list[str], warnings: list[str]
) -> str:
    """Stream the object into pg_restore's stdin (one job, no disk), hashing it again; returns the SHA-256 read."""
    body = client.get_object(Bucket=p["bucket"], Key=manifest["key"])["Body"]
    reader = HashingReader(body)
    proc = subprocess.Popen(
        restore_command(pg_restore, p, 1, None), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=child_env(p.get("login_password")),
    )  # fmt: skip
    tail = StderrTail(proc.stderr)  # type: ignore[arg-type]
    broken = False
    try:
        while True:
            data = reader.read(1024 * 1024)
            if not data:
                break
            if not broken:
                try:
                    proc.stdin.write(data)  # type: ignore[union-attr]
                except (BrokenPipeError, OSError):
                    broken = True
    finally:
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        rc = proc.wait()
    check_restore_exit(p, rc, tail.text(secrets), warnings)
    return reader.hash.hexdigest()


def parity(p: dict[str, Any], manifest: dict[str, Any], expected: list[str]) -> dict[str, Any]:
    counted: dict[str, int] = {k: int(v) for k, v in (manifest.get("tables") or {}).items()}
    candidates = sorted(set(counted) | set(expected) | set(TARGET_TABLES))
    with connect(p, autocommit=True) as conn:
        restored, absent = count_rows(conn, candidates)
    table_parity = {
        t: {"manifest": counted[t], "restored": restored.get(t), "equal": restored.get(t) == counted[t]} for t in sorted(counted)
    }
    mismatched = [t for t, v in table_parity.items() if not v["equal"]]
    missing_from_manifest = sorted(t for t in restored if t not in counted)
    return dict(
        parity=table_parity,
        parity_ok=not mismatched,
        mismatched_tables=mismatched,
        manifest_missing_tables=missing_from_manifest,
        absent_tables=[t for t in absent if t in counted],
    )


def set_marker(p: dict[str, Any], dbname: str, manifest: dict[str, Any]) -> None:
    with connect(maintenance_params(p), autocommit=True) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(dbname), sql.Literal(marker_text(manifest))))


# --------------------------------------------------------------------------- orchestration


def restore(module: AnsibleModule) -> dict[str, Any]:
    p = module.params
    target = target_from_params(p)
    secrets = [p.get("login_password"), *s3_secrets(p)]
    timings: dict[str, float] = {}
    started = time.monotonic()
    result: dict[str, Any] = dict(changed=False, restored=False, target=str(target), roles_created=[], seconds=timings)
    problem = input_problem(p)
    if problem:
        module.fail_json(msg=problem, **result)
    refusal = production_guard(
        (target.host, target.port, target.dbname),
        (p["production_host"], p["production_port"], p["production_db"]),
        p["allow_production"],
    )
    if refusal:
        module.fail_json(msg=refusal, **result)
    expected = list(LEGACY_TABLES if p["tables"] is None else p["tables"])
    client = s3_client(p)
    if not bucket_exists(client, p["bucket"], p):
        module.fail_json(msg=f"bucket '{p['bucket']}' does not exist: there is no backup to restore", **result)
    manifest_key, manifest = s3_call(
        "read the backup manifest",
        p,
        p["bucket"],
        lambda: locate_backup(client, p["bucket"], p["prefix"], p["source"], p["run_id"], p["key"]),
    )
    result.update(key=manifest["key"], manifest_key=manifest_key, run_id=manifest.get("run_id"), sha256=manifest.get("sha256"))
    problem = format_problem(p, manifest)
    if problem:
        module.fail_json(msg=problem, **result)

    # The target server and the client programs.
    with connect(maintenance_params(p), autocommit=True) as conn:
        server_major = conn.info.server_version // 10000
    pg_restore = pg_tool_path("pg_restore", p["pg_bindir"], server_major)
    tool_major, _ = pg_tool_version(pg_restore)
    skew = skew_problem("pg_restore", tool_major, max(server_major, int(manifest.get("pg_dump_major") or 0)))
    if skew:
        module.fail_json(msg=skew, **result)

    # Already holds this backup? (idempotence)
    marker = current_marker(p, target.dbname)
    if marker and marker.get("sha256") == manifest.get("sha256") and marker.get("key") == manifest["key"] and not p["force"]:
        check = parity(p, manifest, expected)
        if check["parity_ok"] and not check["manifest_missing_tables"]:
            result.update(check)
            timings["total"] = round(time.monotonic() - started, 3)
            return result

    workdir = tempfile.mkdtemp(prefix="vdp-restore-", dir=p["workdir"])
    try:
        # Verify (and, in file mode, download in the same read).
        step = time.monotonic()
        save_to = None
        if p["mode"] == "file" and not module.check_mode:
            save_to = (
                os.path.join(workdir, "dump") if manifest.get("format") == "directory" else os.path.join(workdir, "dump.pgdump")
            )
            if manifest.get("format") == "directory":
                os.makedirs(save_to)
        verdict: Verdict = s3_call(
            "read the backup back", p, p["bucket"],
            lambda: verify_backup(client, p["bucket"], manifest_key, manifest, pg_restore, expected, workdir, save_to=save_to),
        )  # fmt: skip
        timings["verify_download"] = round(time.monotonic() - step, 3)
        if not verdict.ok:
            module.fail_json(
                msg=f"refusing to restore s3://{p['bucket']}/{verdict.key}: it FAILED verification: "
                f"{'; '.join(verdict.problems)}. Take a new backup (nothing was changed)",
                problems=verdict.problems,
                **result,
            )
        roles = needed_roles(manifest, set(verdict.owners))
        to_create = missing_roles(p, roles) if p["create_roles"] else []
        result["roles_created"] = to_create
        result["diff"] = dict(before={"backup": (marker or {}).get("key")}, after={"backup": manifest["key"]})
        if module.check_mode:
            result["changed"] = True
            timings["total"] = round(time.monotonic() - started, 3)
            return result

        warnings: list[str] = []
        result["changed"] = True  # from here on the target database is being replaced
        try:
            apply_restore(module, client, pg_restore, manifest, to_create, save_to, secrets, timings, warnings)
        except (RestoreFailure, S3Failure, *PG_ERRORS) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            module.fail_json(
                msg=redact(f"the restore into {target} failed, the database is incomplete: {first}", *secrets), **result
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return finish(module, p, manifest, expected, result, warnings, started)


def apply_restore(
    module: AnsibleModule,
    client: Any,
    pg_restore: str,
    manifest: dict[str, Any],
    to_create: list[str],
    save_to: str | None,
    secrets: list[str],
    timings: dict[str, float],
    warnings: list[str],
) -> None:
    """Drop and recreate the target, create the missing roles, run pg_restore."""
    p = module.params
    target = target_from_params(p)
    step = time.monotonic()
    recreate_database(p, target.dbname, manifest.get("database") or {}, warnings)
    timings["drop_create"] = round(time.monotonic() - step, 3)
    step = time.monotonic()
    if to_create:
        create_roles(p, to_create)
    timings["roles"] = round(time.monotonic() - step, 3)

    step = time.monotonic()
    if p["mode"] == "file":
        run_restore_file(pg_restore, p, str(save_to), secrets, warnings)
    else:
        again = s3_call(
            "read the backup for the restore",
            p,
            p["bucket"],
            lambda: run_restore_stream(client, pg_restore, p, manifest, secrets, warnings),
        )
        if again != manifest["sha256"]:
            raise RestoreFailure(
                f"the object changed between verification and restore (SHA-256 {again} != {manifest['sha256']}): "
                "the restored database is not trustworthy; restore again"
            )
    timings["pg_restore"] = round(time.monotonic() - step, 3)


def finish(
    module: AnsibleModule,
    p: dict[str, Any],
    manifest: dict[str, Any],
    expected: list[str],
    result: dict[str, Any],
    warnings: list[str],
    started: float,
) -> dict[str, Any]:
    """ANALYZE, row-count parity with the manifest, the marker; fail on any mismatch."""
    target = target_from_params(p)
    timings = result["seconds"]
    if p["analyze"]:
        step = time.monotonic()
        with connect(dict(p, statement_timeout="0"), autocommit=True) as conn:
            conn.execute("ANALYZE")
        timings["analyze"] = round(time.monotonic() - step, 3)
    step = time.monotonic()
    check = parity(p, manifest, expected)
    timings["parity"] = round(time.monotonic() - step, 3)
    result.update(check, restored=True)
    for warning in warnings:
        module.warn(warning)
    if check["manifest_missing_tables"]:
        module.warn(
            "the backup's manifest did not count these tables, so their row counts cannot be proven: "
            + ", ".join(check["manifest_missing_tables"])
        )
    if check["parity_ok"]:
        set_marker(p, target.dbname, manifest)
    timings["total"] = round(time.monotonic() - started, 3)
    if not check["parity_ok"]:
        detail = ", ".join(
            f"{t} (manifest {check['parity'][t]['manifest']}, restored {check['parity'][t]['restored']})"
            for t in check["mismatched_tables"]
        )
        module.fail_json(msg=f"row counts after the restore differ from the manifest: {detail}", **result)
    return result


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    secrets = [module.params.get("login_password"), *s3_secrets(module.params)]
    try:
        result = restore(module)
    except (ConnectionFailure, S3Failure, BackupNotFound, ToolNotFound, RestoreFailure) as exc:
        module.fail_json(msg=redact(str(exc), *secrets))
    except PG_ERRORS as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        module.fail_json(msg=redact(f"PostgreSQL refused a restore step: {first}", *secrets))
    except OSError as exc:
        module.fail_json(msg=redact(f"local I/O failed: {exc}", *secrets))
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
