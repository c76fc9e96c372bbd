"""migrate.yml, the product's entry point, end to end on the sandbox with the real stand-in app as the deploy target:
--check, a real run, a second run; and a failure injected in each of schema, data, deploy and validate, after which
the automatic rollback must leave the legacy data exactly as before (checked here without the runbook's code) and
the app on its previous release."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.engine import MIGRATION_FLAGS, fingerprint, legacy_content, legacy_layout
from tests.support.sandbox import Sandbox
from tests.support.standin import StandIn, app_vars
from tests.support.world import play, recap, record

PHASES = ["preflight", "backup", "rehearsal", "maintenance", "schema", "data", "deploy", "validate", "monitor", "contract"]
SYNC_V, CONTRACT_V = "20250103_assignment_sync_expand", "20250105_assignment_sync_contract"
SYNC_TRIGGERS = ("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'public.sponsor_practitioner_relationships'::regclass "
                 "AND tgname LIKE 'vdp\\_sync\\_%'")


@pytest.fixture
def app(world: dict[str, Any], tmp_path: Path) -> Iterator[StandIn]:
    """The stand-in virtue app on the world's (legacy) production database, on release legacy-1."""
    standin = StandIn(tmp_path / "standin", world["vdp_production_db"])
    yield standin
    standin.stop()


def _flags(db: dict[str, Any]) -> dict[str, bool]:
    with psycopg.connect(**db) as conn:
        return dict(conn.execute("SELECT flag_name, enabled FROM public.feature_flags WHERE flag_name = ANY(%s)",
                                 (list(MIGRATION_FLAGS),)).fetchall())


def _notices(world: dict[str, Any]) -> dict[str, list[str]]:
    """Each notice sent in this run, with the channels that took it."""
    path = world["run_dir"] / "notices.json"
    entries = json.loads(path.read_text()) if path.exists() else []
    return {n["notice"]: [c["channel"] for c in n["channels"] if c["status"] == "sent"] for n in entries}


