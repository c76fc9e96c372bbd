"""The playbooks end to end on the sandbox: backup.yml -> restore_staging.yml -> rehearse.yml (go / no-go), faults.

Each test points the inventory's vdp_production_db / vdp_staging_db / vdp_s3 at its own legacy clone, staging
database and S3 prefix through extra vars, so it never touches the sandbox's own "virtue" databases.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.integration.test_backup import _flip_byte, keys_under, s3_of
from tests.support.sandbox import Sandbox
from tests.support.world import play as world_play
from tests.support.world import recap, record

ROOT = Path(__file__).resolve().parents[2]
ENGINE = ("schema_migration", "org_data_migration", "validation")


def play(box: Sandbox, world: dict[str, Any], playbook: str, *args: str) -> Any:
    return world_play(box, world, f"playbooks/{playbook}", *args)


def test_backup_restore_rehearse_go(sandbox: Sandbox, world: dict[str, Any]) -> None:
    planned = play(sandbox, world, "backup.yml", "--check")
    assert planned.returncode == 0, planned.stdout[-3000:]
    client = s3_of(sandbox)
    assert keys_under(client, sandbox.bucket, world["vdp_s3"]["prefix"]) == []  # check mode uploaded nothing

    first = play(sandbox, world, "backup.yml")
    assert first.returncode == 0, first.stdout[-3000:]
    assert recap(first.stdout)["changed"] == 1
    backup = record(world, "backup")
    assert backup["status"] == "ok" and backup["verification"]["verified"] and backup["key"].startswith(world["vdp_s3"]["prefix"])
    assert backup["tables"]["public.profiles"] == 2000

    second = play(sandbox, world, "backup.yml")
    assert second.returncode == 0 and recap(second.stdout)["changed"] == 0, second.stdout[-3000:]
    assert record(world, "backup")["reused"]

    restored = play(sandbox, world, "restore_staging.yml")
    assert restored.returncode == 0, restored.stdout[-3000:]
    assert record(world, "restore_staging")["parity_ok"]
    again = play(sandbox, world, "restore_staging.yml")
    assert again.returncode == 0 and recap(again.stdout)["changed"] == 0, again.stdout[-3000:]

    slow = play(sandbox, world, "rehearse.yml", "-e", "rehearsal_window_budget_minutes=0.000001")
    assert slow.returncode != 0 and "Rehearsal NO-GO, production is untouched" in slow.stdout
    no_go = record(world, "rehearsal")
    assert no_go["decision"] == "no-go" and any("over the window budget" in r for r in no_go["reasons"])

    rehearsed = play(sandbox, world, "rehearse.yml")  # a no-go is never reused: this rehearses afresh
    assert rehearsed.returncode == 0, rehearsed.stdout[-4000:]
    decision = record(world, "rehearsal")
    assert decision["decision"] == "go" and decision["go"] and decision["reasons"] == []
    assert decision["restore"]["parity_ok"] and decision["restore"]["backup_key"] == backup["key"]
    assert decision["migration_seconds"] is not None and decision["window_budget_minutes"] == 30
    assert "Rehearsal: GO" in rehearsed.stdout
    assert [step["step"] for step in decision["steps"] if step["ran"]] == list(ENGINE)
    assert (world["run_dir"] / "rehearsal_validate.json").is_file()  # the engine's records stay apart from production's
    assert not (world["run_dir"] / "validate.json").exists()
    with psycopg.connect(**world["vdp_staging_db"]) as c:  # the migration ran on staging ...
        assert c.execute("SELECT count(*) FROM public.profiles WHERE organization_id IS NULL").fetchone()[0] == 0
    with psycopg.connect(**world["vdp_production_db"]) as c:  # ... and never on production
        assert c.execute("SELECT to_regclass('public.organizations') IS NULL").fetchone()[0]

    resumed = play(sandbox, world, "rehearse.yml")  # same run id: the go stands, staging is not rebuilt
    assert resumed.returncode == 0 and recap(resumed.stdout)["changed"] == 0, resumed.stdout[-3000:]
    assert "already rehearsed in run" in resumed.stdout


def test_migration_failing_on_staging_is_no_go(sandbox: Sandbox, world: dict[str, Any]) -> None:
    assert play(sandbox, world, "backup.yml", "-e", "backup_prune=false").returncode == 0
    # A data step that cannot run (its argument spec refuses batch size 0) fails inside the rehearsal.
    failing = play(sandbox, world, "rehearse.yml", "-e", "vdp_batch_size=0")
    assert failing.returncode != 0 and "Rehearsal NO-GO, production is untouched" in failing.stdout
    decision = record(world, "rehearsal")
    assert decision["decision"] == "no-go" and not decision["go"]
    assert any("migration failed on staging" in r for r in decision["reasons"]), decision["reasons"]
    with psycopg.connect(**world["vdp_production_db"]) as c:
        assert c.execute("SELECT to_regclass('public.organizations') IS NULL").fetchone()[0]


def test_backup_failing_verification_stops_the_run(sandbox: Sandbox, world: dict[str, Any]) -> None:
    assert play(sandbox, world, "backup.yml").returncode == 0
    _flip_byte(s3_of(sandbox), sandbox.bucket, record(world, "backup")["key"])
    rerun = play(sandbox, world, "backup.yml")
    assert rerun.returncode != 0 and "Backup verification FAILED, stopping before anything changes" in rerun.stdout
    failed = record(world, "backup")
    assert failed["status"] == "failed" and not failed["verification"]["verified"]
    assert "Prune old backups" not in rerun.stdout  # the run stopped: no retention after a failed verification


def test_staging_equal_to_production_is_refused(sandbox: Sandbox, world: dict[str, Any]) -> None:
    prod = dict(world["vdp_production_db"], host="localhost")
    refused = play(sandbox, world, "restore_staging.yml", "-e", json.dumps({"vdp_staging_db": prod}))
    assert refused.returncode != 0 and "it is the PRODUCTION database" in refused.stdout
    with psycopg.connect(**world["vdp_production_db"]) as c:  # production untouched
        assert c.execute("SELECT count(*) FROM public.profiles").fetchone()[0] == 2000
    sloppy = play(sandbox, world, "restore_staging.yml", "-e", "staging_restore_allow_production=yes")
    assert sloppy.returncode != 0 and "never restores production, whatever is passed" in sloppy.stdout


def test_wrong_s3_keys_fail_the_backup_clearly(sandbox: Sandbox, world: dict[str, Any]) -> None:
    s3 = dict(world["vdp_s3"], secret_key="not-the-secret-0000")
    failed = play(sandbox, world, "backup.yml", "-e", json.dumps({"vdp_s3": s3}))
    assert failed.returncode != 0 and "Backup failed, nothing was changed" in failed.stdout
    assert "credentials were refused" in failed.stdout and "not-the-secret-0000" not in failed.stdout
