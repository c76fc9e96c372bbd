"""Issue 12 item 2: the migration under live writes, online mode (no scale-to-zero), on the real sandbox.

The old app and Supabase's auth service keep writing while the schema, data and index phases run
(fixtures/load_generator.py: sign-ups through auth.users and its trigger, sign-ins, profile edits, new and ended
relationships, progress). Checked afterwards: every write is in the database; every profile, the sign-ups included,
has an organization and roles; relationships created and ended during and after the data step are reflected in
practitioner_assignments by the expand step's sync (migrations/20250103_assignment_sync_expand.sql) until the
contract step removes it; validation passes and attributes the application's writes - ended relationships included,
which the legacy table records with no timestamp - while a change by a session of the runbook is NOT attributed;
the write latency p99 during the migration is reported next to before it (printed, and written to
artifacts/online_migration_latency.json). Then the contract step (playbooks/contract.yml) removes the sync, once (a
second run changes nothing), and the reverts, newest first, take the contract back, the schema, then the sync, while
the old app's relationship writes keep working. The load is bounded: RATE writes per second, stopped AFTER_S seconds
after the data step and the indexes are done (LIMIT_S at most).

The sync against the data step's pair snapshot is also tested on its own, deterministically: relationships ended,
re-dated and created between the snapshot and the batches, and a sync that waits for an uncommitted batch insert;
without the sync the same sequence leaves stale assignments (the test can fail).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from fixtures.load_generator import LoadGenerator, verify
from tests.support.attack import start_playbook
from tests.support.code import module_utils
from tests.support.engine import (
    DATA_V,
    INDEXES_V,
    ORG,
    ROOT,
    SCHEMA_V,
    SYNC_V,
    apply_schema,
    clone,
    drop,
    login,
    rows,
    scalar,
    wait_until,
)
from tests.support.sandbox import Sandbox
from tests.support.world import play, record

CONTRACT_V = "20250105_assignment_sync_contract"
RESULTS = ROOT / "artifacts" / "online_migration_latency.json"
RATE = 20  # writes per second, open loop
LIMIT_S = 420  # the load generator's bound; it stops AFTER_S seconds after the data step and the indexes are done
AFTER_S = 15
MIX = dict(signup=2, signin=35, profile_edit=15, relationship_new=9, relationship_end=9, progress=30)
# Small batches, so that the application's writes interleave with many of the data step's commits.
SMALL_BATCHES = ["-e", "vdp_batch_size=200"]

# Pairs the generator touched whose assignment is not what the data step's rules give for the relationships now
# (computed here with SQL of its own, not the runbook's).
STALE_PAIRS_SQL = """
WITH touched AS (
  SELECT DISTINCT t.s, t.p FROM unnest(%(s)s::uuid[], %(p)s::uuid[]) AS t (s, p)
  WHERE t.s <> t.p AND EXISTS (SELECT 1 FROM public.profiles x WHERE x.id = t.s)
    AND EXISTS (SELECT 1 FROM public.profiles y WHERE y.id = t.p)
), expected AS (
  SELECT t.s, t.p, (SELECT min(r.created_at) FROM public.sponsor_practitioner_relationships r
                    WHERE r.sponsor_id = t.s AND r.practitioner_id = t.p AND r.active) AS first_active
  FROM touched t
)
SELECT e.s::text, e.p::text, e.first_active, a.active, a.assigned_at
FROM expected e LEFT JOIN public.practitioner_assignments a
  ON a.supervisor_id = e.s AND a.practitioner_id = e.p AND a.supervisor_role = 'coach'
WHERE (e.first_active IS NOT NULL AND (a.active IS NOT TRUE OR a.assigned_at <> e.first_active))
   OR (e.first_active IS NULL AND a.active IS TRUE)
