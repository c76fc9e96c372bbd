"""Helpers of the migration-engine tests (no tests here): databases, fingerprints, the data step.

Imported by tests/integration/test_migration_engine.py, test_rules_engine.py and the end-to-end tests.
Uses the session fixtures (`sandbox`, `legacy_template`, `run_module`).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
MIGRATIONS = ROOT / "migrations"
SCHEMA_V = "20250103_organizational_model_schema"
SYNC_V = "20250103_assignment_sync_expand"  # the schema phase applies it too (first: before the baseline)
DATA_V = "20250103_organizational_model_data"
INDEXES_V = "20250103_organizational_model_indexes"
LOCK_KEY = 0x56445020_4F524731
_counter = itertools.count()

ORG = dict(
    slug="individual-users",
    name="Individual Users",
    primary_color="#5F4339",
    secondary_color="#A8A29E",
    subscription_tier="legacy",
    max_users=1000,
    create_only=["max_users"],
)


def clone(sandbox: Any, template: str) -> dict[str, Any]:
    """A new database cloned from a legacy template; returns psycopg.connect kwargs."""
    name = f"eng{os.getpid()}_{next(_counter)}"
    with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template)))
    return sandbox.pg("production", name)


def drop(sandbox: Any, info: dict[str, Any]) -> None:
    with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(info["dbname"])))


def login(info: dict[str, Any]) -> dict[str, Any]:
    return dict(
        login_host=info["host"],
        login_port=info["port"],
        login_db=info["dbname"],
        login_user=info["user"],
        login_password=info["password"],
    )


@contextmanager
def connect(info: dict[str, Any], autocommit: bool = True) -> Iterator[psycopg.Connection[Any]]:
    conn = psycopg.connect(**info, autocommit=autocommit)
    try:
        yield conn
    finally:
        conn.close()


def scalar(info: dict[str, Any], query: str, params: Any = None) -> Any:
    with connect(info) as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def rows(info: dict[str, Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with connect(info) as conn:
        return conn.execute(query, params).fetchall()


_USER_TABLES = """
SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%%'
ORDER BY 1, 2
"""


# The runbook's run coordination: every run takes the run lease (one row) and logs it, whatever else it does.
# These are the per-run rows a "zero rows written" fingerprint leaves out (documented in the README).
RUN_COORDINATION_TABLES = frozenset({"vdp_runbook.run_lease", "vdp_runbook.run_lease_log"})


def fingerprint(info: dict[str, Any], physical: bool = False) -> dict[str, str]:
    """Every user table's content hash (order-independent), plus the list of relations and schemas.

    physical=True hashes (ctid, xmin) instead of the content: any row written - even rewritten to
    the same values - changes it (proves "zero rows written"). The run lease's rows are left out.
    """
    result: dict[str, str] = {}
    with connect(info, autocommit=False) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for schema, table in conn.execute(_USER_TABLES).fetchall():
            if f"{schema}.{table}" in RUN_COORDINATION_TABLES:
                continue
            row_expr = sql.SQL("(t.ctid, t.xmin)::text") if physical else sql.SQL("t::text")
            query = sql.SQL(
                "SELECT count(*), coalesce(sum(('x' || left(md5({}), 15))::bit(60)::bigint::numeric), 0) FROM {} t"
            ).format(row_expr, sql.Identifier(schema, table))
            n, total = conn.execute(query).fetchone()
            result[f"{schema}.{table}"] = f"{n}:{total}"
        rels = conn.execute(
            "SELECT string_agg(n.nspname || '.' || c.relname || ':' || c.relkind::text, ',' ORDER BY 1) "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
            "AND n.nspname NOT LIKE 'pg_temp%%' AND n.nspname NOT LIKE 'pg_toast_temp%%'"
        ).fetchone()[0]
        # The run lease's own tables (and their index and sequence) are the runbook's coordination, not a change.
        result["__relations__"] = ",".join(
            r for r in rels.split(",") if not any(r.startswith(t) for t in RUN_COORDINATION_TABLES)
        )
        result["__triggers__"] = str(
            conn.execute(
                "SELECT string_agg(tgname || tgenabled::text, ',' ORDER BY 1) FROM pg_trigger WHERE NOT tgisinternal"
            ).fetchone()[0]
        )
        conn.rollback()
    return result


# The migrated state, independent of generated ids (organization and assignment ids are random).
MIGRATED_STATE_SQL = {
    "profiles": """
        SELECT md5(string_agg(concat_ws('|', p.id, o.slug, p.roles::text, p.is_active, p.last_activity, p.updated_at,
                                        p.email, p.full_name, p.created_at), ',' ORDER BY p.id))
        FROM public.profiles p LEFT JOIN public.organizations o ON o.id = p.organization_id""",
    "assignments": """
        SELECT count(*) || ':' || md5(string_agg(
                 concat_ws('|', a.practitioner_id, a.supervisor_id, a.supervisor_role, o.slug, a.assigned_at, a.active),
                 ',' ORDER BY a.practitioner_id, a.supervisor_id))
        FROM public.practitioner_assignments a JOIN public.organizations o ON o.id = a.organization_id""",
    "organizations": """
        SELECT string_agg(concat_ws('|', slug, name, primary_color, secondary_color, subscription_tier, max_users),
                          ',' ORDER BY slug)
        FROM public.organizations""",
    "flags": "SELECT string_agg(flag_name || enabled, ',' ORDER BY flag_name) FROM public.feature_flags",
    "ledger": "SELECT string_agg(version || kind || checksum, ',' ORDER BY version) FROM vdp_runbook.schema_migrations",
}


def migrated_state(info: dict[str, Any]) -> dict[str, Any]:
    with connect(info) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        return {k: conn.execute(q).fetchone()[0] for k, q in MIGRATED_STATE_SQL.items()}


def apply_schema(run_module: Callable[..., Any], info: dict[str, Any], versions: list[str] | None = None, **extra: Any) -> Any:
    """The schema phase's versions (the online sync and the schema), or `versions`."""
    return run_module(
        "vdp_schema_migrations", dict(login(info), path=str(MIGRATIONS), versions=versions or [SYNC_V, SCHEMA_V], **extra)
    )


