#!/usr/bin/python
# Phase 1 of the runbook (DESIGN §3): everything that must be true before a backup is taken or a
# lock is requested, checked read-only against production, staging and S3, and summed up as a
# go/no-go with reasons. Blocking problems make `go` false; anomalies are warnings. The module
# itself never fails on a no-go (the role writes the report first, then fails the play).
"""Ansible module: read-only preflight of the organizational-model migration (go/no-go)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_preflight
short_description: Read-only preflight of the organizational-model migration, with a go/no-go
description:
  - Connects to the production database (the C(login_*) options), the staging database (I(staging))
    and S3 (I(s3)), and checks, without writing anything anywhere
  - connectivity of all three (one line per failure naming host:port/database or the endpoint and
    bucket, never a password or key);
  - client/server version skew (C(pg_dump) and C(pg_restore) must be at least the server's major,
    C(pg_restore) also at least staging's) and that staging is not production;
  - the legacy shape (where C(last_sign_in_at) lives - C(profiles), C(auth.users) or nowhere), the
    seed's pre-migration counts, and the relationship anomalies (self-relationships, orphans,
    duplicate active pairs) and users beyond the default organization's C(max_users);
  - server settings (C(work_mem), C(maintenance_work_mem), ...), C(gen_random_uuid), the login's
    right to alter the legacy tables, long-running transactions, the migration's advisory lock,
    and whether the migration is already (partially) applied.
  - Returns C(go) with C(blocking) reasons and C(warnings); it does not fail on a no-go so the
    caller can record the report first. It fails only on invalid input.
version_added: "1.0.0"
extends_documentation_fragment:
  - vdp_postgres
options:
  staging:
    description:
      - The staging (rehearsal) database. Omit to skip its checks (a warning says the rehearsal cannot be verified).
    type: dict
    suboptions:
      host: {description: Host., type: str, required: true}
      port: {description: Port., type: int, default: 5432}
      dbname: {description: Database., type: str, required: true}
      user: {description: Role., type: str, required: true}
      password: {description: Password (PGPASSWORD applies when omitted). Never printed., type: str, no_log: true}
      ssl_mode: {description: libpq sslmode., type: str, default: prefer}
      ca_cert: {description: CA certificate file., type: path}
  s3:
    description: The backup bucket. Omit to skip the S3 checks (a warning says so).
    type: dict
    suboptions:
      bucket: {description: Bucket name., type: str, required: true}
      endpoint_url: {description: S3 endpoint (AWS when omitted; AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)., type: str}
      region: {description: Region (AWS_REGION / AWS_DEFAULT_REGION)., type: str}
      access_key: {description: Access key (AWS_ACCESS_KEY_ID). Never printed., type: str, no_log: true}
      secret_key: {description: Secret key (AWS_SECRET_ACCESS_KEY). Never printed., type: str, no_log: true}
      session_token: {description: Session token (AWS_SESSION_TOKEN). Never printed., type: str, no_log: true}
      create_bucket: {description: The backup may create a missing bucket (then it is a warning)., type: bool, default: false}
      prefix: {description: Key prefix of the backups (listed to prove read access)., type: str, default: ""}
      validate_certs: {description: Verify TLS certificates., type: bool, default: true}
      ca_bundle: {description: CA bundle for the endpoint., type: path}
  pg_bindir:
    description: Directory of C(pg_dump) / C(pg_restore) (vdp_pg_bindir); default the server major's usual directory, then PATH.
    type: path
  max_users:
    description: Capacity of the default organization when it does not exist yet (the seed's 1000).
    type: int
    default: 1000
  default_organization_slug:
    description: Slug of the default organization whose C(max_users) applies once it exists.
    type: str
    default: individual-users
  capacity_policy:
    description: C(report) makes users beyond I(max_users) a warning, C(fail) makes it blocking.
    type: str
    choices: [report, fail]
    default: report
  long_transaction_seconds:
    description: Transactions on the production database older than this are reported.
    type: int
    default: 300
  long_transaction_policy:
    description: C(report) makes long-running transactions a warning, C(fail) makes them blocking.
    type: str
    choices: [report, fail]
    default: report
  migrations_dir:
    description: The project's C(migrations/) folder; its versions are compared with the ledger (applied / partial / pending).
    type: path
  sample_limit:
    description: At most this many sample rows per anomaly kind.
    type: int
    default: 20
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same checks in check mode.
  diff_mode:
    support: none
  platform:
    platforms: posix
author:
  - Virtue platform team
"""

EXAMPLES = r"""
- name: Check that the migration can start
  vdp_preflight:
    login_host: "{{ vdp_production_db.host }}"
    login_port: "{{ vdp_production_db.port }}"
    login_db: "{{ vdp_production_db.dbname }}"
    login_user: "{{ vdp_production_db.user }}"
    login_password: "{{ vdp_production_db.password | default(omit) }}"
    staging: "{{ vdp_staging_db }}"
    s3:
      endpoint_url: "{{ vdp_s3.endpoint_url }}"
      bucket: "{{ vdp_s3.bucket }}"
      access_key: "{{ vdp_s3.access_key | default(omit) }}"
      secret_key: "{{ vdp_s3.secret_key | default(omit) }}"
    pg_bindir: "{{ vdp_pg_bindir }}"
    capacity_policy: fail
  register: preflight

- name: Stop on a no-go
  ansible.builtin.fail:
    msg: "{{ preflight.blocking | join('; ') }}"
  when: not preflight.go
"""

