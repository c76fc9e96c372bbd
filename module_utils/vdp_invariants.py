# The post-migration invariants, read-only: the seed's post-migration validation and integrity
# queries (metric names verbatim) and every rule of DESIGN §4 as a list of checks with counts and
# samples - roles, last_activity, one active coach assignment per valid active pair and no other, every
# active relationship accounted for, RLS and no anon access on the new tables, the sign-up defaults,
# the feature flags, capacity, the ledger, the validated foreign key, and the legacy tables against
# their baseline (vdp_baseline), with the application's own writes attributed, never called loss.
#
# Robust to stale statistics: a planner that still believes practitioner_assignments is empty (no
# ANALYZE since the data step, e.g. autovacuum has not run yet) picks a nested loop that rescans
# every assignment for every pair - quadratic, hours at 1M users. The checks run with nested loops
# off, so every set comparison is a hash or merge join, linear whatever the statistics say.
"""Post-migration invariants as data (read-only): the seed's queries and DESIGN §4's rules."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.vdp_assignments import assignments_plan
from ansible.module_utils.vdp_baseline import TableComparison, compare_legacy, read_baseline
from ansible.module_utils.vdp_ledger import invalid_indexes, ledger
from ansible.module_utils.vdp_legacy import relationship_anomalies, seed_pre_migration_counts, table_columns, table_exists
from ansible.module_utils.vdp_names import BASELINE_KEY, FEATURE_FLAGS, INDEXES_VERSION, RUNBOOK_SCHEMA, SCHEMA_VERSION
from ansible.module_utils.vdp_rules import ROLE_SOURCES_SQL, ROLES_EXPR, VALID_PAIRS_SQL, sign_in_expr
from ansible.module_utils.vdp_target import organization_id, target_schema_missing

# The seed's "Post-Migration Validation" and "data integrity" queries, metric names verbatim.
SEED_POST_MIGRATION_SQL = """
SELECT 'Users with Organization' AS metric, COUNT(*) AS count FROM public.profiles WHERE organization_id IS NOT NULL
UNION ALL
SELECT 'Coach Assignments Created', COUNT(*) FROM public.practitioner_assignments WHERE supervisor_role = 'coach'
UNION ALL
SELECT 'Users with Roles Assigned', COUNT(*) FROM public.profiles WHERE roles IS NOT NULL AND array_length(roles, 1) > 0
"""

SEED_INTEGRITY_SQL = """
SELECT 'Orphaned Users' AS issue, COUNT(*) AS count FROM public.profiles WHERE organization_id IS NULL
UNION ALL
SELECT 'Missing Role Assignments', COUNT(*) FROM public.profiles WHERE roles IS NULL OR array_length(roles, 1) = 0
UNION ALL
SELECT 'Invalid Organization References', COUNT(*)
FROM public.profiles p LEFT JOIN public.organizations o ON p.organization_id = o.id
WHERE p.organization_id IS NOT NULL AND o.id IS NULL
"""


def metric_rows(conn: Any, query: str) -> dict[str, int]:
    with conn.cursor() as cur:
        cur.execute(query)
        return {str(name): int(count) for name, count in cur.fetchall()}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    count: int = 0
    sample: list[Any] = field(default_factory=list)
    severity: str = "error"
    attributed: int = 0


# --------------------------------------------------------------------------- the application's writes


def app_touched_sql(conn: Any, since: Any, alias: str = "p") -> str:
    """A boolean SQL expression: profile `alias` was written by the application since the baseline
    (signed up, edited, signed in, or in a relationship created - or, per the online sync's journal, ended - since).
    Takes %(since)s."""
    if since is None:
        return "false"
    parts = [f"{alias}.{c} >= %(since)s" for c in ("created_at", "updated_at") if c in table_columns(conn, "public.profiles")]
    users = [c for c in ("last_sign_in_at", "updated_at") if c in table_columns(conn, "auth.users")]
    if users:
        cond = " OR ".join(f"u.{c} >= %(since)s" for c in users)
        parts.append(f"EXISTS (SELECT 1 FROM auth.users u WHERE u.id = {alias}.id AND ({cond}))")
    parts.append(
        "EXISTS (SELECT 1 FROM public.sponsor_practitioner_relationships r "
        f"WHERE (r.sponsor_id = {alias}.id OR r.practitioner_id = {alias}.id) AND r.created_at >= %(since)s)"
    )
    if table_exists(conn, f"{RUNBOOK_SCHEMA}.relationship_writes"):  # the online sync's journal: relationships ended
        parts.append(
            f"EXISTS (SELECT 1 FROM {RUNBOOK_SCHEMA}.relationship_writes w WHERE (w.sponsor_id = {alias}.id "
            f"OR w.practitioner_id = {alias}.id) AND w.at >= %(since)s AND NOT w.by_runbook)"
        )
    if table_exists(conn, f"{RUNBOOK_SCHEMA}.app_writes"):
        parts.append(
            f"EXISTS (SELECT 1 FROM {RUNBOOK_SCHEMA}.app_writes w WHERE w.profile_id = {alias}.id AND w.at >= %(since)s)"
        )
    return "(" + " OR ".join(parts) + ")"


def baseline_since(conn: Any, key: str) -> Any:
    """The time from which a changed profile counts as the application's write: the first baseline's, taken before
    the migration's first write (a re-baseline moves the legacy reference, not the migration's start)."""
    entry = read_baseline(conn, key).get("public.profiles") or {}
    return entry.get("migration_since") or entry.get("attribution_since")


def _mismatches(conn: Any, query: str, params: dict[str, Any], limit: int) -> tuple[int, int, list[Any]]:
    """(unattributed, attributed, sample of unattributed) of a query whose last column is `app`."""
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FILTER (WHERE NOT q.app), count(*) FILTER (WHERE q.app) FROM ({query}) q", params)
        bad, attributed = (int(v) for v in cur.fetchone())
        cur.execute(f"SELECT * FROM ({query}) q WHERE NOT q.app LIMIT %(limit)s", dict(params, limit=limit))
        sample = [[str(v) if v is not None else None for v in row[:-1]] for row in cur.fetchall()]
    return bad, attributed, sample


def _count_and_sample(conn: Any, query: str, params: dict[str, Any], limit: int) -> tuple[int, list[Any]]:
    with conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM ({query}) q", params)
        count = int(cur.fetchone()[0])
        cur.execute(f"SELECT * FROM ({query}) q LIMIT %(limit)s", dict(params, limit=limit))
        sample = [[str(v) if v is not None else None for v in row] for row in cur.fetchall()]
    return count, sample


def roles_mismatches_sql(touched: str) -> str:
    return f"""
    SELECT p.id, p.roles, {ROLES_EXPR.format(s="s")} AS expected, {touched} AS app
    FROM public.profiles p LEFT JOIN ({ROLE_SOURCES_SQL}) s ON s.id = p.id
    WHERE p.roles IS DISTINCT FROM {ROLES_EXPR.format(s="s")}
    """


def last_activity_mismatches_sql(source: str | None, touched: str) -> str:
    join, expr = sign_in_expr(source, profile_alias="p", key="p.id")
    return (
        f"SELECT p.id, p.last_activity, {expr} AS expected, {touched} AS app FROM public.profiles p {join} "
        f"WHERE p.last_activity IS DISTINCT FROM {expr}"
    )


MISSING_ASSIGNMENTS_SQL = f"""
SELECT v.sponsor_id, v.practitioner_id, v.assigned_at FROM ({VALID_PAIRS_SQL}) v
WHERE NOT EXISTS (SELECT 1 FROM public.practitioner_assignments a
  WHERE a.supervisor_id = v.sponsor_id AND a.practitioner_id = v.practitioner_id AND a.supervisor_role = 'coach'
    AND a.organization_id = %(org)s AND a.assigned_at = v.assigned_at AND a.active)