"""


def execute(info: dict[str, Any], statement: str, params: Any = None, app: str = "virtue-app") -> Any:
    """One statement in its own transaction, as a session named `app`; returns its first row."""
    with psycopg.connect(**info, application_name=app, autocommit=True) as conn:
        cur = conn.execute(statement, params)
        return cur.fetchone() if cur.description else None


def _recorded(info: dict[str, Any], version: str) -> bool:
    if not scalar(info, "SELECT to_regclass('vdp_runbook.schema_migrations') IS NOT NULL"):
        return False
    return bool(scalar(info, "SELECT count(*) FROM vdp_runbook.schema_migrations WHERE version = %s", (version,)))


def assignment(info: dict[str, Any], sponsor: Any, practitioner: Any) -> tuple[Any, Any] | None:
    found = rows(
        info,
        "SELECT active, assigned_at FROM public.practitioner_assignments WHERE supervisor_id = %s "
        "AND practitioner_id = %s AND supervisor_role = 'coach'",
        (sponsor, practitioner),
    )
    return tuple(found[0]) if found else None


# --------------------------------------------------------------------------- the sync against the data step's snapshot

# A valid pair with exactly one relationship row (active), one with two active rows, and two people in no relationship.
VALID_ROWS = """SELECT r.sponsor_id, r.practitioner_id FROM public.sponsor_practitioner_relationships r
WHERE r.sponsor_id <> r.practitioner_id AND EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.practitioner_id)"""
PICK_SQL = {
    "single": f"{VALID_ROWS} GROUP BY 1, 2 HAVING count(*) = 1 AND bool_and(r.active) ORDER BY 1, 2 LIMIT 2",
    "double": f"{VALID_ROWS} GROUP BY 1, 2 HAVING count(*) FILTER (WHERE r.active) = 2 ORDER BY 1, 2 LIMIT 1",
    "strangers": """SELECT a.id, b.id FROM public.profiles a, public.profiles b WHERE a.id < b.id AND NOT EXISTS (
                      SELECT 1 FROM public.sponsor_practitioner_relationships r
                      WHERE r.sponsor_id = a.id AND r.practitioner_id = b.id) ORDER BY 1, 2 LIMIT 1""",
}


def _until_snapshot(run_module: Any, info: dict[str, Any], with_sync: bool) -> None:
    """Schema (with or without the sync), organization, flags and membership: the data step up to its pair snapshot."""
    assert not apply_schema(run_module, info, [SYNC_V, SCHEMA_V] if with_sync else [SCHEMA_V]).failed
    base = login(info)
    for name, args in (
        ("vdp_organization", ORG),
        ("vdp_feature_flag", dict(names=["organizational_model", "multi_role_support"], enabled=False, create_only=True)),
        ("vdp_org_membership", dict(batch_size=500, max_users_if_missing=1000)),
    ):
        result = run_module(name, dict(base, **args))
        assert not result.failed, (name, result.get("msg"))


def _snapshot_then_writes_then_batches(info: dict[str, Any]) -> dict[str, Any]:
    """build_pairs (the snapshot), then the app ends / re-dates / creates relationships, then the insert batches."""
    assignments, lockwait, target = (module_utils(n) for n in ("vdp_assignments", "vdp_lockwait", "vdp_target"))
    (single, other), (double,), (strangers,) = (rows(info, PICK_SQL[k]) for k in ("single", "double", "strangers"))
    with psycopg.connect(**info) as conn:
        org = target.organization_id(conn, "individual-users")
        plan, _ = assignments.build_pairs(conn, org)
        assert plan["pending"] > 0 and plan["already_present"] == 0
        # The old app, between the snapshot and the batches (the snapshot still holds the old state):
        execute(
            info,
            "UPDATE public.sponsor_practitioner_relationships SET active = false WHERE sponsor_id = %s AND practitioner_id = %s",
            single,
        )
        execute(
            info,
            "UPDATE public.sponsor_practitioner_relationships SET active = false WHERE id = (SELECT id "
            "FROM public.sponsor_practitioner_relationships WHERE sponsor_id = %s AND practitioner_id = %s "
            "AND active ORDER BY created_at LIMIT 1)",
            double,
        )
        execute(
            info, "INSERT INTO public.sponsor_practitioner_relationships (sponsor_id, practitioner_id) VALUES (%s, %s)", strangers
        )
        assignments.migrate_assignments(conn, org, 50, assignments.AssignmentProgress(), lockwait.LockPolicy(retries=3))
    later = scalar(
        info,
        "SELECT min(created_at) FROM public.sponsor_practitioner_relationships "
        "WHERE sponsor_id = %s AND practitioner_id = %s AND active",
        double,
    )
    return dict(single=single, other=other, double=double, strangers=strangers, later=later, org=org)


def _post_checks(run_module: Any, info: dict[str, Any]) -> dict[str, bool]:
    facts = run_module("vdp_migration_facts", dict(login(info), phase="post"))
    assert not facts.failed, facts.get("msg")
    return {c["name"]: c["ok"] for c in facts["checks"]}


def test_the_sync_wins_over_the_data_steps_snapshot_and_without_it_assignments_go_stale(
    sandbox: Sandbox, legacy_template: Any, run_module: Any
) -> None:
    synced, bare = clone(sandbox, legacy_template()), clone(sandbox, legacy_template())
    try:
        _until_snapshot(run_module, synced, with_sync=True)
        got = _snapshot_then_writes_then_batches(synced)
        assert assignment(synced, *got["single"])[0] is False  # ended after the snapshot: the stale insert did nothing
        assert assignment(synced, *got["double"]) == (True, got["later"])  # its earliest active row ended: re-dated
        assert assignment(synced, *got["strangers"])[0] is True  # created after the snapshot
        checks = _post_checks(run_module, synced)
        assert checks["assignments_complete"] and checks["assignments_only_valid_pairs"], checks
        assert checks["active_relationships_reconciled"] and checks["legacy_unchanged:public.sponsor_practitioner_relationships"]

        # The sync waits for an uncommitted batch insert of the same pair, then writes the live state over it.
        sponsor, practitioner = got["other"]
        execute(
            synced,
            "DELETE FROM public.practitioner_assignments WHERE supervisor_id = %s AND practitioner_id = %s",
            got["other"],
            app="vdp-runbook/test-setup",
        )
        with psycopg.connect(**synced, application_name="vdp-runbook/data-batch") as batch:
            batch.execute(
                "INSERT INTO public.practitioner_assignments (practitioner_id, supervisor_id, supervisor_role, "
                "organization_id, assigned_at, active) VALUES (%s, %s, 'coach', %s, now(), true) "
                "ON CONFLICT DO NOTHING",
                (practitioner, sponsor, got["org"]),
            )
            ended = threading.Thread(
                target=execute,
                args=(
                    synced,
                    "UPDATE public.sponsor_practitioner_relationships "
                    "SET active = false WHERE sponsor_id = %s AND practitioner_id = %s",
                    got["other"],
                ),
            )
            ended.start()
            assert wait_until(
                lambda: (
                    scalar(
                        synced,
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
                        "'virtue-app' AND wait_event_type = 'Lock'",
                    )
                    == 1
                ),
                10,
            )
            batch.commit()
            ended.join(10)
        assert assignment(synced, sponsor, practitioner)[0] is False

        # Control: the same sequence without the sync leaves the snapshot's stale state.
        _until_snapshot(run_module, bare, with_sync=False)
        stale = _snapshot_then_writes_then_batches(bare)
        assert assignment(bare, *stale["single"])[0] is True  # an ended relationship still an active assignment
        assert assignment(bare, *stale["double"])[1] != stale["later"]
        assert assignment(bare, *stale["strangers"]) is None
        checks = _post_checks(run_module, bare)
        assert not checks["assignments_complete"] and not checks["assignments_only_valid_pairs"], checks
    finally:
        drop(sandbox, synced)
        drop(sandbox, bare)


SYNC_FUNCTIONS = ("journal_relationship_write", "sync_assignment_pairs", "sync_relationship_statement")
WRITE_SQL = "INSERT INTO public.sponsor_practitioner_relationships (sponsor_id, practitioner_id) VALUES (%s, %s) RETURNING id"


def _vdp_objects(info: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The runbook's triggers on the relationships table, and which of the sync's and journal's functions exist."""
    triggers = rows(
        info,
        "SELECT tgname FROM pg_trigger WHERE tgrelid = 'public.sponsor_practitioner_relationships'::regclass "
        "AND tgname LIKE 'vdp%%' ORDER BY 1",
    )
    functions = rows(
        info,
        "SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = 'vdp_runbook' AND p.proname = ANY(%s) ORDER BY 1",
        (list(SYNC_FUNCTIONS),),
    )
    return [t[0] for t in triggers], [f[0] for f in functions]


