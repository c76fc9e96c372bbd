#!/usr/bin/python
# Restore a verified backup from S3 into a database: the staging copy the rehearsal migrates, or -
# on the rollback path only, with the exact confirmation phrase - production itself. The production
# guard (module_utils/vdp_guard.py) decides by server identity, never by address; the backup is
# proven end to end (every recorded SHA-256, a full decode) BEFORE anything is dropped.
"""Ansible module vdp_restore: guarded, verified restore of a vdp backup from S3."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_restore
short_description: Restore a verified vdp backup from S3 into a (staging) database, never onto production
description:
  - Before anything else, the production guard connects to the target server and to production (I(production)) and
    compares their identity - C(system_identifier) and the database OID, plus a live witness (an advisory lock taken
    on production must not be visible from the target) - so production reached through a forwarder, an alias,
    C(0.0.0.0), an IPv4-mapped address or a socket path is still recognised. It refuses such a target, a system or
    maintenance database (C(postgres), C(template0/1), I(maintenance_db)), and, unless
    I(allow_unreachable_production), a target it cannot compare because production is unreachable. Only the rollback
    path may restore production, by setting I(production_confirmation) to the exact phrase
    C(I understand this overwrites production).
  - Picks a backup written by M(vdp_backup) (this run's, the newest, or an explicit key) and proves it while fetching
    it - the SHA-256 read back against the object metadata, the object tag and the manifest, the size, the table of
    contents, and a full decode (C(pg_restore -f /dev/null) reads every data block). A backup that fails any of it is
    never restored, and nothing has been dropped.
  - Terminates the target database's sessions, drops and recreates it from template0 (encoding and locale of the
    source), creates the roles the dump references that the target cluster lacks (NOLOGIN, no password), runs
    C(pg_restore -j jobs --exit-on-error), runs ANALYZE, and compares the exact row count of every table in the
    manifest. Tables the restored database holds that the manifest did not count are reported.
  - I(mode=file) downloads the object into a private work folder (mode 0700, removed on every exit path; a folder
    left by a killed run is removed by the next) while proving it, so pg_restore can run parallel jobs on the very
    bytes that were proven. A custom-format dump streamed from a pipe has no data offsets in its table of contents
    (each parallel job would scan the archive for its table), so after the proof the module writes them into the
    local copy, those fields only, as pg_dump does when it writes a file. I(mode=stream) needs no local disk - it
    proves the object in a first read and streams a second read into C(pg_restore) (one job), hashing it again.
  - Renews the run lease on production while it works, and stops cleanly (pg_restore killed) when a stop was
    requested (playbooks/stop.yml).
  - With I(progress_file), writes the bytes downloaded and proven of the backup's size, then the restore's steps.
  - Idempotent - the restored database carries a comment naming the backup; when it already holds this backup
    with matching row counts, nothing is done (changed=false) unless I(force=true).
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_postgres.production, vdp_s3, vdp_backup_source, vdp_progress]
options:
  production:
    description:
      - The production database (vdp_production_db) the guard compares the target with - host, port, dbname, user and
        password (PGPASSWORD when omitted). Required.
    type: dict  # its keys (suboptions) come from the doc fragment vdp_postgres.production
    required: true
  production_confirmation:
    description:
      - The exact phrase C(I understand this overwrites production) lets the target be production (the rollback's full
        restore). Anything else non-empty is refused. The staging restore and the rehearsal never pass it.
    type: str
    default: ""
  allow_unreachable_production:
    description: Restore even when production cannot be reached to prove the target is not production (say so explicitly).
    type: bool
    default: false
  maintenance_db:
    description: Database on the target cluster to connect to while dropping and creating the target database.
    type: str
    default: postgres
  run_id:
    description: The runbook run id (source C(run)'s backup; the lease heartbeat and stop request).
    type: str
  prefix:
    description: Key prefix of the backups (as given to M(vdp_backup)).
    type: str
    default: ""
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
attributes:
  check_mode:
    support: full
    details: Applies the guard and verifies the backup (read-only); drops, creates and restores nothing.
  diff_mode:
    support: full
    details: Shows which backup the target database would hold.
requirements:
  - psycopg >= 3.1
  - boto3
  - pg_restore of the server's major version or newer
"""

EXAMPLES = r"""
- name: Restore this run's backup into staging
  vdp_restore:
    db: "{{ vdp_staging_db }}"
    inventory_key: vdp_staging_db
    production: "{{ vdp_production_db }}"
    s3: "{{ vdp_s3 }}"
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
legacy_checksums:
  description: The legacy tables' rows and content checksums in the backup's own snapshot (what a full rollback proves back).
  returned: when a backup was found
  type: dict
guard:
  description: The production guard's verdict (is_production, same_server, evidence, the identities compared).
  returned: always
  type: dict
removed_leftovers:
  description: Work folders of killed runs (possibly holding a plaintext dump) that this run removed.
  returned: always
  type: list
  elements: str
data_offsets:
  description:
    - I(mode=file), custom format - the data offsets filled into the local copy's table of contents (C(filled)) and a
      C(note). A dump streamed from a pipe has none, and pg_restore -j would scan the archive for every table.
  returned: when a custom-format backup was downloaded
  type: dict
seconds:
  description: Time per step (verify_download, data_offsets, drop_create, roles, pg_restore, analyze, parity, total).
  returned: always
  type: dict
"""

