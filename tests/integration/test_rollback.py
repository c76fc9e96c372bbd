"""playbooks/rollback.yml by hand, each strategy run twice on one migrated world (the second run must change nothing):
flags, then extended (reverts the schema, keeps the organizational data aside), then full (restores the run's backup
onto production). After each, the legacy data is exactly as before the migration, computed without the runbook's
code; the app is back on its recorded release."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.engine import MIGRATION_FLAGS, legacy_content, legacy_layout, scalar
from tests.support.sandbox import Sandbox
from tests.support.standin import StandIn, app_vars
from tests.support.world import play, recap, record

CONFIRM = "I understand this overwrites production"
SYNC_V, CONTRACT_V = "20250103_assignment_sync_expand", "20250105_assignment_sync_contract"


@pytest.fixture
def app(world: dict[str, Any], tmp_path: Path) -> Iterator[StandIn]:
    standin = StandIn(tmp_path / "standin", world["vdp_production_db"])
    yield standin
    standin.stop()


def _rollback(sandbox: Sandbox, world: dict[str, Any], settings: str, strategy: str, *args: str) -> Any:
    proc = play(sandbox, world, "playbooks/rollback.yml", "-e", f"@{settings}", "-e", f"rollback_strategy={strategy}", *args)
    assert proc.returncode == 0, proc.stdout[-5000:]
    return proc


def _twice(sandbox: Sandbox, world: dict[str, Any], settings: str, strategy: str, *args: str) -> tuple[Any, Any]:
    first = _rollback(sandbox, world, settings, strategy, *args)
    second = _rollback(sandbox, world, settings, strategy, *args)
    assert recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    proof = record(world, "rollback")["proof"]
    assert proof["ok"] is True, proof
    return first, second


def test_each_strategy_twice(sandbox: Sandbox, world: dict[str, Any], app: StandIn, tmp_path: Path) -> None:
    prod = world["vdp_production_db"]
    # The smoke check signs a user in, and the app records sign-ins as Supabase's auth does: an application write the
    # runbook's proof attributes (tests/integration/test_live_writes.py). Off here, so that "as before" is exact.
    assert app.call("POST", "/admin/state", {"record_sign_ins": False}, admin=True)[0] == 200
    layout = legacy_layout(prod)
    before = legacy_content(prod, layout)
    settings = app_vars(world, app, tmp_path)

    migrated = play(sandbox, world, "migrate.yml", "-e", f"@{settings}", "--skip-tags", "rehearsal,monitor")
    assert migrated.returncode == 0, migrated.stdout[-4000:]
    assert app.call("GET", "/health")[1]["version"] == "org-2.0"
    organizations = scalar(prod, "SELECT count(*) FROM public.organizations")
    assignments = scalar(prod, "SELECT count(*) FROM public.practitioner_assignments")
    members = scalar(prod, "SELECT count(*) FROM public.profiles WHERE organization_id IS NOT NULL")
    assert organizations >= 1 and assignments > 0 and members > 0
    # Expand and contract both ran: the ledger lists them, the sync's triggers are gone, the journal's stays.
    assert set(_ledger(prod)) >= {SYNC_V, CONTRACT_V} and _sync_objects(prod) == (["vdp_journal_relationship_writes"], 3)
    # The monitor gate was skipped: the run did not prove the whole, so its release is not marked complete (a re-run
    # would deploy, validate and watch again).
    release = "SELECT event || ':' || coalesce(detail, '-') FROM vdp_runbook.run_lease_log ORDER BY id DESC LIMIT 1"
    assert scalar(prod, release) == "released:-"

    # A full rollback refuses to run without its exact confirmation, and changes nothing.
    refused = play(sandbox, world, "playbooks/rollback.yml", "-e", f"@{settings}", "-e", "rollback_strategy=full")
    assert refused.returncode != 0 and "I understand this overwrites production" in refused.stdout
    assert app.call("GET", "/health")[1]["version"] == "org-2.0"

    # flags: the app back on legacy-1, the flags off; the migrated schema and data stay.
    first, _ = _twice(sandbox, world, settings, "flags")
    assert recap(first.stdout)["changed"] > 0
    health = app.call("GET", "/health")[1]
    assert (health["version"], health["maintenance"], health["model"]) == ("legacy-1", False, "legacy")
    assert _flags(prod) == dict.fromkeys(MIGRATION_FLAGS, False)
    assert scalar(prod, "SELECT count(*) FROM public.practitioner_assignments") == assignments
    assert legacy_content(prod, layout) == before

    # extended: the schema reverted through the ledger, every organizational row kept in vdp_runbook.reverted_*.
    first, _ = _twice(sandbox, world, settings, "extended")
    assert recap(first.stdout)["changed"] > 0
    assert scalar(prod, "SELECT to_regclass('public.organizations')") is None
    assert scalar(prod, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public' "
                        "AND table_name = 'profiles' AND column_name IN ('organization_id', 'roles')") == 0
    assert scalar(prod, "SELECT count(*) FROM vdp_runbook.reverted_organizations") == organizations
    assert scalar(prod, "SELECT count(*) FROM vdp_runbook.reverted_practitioner_assignments") == assignments
    assert scalar(prod, "SELECT count(*) FROM vdp_runbook.reverted_profile_membership "
                        "WHERE organization_id IS NOT NULL") == members
    assert legacy_content(prod, layout) == before
    # The online sync reverted too (the contract's revert, then the expand's): no version left, nothing of it left.
    assert _ledger(prod) == [] and _sync_objects(prod) == ([], 0)

    # full: production restored from the run's backup; the proof is against the backup's own snapshot checksums.
    oid_before = _oid(sandbox, prod)
    first, _ = _twice(sandbox, world, settings, "full", "-e", json.dumps({"rollback_confirm": CONFIRM}))
    assert _oid(sandbox, prod) != oid_before, "full rollback did not restore the database"
    assert "production restored from" in first.stdout
    assert record(world, "rollback")["proof"]["against"] == "checksums equal to the backup snapshot"
    assert legacy_content(prod, layout) == before
    assert scalar(prod, "SELECT to_regclass('vdp_runbook.reverted_organizations')") is None  # the pre-migration state
    assert app.call("GET", "/health")[1]["version"] == "legacy-1"


def _ledger(db: dict[str, Any]) -> list[str]:
    with psycopg.connect(**db) as conn:
        return [r[0] for r in conn.execute("SELECT version FROM vdp_runbook.schema_migrations ORDER BY 1")]


def _sync_objects(db: dict[str, Any]) -> tuple[list[str], int]:
    """The runbook's triggers on the relationships table, and the count of the sync's and journal's functions."""
    with psycopg.connect(**db) as conn:
        triggers = [r[0] for r in conn.execute(
            "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.sponsor_practitioner_relationships'::regclass "
            "AND tgname LIKE 'vdp%' ORDER BY 1")]
        functions = conn.execute(
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'vdp_runbook' "
            "AND p.proname IN ('sync_relationship_statement', 'sync_assignment_pairs', 'journal_relationship_write')"
        ).fetchone()[0]
        return triggers, int(functions)


def _flags(db: dict[str, Any]) -> dict[str, bool]:
    with psycopg.connect(**db) as conn:
        return dict(conn.execute("SELECT flag_name, enabled FROM public.feature_flags WHERE flag_name = ANY(%s)",
                                 (list(MIGRATION_FLAGS),)).fetchall())


def _oid(sandbox: Sandbox, db: dict[str, Any]) -> int:
    with psycopg.connect(**sandbox.pg("production", "postgres")) as conn:
        return int(conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (db["dbname"],)).fetchone()[0])
