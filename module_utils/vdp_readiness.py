# Phase 1 of the runbook (DESIGN §3), as checks: everything that must be true before a backup is
# taken, checked read-only against production, staging and S3, and summed up as go / no-go with
# reasons. Every rule a later phase applies is applied here first - the production guard (by server
# identity), the staging-database-name rule, the capacity policy, the run lease - so a
# misconfiguration is a NO-GO before anything is written. Blocking problems make `go` false;
# anomalies are warnings.
"""Preflight checks (read-only): connectivity, versions, legacy shape, anomalies, guard, lease, go/no-go."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.vdp_errors import OperatorError
from ansible.module_utils.vdp_guard import GuardRefusal, check_target, staging_name_problem
from ansible.module_utils.vdp_lease import completed_by, read_lease, staleness, this_controller
from ansible.module_utils.vdp_ledger import ledger
from ansible.module_utils.vdp_legacy import (
    detect_sign_in_source,
    relationship_anomalies,
    seed_pre_migration_counts,
    table_exists,
)
from ansible.module_utils.vdp_names import ADDED_PROFILE_COLUMNS, DATA_VERSION, MIGRATION_NAME, RUNBOOK_SCHEMA
from ansible.module_utils.vdp_pg import ConnectionFailure, connect, lock_holder, target_from_params
from ansible.module_utils.vdp_pgtools import ToolNotFound, pg_tool_path, pg_tool_version, skew_problem
from ansible.module_utils.vdp_s3 import S3Failure, bucket_exists, describe_s3_error, s3_client
from ansible.module_utils.vdp_sqlfiles import discover
from ansible.module_utils.vdp_target import target_schema_missing

OK = "ok"
WARNING = "warning"
BLOCKING = "blocking"
LEGACY_REQUIRED = ("public.profiles", "public.sponsor_practitioner_relationships", "public.user_virtue_progress")
SETTINGS = (
    "work_mem",
    "maintenance_work_mem",
    "shared_buffers",
    "max_connections",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "server_version",
    "TimeZone",
)


# --------------------------------------------------------------------------- result bookkeeping


@dataclass
class Report:
    """The checks run so far; `go` is false as soon as one is blocking."""

    checks: list[dict[str, Any]] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, status: str, detail: str, started: float | None = None) -> None:
        entry: dict[str, Any] = dict(name=name, status=status, detail=detail)
        if started is not None:
            entry["seconds"] = round(time.monotonic() - started, 3)
        self.checks.append(entry)

    @property
    def blocking(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}" for c in self.checks if c["status"] == BLOCKING]

    @property
    def warnings(self) -> list[str]:
        return [f"{c['name']}: {c['detail']}" for c in self.checks if c["status"] == WARNING]


def _scalar_rows(conn: Any, query: str, args: Any = None) -> list[tuple[Any, ...]]:
    with conn.cursor() as cur:
        cur.execute(query, args)
        return list(cur.fetchall())


# --------------------------------------------------------------------------- database checks

_SERVER_SQL = """
SELECT current_setting('server_version'), current_setting('server_version_num')::int,
       pg_database_size(current_database()), current_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