import os
import time
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_archive import BackupReader, backup_source_problem, backup_source_spec, expected_tables
from ansible.module_utils.vdp_dump_offsets import fill_data_offsets
from ansible.module_utils.vdp_errors import OperatorError
from ansible.module_utils.vdp_guard import PRODUCTION_CONFIRMATION, GuardOutcome, check_target, identify
from ansible.module_utils.vdp_lease import HeartbeatThread
from ansible.module_utils.vdp_lifecycle import application_name, run_module, secrets_of
from ansible.module_utils.vdp_pg import DB_OPTIONS, connect, pg_connection_argument_spec, target_from_params
from ansible.module_utils.vdp_pgtools import pg_tool_path, pg_tool_version, skew_problem
from ansible.module_utils.vdp_progress import ProgressFile, progress_file
from ansible.module_utils.vdp_restore import (
    RestoreFailure,
    analyze,
    create_roles,
    current_marker,
    failure,
    maintenance_params,
    missing_roles,
    needed_roles,
    parity,
    recreate_database,
    run_restore_file,
    run_restore_stream,
    set_marker,
)
from ansible.module_utils.vdp_s3 import S3Failure, s3_argument_spec, s3_call
from ansible.module_utils.vdp_workdir import private_workdir, remove_stale

try:
    import psycopg

    PG_ERRORS: tuple[type[BaseException], ...] = (psycopg.Error,)
except ImportError:  # pragma: no cover - connect() reports it
    PG_ERRORS = ()


def argument_spec() -> dict[str, Any]:
    spec = pg_connection_argument_spec()
    spec.update(s3_argument_spec())
    spec.update(backup_source_spec())
    spec.update(
        production=dict(type="dict", required=True, options=DB_OPTIONS),
        production_confirmation=dict(type="str", default="", no_log=False),
        allow_unreachable_production=dict(type="bool", default=False),
        maintenance_db=dict(type="str", default="postgres"),
        mode=dict(type="str", choices=["file", "stream"], default="file"),
        jobs=dict(type="int", default=2),
        workdir=dict(type="path"),
        create_roles=dict(type="bool", default=True),
        exit_on_error=dict(type="bool", default=True),
        no_owner=dict(type="bool", default=False),
        no_privileges=dict(type="bool", default=False),
        analyze=dict(type="bool", default=True),
        force=dict(type="bool", default=False),
        pg_bindir=dict(type="path"),
        progress_file=dict(type="path"),
    )
    return spec


def input_problem(p: dict[str, Any]) -> str | None:
    if problem := backup_source_problem(p, "restore"):
        return problem
    if p["jobs"] < 1 or p["jobs"] > 64:
        return f"jobs must be 1-64, got {p['jobs']}"
    if p["workdir"] and not os.path.isdir(p["workdir"]):
        return f"workdir {p['workdir']} is not a folder: create it or point workdir elsewhere"
    return None


def production_params(p: dict[str, Any]) -> dict[str, Any]:
    prod = p["production"]
    return dict(
        login_host=prod["host"],
        login_port=prod["port"],
        login_db=prod["dbname"],
        login_user=prod.get("user") or p.get("login_user"),
        login_password=prod.get("password") or os.environ.get("PGPASSWORD") or None,
        ssl_mode=prod.get("ssl_mode") or "prefer",
        ca_cert=prod.get("ca_cert"),
        connect_timeout=p.get("connect_timeout"),
        inventory_key="vdp_production_db",
        application_name=application_name(p, "restore-guard"),
    )


def guard(p: dict[str, Any], manifest: dict[str, Any] | None = None) -> GuardOutcome:
    """The production guard; on the rollback path also that the backup was taken from this very server."""
    outcome = check_target(
        dict(p, application_name=application_name(p, "restore-guard")),
        production_params(p),
        maintenance_db=p["maintenance_db"],
        confirmation=p["production_confirmation"],
        allow_unreachable_production=p["allow_unreachable_production"],
    )
    return outcome


# --------------------------------------------------------------------------- orchestration