RETURN = r"""
go:
  description: True when nothing blocks the migration.
  returned: always
  type: bool
blocking:
  description: One line per blocking problem, each saying what to do.
  returned: always
  type: list
  elements: str
warning_messages:
  description: One line per anomaly or risk that does not block.
  returned: always
  type: list
  elements: str
checks:
  description: Every check with its status (ok, warning, blocking, skipped) and a one-line detail.
  returned: always
  type: list
  elements: dict
  sample: [{name: production connection, status: ok, detail: "postgres@db:5432/virtue, PostgreSQL 15.8"}]
production:
  description: Target (no password), server version and major, database size, settings (work_mem, maintenance_work_mem, ...).
  returned: always
  type: dict
staging:
  description: Target, server version and major of the staging database (empty when not given).
  returned: always
  type: dict
s3:
  description: Endpoint, bucket, whether it exists and whether the prefix could be listed.
  returned: always
  type: dict
tools:
  description: pg_dump / pg_restore path, version and major.
  returned: always
  type: dict
legacy:
  description: C(sign_in_source) (profiles, auth.users or null) and C(shape) (seed, supabase or none).
  returned: when production is reachable
  type: dict
  sample: {sign_in_source: auth.users, shape: supabase}
counts:
  description: The seed's pre-migration counts.
  returned: when production is reachable
  type: dict
  sample: {Total Users: 2000, Active Sponsor Relationships: 1420, Total Virtue Progress Records: 9934}
anomalies:
  description:
    - C(self_relationships), C(orphan_relationships), C(duplicate_active_pairs) (count, active, sample rows) and
      C(over_capacity) (users, max_users, over_by, policy).
  returned: when production is reachable
  type: dict
long_transactions:
  description: Transactions older than I(long_transaction_seconds) on the production database (no query text).
  returned: when production is reachable
  type: list
  elements: dict
migration:
  description: C(state) (not_applied, partial, applied), ledger versions, pending versions and missing target objects.
  returned: when production is reachable
  type: dict
"""

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_legacy import (
    detect_sign_in_source,
    relationship_anomalies,
    seed_pre_migration_counts,
    table_exists,
)
from ansible.module_utils.vdp_migration import (
    ADDED_PROFILE_COLUMNS,
    DATA_VERSION,
    RUNBOOK_SCHEMA,
    EngineError,
    discover,
    ledger,
    target_schema_missing,
)
from ansible.module_utils.vdp_pg import (
    ConnectionFailure,
    Target,
    connect,
    lock_holder,
    pg_connection_argument_spec,
    redact,
    target_from_params,
)
from ansible.module_utils.vdp_pgtools import ToolNotFound, pg_tool_path, pg_tool_version, skew_problem
from ansible.module_utils.vdp_s3 import S3Failure, bucket_exists, describe_s3_error, s3_client

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


def argument_spec() -> dict[str, Any]:
    spec = pg_connection_argument_spec()
    spec.update(
        staging=dict(
            type="dict",
            options=dict(
                host=dict(type="str", required=True),
                port=dict(type="int", default=5432),
                dbname=dict(type="str", required=True),
                user=dict(type="str", required=True),
                password=dict(type="str", no_log=True),
                ssl_mode=dict(type="str", default="prefer"),
                ca_cert=dict(type="path"),
            ),
        ),
        s3=dict(
            type="dict",
            options=dict(
                bucket=dict(type="str", required=True),
                endpoint_url=dict(type="str"),
                region=dict(type="str"),
                access_key=dict(type="str", no_log=True),
                secret_key=dict(type="str", no_log=True),
                session_token=dict(type="str", no_log=True),
                create_bucket=dict(type="bool", default=False),
                prefix=dict(type="str", default=""),
                validate_certs=dict(type="bool", default=True),
                ca_bundle=dict(type="path"),
            ),
        ),
        pg_bindir=dict(type="path"),
        max_users=dict(type="int", default=1000),
        default_organization_slug=dict(type="str", default="individual-users"),
        capacity_policy=dict(type="str", choices=["report", "fail"], default="report"),
        long_transaction_seconds=dict(type="int", default=300),
        long_transaction_policy=dict(type="str", choices=["report", "fail"], default="report"),
        migrations_dir=dict(type="path"),
        sample_limit=dict(type="int", default=20),
    )
    return spec