"""

# Active assignments only: an inactive one is an ENDED coaching relationship (the online sync keeps the pair's row
# and marks it inactive when the old app ends the relationship), which no rule asks to be converted.
UNEXPECTED_ASSIGNMENTS_SQL = f"""
SELECT a.supervisor_id, a.practitioner_id, a.assigned_at FROM public.practitioner_assignments a
WHERE a.supervisor_role = 'coach' AND a.organization_id = %(org)s AND a.active
  AND NOT EXISTS (SELECT 1 FROM ({VALID_PAIRS_SQL}) v
                  WHERE v.sponsor_id = a.supervisor_id AND v.practitioner_id = a.practitioner_id)
"""


def _privileges(conn: Any, role: str, table: str) -> list[str]:
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone() is None:
            return []
        cur.execute(
            "SELECT p FROM unnest(ARRAY['SELECT','INSERT','UPDATE','DELETE','TRUNCATE']) p "
            "WHERE has_table_privilege(%s, to_regclass(%s), p)",
            (role, table),
        )
        return [r[0] for r in cur.fetchall()]


def _rls(conn: Any, table: str) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT relrowsecurity FROM pg_class WHERE oid = to_regclass(%s)", (table,))
        row = cur.fetchone()
    return bool(row and row[0])


def _trigger_state(conn: Any, table: str, name: str) -> str | None:
    with conn.cursor() as cur:
        cur.execute("SELECT tgenabled FROM pg_trigger WHERE tgrelid = to_regclass(%s) AND tgname = %s", (table, name))
        row = cur.fetchone()
    return None if row is None else str(row[0])


def _fk_validated(conn: Any) -> bool | None:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT convalidated FROM pg_constraint WHERE conname = 'profiles_organization_id_fkey' "
            "AND conrelid = 'public.profiles'::regclass"
        )
        row = cur.fetchone()
    return None if row is None else bool(row[0])


# --------------------------------------------------------------------------- the checks


def legacy_checks(comparisons: list[TableComparison] | None, key: str) -> tuple[list[Check], dict[str, Any]]:
    """ "The migration changed no legacy value", per table, with the application's writes attributed."""
    if comparisons is None:
        return [
            Check(
                "legacy_baseline_present",
                False,
                f"no baseline '{key}' in {RUNBOOK_SCHEMA}.baseline: the schema/data phase stores it before its first "
                "write; run them through this runbook",
            )
        ], {}
    checks, report = [], {}
    for c in comparisons:
        report[c.table] = c.as_dict()
        checks.append(
            Check(
                f"legacy_unchanged:{c.table}",
                c.unchanged_by_migration,
                _legacy_detail(c),
                c.deleted + c.changed,
                (c.samples.get("deleted") or []) + (c.samples.get("changed") or []),
                attributed=c.inserted + c.app_updated,
            )
        )
        checks.append(
            Check(
                f"legacy_structure_intact:{c.table}",
                not c.structure_lost,
                "triggers, policies and RLS as in the baseline"
                if not c.structure_lost
                else "changed: " + ", ".join(c.structure_lost),
                len(c.structure_lost),
            )
        )
    return checks, report