def test_check_mode_then_real_run_then_no_op(sandbox: Sandbox, world: dict[str, Any], app: StandIn, tmp_path: Path) -> None:
    prod, stg = world["vdp_production_db"], world["vdp_staging_db"]
    settings = app_vars(world, app, tmp_path)
    before, app_before = fingerprint(prod, physical=True), app.call("GET", "/admin/state", admin=True)[1]

    # --check: every phase runs what it can read-only; production and the app are not touched.
    checked = play(sandbox, world, "migrate.yml", "-e", f"@{settings}", "--check")
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert fingerprint(prod, physical=True) == before, "--check wrote to production"
    assert app.call("GET", "/admin/state", admin=True)[1] == app_before, "--check changed the app"
    with psycopg.connect(**sandbox.pg("staging", "postgres")) as c:
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (stg["dbname"],)).fetchone()[0] == 0
    assert "=> dry run: would migrate" in checked.stdout
    assert "budgets: not judged in a dry run" in checked.stdout  # nothing ran that a budget could measure
    assert f"Would apply {CONTRACT_V}" in checked.stdout  # the contract step says what it would do
    assert record(world, "contract")["check_mode"] is True

    # The real run: every phase in order, the app on the new release with the flags on, the notices sent.
    first = play(sandbox, world, "migrate.yml", "-e", f"@{settings}")
    assert first.returncode == 0, first.stdout[-4000:]
    run = record(world, "run")
    assert [p for p in run["phases"] if p in PHASES] == PHASES, list(run["phases"])
    assert all(run["phases"][p]["status"] in ("ok", "go", "passed") for p in PHASES), run["phases"]
    validate = record(world, "validate")
    assert validate["valid"] is True and validate["failed_checks"] == []
    health = app.call("GET", "/health")[1]
    assert (health["version"], health["maintenance"], health["model"]) == ("org-2.0", False, "organizational")
    assert _flags(prod) == dict.fromkeys(MIGRATION_FLAGS, True)
    assert record(world, "monitor")["verdict"] == "pass"
    assert {"maintenance_start", "completion"} <= set(_notices(world)), _notices(world)
    assert "validate           passed" in first.stdout and "=> migrated 2000 profiles" in first.stdout
    with psycopg.connect(**prod) as c:
        assert c.execute("SELECT count(*) FROM public.profiles WHERE organization_id IS NULL").fetchone()[0] == 0
        # Expand then contract: the sync installed by the schema phase was removed after the monitor gate.
        ledger = {r[0] for r in c.execute("SELECT version FROM vdp_runbook.schema_migrations")}
        assert {SYNC_V, CONTRACT_V} <= ledger and c.execute(SYNC_TRIGGERS).fetchone()[0] == 0
    assert record(world, "contract")["applied"][0]["version"] == CONTRACT_V
    assert run["phases"]["contract"]["summary"] == f"applied {CONTRACT_V}", run["phases"]["contract"]

    # A second run is a no-op: nothing reported changed, no row written, no maintenance window, no notice. The first
    # run completed the migration and no run touched production since, so it stops after preflight.
    # The app records sign-ins (as Supabase's auth does): that write is the app's, not the runbook's, so the app stops
    # recording them here to show that the runbook itself writes nothing (the recheck below signs a user in).
    assert app.call("POST", "/admin/state", {"record_sign_ins": False}, admin=True)[0] == 200
    after_first, app_after_first = fingerprint(prod, physical=True), app.call("GET", "/admin/state", admin=True)[1]
    notices = _notices(world)
    for run_id, extra in (("second-run", []), ("recheck-run", ["-e", "vdp_recheck=true"])):
        again = play(sandbox, world, "migrate.yml", "-e", f"@{settings}", "-e", f"vdp_run_id={run_id}",
                     "-e", f"vdp_run_dir={world['run_dir'].parent / run_id}", *extra)
        assert again.returncode == 0, again.stdout[-4000:]
        assert recap(again.stdout)["changed"] == 0, again.stdout[-4000:]
        assert fingerprint(prod, physical=True) == after_first, f"{run_id} wrote rows"
        assert app.call("GET", "/admin/state", admin=True)[1] == app_after_first, f"{run_id} changed the app"
        assert _notices(world) == notices, f"{run_id} sent a notice"
        rerun = json.loads((world["run_dir"].parent / run_id / "run.json").read_text())
        assert "maintenance" not in rerun["phases"] and "backup" not in rerun["phases"], list(rerun["phases"])
        if run_id == "second-run":
            assert not {"deploy", "validate", "monitor", "contract"} & set(rerun["phases"]), list(rerun["phases"])
            assert f"=> already complete (run {world['run_dir'].name}, " in again.stdout, again.stdout[-3000:]
        else:  # the release found live, validation and the monitor gate again; the contract already applied
            assert rerun["phases"]["contract"]["summary"] == "skipped: already applied", rerun["phases"]["contract"]
            assert "=> already migrated; org-2.0 already live; validation passed; monitor gate: pass" in again.stdout

    # Any run since the completing one breaks the mark (here validate.yml alone; a rollback, a crash): the next
    # migrate.yml checks again. A read-only preflight.yml passes it on.
    preflight = play(sandbox, world, "playbooks/preflight.yml", "-e", f"@{settings}", "-e", "vdp_run_id=check-run",
                     "-e", f"vdp_run_dir={world['run_dir'].parent / 'check-run'}")
    assert preflight.returncode == 0 and "complete: run recheck-run" in preflight.stdout, preflight.stdout[-3000:]
    validated = play(sandbox, world, "playbooks/validate.yml", "-e", f"@{settings}", "-e", "vdp_run_id=validate-run",
                     "-e", f"vdp_run_dir={world['run_dir'].parent / 'validate-run'}", "--tags", "preflight")
    assert validated.returncode == 0, validated.stdout[-3000:]
    with psycopg.connect(**prod) as c:
        last = c.execute("SELECT run_id, event, detail FROM vdp_runbook.run_lease_log ORDER BY id DESC LIMIT 3").fetchall()
    assert last[0][:2] == ("validate-run", "released") and last[0][2] is None, last
    assert ("check-run", "released", "migration complete") in last, last
    after = play(sandbox, world, "playbooks/preflight.yml", "-e", f"@{settings}", "-e", "vdp_run_id=check-again",
                 "-e", f"vdp_run_dir={world['run_dir'].parent / 'check-again'}")
    assert after.returncode == 0 and "already applied" in after.stdout and "complete: run" not in after.stdout


# Where the failure comes from, and which rollback strategy the inventory chose. The data failure is a real one: a
# session of the application's holds a lock on profiles from the moment the data phase starts, and the membership
# batch gives up after its lock-wait retries (set short here); deploy's is the new release failing its sign-in smoke
# check; schema and validate use the runbook's rollback drill (vdp_rollback_drill), which fails after the phase.
FAILURES = {
    "schema": dict(strategy="flags", args=["-e", "vdp_rollback_drill=schema"], error="Rollback drill"),
    "data": dict(strategy="extended", args=["-e", "vdp_lock_retries=1", "-e", "vdp_batch_size=200"], error="blocked by"),
    "deploy": dict(strategy="full", args=[], error="smoke checks failed"),
    "validate": dict(strategy="flags", args=["-e", "vdp_rollback_drill=validate"], error="Rollback drill"),
}