def validate(params: dict[str, Any]) -> list[str]:
    """Input problems, each saying what to fix (checked before connecting anywhere)."""
    problems = []
    if params["max_users"] < 1:
        problems.append(f"max_users must be a positive number of users, got {params['max_users']}")
    if params["long_transaction_seconds"] < 1:
        problems.append(f"long_transaction_seconds must be >= 1, got {params['long_transaction_seconds']}")
    if not 0 <= params["sample_limit"] <= 1000:
        problems.append(f"sample_limit must be between 0 and 1000, got {params['sample_limit']}")
    s3 = params.get("s3")
    if s3 is not None and len(s3["bucket"] or "") < 3:
        problems.append(f"s3.bucket {s3['bucket']!r} is not a bucket name (3 to 63 characters)")
    return problems


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
        report.add(f"{name} connection", OK, f"{target.host}:{target.port} answers (PostgreSQL {facts['server_version']}); "
                   f"database {target.dbname} does not exist yet: the restore creates it", started)
    else:
        report.add(f"{name} connection", OK, f"{target}, PostgreSQL {facts['server_version']}", started)
    return conn, facts


def check_can_create_database(report: Report, conn: Any, dbname: str) -> None:
    started = time.monotonic()
    row = conn.execute("SELECT rolsuper OR rolcreatedb FROM pg_roles WHERE rolname = current_user").fetchone()
    if row and row[0]:
        report.add("staging database creatable", OK, f"the login may create {dbname}", started)
    else:
        report.add("staging database creatable", BLOCKING,
                   f"{dbname} does not exist and the login may not create databases: create it, or GRANT CREATEDB", started)


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
    )


def same_database(a: Target, b: Target) -> bool:
    local = {"localhost", "127.0.0.1", "::1", ""}
    host_a, host_b = (("local" if h in local or h.startswith("/") else h.lower()) for h in (a.host, b.host))
    return host_a == host_b and a.port == b.port and a.dbname == b.dbname


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
    max_users, source = params["max_users"], "max_users setting; the default organization does not exist yet"
    if table_exists(conn, "public.organizations"):
        rows = _scalar_rows(
            conn, "SELECT max_users FROM public.organizations WHERE slug = %s", (params["default_organization_slug"],)
        )
        if rows and rows[0][0] is not None:
            max_users, source = int(rows[0][0]), f"organization {params['default_organization_slug']!r}"
    over_by = max(users - max_users, 0)
    result = dict(users=users, max_users=max_users, max_users_source=source, over_by=over_by, policy=params["capacity_policy"])
    if over_by:
        status = BLOCKING if params["capacity_policy"] == "fail" else WARNING
        action = (
            "set preflight_capacity_policy=report to proceed, or raise the default organization's max_users"
            if status == BLOCKING
            else "the data step must raise max_users or fail as configured"
        )
        report.add(
            "anomaly over_capacity",
            status,
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
    problems = []
    if not_owned:
        problems.append(f"{facts['current_user']} does not own {', '.join(not_owned)} (ALTER TABLE needs the owner)")
    if not can_create:
        problems.append(f"{facts['current_user']} cannot CREATE in schema public")
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
            versions = [mf.version for mf in discover(params["migrations_dir"])] + [DATA_VERSION]
        except EngineError as exc:
            report.add("migration state", BLOCKING, str(exc), started)
            return
    pending = [v for v in versions if v not in applied]
    if not applied and len(missing) == total_objects:
        state = "not_applied"
    elif not missing and (not versions or not pending):
        state = "applied"
    else:
        state = "partial"
    report.data["migration"] = dict(
        state=state,
        ledger_exists=table_exists(conn, f"{RUNBOOK_SCHEMA}.schema_migrations"),
        applied_versions=sorted(applied),
        pending_versions=pending,
        missing_target_objects=missing,
        organization_id_column="public.profiles.organization_id" not in missing,
    )
    if state == "not_applied":
        report.add("migration state", OK, "not applied yet", started)
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
    conn, facts = connect_target(report, "staging", sp, missing_ok=True)
    if conn is None:
        return facts, None
    if facts.get("database_missing"):
        check_can_create_database(report, conn, sp["login_db"])
    conn.close()
    started = time.monotonic()
    if same_database(target_from_params(sp), target_from_params(params)):
        report.add(
            "staging is not production",
            BLOCKING,
            f"staging resolves to the production database {facts['target']}: point vdp_staging_db at another database",
            started,
        )
    else:
        report.add("staging is not production", OK, f"{facts['target']} differs from production", started)
    if prod.get("server_major") and facts["server_major"] < prod["server_major"]:
        report.add(
            "staging server version",
            WARNING,
            f"staging runs PostgreSQL {facts['server_major']}, older than production "
            f"{prod['server_major']}: the restore may fail; use the same major",
            started,
        )
    return facts, facts["server_major"]


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


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = module.params
    problems = validate(params)
    if problems:
        module.fail_json(msg="; ".join(problems))
    secrets = [
        params.get("login_password"),
        *((params.get("staging") or {}).get("password"),),
        *[(params.get("s3") or {}).get(k) for k in ("access_key", "secret_key", "session_token")],
    ]
    try:
        result = run(params)
    except Exception as exc:  # noqa: BLE001 - one line for the operator, the traceback (redacted) for -vvv
        first = (str(exc).strip().splitlines() or [""])[0]
        message = redact(f"preflight stopped unexpectedly: {type(exc).__name__}: {first}", *secrets)
        module.fail_json(msg=message, exception=redact(traceback.format_exc(), *secrets))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