def tools(p: dict[str, Any], manifest: dict[str, Any]) -> str:
    with connect(maintenance_params(p), autocommit=True) as conn:
        server_major = conn.info.server_version // 10000
    pg_restore = pg_tool_path("pg_restore", p["pg_bindir"], server_major)
    tool_major, _ = pg_tool_version(pg_restore)
    skew = skew_problem("pg_restore", tool_major, max(server_major, int(manifest.get("pg_dump_major") or 0)))
    if skew:
        raise OperatorError(skew)
    return pg_restore


def same_source_server(p: dict[str, Any], manifest: dict[str, Any]) -> None:
    """Rollback path: the backup must come from this server (its system_identifier), not another one's."""
    recorded = (manifest.get("source_identity") or {}).get("system_identifier")
    with connect(maintenance_params(p), autocommit=True) as conn:
        here = identify(conn, target_from_params(p).dbname).system_identifier
    if recorded and here and recorded != here:
        raise OperatorError(
            f"refusing to restore {manifest['key']} onto production: it was taken from another server "
            f"(system_identifier {recorded}, production is {here}). Pick this production's own backup"
        )


def already_restored(run: Restore) -> bool:
    p, manifest = run.params, run.manifest
    marker = current_marker(p, target_from_params(p).dbname)
    run.result["diff"] = dict(before={"backup": (marker or {}).get("key")}, after={"backup": manifest["key"]})
    if p["force"] or not marker or marker.get("sha256") != manifest.get("sha256") or marker.get("key") != manifest["key"]:
        return False
    check = parity(p, manifest, expected_tables(p))
    if check["parity_ok"] and not check["manifest_missing_tables"]:
        run.result.update(check)
        return True
    return False


@dataclass
class Restore:
    """One restore in progress: what its steps share - the module, its result and progress file, the backup (and its
    S3 client), the pg_restore to use, the warnings gathered - so each step takes the one object."""

    module: AnsibleModule
    result: dict[str, Any]
    pfile: ProgressFile
    reader: BackupReader
    started: float = field(default_factory=time.monotonic)
    pg_restore: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict[str, Any]:
        return self.module.params

    @property
    def manifest(self) -> dict[str, Any]:
        return self.reader.manifest

    def timed(self, step: str, since: float) -> None:
        self.result["seconds"][step] = round(time.monotonic() - since, 3)


def work(module: AnsibleModule, _conn: Any, result: dict[str, Any]) -> None:
    with progress_file(module.params.get("progress_file"), "restore", "bytes", module.check_mode) as pfile:
        restore(Restore(module, result, pfile, BackupReader(module.params)))


def restore(run: Restore) -> None:
    p, result = run.params, run.result
    result["target"] = str(target_from_params(p))  # the db dict is spread by now
    result["removed_leftovers"] = remove_stale(p["workdir"])
    outcome = guard(p)  # before anything else: never onto production unless the rollback confirmed it
    result["guard"] = outcome.as_dict()
    for warning in outcome.warnings:
        run.module.warn(warning)
    manifest = run.reader.find("restore")
    result.update(key=manifest["key"], manifest_key=run.reader.manifest_key, run_id=manifest.get("run_id"),
                  sha256=manifest.get("sha256"), legacy_checksums=manifest.get("legacy_checksums") or {})  # fmt: skip
    if p["mode"] == "stream" and manifest.get("format") == "directory":
        raise OperatorError(
            f"backup {manifest['key']} is a directory-format dump: pg_restore cannot read it from a stream. "
            "Restore it with mode=file (it needs local disk for the dump)"
        )
    if outcome.verdict is not None and outcome.verdict.is_production:
        same_source_server(p, manifest)
    run.pg_restore = tools(p, manifest)
    if already_restored(run):
        run.pfile.stage("restore", "steps", 0, 0, "the database already holds this backup")
        run.timed("total", run.started)
        return
    run.pfile.start(int(manifest.get("size") or 0) or None, 0, "downloading and proving the backup")
    beat_params = dict(production_params(p), application_name=application_name(p, "restore-heartbeat"))
    run_id = None if run.module.check_mode else p.get("run_id")
    with (
        private_workdir("vdp-restore-", p["workdir"]) as workdir,
        HeartbeatThread(lambda: connect(beat_params, autocommit=True), run_id) as beat,
    ):
        save_to = proven_copy(run, workdir)
        if run.module.check_mode:
            result["changed"] = True
            run.timed("total", run.started)
            return
        beat.check()
        result["changed"] = True  # from here on the target database is being replaced
        try:
            apply_restore(run, save_to, beat)
        except (RestoreFailure, S3Failure, *PG_ERRORS) as exc:
            raise failure(target_from_params(p), exc, secrets_of(p)) from None
    finish(run)


