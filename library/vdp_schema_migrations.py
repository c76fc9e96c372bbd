#!/usr/bin/python
# Versioned SQL migrations through a ledger (vdp_runbook.schema_migrations): apply pending files in
# order, refuse edited applied files, revert, and record the data step's version. The SQL and the
# ledger code live in module_utils/vdp_sqlfiles.py and vdp_ledger.py; this file is arguments, check mode, results.
"""Ansible module: apply, revert or record versioned schema migrations through a ledger."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_schema_migrations
short_description: Apply versioned SQL migrations through a checksummed ledger, with lock timeouts and retries
description:
  - Applies the SQL files of a directory (C(<version>.sql), ordered by name) that the ledger table
    C(vdp_runbook.schema_migrations) does not list yet, and records each with its sha256 checksum,
    time applied, duration, attempts, who applied it and the run id.
  - Refuses to do anything when a file already applied was edited since (checksum drift); the message
    names the file and both checksums.
  - Each file runs in ONE transaction, together with its ledger row, unless it declares
    C(-- vdp:no-transaction) (for C(CREATE INDEX CONCURRENTLY)); such a file runs statement by statement,
    is recorded only when all succeeded, must be re-runnable, and an INVALID index left by a failed
    concurrent build is dropped and built again.
  - Every statement runs under a short C(lock_timeout); a lock timeout rolls the file back and retries it with
    exponential backoff and jitter, a bounded number of times; when all fail, the failure names the sessions that
    held the lock (sampled from C(pg_blocking_pids()) while the attempts waited).
  - Before the first forward file is applied, the legacy baseline (per-row hashes, checksums and structure of
    every legacy table, the reference the validation compares with) is stored in C(vdp_runbook). Files that declare
    C(-- vdp:before-baseline) are applied before it (a journal of the application's writes installed first leaves no
    gap between the baseline's snapshot and the first journaled write).
  - I(state=reverted) runs C(<version>.revert.sql) of applied versions, newest first, and removes them
    from the ledger (versions without a revert file, like the data step's, are only removed). The legacy baseline
    stays (the rollback proves the legacy tables against it afterwards, as often as it is run); a later forward run of the
    schema version archives a baseline left behind and takes a fresh one.
  - I(state=recorded) records a version that has no file (the data step, done by the modules).
  - Holds the migration's session advisory lock; a second concurrent run fails at once naming the holder.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_run]
options:
  state:
    description:
      - C(applied) applies pending files; C(reverted) reverts applied versions; C(recorded) records I(record_version);
        C(listed) only reads the ledger and the pending versions, without the lock, so it answers while a run works.
    type: str
    choices: [applied, reverted, recorded, listed]
    default: applied
  path:
    description: Directory holding the migration files (and their C(.revert.sql) files).
    type: path
  versions:
    description:
      - Limit the work to these versions (file names without C(.sql)). Default all pending (applied) or
        all applied that belong to I(path) (reverted).
    type: list
    elements: str
  record_version:
    description: With I(state=recorded), the version to record (for example C(20250103_organizational_model_data)).
    type: str
  record_details:
    description: With I(state=recorded), a dictionary stored with the ledger row (counts of the data step).
    type: dict
  record_checksum:
    description: With I(state=recorded), the sha256 to store. Default the checksum of the engine's data-step rules.
    type: str
  capture_baseline:
    description: Capture the legacy baseline before the first forward file (I(state=applied)).
    type: bool
    default: true
  feature_flags:
    description: The migration's own feature flags, left out of the legacy baseline (they are not legacy rows).
    type: list
    elements: str
    default: [organizational_model, multi_role_support]
attributes:
  check_mode:
    support: full
    description: Lists the pending (or to-be-reverted) versions and any drift; executes nothing, creates no ledger.
  diff_mode:
    support: full
    description: The ledger's versions before and after.
"""