def _reverts_keep_the_old_apps_writes_working(info: dict[str, Any], run_module: Any) -> None:
    """After the contract: revert in two steps, as a rollback that lists only the organizational model's versions and
    then the rest would. Newest first; the contract's revert puts the sync back; with the schema gone the sync finds
    nothing to mirror into and the old app's relationship writes go on (journaled); the sync's revert (last: it was
    applied first) removes it and the journal's trigger; the journal's rows stay."""
    base = dict(login(info), path=str(ROOT / "migrations"))
    undone = run_module("vdp_schema_migrations", dict(base, state="reverted", versions=[CONTRACT_V, INDEXES_V, DATA_V, SCHEMA_V]))
    assert not undone.failed and undone["reverted"] == [CONTRACT_V, INDEXES_V, DATA_V, SCHEMA_V], undone.get("msg")
    assert _vdp_objects(info) == (
        ["vdp_journal_relationship_writes", "vdp_sync_assignments_delete", "vdp_sync_assignments_insert",
         "vdp_sync_assignments_update"],
        list(SYNC_FUNCTIONS),
    )  # fmt: skip
    assert scalar(info, "SELECT to_regclass('public.practitioner_assignments')") is None
    pair = rows(info, PICK_SQL["strangers"])[0]
    first = execute(info, WRITE_SQL, pair)[0]
    execute(info, "UPDATE public.sponsor_practitioner_relationships SET active = false WHERE id = %s", (first,))
    assert scalar(info, "SELECT count(*) FROM vdp_runbook.relationship_writes WHERE relationship_id = %s", (first,)) == 2
    journaled = scalar(info, "SELECT count(*) FROM vdp_runbook.relationship_writes")

    rest = run_module("vdp_schema_migrations", dict(base, state="reverted"))
    assert not rest.failed and rest["reverted"] == [SYNC_V], rest.get("msg")
    assert _vdp_objects(info) == ([], [])
    assert execute(info, WRITE_SQL, rows(info, PICK_SQL["strangers"])[0])[0]
    assert scalar(info, "SELECT count(*) FROM vdp_runbook.relationship_writes") == journaled  # kept, and no longer fed
    assert scalar(info, "SELECT count(*) FROM vdp_runbook.schema_migrations") == 0