"""


def server_facts(conn: Any) -> dict[str, Any]:
    version, num, size, user, superuser = _scalar_rows(conn, _SERVER_SQL)[0]
    settings = dict(_scalar_rows(conn, "SELECT name, current_setting(name) FROM unnest(%s::text[]) AS name", (list(SETTINGS),)))
    return dict(
        server_version=version,
        server_version_num=num,
        server_major=num // 10000,
        database_size_bytes=int(size),
        current_user=user,
        superuser=bool(superuser),
        settings=settings,
    )


def connect_target(report: Report, name: str, params: dict[str, Any], missing_ok: bool = False) -> tuple[Any, dict[str, Any]]:
    """Connect read-only; record one check; return (connection or None, facts).

    missing_ok: a database that does not exist yet is fine when the server answers (the staging restore
    creates it); the connection returned is then to the server's maintenance database.
    """
    started = time.monotonic()
    target = target_from_params(params)
    facts: dict[str, Any] = dict(target=str(target), host=target.host, port=target.port, dbname=target.dbname, user=target.user)
    try:
        conn = connect(params, autocommit=True)
    except ConnectionFailure as exc:
        if not (missing_ok and exc.missing_database):
            report.add(f"{name} connection", BLOCKING, str(exc), started)
            return None, facts
        try:
            conn = connect(dict(params, login_db="postgres"), autocommit=True)
        except ConnectionFailure as again:
            report.add(f"{name} connection", BLOCKING, str(again), started)
            return None, facts
        facts["database_missing"] = True
    conn.execute("SET default_transaction_read_only = on")
    facts.update(server_facts(conn))
    if facts.get("database_missing"):
        report.add(
            f"{name} connection",
            OK,
            f"{target.host}:{target.port} answers (PostgreSQL {facts['server_version']}); "
            f"database {target.dbname} does not exist yet: the restore creates it",
            started,
        )
    else:
        report.add(f"{name} connection", OK, f"{target}, PostgreSQL {facts['server_version']}", started)
    return conn, facts


def check_can_create_database(report: Report, conn: Any, dbname: str) -> None:
    started = time.monotonic()
    row = conn.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        report.add("staging database creatable", OK, f"the login may create {dbname}", started)
    else:
        report.add(
            "staging database creatable",
            BLOCKING,
            f"{dbname} does not exist and the login may not create databases: create it, or GRANT CREATEDB",
            started,
        )


def staging_params(staging: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    return dict(
        login_host=staging["host"],
        login_port=staging["port"],
        login_db=staging["dbname"],
        login_user=staging["user"],
        login_password=staging.get("password"),
        ssl_mode=staging.get("ssl_mode") or "prefer",
        ca_cert=staging.get("ca_cert"),
        connect_timeout=base["connect_timeout"],
        application_name=base["application_name"],
        lock_timeout=base["lock_timeout"],
        statement_timeout=base["statement_timeout"],
        inventory_key="vdp_staging_db",
        connection_hint=base.get("connection_hint") or "",
    )


def check_legacy(report: Report, conn: Any, params: dict[str, Any]) -> bool:
    """Legacy tables present and where the sign-in time lives. False when this is no legacy database."""
    started = time.monotonic()
    missing = [t for t in LEGACY_REQUIRED if not table_exists(conn, t)]
    if missing:
        report.add(
            "legacy schema",
            BLOCKING,
            f"{', '.join(missing)} missing: this is not the virtue platform's database - check login_db",
            started,
        )
        return False
    source = detect_sign_in_source(conn)
    shape = {"profiles": "seed", "auth.users": "supabase"}.get(source or "", "none")
    report.data["legacy"] = dict(sign_in_source=source, shape=shape)
    if source is None:
        report.add(
            "legacy schema",
            WARNING,
            "no last_sign_in_at on profiles or auth.users: last_activity will fall back to created_at for every user",
            started,
        )
    else:
        report.add("legacy schema", OK, f"shape {shape}: last_sign_in_at on {source}", started)
    return True


def check_counts_and_anomalies(report: Report, conn: Any, params: dict[str, Any]) -> None:
    started = time.monotonic()
    counts = seed_pre_migration_counts(conn)
    report.data["counts"] = counts
    report.add("pre-migration counts", OK, ", ".join(f"{k}: {v}" for k, v in counts.items()), started)

    started = time.monotonic()
    anomalies: dict[str, Any] = relationship_anomalies(conn, params["sample_limit"])
    labels = {
        "self_relationships": "self-relationships (sponsor = practitioner)",
        "orphan_relationships": "relationships whose sponsor or practitioner has no profile",
        "duplicate_active_pairs": "duplicate active (sponsor, practitioner) pairs",
    }
    for kind, label in labels.items():
        item = anomalies.get(kind) or {}
        if item.get("count"):
            extra = f", {item['extra_rows']} extra rows" if "extra_rows" in item else f" ({item.get('active', 0)} active)"
            action = (
                "kept, one assignment per pair" if kind == "duplicate_active_pairs" else "not converted, listed in the report"
            )
            report.add(f"anomaly {kind}", WARNING, f"{item['count']} {label}{extra}: {action}", started)
    anomalies["over_capacity"] = capacity(report, conn, params, counts.get("Total Users", 0))
    report.data["anomalies"] = anomalies
    if not any(c["name"].startswith("anomaly") for c in report.checks):
        report.add("anomalies", OK, "no self, orphan or duplicate relationships; users fit max_users", started)


def capacity(report: Report, conn: Any, params: dict[str, Any], users: int) -> dict[str, Any]:
    """Users against the default organization's max_users, judged by the data step's capacity policy."""
    max_users, source = params["max_users"], "max_users setting; the default organization does not exist yet"
    if table_exists(conn, "public.organizations"):
        rows = _scalar_rows(
            conn, "SELECT max_users FROM public.organizations WHERE slug = %s", (params["default_organization_slug"],)
        )
        if rows and rows[0][0] is not None:
            max_users, source = int(rows[0][0]), f"organization {params['default_organization_slug']!r}"
    policy = params["capacity_policy"]
    over_by = max(users - max_users, 0)
    raised = -(-users * (100 + params["capacity_headroom_percent"]) // 100)
    result = dict(users=users, max_users=max_users, max_users_source=source, over_by=over_by, policy=policy)
    if not over_by:
        return result
    action = {
        "fail": "the data step's capacity policy is fail, so it would stop: raise the organization's max_users first, or "
        "set vdp_capacity_policy to raise (or report)",
        "raise": f"the data step will raise max_users from {max_users} to {raised} ({params['capacity_headroom_percent']} % "
        "headroom) and record it",
        "report": "the data step will migrate them and report the overflow (vdp_capacity_policy: report)",
    }[policy]
    if policy == "raise":
        result["max_users_after"] = raised
    report.add(
        "anomaly over_capacity",
        BLOCKING if policy == "fail" else WARNING,
        f"{users} users exceed the default organization's max_users {max_users} by {over_by} ({source}): {action}",
    )
    return result


_PRIVILEGE_SQL = """
SELECT c.oid::regclass::text,
       pg_has_role(current_user, c.relowner, 'USAGE') AS owns