EXAMPLES = r"""
- name: Apply the organizational model's schema file
  vdp_schema_migrations:
    path: "{{ playbook_dir }}/../migrations"
    versions: [20250103_organizational_model_schema]
    login_host: "{{ vdp_production_db.host }}"
    login_port: "{{ vdp_production_db.port }}"
    login_db: "{{ vdp_production_db.dbname }}"
    login_user: "{{ vdp_production_db.user }}"
    login_password: "{{ vdp_production_db.password | default(omit) }}"
    run_id: "{{ vdp_run_id }}"

- name: Record the data step in the ledger
  vdp_schema_migrations:
    state: recorded
    record_version: 20250103_organizational_model_data
    record_details: "{{ {'profiles_migrated': 1000, 'assignments_inserted': 321} }}"

- name: Revert everything (indexes, data, schema), newest first
  vdp_schema_migrations:
    state: reverted
    path: migrations
"""

RETURN = r"""
applied:
  description: Versions applied by this run, in order, with attempts, duration and statements run.
  returned: always
  type: list
  elements: dict
pending:
  description: Versions still to apply (in check mode, what would be applied).
  returned: always
  type: list
  elements: str
reverted:
  description: Versions reverted by this run (in check mode, what would be reverted).
  returned: always
  type: list
  elements: str
recorded:
  description: The version recorded by I(state=recorded), or null when it was already there.
  returned: always
  type: str
ledger:
  description: The ledger after the run, version -> {kind, checksum, applied_at, duration_ms, applied_by, run_id}.
  returned: always
  type: dict
drift:
  description: Applied files whose checksum changed ([{version, file, ledger_checksum, file_checksum}]).
  returned: on drift
  type: list
  elements: dict
baseline_captured:
  description: Whether this run stored the legacy baseline.
  returned: always
  type: bool
rebuilt_invalid_indexes:
  description: INVALID indexes (from an interrupted concurrent build) dropped and built again.
  returned: always
  type: list
  elements: str
"""

from dataclasses import asdict
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_baseline import archive_baseline, ensure_baseline, read_baseline
from ansible.module_utils.vdp_errors import EngineError
from ansible.module_utils.vdp_ledger import (
    delete_version,
    drift,
    ensure_runbook_schema,
    ledger,
    record_version,
    run_autocommit,
    run_transactional,
)
from ansible.module_utils.vdp_lifecycle import applied_by, engine_argument_spec, lock_policy, run_module, run_options_problem
from ansible.module_utils.vdp_names import BASELINE_KEY, DATA_VERSION, FEATURE_FLAGS, SCHEMA_VERSION
from ansible.module_utils.vdp_rules import data_step_checksum
from ansible.module_utils.vdp_sqlfiles import MigrationFile, body_statements, declares_no_transaction, discover, kind_of

_HEX64 = "0123456789abcdef"


def argument_spec() -> dict[str, Any]:
    return engine_argument_spec(
        state=dict(type="str", default="applied", choices=["applied", "reverted", "recorded", "listed"]),
        path=dict(type="path"),
        versions=dict(type="list", elements="str"),
        record_version=dict(type="str"),
        record_details=dict(type="dict"),
        record_checksum=dict(type="str"),
        capture_baseline=dict(type="bool", default=True),
        feature_flags=dict(type="list", elements="str", default=list(FEATURE_FLAGS)),
    )


def validate(params: dict[str, Any]) -> str | None:
    if params["state"] in ("applied", "reverted", "listed") and not params.get("path"):
        return f"path is required with state={params['state']}: point it at the project's migrations/ directory"
    if params["state"] == "recorded" and not params.get("record_version"):
        return "record_version is required with state=recorded (e.g. 20250103_organizational_model_data)"
    checksum = params.get("record_checksum")
    if checksum and (len(checksum) != 64 or any(c not in _HEX64 for c in checksum)):
        return "record_checksum must be a sha256 in lower-case hex (64 characters)"
    return run_options_problem(params)