# --------------------------------------------------------------------------- the whole online migration under load


def _touched_pairs(writes: list[Any], kinds: tuple[str, ...], phases: tuple[str, ...]) -> list[tuple[str, str]]:
    return [(w.ids["sponsor_id"], w.ids["practitioner_id"]) for w in writes if w.ok and w.kind in kinds and w.phase in phases]


def _report_latency(summary: dict[str, Any], path: Path) -> dict[str, Any]:
    by_phase = summary["latency_by_phase"]
    result = dict(
        measured="write latency, scheduled arrival to commit (open loop), ms",
        rate_per_s=summary["rate"],
        before=by_phase.get("before"),
        during_schema_data_indexes=by_phase.get("during"),
        after_data_step=by_phase.get("after"),
        service_time_by_phase=summary["service_by_phase"],
        writes=summary["by_kind"],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\nwrite latency p99 before the migration {result['before']['p99_ms']} ms, during it "
        f"{result['during_schema_data_indexes']['p99_ms']} ms (p50 {result['before']['p50_ms']} -> "
        f"{result['during_schema_data_indexes']['p50_ms']} ms, max {result['during_schema_data_indexes']['max_ms']} ms); "
        f"written to {path}"
    )
    return result


def test_online_migration_under_live_writes(sandbox: Sandbox, world: dict[str, Any], tmp_path: Path, run_module: Any) -> None:
    prod = world["vdp_production_db"]
    load = LoadGenerator(
        prod, rate=RATE, duration=LIMIT_S, workers=4, seed=12, mix=MIX, max_signups=150, record_path=tmp_path / "writes.jsonl"
    )
    with load:
        time.sleep(6)
        load.mark("during")  # from the start of migrate.yml (its run context, then schema, data, indexes)
        started = time.monotonic()
        run = start_playbook(
            sandbox, world, "migrate.yml", "--tags", "schema,data,validate", *SMALL_BATCHES, log=tmp_path / "migrate.log"
        )
        try:
            # "after": the indexes are recorded, the data step is over; the new app is not deployed, the sync runs on.
            assert wait_until(lambda: run.proc.poll() is not None or _recorded(prod, INDEXES_V), 600, 0.2)
            load.mark("after")
            seconds = round(time.monotonic() - started, 1)
            time.sleep(AFTER_S)  # the old app goes on writing after the data step; the sync mirrors it
        finally:
            load.stop()
            rc = run.wait(600)
    print(f"\nschema, data and indexes under load: {seconds} s (from the start of migrate.yml)")
    assert rc == 0, run.output()[-5000:]
    writes = load.writes
    summary = load.summary()
    assert summary["errors"] == 0, summary["error_sample"]

    # Every write is there (its last value, row by row).
    found = verify(prod, writes)
    assert found["lost"] == 0, found
    # The load happened (a fast machine migrates in seconds: about 20 writes per second for 6 + ~15 + 15 s at least).
    assert found["checked"] > 300 and found["signup"]["checked"] > 5, found

    # Every profile, the sign-ups during and after the data step included, has an organization and roles.
    signups = [w.ids["user_id"] for w in writes if w.ok and w.kind == "signup"]
    assert {w.phase for w in writes if w.kind == "signup"} >= {"before", "during", "after"}
    assert (
        scalar(
            prod, "SELECT count(*) FROM public.profiles WHERE organization_id IS NULL OR roles IS NULL OR cardinality(roles) = 0"
        )
        == 0
    )
    assert scalar(
        prod,
        "SELECT count(*) FROM public.profiles WHERE id = ANY(%s::uuid[]) AND organization_id IS NOT NULL "
        "AND cardinality(roles) > 0",
        (signups,),
    ) == len(signups)

    # Relationships created or ended during and after the data step are reflected in practitioner_assignments.
    kinds = ("relationship_new", "relationship_end")
    for phase in ("during", "after"):
        assert _touched_pairs(writes, ("relationship_new",), (phase,)) and _touched_pairs(writes, ("relationship_end",), (phase,))
    pairs = _touched_pairs(writes, kinds, ("before", "during", "after"))
    stale = rows(prod, STALE_PAIRS_SQL, dict(s=[p[0] for p in pairs], p=[p[1] for p in pairs]))
    assert stale == [], stale
    assert scalar(prod, "SELECT count(*) FROM public.practitioner_assignments WHERE NOT active") > 0  # ended ones

    # Validation (migrate.yml's) passed while the app wrote, and says what the application wrote - ended
    # relationships included.
    result = record(world, "validate")
    assert result["valid"] is True and result["failed_checks"] == [], result["failed_checks"]
    attributed = result["application_writes"]
    for check in (
        "legacy_unchanged:public.sponsor_practitioner_relationships",
        "legacy_unchanged:public.profiles",
        "legacy_unchanged:auth.users",
        "legacy_unchanged:public.user_virtue_progress",
    ):
        assert attributed.get(check, 0) > 0, (check, attributed)
    assert result["legacy"]["public.sponsor_practitioner_relationships"]["app_updated"] > 0  # the ended ones

    # The write latency during the migration, next to before it.
    latency = _report_latency(summary, RESULTS)
    (tmp_path / "latency.json").write_text(RESULTS.read_text())
    assert latency["before"]["n"] > 100 and latency["during_schema_data_indexes"]["n"] > 100
    assert latency["during_schema_data_indexes"]["p99_ms"] < 10_000, latency  # short lock waits: no write held for long

    _contract_and_attribution(sandbox, world, tmp_path, run_module)
    _reverts_keep_the_old_apps_writes_working(prod, run_module)