FROM pg_class c WHERE c.oid = ANY (SELECT to_regclass(x) FROM unnest(%s::text[]) x)
"""


def check_privileges(report: Report, conn: Any, facts: dict[str, Any]) -> None:
    started = time.monotonic()
    if facts.get("superuser"):
        report.add("privileges", OK, f"{facts['current_user']} is a superuser", started)
        return
    rows = _scalar_rows(conn, _PRIVILEGE_SQL, (["public.profiles", "public.sponsor_practitioner_relationships"],))
    not_owned = [name for name, owns in rows if not owns]
    can_create = _scalar_rows(conn, "SELECT has_schema_privilege('public', 'CREATE')")[0][0]
    runbook_schema = _scalar_rows(
        conn, f"SELECT has_database_privilege(current_database(), 'CREATE') OR to_regnamespace('{RUNBOOK_SCHEMA}') IS NOT NULL"
    )[0][0]
    problems = []
    if not_owned:
        problems.append(f"{facts['current_user']} does not own {', '.join(not_owned)} (ALTER TABLE needs the owner)")
    if not can_create:
        problems.append(f"{facts['current_user']} cannot CREATE in schema public")
    if not runbook_schema:
        problems.append(f"{facts['current_user']} cannot create the runbook's schema {RUNBOOK_SCHEMA} (GRANT CREATE ON DATABASE)")
    if problems:
        report.add("privileges", BLOCKING, "; ".join(problems) + ": run the migration as the tables' owner", started)
    else:
        report.add("privileges", OK, f"{facts['current_user']} owns the legacy tables and can create in public", started)


def check_extensions(report: Report, conn: Any) -> None:
    started = time.monotonic()
    if _scalar_rows(conn, "SELECT to_regproc('gen_random_uuid') IS NOT NULL")[0][0]:
        report.add("gen_random_uuid()", OK, "available", started)
    else:
        report.add("gen_random_uuid()", BLOCKING, "not available: CREATE EXTENSION pgcrypto (PostgreSQL < 13)", started)


_LONG_XACT_SQL = """
SELECT pid, coalesce(usename::text, ''), coalesce(application_name, ''), coalesce(client_addr::text, 'local'),
       coalesce(state, ''), coalesce(wait_event_type, ''), backend_type,
       floor(extract(epoch FROM now() - xact_start))::bigint AS seconds
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid() AND xact_start IS NOT NULL
  AND now() - xact_start > make_interval(secs => %s)