def _legacy_detail(c: TableComparison) -> str:
    if c.rows_after is None:
        return f"{c.table} is GONE (the baseline had {c.rows_before} rows)"
    app = f"; the application wrote {c.inserted} new and {c.app_updated} updated rows since the baseline (not the migration)"
    app = app if (c.inserted or c.app_updated) else ""
    if c.unchanged_by_migration:
        return "no legacy value changed by the migration" + (app or " (content identical to the baseline)")
    if not c.per_row:
        return (
            f"{c.table} changed since the baseline (rows {c.rows_before} -> {c.rows_after}, checksum {c.checksum_before}"
            f" -> {c.checksum_after}); it has no primary key, so no row can be attributed"
        )
    return (
        f"{c.deleted} rows deleted and {c.changed} rows changed since the baseline with no application write to explain them{app}"
    )


def rule_checks(conn: Any, source: str | None, since: Any, limit: int) -> list[Check]:
    """The roles and last_activity rules, and is_active; profiles the application wrote since are attributed."""
    touched = app_touched_sql(conn, since)
    params = dict(since=since)
    checks = []
    bad, attributed, sample = _mismatches(conn, roles_mismatches_sql(touched), params, limit)
    checks.append(
        Check(
            "roles_rule",
            bad == 0,
            "roles follow the rule (coach: sponsors; practitioner: non-sponsors and active practitioners)"
            if bad == 0
            else f"{bad} profiles have other roles than the rule gives",
            bad,
            sample,
            attributed=attributed,
        )
    )
    bad, attributed, sample = _mismatches(conn, last_activity_mismatches_sql(source, touched), params, limit)
    checks.append(
        Check(
            "last_activity_rule",
            bad == 0,
            f"last_activity = COALESCE(sign-in from {source or 'nowhere'}, created_at) for all but {bad} profiles"
            + (f" ({attributed} signed in or were written by the application since)" if attributed else ""),
            bad,
            sample,
            attributed=attributed,
        )
    )
    with conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM public.profiles WHERE is_active IS NOT TRUE")
        inactive = int(cur.fetchone()[0])
    checks.append(Check("is_active_set", inactive == 0, f"{inactive} profiles without is_active = true", inactive))
    return checks