def _contract_and_attribution(sandbox: Sandbox, world: dict[str, Any], tmp_path: Path, run_module: Any) -> None:
    """The contract removes the sync (once; a second run changes nothing); a relationship change by a session of
    the runbook itself is journaled but NOT attributed to the application."""
    prod = world["vdp_production_db"]
    first = play(sandbox, world, "playbooks/contract.yml")
    (tmp_path / "contract.log").write_text(first.stdout)
    assert first.returncode == 0 and f"Applied {CONTRACT_V}" in first.stdout, first.stdout[-3000:]
    again = run_module("vdp_schema_migrations", dict(login(prod), path=str(ROOT / "migrations"), versions=[CONTRACT_V]))
    assert not again.failed and not again.changed and again["pending"] == []
    assert scalar(prod, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'vdp\\_sync\\_%%'") == 0
    sponsor, practitioner = rows(prod, PICK_SQL["strangers"])[0]
    new = execute(
        prod,
        "INSERT INTO public.sponsor_practitioner_relationships (sponsor_id, practitioner_id) VALUES (%s, %s) RETURNING id",
        (sponsor, practitioner),
    )[0]
    assert assignment(prod, sponsor, practitioner) is None  # no sync any more (the new app writes assignments itself)
    assert scalar(prod, "SELECT count(*) FROM vdp_runbook.relationship_writes WHERE relationship_id = %s", (new,)) == 1
    assert SCHEMA_V in scalar(prod, "SELECT string_agg(version, ',') FROM vdp_runbook.schema_migrations")

    # A relationship no application write touched, changed by a session of the runbook: journaled as the runbook's,
    # so not attributed to the application - validation fails and names it.
    changed = execute(
        prod,
        "UPDATE public.sponsor_practitioner_relationships SET active = NOT active WHERE id = (SELECT id "
        "FROM public.sponsor_practitioner_relationships r WHERE NOT EXISTS (SELECT 1 FROM vdp_runbook.relationship_writes w "
        "WHERE w.relationship_id = r.id) ORDER BY id LIMIT 1) RETURNING id",
        app="vdp-runbook/oops run x",
    )[0]
    assert (
        scalar(prod, "SELECT bool_and(by_runbook) FROM vdp_runbook.relationship_writes WHERE relationship_id = %s", (changed,))
        is True
    )
    facts = run_module("vdp_migration_facts", dict(login(prod), phase="post"))
    failed = {c["name"]: c for c in facts["failed_checks"]}
    check = failed["legacy_unchanged:public.sponsor_practitioner_relationships"]
    assert check["sample"] == [str(changed)] and "1 rows changed" in check["detail"], check
