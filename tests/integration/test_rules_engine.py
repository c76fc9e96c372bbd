"""DESIGN.md §4 domain rules, each checked on the fixture's messy data, in both legacy shapes.

One migrated database per shape (module scope): the legacy fixture (2000 users, its messy cases
counted exactly in vdp_fixture.manifest), the schema file, the data step, the indexes file.
Expectations are computed independently from the legacy tables, not from the engine's SQL.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import AbstractContextManager
from typing import Any

import psycopg
import pytest

from tests.support.code import module_utils
from tests.support.databases import scratch_database
from tests.support.engine import (
    DATA_V,
    INDEXES_V,
    SCHEMA_V,
    apply_schema,
    connect,
    data_step,
    fingerprint,
    full_migration,
    login,
    manifest,
    migrated_state,
    rows,
    scalar,
)
from tests.support.sandbox import Sandbox

USERS = 2000
LEGACY_PROFILE_COLUMNS = {
    "supabase": "id, email, full_name, created_at, updated_at",
    "seed": "id, email, full_name, created_at, updated_at, last_sign_in_at",
}


def legacy_snapshot(info: dict[str, Any], shape: str) -> dict[str, Any]:
    """The legacy content (every legacy table except profiles whole; profiles' legacy columns)."""
    fp = fingerprint(info)
    keep = {
        k: v
        for k, v in fp.items()
        if k.startswith("auth.")
        or k
        in ("public.sponsor_practitioner_relationships", "public.virtues", "public.user_virtue_progress", "public.user_sessions")
    }
    keep["public.profiles(legacy columns)"] = scalar(
        info, f"SELECT md5(string_agg(concat_ws('|', {LEGACY_PROFILE_COLUMNS[shape]}), ',' ORDER BY id)) FROM public.profiles"
    )
    keep["public.feature_flags(legacy rows)"] = scalar(
        info,
        "SELECT md5(string_agg(t::text, ',' ORDER BY flag_name)) FROM public.feature_flags t "
        "WHERE flag_name NOT IN ('organizational_model', 'multi_role_support')",
    )
    return keep


class Migrated:
    def __init__(self, shape: str, info: dict[str, Any], before: dict[str, Any], results: dict[str, Any]) -> None:
        self.shape, self.info, self.before, self.results = shape, info, before, results


@pytest.fixture(scope="module", params=["supabase", "seed"])
def migrated(request: pytest.FixtureRequest, sandbox: Any, legacy_template: Any, run_module: Any) -> Any:
    shape = request.param
    with scratch_database(sandbox, "production", "re", template=legacy_template(shape, USERS)) as info:
        before = legacy_snapshot(info, shape)
        results = full_migration(run_module, info)
        yield Migrated(shape, info, before, results)


def expected_roles(info: dict[str, Any]) -> dict[str, list[str]]:
    """The roles rule computed in Python from the raw relationships."""
    coaches: set[str] = set()
    active_practitioners: set[str] = set()
    for sponsor, practitioner, active in rows(
        info, "SELECT sponsor_id::text, practitioner_id::text, active FROM public.sponsor_practitioner_relationships"
    ):
        if sponsor == practitioner:
            continue
        coaches.add(sponsor)
        if active:
            active_practitioners.add(practitioner)
    result: dict[str, list[str]] = {}
    for (pid,) in rows(info, "SELECT id::text FROM public.profiles"):
        roles = (["coach"] if pid in coaches else []) + (
            ["practitioner"] if pid not in coaches or pid in active_practitioners else []
        )
        result[pid] = roles
    return result


def test_every_profile_joins_the_default_organization(migrated: Migrated) -> None:
    info = migrated.info
    assert scalar(info, "SELECT count(*) FROM public.profiles WHERE organization_id IS NULL") == 0
    assert (
        scalar(
            info, "SELECT count(DISTINCT o.slug) FROM public.profiles p JOIN public.organizations o ON o.id = p.organization_id"
        )
        == 1
    )
    assert scalar(info, "SELECT count(*) FROM public.profiles WHERE is_active IS NOT TRUE") == 0
    assert migrated.results["membership"]["migrated"] == USERS


def test_roles_rule_sponsors_who_are_practitioners_keep_practitioner(migrated: Migrated) -> None:
    info = migrated.info
    expected = expected_roles(info)
    actual = {pid: list(roles) for pid, roles in rows(info, "SELECT id::text, roles FROM public.profiles")}
    assert actual == expected
    both = [pid for pid, roles in actual.items() if roles == ["coach", "practitioner"]]
    assert len(both) == manifest(info)["sponsors_also_practitioners"] > 0
    counts = migrated.results["membership"]["roles"]
    assert counts["coach_and_practitioner"] == len(both)
    assert counts["coach_only"] + counts["coach_and_practitioner"] == manifest(info)["sponsors"]


def test_sponsors_with_only_inactive_relationships_are_coaches(migrated: Migrated) -> None:
    # Seed meaning kept: DISTINCT sponsor_id over ALL relationships (active or not) makes a coach.
    info = migrated.info
    inactive_only = rows(
        info,
        """
        SELECT p.roles FROM public.profiles p
        WHERE EXISTS (SELECT 1 FROM public.sponsor_practitioner_relationships r
                      WHERE r.sponsor_id = p.id AND r.sponsor_id <> r.practitioner_id)
          AND NOT EXISTS (SELECT 1 FROM public.sponsor_practitioner_relationships r WHERE r.sponsor_id = p.id AND r.active)""",
    )
    assert len(inactive_only) >= manifest(info)["sponsors_all_inactive"] > 0
    assert all("coach" in roles for (roles,) in inactive_only)


def test_users_without_relationships_are_practitioners(migrated: Migrated) -> None:
    info = migrated.info
    loners = rows(
        info,
        """
        SELECT p.roles FROM public.profiles p WHERE NOT EXISTS (
          SELECT 1 FROM public.sponsor_practitioner_relationships r WHERE p.id IN (r.sponsor_id, r.practitioner_id))""",
    )
    assert len(loners) == manifest(info)["users_without_relationships"] > 0
    assert {tuple(r) for (r,) in loners} == {("practitioner",)}


def test_last_activity_comes_from_wherever_sign_in_lives(migrated: Migrated) -> None:
    info = migrated.info
    source = "p.last_sign_in_at" if migrated.shape == "seed" else "u.last_sign_in_at"
    assert migrated.results["membership"]["sign_in_source"] == ("profiles" if migrated.shape == "seed" else "auth.users")
    wrong = scalar(
        info,
        f"""SELECT count(*) FROM public.profiles p JOIN auth.users u ON u.id = p.id
                             WHERE p.last_activity IS DISTINCT FROM coalesce({source}, p.created_at)""",
    )
    assert wrong == 0
    never = scalar(
        info,
        f"""SELECT count(*) FROM public.profiles p JOIN auth.users u ON u.id = p.id
                             WHERE {source} IS NULL AND p.last_activity = p.created_at""",
    )
    assert never == manifest(info)["null_sign_ins"] > 0


def test_one_assignment_per_valid_active_pair_with_earliest_created_at(migrated: Migrated) -> None:
    info = migrated.info
    expected: dict[tuple[str, str], Any] = {}
    profiles = {pid for (pid,) in rows(info, "SELECT id::text FROM public.profiles")}
    for sponsor, practitioner, created in rows(
        info,
        "SELECT sponsor_id::text, practitioner_id::text, created_at FROM public.sponsor_practitioner_relationships WHERE active",
    ):
        if sponsor == practitioner or practitioner not in profiles or sponsor not in profiles:
            continue
        key = (sponsor, practitioner)
        expected[key] = min(created, expected.get(key, created))
    actual = {
        (s, p): at
        for s, p, at in rows(
            info,
            "SELECT supervisor_id::text, practitioner_id::text, assigned_at "
            "FROM public.practitioner_assignments WHERE supervisor_role = 'coach' AND active",
        )
    }
    assert actual == expected
    assert len(actual) == manifest(info)["expected_assignments"]
    dup = migrated.results["assignments"]["duplicates"]
    assert dup["pairs"] == manifest(info)["duplicate_active_pairs"] > 0
    assert dup["rows_collapsed"] == manifest(info)["duplicate_active_extra_rows"]


def test_self_and_orphan_relationships_are_skipped_counted_and_listed(migrated: Migrated) -> None:
    info = migrated.info
    not_converted = migrated.results["assignments"]["not_converted"]
    assert not_converted["self_relationships"]["count"] == manifest(info)["self_relationships"] > 0
    assert not_converted["orphan_relationships"]["count"] == manifest(info)["orphan_relationships"] > 0
    sample = not_converted["orphan_relationships"]["sample"]
    assert sample and all(
        scalar(info, "SELECT count(*) FROM public.profiles WHERE id = %s", (s["practitioner_id"],)) == 0 for s in sample
    )
    assert all(s["sponsor_id"] == s["practitioner_id"] for s in not_converted["self_relationships"]["sample"])
    assert scalar(info, "SELECT count(*) FROM public.practitioner_assignments WHERE practitioner_id = supervisor_id") == 0


def test_legacy_tables_are_unchanged_updated_at_included(migrated: Migrated) -> None:
    assert legacy_snapshot(migrated.info, migrated.shape) == migrated.before


def test_legacy_triggers_policies_and_view_survive(migrated: Migrated) -> None:
    info = migrated.info
    assert scalar(info, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'profiles_set_updated_at'") == "O"
    assert scalar(info, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'on_auth_user_created'") == "O"
    assert scalar(info, "SELECT count(*) FROM pg_policy WHERE polrelid = 'public.profiles'::regclass") >= 3
    assert scalar(info, "SELECT count(*) FROM public.sponsor_practitioner_overview") == scalar(
        info, "SELECT count(*) FROM public.sponsor_practitioner_relationships"
    )


def test_both_trigger_suppressions_give_the_same_result(
    migrated: Migrated, sandbox: Any, legacy_template: Any, run_module: Any
) -> None:
    # The fixture ran as a superuser: replica mode (no table lock, the organization FK checked by the batch's own
    # row lock and later VALIDATE). A role that may not set it gets ALTER TABLE ... DISABLE TRIGGER per batch:
    # the same profiles and assignments, updated_at included, and the trigger back in its mode.
    assert migrated.results["membership"]["trigger_suppression"] == "session_replication_role"
    with scratch_database(sandbox, "production", "re", template=legacy_template(migrated.shape, USERS)) as info:
        assert not apply_schema(run_module, info).failed
        results = data_step(run_module, info, trigger_suppression="alter_table")
        assert results["membership"]["trigger_suppression"] == "alter_table"
        state, reference = migrated_state(info), migrated_state(migrated.info)
        assert (state["profiles"], state["assignments"]) == (reference["profiles"], reference["assignments"])
        assert legacy_snapshot(info, migrated.shape) == migrated.before
        assert scalar(info, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'profiles_set_updated_at'") == "O"
        assert not apply_schema(run_module, info, [INDEXES_V]).failed  # VALIDATE of the organization FK passes


@pytest.mark.parametrize("table", ["public.organizations", "public.practitioner_assignments"])
def test_anon_can_neither_read_nor_write_new_tables(migrated: Migrated, table: str) -> None:
    with connect(migrated.info, autocommit=False) as conn:
        conn.execute("SET ROLE anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"SELECT * FROM {table}")
        conn.rollback()
        conn.execute("SET ROLE anon")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"DELETE FROM {table}")
        conn.rollback()
    assert scalar(migrated.info, "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (table,)) is True


def test_authenticated_sees_only_own_organization_and_assignments(migrated: Migrated) -> None:
    info = migrated.info
    practitioner = scalar(info, "SELECT practitioner_id::text FROM public.practitioner_assignments LIMIT 1")
    with connect(info, autocommit=False) as conn:
        conn.execute("SET ROLE authenticated")
        conn.execute("SELECT set_config('request.jwt.claim.sub', %s, true)", (practitioner,))
        assert conn.execute("SELECT count(*) FROM public.organizations").fetchone()[0] == 1
        seen = conn.execute(
            "SELECT DISTINCT practitioner_id::text = %s OR supervisor_id::text = %s FROM public.practitioner_assignments",
            (practitioner, practitioner),
        ).fetchall()
        assert seen == [(True,)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("INSERT INTO public.organizations (name, slug) VALUES ('x', 'x')")
        conn.rollback()


def test_new_sign_up_lands_in_default_organization_as_practitioner(migrated: Migrated) -> None:
    info = migrated.info
    with connect(info) as conn:
        uid = conn.execute(
            "INSERT INTO auth.users (id, email, raw_user_meta_data) VALUES (gen_random_uuid(), %s, "
            '\'{"full_name": "New Person"}\') RETURNING id',
            (f"new-{migrated.shape}@example.org",),
        ).fetchone()[0]
        slug, roles, active, activity = conn.execute(
            "SELECT o.slug, p.roles, p.is_active, p.last_activity FROM public.profiles p "
            "JOIN public.organizations o ON o.id = p.organization_id WHERE p.id = %s",
            (uid,),
        ).fetchone()
        conn.execute("DELETE FROM auth.users WHERE id = %s", (uid,))
    assert (slug, roles, active) == ("individual-users", ["practitioner"], True)
    assert activity is not None


def test_default_organization_capacity_raised_and_reported(migrated: Migrated) -> None:
    capacity = migrated.results["membership"]["capacity"]
    assert capacity["action"] == "raised"
    assert capacity["max_users_before"] == 1000
    # Raised to the members plus the default 10 % headroom, so the first sign-ups after the migration still fit.
    assert capacity["max_users_after"] == USERS * 110 // 100
    max_users = scalar(migrated.info, "SELECT max_users FROM public.organizations WHERE slug = 'individual-users'")
    assert max_users == USERS * 110 // 100


def test_feature_flags_created_disabled(migrated: Migrated) -> None:
    flags = dict(
        rows(
            migrated.info,
            "SELECT flag_name, enabled FROM public.feature_flags "
            "WHERE flag_name IN ('organizational_model', 'multi_role_support')",
        )
    )
    assert flags == {"organizational_model": False, "multi_role_support": False}


def test_seed_metrics_and_all_invariants_pass(migrated: Migrated, run_module: Any) -> None:
    facts = run_module(
        "vdp_migration_facts", dict(login(migrated.info), phase="post", require_versions=[SCHEMA_V, DATA_V, INDEXES_V])
    )
    assert not facts.failed, facts.get("msg")
    assert facts["failed_checks"] == []
    counts = manifest(migrated.info)
    assert facts["seed_pre_migration"] == {
        "Total Users": USERS,
        "Active Sponsor Relationships": counts["active_relationships"],
        "Total Virtue Progress Records": counts["progress_rows"],
    }
    assert facts["seed_post_migration"] == {
        "Users with Organization": USERS,
        "Coach Assignments Created": counts["expected_assignments"],
        "Users with Roles Assigned": USERS,
    }
    assert facts["seed_integrity"] == {"Orphaned Users": 0, "Missing Role Assignments": 0, "Invalid Organization References": 0}
    names = {c["name"] for c in facts["checks"]}
    assert {
        "roles_rule",
        "last_activity_rule",
        "assignments_complete",
        "active_relationships_reconciled",
        "legacy_unchanged:public.profiles",
        "anon_denied:public.organizations",
        "organization_fk_validated",
    } <= names


def test_validation_detects_a_broken_invariant(migrated: Migrated, run_module: Any, sandbox: Any) -> None:
    # On a copy: change one legacy value and one role; the facts must name both.
    with clone_of(sandbox, migrated.info) as copy:
        with connect(copy) as conn:
            conn.execute("ALTER TABLE public.profiles DISABLE TRIGGER profiles_set_updated_at")
            conn.execute(
                "UPDATE public.profiles SET full_name = full_name || ' (edited)', roles = ARRAY['admin'] "
                "WHERE id = (SELECT id FROM public.profiles ORDER BY id LIMIT 1)"
            )
            conn.execute("ALTER TABLE public.profiles ENABLE TRIGGER profiles_set_updated_at")
        facts = run_module("vdp_migration_facts", dict(login(copy), phase="post"))
        failed = {c["name"] for c in facts["failed_checks"]}
        assert {"roles_rule", "legacy_unchanged:public.profiles"} <= failed


def clone_of(sandbox: Any, info: dict[str, Any]) -> AbstractContextManager[dict[str, Any]]:
    """A scratch copy of `info`'s database (its sessions ended first: a template must have none)."""
    with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            (info["dbname"],),
        )
    return scratch_database(sandbox, "production", "re", template=info["dbname"])


@pytest.mark.parametrize("policy", ["fail", "report"])
def test_capacity_policies_fail_and_report(policy: str, sandbox: Any, legacy_template: Any, run_module: Any) -> None:
    with scratch_database(sandbox, "production", "re", template=legacy_template("supabase", USERS)) as info:
        assert not apply_schema(run_module, info).failed
        before = fingerprint(info)
        if policy == "fail":
            base = login(info)
            run_module("vdp_organization", dict(base, slug="individual-users", name="Individual Users", max_users=1000))
            before = fingerprint(info)
            result = run_module("vdp_org_membership", dict(base, capacity_policy="fail"))
            assert result.failed
            assert "allows 1000 users but would hold 2000" in result["msg"] and "nothing was changed" in result["msg"]
            assert fingerprint(info) == before
        else:
            results = data_step(run_module, info, capacity_policy="report")
            capacity = results["membership"]["capacity"]
            assert capacity["action"] == "reported" and capacity["over_by"] == USERS - 1000
            assert scalar(info, "SELECT max_users FROM public.organizations") == 1000
            assert scalar(info, "SELECT count(*) FROM public.profiles WHERE organization_id IS NULL") == 0
            facts = run_module("vdp_migration_facts", dict(login(info), capacity_policy="report"))
            assert "default_organization_capacity" in {c["name"] for c in facts["warnings_checks"]}
            assert "default_organization_capacity" not in {c["name"] for c in facts["failed_checks"]}


def test_roles_rule_on_handcrafted_cases(sandbox: Any, legacy_template: Any, run_module: Any) -> None:
    """Named people, so a reader sees the rule: A sponsors B (active), C sponsors A (active),
    D sponsored E once (inactive), F only sponsors herself, G sponsors a deleted user."""
    with scratch_database(sandbox, "production", "re", template=legacy_template("supabase", 0)) as info:
        people = {}
        with connect(info) as conn:
            for name in "ABCDEFG":
                people[name] = conn.execute(
                    "INSERT INTO auth.users (id, email, last_sign_in_at) VALUES (gen_random_uuid(), %s, now()) RETURNING id",
                    (f"{name}@x.org",),
                ).fetchone()[0]
            pairs = [("A", "B", True), ("C", "A", True), ("D", "E", False), ("F", "F", True)]
            for s, p, active in pairs:
                conn.execute(
                    "INSERT INTO public.sponsor_practitioner_relationships (sponsor_id, practitioner_id, active) "
                    "VALUES (%s, %s, %s)",
                    (people[s], people[p], active),
                )
            conn.execute(
                "INSERT INTO public.sponsor_practitioner_relationships (sponsor_id, practitioner_id, active) "
                "VALUES (%s, gen_random_uuid(), true)",
                (people["G"],),
            )
        full_migration(run_module, info)
        roles = {name: scalar(info, "SELECT roles FROM public.profiles WHERE id = %s", (pid,)) for name, pid in people.items()}
        assert roles == {
            "A": ["coach", "practitioner"],
            "B": ["practitioner"],
            "C": ["coach"],
            "D": ["coach"],
            "E": ["practitioner"],
            "F": ["practitioner"],
            "G": ["coach"],
        }
        pairs_made = rows(info, "SELECT supervisor_id, practitioner_id FROM public.practitioner_assignments")
        assert sorted(pairs_made) == sorted([(people["A"], people["B"]), (people["C"], people["A"])])


def test_data_step_records_ledger_and_reports_by_shape(migrated: Migrated) -> None:
    details = scalar(migrated.info, "SELECT kind FROM vdp_runbook.schema_migrations WHERE version = %s", (DATA_V,))
    assert details == "data"
    counts: dict[str, int] = defaultdict(int)
    for (kind,) in rows(migrated.info, "SELECT kind FROM vdp_runbook.schema_migrations"):
        counts[kind] += 1
    assert counts == {"other": 1, "schema": 1, "data": 1, "indexes": 1}  # other: 20250103_assignment_sync_expand (online sync)


def test_analyze_after_the_writes_leaves_a_busy_table_to_the_session_analyzing_it(sandbox: Sandbox) -> None:
    """Found by the benchmark at 1M users: autovacuum started analyzing practitioner_assignments right after the
    inserts, the step's own ANALYZE timed out on its lock (55P03) and failed the whole data step - which in migrate.yml
    rolls back a healthy migration. Now: the step's lock waits and retries, then a note; the other tables analyzed."""
    step = module_utils("vdp_data_step")
    with scratch_database(sandbox, "production", "analyze") as info:
        with psycopg.connect(**info, autocommit=True) as setup:
            for table in ("busy", "free"):
                setup.execute(f"CREATE TABLE public.{table} (x int) WITH (autovacuum_enabled = false)")
                setup.execute(f"INSERT INTO public.{table} SELECT generate_series(1, 1000)")
        reltuples = "SELECT relname, reltuples FROM pg_class WHERE relname IN ('busy', 'free') ORDER BY 1"
        with psycopg.connect(**info) as holder, psycopg.connect(**info) as conn:
            holder.execute("LOCK TABLE public.busy IN SHARE UPDATE EXCLUSIVE MODE")  # what a running ANALYZE holds
            conn.execute("SET lock_timeout = '100ms'")
            notes = step.analyze(conn, "public.busy", "public.free", retries=1)
            assert len(notes) == 1 and "public.busy" in notes[0] and "timed out waiting for a lock 2 times" in notes[0]
            assert conn.execute(reltuples).fetchall() == [("busy", -1.0), ("free", 1000.0)]  # never analyzed / analyzed
            holder.rollback()
            assert step.analyze(conn, "public.busy") == []
            assert conn.execute(reltuples).fetchall() == [("busy", 1000.0), ("free", 1000.0)]