def assignment_checks(conn: Any, org: Any, limit: int) -> list[Check]:
    params = dict(org=org)
    n, sample = _count_and_sample(conn, MISSING_ASSIGNMENTS_SQL, params, limit)
    checks = [
        Check(
            "assignments_complete",
            n == 0,
            f"{n} valid active pairs without their coach assignment (with the earliest created_at)",
            n,
            sample,
        )
    ]
    n, sample = _count_and_sample(conn, UNEXPECTED_ASSIGNMENTS_SQL, params, limit)
    checks.append(
        Check(
            "assignments_only_valid_pairs",
            n == 0,
            f"{n} active coach assignments without a valid active pair (self, orphan or inactive)",
            n,
            sample,
        )
    )
    checks.append(reconciliation(conn, org))
    return checks


def capacity_check(conn: Any, org: Any, policy: str) -> tuple[Check, dict[str, Any]]:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT max_users, (SELECT count(*) FROM public.profiles WHERE organization_id = %(org)s) "
            "FROM public.organizations WHERE id = %(org)s",
            dict(org=org),
        )
        max_users, members = cur.fetchone()
    fits = max_users is None or members <= max_users
    over = 0 if fits else int(members) - int(max_users)
    detail = f"{members} members, max_users {max_users} (capacity policy {policy})"
    check = Check("default_organization_capacity", fits, detail, over, severity="warning" if policy == "report" else "error")
    return check, dict(max_users=max_users, members=int(members), policy=policy)


def security_checks(conn: Any) -> list[Check]:
    checks = []
    for table in ("public.organizations", "public.practitioner_assignments"):
        rls, anon = _rls(conn, table), _privileges(conn, "anon", table)
        checks.append(Check(f"rls_enabled:{table}", rls, "row level security enabled" if rls else "row level security is OFF"))
        checks.append(
            Check(f"anon_denied:{table}", not anon, "anon has no privilege" if not anon else f"anon may {', '.join(anon)}")
        )
    state = _trigger_state(conn, "public.profiles", "profiles_vdp_membership_defaults")
    checks.append(Check("signup_defaults_trigger", state not in (None, "D"), f"sign-up defaults trigger state {state}"))
    return checks