def select_files(files: list[MigrationFile], versions: list[str] | None) -> list[MigrationFile]:
    if not versions:
        return files
    known = {f.version for f in files}
    unknown = [v for v in versions if v not in known]
    if unknown:
        raise EngineError(
            f"no migration file for version(s) {', '.join(unknown)} in the migrations directory: check the names "
            f"(known: {', '.join(sorted(known)) or 'none'})",
            unknown=unknown,
        )
    return [f for f in files if f.version in versions]


def ledger_view(conn: Any) -> dict[str, Any]:
    return {
        v: dict(
            kind=r.kind,
            checksum=r.checksum,
            applied_at=r.applied_at,
            duration_ms=r.duration_ms,
            applied_by=r.applied_by,
            run_id=r.run_id,
            details=r.details,
        )
        for v, r in ledger(conn).items()
    }


def refuse_drift(files: list[MigrationFile], conn: Any) -> None:
    changed = drift(files, ledger(conn))
    if changed:
        first = changed[0]
        raise EngineError(
            f"refusing to run: applied migration {first['file']} was edited since it was applied "
            f"(ledger sha256 {first['ledger_checksum']}, file sha256 {first['file_checksum']})"
            + (f" and {len(changed) - 1} more" if len(changed) > 1 else "")
            + "; restore the file as applied (git) and put the change in a NEW migration file",
            drift=changed,
        )