@contextmanager
def lock_profiles_when_data_starts(world: dict[str, Any]) -> Iterator[threading.Event]:
    """A session that takes SHARE lock on public.profiles (reads go on, updates wait) as soon as run.json says the
    data phase is running, and ends its transaction when the rollback starts (the app's long transaction is over).
    Yields an event set once the lock is held."""
    held, done = threading.Event(), threading.Event()
    run_json = world["run_dir"] / "run.json"

    def phases() -> dict[str, Any]:
        try:
            return json.loads(run_json.read_text()).get("phases", {})
        except (OSError, ValueError):
            return {}

    def hold() -> None:
        while not done.is_set() and "data" not in phases():
            time.sleep(0.02)
        with psycopg.connect(**world["vdp_production_db"], application_name="the app, holding profiles") as conn:
            conn.execute("LOCK TABLE public.profiles IN SHARE MODE")
            held.set()
            while not done.is_set() and "rollback" not in phases():
                time.sleep(0.05)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    try:
        yield held
    finally:
        done.set()
        thread.join(30)


@pytest.mark.parametrize("phase", list(FAILURES))
def test_a_failure_after_maintenance_start_is_rolled_back(sandbox: Sandbox, world: dict[str, Any], app: StandIn,
                                                          tmp_path: Path, phase: str) -> None:
    prod, case = world["vdp_production_db"], FAILURES[phase]
    if phase == "deploy":
        assert app.call("POST", "/admin/faults", {"fail_logins": True}, admin=True)[0] == 200
    # The smoke check signs a user in, and the app records sign-ins as Supabase's auth does: an application write the
    # runbook's proof attributes (tests/integration/test_live_writes.py). Off here, so that "as before" is exact.
    assert app.call("POST", "/admin/state", {"record_sign_ins": False}, admin=True)[0] == 200
    layout = legacy_layout(prod)
    before = legacy_content(prod, layout)
    settings = app_vars(world, app, tmp_path, vdp_rollback_strategy=case["strategy"],
                        vdp_rollback_confirm="I understand this overwrites production" if case["strategy"] == "full" else "")

    # The rehearsal is skipped (its own tests cover it): the failure must reach production to be rolled back.
    with lock_profiles_when_data_starts(world) if phase == "data" else nullcontext() as held:
        proc = play(sandbox, world, "migrate.yml", "-e", f"@{settings}", "--skip-tags", "rehearsal", *case["args"])
    assert held is None or held.is_set(), "the data phase never started"
    assert proc.returncode != 0, proc.stdout[-4000:]
    assert case["error"] in proc.stdout and f"ROLLBACK ({case['strategy']}): done" in proc.stdout, proc.stdout[-5000:]

    # The legacy data is exactly as before, by a computation that shares no code with the runbook.
    assert legacy_content(prod, layout) == before
    run, rollback = record(world, "run"), record(world, "rollback")
    assert run["phases"][phase]["status"] in ("FAILED", "failed"), run["phases"]
    assert run["phases"]["rollback"]["status"] == "ok" and rollback["automatic"] is True and rollback["proof"]["ok"] is True
    assert rollback["strategy"] == case["strategy"] and rollback["reason"].startswith(phase)

    # The app is back on its recorded release, out of maintenance; the flags are off (or gone with a full restore).
    health = app.call("GET", "/health")[1]
    assert (health["version"], health["maintenance"], health["model"]) == ("legacy-1", False, "legacy"), health
    assert not any(_flags(prod).values()), _flags(prod)
    assert "failure" in _notices(world) and "completion" not in _notices(world), _notices(world)
    if case["strategy"] == "extended":
        with psycopg.connect(**prod) as c:
            assert c.execute("SELECT to_regclass('public.organizations')").fetchone()[0] is None
            assert c.execute("SELECT count(*) FROM vdp_runbook.reverted_organizations").fetchone()[0] >= 1
    if case["strategy"] == "full":
        assert "production restored from" in run["phases"]["rollback"]["summary"]


def test_a_setting_a_later_phase_needs_stops_the_run_before_anything_changes(sandbox: Sandbox, world: dict[str, Any],
                                                                             app: StandIn, tmp_path: Path) -> None:
    """No release to deploy, or an automatic full rollback nobody authorised: found after the window, either would
    roll back a healthy migration - so the run stops right after preflight, before the backup."""
    prod = world["vdp_production_db"]
    before = fingerprint(prod, physical=True)
    for name, extra, message in (
        ("no-release", dict(vdp_app=dict(platform="none", base_url=app.url, admin_token="x", release="")), "Nothing to deploy"),
        ("full-unconfirmed", dict(vdp_rollback_strategy="full"), "I understand this overwrites production"),
    ):
        settings = app_vars(world, app, tmp_path, name=name, **extra)
        proc = play(sandbox, world, "migrate.yml", "-e", f"@{settings}", "-e", f"vdp_run_id={name}",
                    "-e", f"vdp_run_dir={world['run_dir'].parent / name}")
        assert proc.returncode != 0 and message in proc.stdout, proc.stdout[-3000:]
        phases = json.loads((world["run_dir"].parent / name / "run.json").read_text())["phases"]
        assert list(phases) == ["preflight"], phases
    assert fingerprint(prod, physical=True) == before
    assert app.call("GET", "/health")[1]["maintenance"] is False