def data_step(
    run_module: Callable[..., Any], info: dict[str, Any], check: bool = False, batch_size: int = 500, **membership: Any
) -> dict[str, Any]:
    """The org_data_migration role's module calls, in its order; returns each result by module name."""
    results: dict[str, Any] = {}
    base = login(info)
    results["organization"] = run_module("vdp_organization", dict(base, **ORG), check=check)
    results["flags"] = run_module(
        "vdp_feature_flag",
        dict(base, names=["organizational_model", "multi_role_support"], enabled=False, create_only=True),
        check=check,
    )
    results["membership"] = run_module(
        "vdp_org_membership", dict(base, batch_size=batch_size, max_users_if_missing=1000, **membership), check=check
    )
    results["assignments"] = run_module("vdp_coach_assignments", dict(base, batch_size=batch_size), check=check)
    for name, result in results.items():
        assert not result.failed, f"{name}: {result.get('msg')}"
    if not check and results["membership"]["remaining"] == 0:
        results["ledger"] = run_module("vdp_schema_migrations", dict(base, state="recorded", record_version=DATA_V))
    return results


def full_migration(run_module: Callable[..., Any], info: dict[str, Any], batch_size: int = 500) -> dict[str, Any]:
    schema = apply_schema(run_module, info)
    assert not schema.failed, schema.get("msg")
    results = data_step(run_module, info, batch_size=batch_size)
    results["indexes"] = apply_schema(run_module, info, [INDEXES_V])
    assert not results["indexes"].failed, results["indexes"].get("msg")
    results["schema"] = schema
    return results


def manifest(info: dict[str, Any]) -> dict[str, Any]:
    """The fixture generator's exact counts of the messy cases."""
    return scalar(info, "SELECT counts FROM vdp_fixture.manifest WHERE id = 1")


def wait_until(predicate: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


# --------------------------------------------------------------------------- legacy content, independently of the runbook

MIGRATION_FLAGS = ("organizational_model", "multi_role_support")


def legacy_layout(info: dict[str, Any]) -> dict[str, list[str]]:
    """Every table of auth and public with its columns, as they are now (call it before a migration)."""
    found: dict[str, list[str]] = {}
    for schema, table, column in rows(
        info,
        "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c "
        "JOIN information_schema.tables t USING (table_schema, table_name) "
        "WHERE c.table_schema IN ('auth', 'public') AND t.table_type = 'BASE TABLE' ORDER BY 1, 2, c.ordinal_position",
    ):
        found.setdefault(f"{schema}.{table}", []).append(column)
    return found


def legacy_content(info: dict[str, Any], layout: dict[str, list[str]]) -> dict[str, str]:
    """Row count and an order-independent hash of exactly the `layout` columns of each `layout` table (the
    migration's own feature flags left out): what "the legacy data is as before" means, computed without any of
    the runbook's code."""
    result: dict[str, str] = {}
    with connect(info, autocommit=False) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        for table, columns in layout.items():
            schema, name = table.split(".")
            where = sql.SQL("WHERE flag_name <> ALL(%s)") if table == "public.feature_flags" else sql.SQL("")
            query = sql.SQL(
                "SELECT count(*), coalesce(sum(('x' || left(md5(row({})::text), 15))::bit(60)::bigint::numeric), 0) FROM {} {}"
            ).format(sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(schema, name), where)
            n, total = conn.execute(query, [list(MIGRATION_FLAGS)] if table == "public.feature_flags" else None).fetchone()
            result[table] = f"{n}:{total}"
        conn.rollback()
    return result
