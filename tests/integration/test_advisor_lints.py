"""What Supabase's database advisor would flag in what the migration adds, checked on a migrated Supabase-shaped
database: RLS policies that re-evaluate auth.uid() per row, foreign keys without an index on exactly their columns,
tables without a primary key, RLS off (or on without a policy) on the new public tables, functions with a mutable
search_path, duplicate indexes. The checks are written here from the advisor's documented rules; the legacy schema
is the platform's own and is left out (only what the runbook creates is judged)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.support.databases import scratch_database
from tests.support.engine import full_migration, rows

# Everything the runbook creates: the organizational model's tables and the runbook's own schemas.
NEW_TABLES = "c.oid IN ('public.organizations'::regclass, 'public.practitioner_assignments'::regclass)"
NEW_SCHEMAS = "n.nspname IN ('vdp_runbook', 'vdp_monitoring')"
OURS = f"({NEW_TABLES} OR {NEW_SCHEMAS})"


@pytest.fixture(scope="module")
def migrated(sandbox: Any, legacy_template: Any, run_module: Callable[..., Any]) -> Iterator[dict[str, Any]]:
    """A migrated clone of the Supabase-shaped legacy fixture, shared by the module (the checks only read)."""
    with scratch_database(sandbox, "production", "lint", template=legacy_template("supabase")) as info:
        full_migration(run_module, info)
        yield info


def test_policies_call_auth_functions_once_per_query(migrated: dict[str, Any]) -> None:
    found = rows(
        migrated,
        "SELECT c.relname, p.polname, pg_get_expr(p.polqual, p.polrelid), pg_get_expr(p.polwithcheck, p.polrelid) "
        f"FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {OURS}",
    )
    assert found, "the migration creates read policies on a Supabase-shaped database"
    for table, policy, qual, check in found:
        for expr in (qual or "", check or ""):
            calls = expr.count("auth.uid()")
            wrapped = expr.lower().count("select auth.uid()")
            assert calls == wrapped, f"policy {policy} on {table} calls auth.uid() per row: {expr}"


def test_every_foreign_key_has_an_index_on_exactly_its_columns(migrated: dict[str, Any]) -> None:
    unindexed = rows(
        migrated,
        "SELECT c.relname, k.conname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE k.contype = 'f' AND {OURS} "
        "AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = k.conrelid AND i.indisvalid "
        "                AND string_to_array(i.indkey::text, ' ')::smallint[] = k.conkey)",
    )
    assert unindexed == []
    # profiles.organization_id is the migration's column on a legacy table: its index is the indexes step's.
    assert rows(
        migrated,
        "SELECT 1 FROM pg_index i WHERE i.indrelid = 'public.profiles'::regclass AND i.indisvalid "
        "AND string_to_array(i.indkey::text, ' ')::smallint[] = (SELECT conkey FROM pg_constraint "
        "WHERE conname = 'profiles_organization_id_fkey')",
    )


def test_every_new_table_has_a_primary_key(migrated: dict[str, Any]) -> None:
    without = rows(
        migrated,
        "SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        f"WHERE c.relkind = 'r' AND {OURS} AND NOT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary)",
    )
    assert without == []


def test_new_public_tables_have_rls_and_a_policy(migrated: dict[str, Any]) -> None:
    state = rows(
        migrated,
        "SELECT c.relname, c.relrowsecurity, (SELECT count(*) FROM pg_policy p WHERE p.polrelid = c.oid) "
        f"FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {NEW_TABLES} ORDER BY 1",
    )
    assert state == [("organizations", True, 1), ("practitioner_assignments", True, 1)]


def test_functions_pin_their_search_path(migrated: dict[str, Any]) -> None:
    mutable = rows(
        migrated,
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE (p.proname LIKE 'vdp%%' OR n.nspname IN ('vdp_runbook', 'vdp_monitoring')) "
        "AND NOT EXISTS (SELECT 1 FROM unnest(coalesce(p.proconfig, '{}')) s WHERE s LIKE 'search_path=%%')",
    )
    assert mutable == []


def test_no_duplicate_indexes(migrated: dict[str, Any]) -> None:
    duplicates = rows(
        migrated,
        "SELECT c.relname, array_agg(x.indexrelid::regclass::text) FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid "
        f"JOIN pg_namespace n ON n.oid = c.relnamespace WHERE {OURS} "
        "GROUP BY c.relname, x.indkey::text, x.indclass::text, coalesce(pg_get_expr(x.indpred, x.indrelid), '') "
        "HAVING count(*) > 1",
    )
    assert duplicates == []