def do_apply(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    files = discover(p["path"])
    refuse_drift(files, conn)
    done = ledger(conn)
    wanted = select_files(files, p.get("versions"))
    # Files that declare `-- vdp:before-baseline` first (each group in name order), then the baseline, then the rest.
    pending = sorted((f for f in wanted if f.version not in done), key=lambda f: not f.before_baseline)
    result["pending"] = [f.version for f in pending]
    if module.check_mode or not pending:
        return
    conn.commit()  # end the read-only transaction of the checks above
    ensure_runbook_schema(conn)
    who = applied_by(conn, p.get("run_id"))
    policy = lock_policy(module, "schema")
    for mf in [f for f in pending if f.before_baseline]:
        apply_file(conn, mf, who, policy, p.get("run_id"), result)
    if p["capture_baseline"]:
        if SCHEMA_VERSION in [f.version for f in pending] and read_baseline(conn):
            # A baseline left by an earlier migration that was reverted: it describes another moment. Keep its
            # summary under another key and take a fresh one before this migration's first write.
            archive_baseline(conn, BASELINE_KEY, f"{BASELINE_KEY}@superseded-{p.get('run_id') or 'unknown'}")
            conn.commit()
        result["baseline_captured"] = ensure_baseline(conn, p.get("run_id"), flags=p["feature_flags"])
    for mf in [f for f in pending if not f.before_baseline]:
        apply_file(conn, mf, who, policy, p.get("run_id"), result)


def apply_file(conn: Any, mf: MigrationFile, who: str, policy: Any, run_id: str | None, result: dict[str, Any]) -> None:
    """One pending file and its ledger row (together, or after every statement of a no-transaction file)."""
    statements = body_statements(mf.path, mf.transactional)
    row = dict(version=mf.version, name=mf.name, kind=mf.kind, checksum=mf.checksum, applied_by=who, run_id=run_id)
    if mf.transactional:

        def ledger_row(duration: int, attempts: int) -> dict[str, Any]:
            return dict(row, duration_ms=duration, transactional=True, attempts=attempts)

        outcome = run_transactional(conn, mf, statements, ledger_row, policy)
    else:
        outcome = run_autocommit(conn, mf, statements, policy)
        record_version(
            conn,
            **row,
            duration_ms=outcome.duration_ms,
            transactional=False,
            attempts=outcome.attempts,
            details=dict(rebuilt_invalid_indexes=outcome.rebuilt_invalid_indexes),
        )
        conn.commit()
        result["rebuilt_invalid_indexes"].extend(outcome.rebuilt_invalid_indexes)
    result["applied"].append(asdict(outcome))
    result["pending"].remove(mf.version)
    result["changed"] = True


def do_revert(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    files = {f.version: f for f in discover(p["path"])}
    done = ledger(conn)
    versions = p.get("versions") or [v for v in done if v in files or kind_of(v) == "data"]
    # Newest first: the reverse of the order they were applied in.
    targets = sorted((v for v in versions if v in done), key=lambda v: (done[v].applied_at, v), reverse=True)
    missing_revert = [v for v in targets if v in files and files[v].revert_path is None]
    if missing_revert:
        raise EngineError(
            f"no revert file for {', '.join(missing_revert)}: write <version>.revert.sql first", missing=missing_revert
        )
    result["reverted"] = list(targets)
    if module.check_mode or not targets:
        return
    policy = lock_policy(module, "schema")
    for version in targets:
        mf = files.get(version)
        if mf is None or mf.revert_path is None:  # the data step: its rows go with the schema revert
            delete_version(conn, version)
            conn.commit()
        else:
            revert = MigrationFile(
                version=version, path=mf.revert_path, checksum="", transactional=True, kind=mf.kind, revert_path=None
            )
            text = mf.revert_path.read_text(encoding="utf-8")
            if declares_no_transaction(text):
                revert.transactional = False
                run_autocommit(conn, revert, body_statements(mf.revert_path, False), policy)
                delete_version(conn, version)
                conn.commit()
            else:
                run_transactional(conn, revert, body_statements(mf.revert_path, True), None, policy, delete_ledger=version)
        # The baseline stays: the rollback compares the legacy tables with it after the revert (again on a second rollback).
        result["changed"] = True


def do_record(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    version = p["record_version"]
    if version in ledger(conn):
        return
    result["pending"] = [version]
    if module.check_mode:
        return
    ensure_runbook_schema(conn)
    checksum = p.get("record_checksum") or (data_step_checksum() if version == DATA_VERSION else None)
    if not checksum:
        raise EngineError(f"record_checksum is required to record {version} (no built-in checksum for it)")
    record_version(
        conn,
        version=version,
        name=version,
        kind=kind_of(version),
        checksum=checksum,
        duration_ms=0,
        applied_by=applied_by(conn, p.get("run_id")),
        run_id=p.get("run_id"),
        transactional=True,
        details=p.get("record_details") or {},
    )
    conn.commit()
    result["recorded"] = version
    result["pending"] = []
    result["changed"] = True


def do_list(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    """Read-only: the versions of the folder not in the ledger (and refuse nothing: drift is only reported)."""
    files = discover(module.params["path"])
    done = ledger(conn)
    result["pending"] = [f.version for f in files if f.version not in done]
    result["drift"] = drift(files, done)


def work(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    before = ledger_view(conn)
    {"applied": do_apply, "reverted": do_revert, "recorded": do_record, "listed": do_list}[module.params["state"]](
        module, conn, result
    )
    result["ledger"] = ledger_view(conn)
    if module._diff:
        after = dict(result["ledger"])
        if module.check_mode:
            after.update({v: dict(kind=kind_of(v), pending=True) for v in result["pending"]})
            for v in result["reverted"]:
                after.pop(v, None)
        result["diff"] = dict(before=dict(versions=sorted(before)), after=dict(versions=sorted(after)))
    if module.check_mode and module.params["state"] != "listed" and (result["pending"] or result["reverted"]):
        result["changed"] = True


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(
        changed=False,
        applied=[],
        pending=[],
        reverted=[],
        recorded=None,
        ledger={},
        baseline_captured=False,
        rebuilt_invalid_indexes=[],
    )
    listing = module.params["state"] == "listed"
    run_module(module, result, work, component="schema", lock=not listing, read_only=listing, problem=validate(module.params))


if __name__ == "__main__":
    main()