ORDER BY xact_start
LIMIT 50
"""


def check_long_transactions(report: Report, conn: Any, params: dict[str, Any]) -> None:
    started = time.monotonic()
    keys = ("pid", "user", "application_name", "client", "state", "wait_event_type", "backend_type", "seconds")
    rows = [dict(zip(keys, r, strict=True)) for r in _scalar_rows(conn, _LONG_XACT_SQL, (params["long_transaction_seconds"],))]
    report.data["long_transactions"] = rows
    if not rows:
        report.add("long-running transactions", OK, f"none older than {params['long_transaction_seconds']} s", started)
        return
    oldest = rows[0]
    status = BLOCKING if params["long_transaction_policy"] == "fail" else WARNING
    report.add(
        "long-running transactions",
        status,
        f"{len(rows)} transaction(s) older than {params['long_transaction_seconds']} s, oldest pid {oldest['pid']} "
        f"({oldest['application_name'] or 'no application_name'}, {oldest['state']}, {oldest['seconds']} s): they can "
        "block the schema change's locks - let them finish or end them (pg_terminate_backend)",
        started,
    )


def check_lock(report: Report, conn: Any) -> None:
    started = time.monotonic()
    holder = lock_holder(conn)
    if holder:
        report.add("migration lock", BLOCKING, f"another run holds the migration lock: {holder}; wait for it or stop it", started)
    else:
        report.add("migration lock", OK, "free", started)


def check_migration_state(report: Report, conn: Any, params: dict[str, Any]) -> None:
    started = time.monotonic()
    applied = ledger(conn)
    missing = target_schema_missing(conn)
    total_objects = 2 + len(ADDED_PROFILE_COLUMNS)
    versions: list[str] = []
    if params.get("migrations_dir"):
        try:
            # The data step has no file: the modules record it in the same ledger when it completes.
            # Only the organizational migration's own versions (other files, e.g. monitoring, are not its state).
            files = [mf.version for mf in discover(params["migrations_dir"]) if mf.version.startswith(MIGRATION_NAME)]
            versions = [*files, DATA_VERSION]
        except OperatorError as exc:
            report.add("migration state", BLOCKING, str(exc), started)
            return
    pending = [v for v in versions if v not in applied]
    if not applied and len(missing) == total_objects:
        state = "not_applied"
    elif not missing and (not versions or not pending):
        state = "applied"
    else:
        state = "partial"
    completed = completed_by(conn, params.get("run_id")) if state == "applied" else None
    report.data["migration"] = dict(
        state=state,
        ledger_exists=table_exists(conn, f"{RUNBOOK_SCHEMA}.schema_migrations"),
        applied_versions=sorted(applied),
        pending_versions=pending,
        missing_target_objects=missing,
        organization_id_column="public.profiles.organization_id" not in missing,
        complete=completed is not None,
        completed_by=completed,
    )
    if state == "not_applied":
        report.add("migration state", OK, "not applied yet", started)
    elif completed:
        report.add(
            "migration state",
            WARNING,
            f"complete: run {completed['run_id']} deployed, validated, watched and contracted it ({completed['at']}) "
            "and no run has touched production since; this run has nothing to do (-e vdp_recheck=true deploys, "
            "validates and watches again)",
            started,
        )
    elif state == "applied":
        report.add(
            "migration state",
            WARNING,
            f"already applied ({len(applied)} ledger versions): the migrate phases will "
            "change nothing; run validate, or rollback first to migrate again",
            started,
        )
    else:
        report.add(
            "migration state",
            WARNING,
            f"partially applied: ledger has {sorted(applied) or 'nothing'}, pending "
            f"{pending or 'nothing'}, missing {missing or 'nothing'}; the runbook resumes from here",
            started,
        )


# --------------------------------------------------------------------------- tools, staging, S3


def check_tools(report: Report, params: dict[str, Any], prod_major: int | None, staging_major: int | None) -> dict[str, Any]:
    tools: dict[str, Any] = {}
    needs = {"pg_dump": [("production", prod_major)], "pg_restore": [("production", prod_major), ("staging", staging_major)]}
    for tool, servers in needs.items():
        started = time.monotonic()
        try:
            path = pg_tool_path(tool, params.get("pg_bindir"), prod_major)
            major, version = pg_tool_version(path)
        except (ToolNotFound, OSError) as exc:
            report.add(f"{tool} version", BLOCKING, str(exc).splitlines()[0], started)
            continue
        except Exception as exc:  # noqa: BLE001 - e.g. a tool that exits non-zero: one line, not a traceback
            report.add(f"{tool} version", BLOCKING, f"cannot run {tool} --version: {type(exc).__name__}: {exc}", started)
            continue
        tools[tool] = dict(path=path, version=version, major=major)
        problems = [skew_problem(tool, major, server_major) for _, server_major in servers if server_major]
        problems = [p for p in problems if p]
        if problems:
            report.add(f"{tool} version", BLOCKING, problems[0], started)
        else:
            against = ", ".join(f"{n} {m}" for n, m in servers if m) or "no reachable server"
            report.add(f"{tool} version", OK, f"{tool} {version} at {path} (servers: {against})", started)
    return tools


def check_staging(report: Report, params: dict[str, Any], prod: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    if not params.get("staging"):
        report.add("staging connection", WARNING, "not checked (no staging database given): the rehearsal target is unverified")
        return {}, None
    sp = staging_params(params["staging"], params)
    started = time.monotonic()
    problem = staging_name_problem(sp["login_db"], "postgres")
    if problem:
        report.add("staging database name", BLOCKING, problem, started)
    conn, facts = connect_target(report, "staging", sp, missing_ok=True)
    if conn is None:
        return facts, None
    if facts.get("database_missing"):
        check_can_create_database(report, conn, sp["login_db"])
    conn.close()
    if problem:
        pass
    elif not prod.get("server_version"):
        report.add("staging is not production", "skipped", "not compared: production is unreachable (see above)")
    else:
        check_not_production(report, sp, params)
    if prod.get("server_major") and facts["server_major"] < prod["server_major"]:
        report.add(
            "staging server version",
            WARNING,
            f"staging runs PostgreSQL {facts['server_major']}, older than production {prod['server_major']}: the "
            "restore may fail; use the same major",
            started,
        )
    return facts, facts["server_major"]


def check_not_production(report: Report, staging: dict[str, Any], production: dict[str, Any]) -> None:
    """The production guard the restore applies, applied now: staging compared with production by server identity."""
    started = time.monotonic()
    target = target_from_params(staging)
    try:
        outcome = check_target(staging, dict(production, inventory_key="vdp_production_db"), maintenance_db="postgres")
    except GuardRefusal as exc:
        report.add("staging is not production", BLOCKING, str(exc), started)
        return
    except ConnectionFailure as exc:
        report.add("staging is not production", BLOCKING, f"cannot compare staging with production: {exc}", started)
        return
    verdict = outcome.verdict
    evidence = "; ".join(verdict.evidence) if verdict else "not compared"
    report.data["guard"] = outcome.as_dict()
    for warning in outcome.warnings:
        report.add("staging shares production's server", WARNING, warning, started)
    report.add("staging is not production", OK, f"{target.address} is another database than production ({evidence})", started)


def check_lease(report: Report, conn: Any, params: dict[str, Any]) -> None:
    """The run lease: held by another run that may be alive blocks (run_context takes it before this runs)."""
    started = time.monotonic()
    lease = read_lease(conn)
    if lease is None or lease.released_at is not None:
        report.add("run lease", OK, "free", started)
        report.data["lease"] = lease.as_dict() if lease else None
        return
    report.data["lease"] = lease.as_dict()
    if lease.run_id == params.get("run_id"):
        report.add("run lease", OK, f"held by this run ({lease.holder})", started)
        return
    stale = staleness(lease, this_controller())
    status = WARNING if stale else BLOCKING
    detail = f"held by {lease.describe()}; " + (
        f"stale: {stale} - take it over with -e vdp_lease_takeover={lease.run_id}"
        if stale
        else "that run may be running: wait for it, or stop it (playbooks/stop.yml)"
    )
    report.add("run lease", status, detail, started)


def check_s3(report: Report, params: dict[str, Any]) -> dict[str, Any]:
    s3 = params.get("s3")
    if not s3:
        report.add("S3 bucket", WARNING, "not checked (no S3 settings given): the backup destination is unverified")
        return {}
    started = time.monotonic()
    conf = dict(s3, s3_connect_timeout=min(params["connect_timeout"], 10), s3_read_timeout=30, s3_max_attempts=2)
    facts: dict[str, Any] = dict(
        endpoint_url=s3.get("endpoint_url") or "AWS S3", bucket=s3["bucket"], prefix=s3.get("prefix") or ""
    )
    try:
        client = s3_client(conf)
        exists = bucket_exists(client, s3["bucket"], conf)
        facts["bucket_exists"] = exists
        if exists:
            client.list_objects_v2(Bucket=s3["bucket"], Prefix=facts["prefix"], MaxKeys=1)
            facts["listable"] = True
    except S3Failure as exc:
        report.add("S3 bucket", BLOCKING, str(exc), started)
        return facts
    except Exception as exc:  # noqa: BLE001 - botocore raises many kinds; all become one line
        report.add("S3 bucket", BLOCKING, describe_s3_error(exc, "list the backup prefix", conf, s3["bucket"]), started)
        return facts
    where = f"s3://{s3['bucket']} at {facts['endpoint_url']}"
    if exists:
        report.add("S3 bucket", OK, f"{where} reachable and listable", started)
    elif s3.get("create_bucket"):
        report.add("S3 bucket", WARNING, f"{where} does not exist yet: the backup will create it (create_bucket)", started)
    else:
        report.add("S3 bucket", BLOCKING, f"{where} does not exist: create it, or set vdp_s3.create_bucket: true", started)
    return facts


# --------------------------------------------------------------------------- orchestration


def production_checks(report: Report, conn: Any, params: dict[str, Any], facts: dict[str, Any]) -> None:
    steps: list[Callable[[], None]] = [
        lambda: check_extensions(report, conn),
        lambda: check_lease(report, conn, params),
        lambda: check_lock(report, conn),
        lambda: check_long_transactions(report, conn, params),
    ]
    for step in steps:
        step()
    if not check_legacy(report, conn, params):
        return
    check_privileges(report, conn, facts)
    check_counts_and_anomalies(report, conn, params)
    check_migration_state(report, conn, params)


def run(params: dict[str, Any]) -> dict[str, Any]:
    report = Report()
    params = dict(params, inventory_key="vdp_production_db")
    conn, prod = connect_target(report, "production", params)
    if conn is not None:
        with conn:
            production_checks(report, conn, params, prod)
    staging, staging_major = check_staging(report, params, prod)
    tools = check_tools(report, params, prod.get("server_major"), staging_major)
    s3 = check_s3(report, params)
    return dict(
        changed=False,
        go=not report.blocking,
        blocking=report.blocking,
        warning_messages=report.warnings,
        checks=report.checks,
        production=prod,
        staging=staging,
        s3=s3,
        tools=tools,
        **report.data,
    )