def ledger_checks(conn: Any, flags: Sequence[str], require_versions: Iterable[str], report: dict[str, Any]) -> list[Check]:
    with conn.cursor() as cur:
        cur.execute("SELECT flag_name, enabled FROM public.feature_flags WHERE flag_name = ANY(%s)", (list(flags),))
        present = {r[0]: bool(r[1]) for r in cur.fetchall()}
    report["feature_flags"] = present
    checks = [
        Check(
            "feature_flags_exist",
            set(present) == set(flags),
            f"flags present: {sorted(present)} of {sorted(flags)}",
            len(set(flags) - set(present)),
        )
    ]
    applied = ledger(conn)
    report["ledger"] = sorted(applied)
    for version in require_versions:
        checks.append(Check(f"ledger:{version}", version in applied, "recorded" if version in applied else "not in the ledger"))
    fk = _fk_validated(conn)
    report["organization_fk_validated"] = fk
    if INDEXES_VERSION in applied:
        checks.append(Check("organization_fk_validated", bool(fk), f"profiles_organization_id_fkey convalidated = {fk}"))
    bad = invalid_indexes(conn, ["public.profiles", "public.practitioner_assignments", "public.organizations"])
    checks.append(Check("no_invalid_indexes", not bad, ", ".join(bad) or "none", len(bad)))
    return checks


def reconciliation(conn: Any, org: Any) -> Check:
    """Every active relationship is accounted for: converted, collapsed duplicate, self or orphan."""
    active = seed_pre_migration_counts(conn)["Active Sponsor Relationships"]
    anomalies = relationship_anomalies(conn, 0)
    plan = assignments_plan(conn, org)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM public.practitioner_assignments WHERE supervisor_role = 'coach' AND organization_id = %s "
            "AND active",
            (org,),
        )
        created = int(cur.fetchone()[0])
    self_n, orphan_n = anomalies["self_relationships"]["active"], anomalies["orphan_relationships"]["active"]
    accounted = created + plan["duplicate_rows_collapsed"] + self_n + orphan_n
    detail = (
        f"{active} active relationships = {created} active coach assignments + {plan['duplicate_rows_collapsed']} duplicate "
        f"rows collapsed + {self_n} self + {orphan_n} orphan"
    )
    ok = accounted == active
    return Check(
        "active_relationships_reconciled",
        ok,
        detail if ok else f"{detail} = {accounted}: {active - accounted} unaccounted for",
        abs(active - accounted),
    )


def post_migration_checks(
    conn: Any,
    org_slug: str,
    sign_in_source: str | None,
    sample_limit: int = 10,
    capacity_policy: str = "raise",
    require_versions: Iterable[str] = (),
    baseline_key: str = BASELINE_KEY,
    flags: Sequence[str] = FEATURE_FLAGS,
) -> tuple[list[Check], dict[str, Any]]:
    """Every invariant of DESIGN §4 as data: [Check], plus a report of supporting figures. Read-only."""
    missing = target_schema_missing(conn)
    if missing:
        return [Check("target_schema_present", False, f"missing: {', '.join(missing)}; apply {SCHEMA_VERSION} first")], {}
    with conn.cursor() as cur:
        cur.execute("SET LOCAL enable_nestloop = off")  # linear set comparisons, whatever the statistics (see top)
    integrity = metric_rows(conn, SEED_INTEGRITY_SQL)
    checks = [
        Check(name, integrity[metric] == 0, f"seed check '{metric}' = {integrity[metric]}", integrity[metric])
        for metric, name in (
            ("Orphaned Users", "every_profile_has_organization"),
            ("Missing Role Assignments", "every_profile_has_roles"),
            ("Invalid Organization References", "organization_references_valid"),
        )
    ]
    org = organization_id(conn, org_slug)
    checks.append(Check("default_organization_exists", org is not None, f"organization {org_slug!r}"))
    report: dict[str, Any] = {}
    checks += rule_checks(conn, sign_in_source, baseline_since(conn, baseline_key), sample_limit)
    if org is not None:
        checks += assignment_checks(conn, org, sample_limit)
        capacity, report["capacity"] = capacity_check(conn, org, capacity_policy)
        checks.append(capacity)
    checks += security_checks(conn)
    checks += ledger_checks(conn, flags, require_versions, report)
    legacy, report["legacy"] = legacy_checks(compare_legacy(conn, baseline_key, sample_limit), baseline_key)
    return checks + legacy, report