def proven_copy(run: Restore, workdir: str) -> str | None:
    """Read the backup back and prove it (every recorded SHA-256, the TOC, a full decode) - in file mode saving the
    very bytes proven - before anything is dropped. Returns the local copy (file mode) or None."""
    p, manifest = run.params, run.manifest
    step = time.monotonic()
    save_to = None
    if p["mode"] == "file" and not run.module.check_mode:
        save_to = os.path.join(workdir, "dump" if manifest.get("format") == "directory" else "dump.pgdump")
        if manifest.get("format") == "directory":
            os.makedirs(save_to)
    verdict = run.reader.prove(run.pg_restore, workdir, run.pfile.update, save_to)
    run.timed("verify_download", step)
    run.result["verification"] = dict(decoded=verdict.decoded, problems=verdict.problems, toc_entries=verdict.toc_entries)
    if not verdict.ok:
        raise OperatorError(
            f"refusing to restore s3://{p['bucket']}/{verdict.key}: it FAILED verification: "
            f"{'; '.join(verdict.problems)}. Take a new backup (nothing was changed)",
            problems=verdict.problems,
        )
    if save_to and manifest.get("format") != "directory":
        # Only the proven bytes are touched, and only the offset fields: what pg_dump writes when it can seek.
        step = time.monotonic()
        run.result["data_offsets"] = fill_data_offsets(save_to)
        run.timed("data_offsets", step)
    roles = needed_roles(manifest, set(verdict.owners))
    run.result["roles_created"] = missing_roles(p, roles) if p["create_roles"] else []
    return save_to


def apply_restore(run: Restore, save_to: str | None, beat: HeartbeatThread) -> None:
    """Drop and recreate the target, create the missing roles, run pg_restore (steps 1-3 of the progress file)."""
    p, manifest, pfile = run.params, run.manifest, run.pfile
    secrets = secrets_of(p)
    pfile.stage("restore", "steps", 4 + int(p["analyze"]), 0, "dropping and creating the database")
    step = time.monotonic()
    recreate_database(p, target_from_params(p).dbname, manifest.get("database") or {}, run.warnings)
    run.timed("drop_create", step)
    pfile.update(1, note="creating the roles the dump needs")
    step = time.monotonic()
    if run.result["roles_created"]:
        create_roles(p, run.result["roles_created"])
    run.timed("roles", step)
    pfile.update(2, note=f"pg_restore ({p['jobs'] if p['mode'] == 'file' else 1} job(s))")

    def check() -> None:  # every second while pg_restore runs: a stop request, and the progress file's keepalive
        beat.check()
        pfile.tick()

    step = time.monotonic()
    if p["mode"] == "file":
        run_restore_file(run.pg_restore, p, str(save_to), secrets, run.warnings, check=check)
    else:
        again = s3_call(
            "read the backup for the restore",
            p,
            p["bucket"],
            lambda: run_restore_stream(run.reader.client, run.pg_restore, p, manifest, secrets, run.warnings, check=check),
        )
        if again != manifest["sha256"]:
            raise RestoreFailure(
                f"the object changed between verification and restore (SHA-256 {again} != {manifest['sha256']}): "
                "the restored database is not trustworthy; restore again"
            )
    run.timed("pg_restore", step)


def finish(run: Restore) -> None:
    """ANALYZE, row-count parity with the manifest, the marker; fail on any mismatch."""
    p, module = run.params, run.module
    if p["analyze"]:
        run.pfile.update(3, note="ANALYZE")
        run.result["seconds"]["analyze"] = analyze(p)
    run.pfile.update(3 + int(p["analyze"]), note="row counts against the manifest")
    step = time.monotonic()
    check = parity(p, run.manifest, expected_tables(p))
    run.timed("parity", step)
    run.result.update(check, restored=True)
    for warning in run.warnings:
        module.warn(warning)
    if check["manifest_missing_tables"]:
        module.warn(
            "the backup's manifest did not count these tables, so their row counts cannot be proven: "
            + ", ".join(check["manifest_missing_tables"])
        )
    if check["parity_ok"]:
        set_marker(p, target_from_params(p).dbname, run.manifest)
    run.timed("total", run.started)
    if not check["parity_ok"]:
        detail = ", ".join(
            f"{t} (manifest {check['parity'][t]['manifest']}, restored {check['parity'][t]['restored']})"
            for t in check["mismatched_tables"]
        )
        raise RestoreFailure(f"row counts after the restore differ from the manifest: {detail}")


def problem_of(p: dict[str, Any]) -> str | None:
    if p["production_confirmation"] not in ("", PRODUCTION_CONFIRMATION):
        return (
            f"refusing: production_confirmation is set but is not the exact phrase {PRODUCTION_CONFIRMATION!r}; leave it "
            "empty for a staging restore (only the rollback path may restore PRODUCTION)"
        )
    return input_problem(p)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(
        changed=False, restored=False, target="", roles_created=[], guard={}, removed_leftovers=[], seconds={}
    )
    run_module(module, result, work, component="restore", database=False, problem=problem_of)


if __name__ == "__main__":
    main()
