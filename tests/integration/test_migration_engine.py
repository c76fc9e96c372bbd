"""The migration engine as an operator runs it: playbooks, check mode, idempotence, crash and resume,
concurrent runs, ledger drift, lock timeouts, invalid indexes, revert, hostile input, batch lock bounds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.attack import kill_tree
from tests.support.engine import (
    DATA_V,
    INDEXES_V,
    MIGRATIONS,
    ROOT,
    SCHEMA_V,
    SYNC_V,
    apply_schema,
    clone,
    connect,
    data_step,
    drop,
    fingerprint,
    full_migration,
    login,
    migrated_state,
    rows,
    scalar,
    wait_until,
)

USERS = 2000


@pytest.fixture
def db(sandbox: Any, legacy_template: Any) -> Any:
    made: list[dict[str, Any]] = []

    def make(shape: str = "supabase", users: int = USERS) -> dict[str, Any]:
        info = clone(sandbox, legacy_template(shape, users))
        made.append(info)
        return info

    yield make
    for info in made:
        drop(sandbox, info)


def extra_vars(tmp_path: Path, info: dict[str, Any], **more: Any) -> str:
    path = tmp_path / f"vars-{info['dbname']}.json"
    data = dict(
        vdp_production_db=dict(
            host=info["host"], port=info["port"], dbname=info["dbname"], user=info["user"], password=info["password"]
        ),
        vdp_run_id=f"test-{info['dbname']}",
        vdp_run_dir=str(tmp_path / "run"),
        **more,
    )
    path.write_text(json.dumps(data))
    (tmp_path / "run").mkdir(exist_ok=True)
    return f"@{path}"


def playbook(sandbox: Any, name: str, ev: str, *args: str) -> subprocess.CompletedProcess[str]:
    return sandbox.playbook(f"playbooks/{name}.yml", "-e", ev, *args, timeout=600)


def recap(proc: subprocess.CompletedProcess[str]) -> dict[str, int]:
    line = next(x for x in proc.stdout.splitlines() if "ok=" in x and "changed=" in x)
    return {k: int(v) for k, v in (part.split("=") for part in line.split(":", 1)[1].split())}


def run_all(sandbox: Any, ev: str, *args: str) -> list[subprocess.CompletedProcess[str]]:
    return [playbook(sandbox, name, ev, *args) for name in ("schema", "data", "validate")]


# --------------------------------------------------------------------------- check mode, idempotence


def test_check_mode_reports_counts_and_writes_nothing(sandbox: Any, db: Any, tmp_path: Path) -> None:
    info = db()
    before, before_physical = fingerprint(info), fingerprint(info, physical=True)
    ev = extra_vars(tmp_path, info)
    procs = run_all(sandbox, ev, "--check", "--diff")
    for proc in procs:
        assert proc.returncode == 0, proc.stdout[-3000:]
    assert fingerprint(info) == before
    assert fingerprint(info, physical=True) == before_physical
    data_out = procs[1].stdout
    assert f"Would migrate {USERS} profiles" in data_out  # the membership count it would change
    assert "Would insert " in data_out and "Would insert 0 " not in data_out
    assert recap(procs[0])["changed"] >= 1 and recap(procs[1])["changed"] >= 4
    # The run record is a log, written in --check too (what the dry run found), the databases untouched.
    record = json.loads((tmp_path / "run" / "data.json").read_text())
    assert record["membership"]["migrated"] == USERS and record["assignments"]["inserted"] > 0


def test_check_mode_after_a_real_run_reports_no_change(sandbox: Any, db: Any, tmp_path: Path, run_module: Any) -> None:
    info = db()
    full_migration(run_module, info)
    before = fingerprint(info, physical=True)
    procs = run_all(sandbox, extra_vars(tmp_path, info), "--check")
    assert [recap(p)["changed"] for p in procs] == [0, 0, 0]
    assert fingerprint(info, physical=True) == before


def test_playbooks_migrate_validate_and_second_run_writes_nothing(sandbox: Any, db: Any, tmp_path: Path) -> None:
    info = db("seed")
    ev = extra_vars(tmp_path, info)
    first = run_all(sandbox, ev)
    for proc in first:
        assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(first[1])["changed"] >= 5
    validate = json.loads((tmp_path / "run" / "validate.json").read_text())
    assert validate["valid"] is True and validate["failed_checks"] == []
    data = json.loads((tmp_path / "run" / "data.json").read_text())
    assert data["membership"]["migrated"] == USERS
    assert json.loads((tmp_path / "run" / "schema.json").read_text())["baseline_captured"] is True
    content, physical = fingerprint(info), fingerprint(info, physical=True)
    second = run_all(sandbox, ev)
    assert [p.returncode for p in second] == [0, 0, 0]
    assert [recap(p)["changed"] for p in second] == [0, 0, 0]
    assert fingerprint(info) == content
    assert fingerprint(info, physical=True) == physical  # zero rows written, not only zero changes reported
    assert info["password"] not in "".join(p.stdout + p.stderr for p in first + second)


# --------------------------------------------------------------------------- crash and resume


def test_sigkill_during_membership_batches_then_resume_equals_uninterrupted(
    sandbox: Any, db: Any, tmp_path: Path, run_module: Any
) -> None:
    reference = db()
    full_migration(run_module, reference, batch_size=100)
    victim = db()
    assert not apply_schema(run_module, victim).failed
    ev = extra_vars(tmp_path, victim, vdp_batch_size=100, org_data_migration_pause_between_batches=0.15)
    env = dict(sandbox.env)
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/ansible-playbook"), "playbooks/data.yml", "-e", ev],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        done = lambda: scalar(victim, "SELECT count(*) FROM public.profiles WHERE organization_id IS NOT NULL")  # noqa: E731
        assert wait_until(lambda: done() >= 500, timeout=120), "the membership batches never started"
    finally:
        kill_tree(proc.pid)  # the controller dies: ansible-playbook, its workers and the module process
        proc.wait()
    # The killed module's session ends (its open batch rolls back, its lock goes away); then count.
    assert wait_until(
        lambda: (
            scalar(
                victim,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND application_name LIKE 'vdp-runbook%%'",
            )
            == 0
        ),
        timeout=30,
    )
    migrated_at_kill = done()
    assert 0 < migrated_at_kill < USERS
    assert migrated_at_kill % 100 == 0  # only whole batches were committed
    assert scalar(victim, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'profiles_set_updated_at'") == "O"
    resumed = playbook(sandbox, "data", extra_vars(tmp_path, victim, vdp_batch_size=100))
    assert resumed.returncode == 0, resumed.stdout[-3000:]
    assert f"({migrated_at_kill} already done" in resumed.stdout
    assert migrated_state(victim) == migrated_state(reference)
    assert playbook(sandbox, "validate", extra_vars(tmp_path, victim)).returncode == 0


# --------------------------------------------------------------------------- concurrency and locks


def test_second_concurrent_run_fails_fast_naming_the_holder(db: Any, run_module: Any) -> None:
    info = db()
    assert not apply_schema(run_module, info).failed
    assert not run_module("vdp_organization", dict(login(info), slug="individual-users", name="Individual Users")).failed
    first = subprocess.Popen(
        [
            str(ROOT / ".venv/bin/python"),
            "-c",
            "import sys; from tests.support.modrun import run_module; import json;"
            "print(json.dumps(run_module('vdp_org_membership', json.loads(sys.argv[1]))))",
            json.dumps(dict(login(info), batch_size=50, pause_between_batches=0.2, run_id="run-A")),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_until(lambda: scalar(info, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted") > 0, 60)
        started = time.monotonic()
        second = run_module("vdp_coach_assignments", dict(login(info), run_id="run-B"))
        elapsed = time.monotonic() - started
    finally:
        out, _ = first.communicate(timeout=300)
    assert second.failed
    assert elapsed < 5
    msg = second["msg"]
    assert "another migration run holds the migration lock" in msg
    assert "vdp-runbook/membership run run-A" in msg and "pid " in msg and "since" in msg
    assert json.loads(out.strip().splitlines()[-1]).get("failed") is not True  # the holder finished its work
    assert scalar(info, "SELECT count(*) FROM public.practitioner_assignments") == 0  # the refused run wrote nothing


def _release_after_a_timed_out_wait(info: dict[str, Any], blocker: Any, after: float) -> None:
    """Roll the blocker back `after` seconds (longer than the attempt's lock_timeout) after a session first waits
    for a lock on public.profiles."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if scalar(info, "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'public.profiles'::regclass"):
            time.sleep(after)
            break
        time.sleep(0.05)
    blocker.rollback()


def test_lock_timeout_on_ddl_is_retried_then_reported(db: Any, run_module: Any) -> None:
    info = db()
    blocker = psycopg.connect(**info)
    blocker.execute("SELECT 1 FROM public.profiles LIMIT 1")  # ACCESS SHARE held: ALTER TABLE must wait
    try:
        started = time.monotonic()
        result = apply_schema(run_module, info, lock_timeout="200ms", lock_retries=1, lock_retry_backoff=0.1)
        assert result.failed and time.monotonic() - started < 10
        assert "timed out waiting for a lock" in result["msg"]
        assert scalar(info, "SELECT to_regclass('public.organizations')") is None  # the schema file: nothing of it
        # The sync (before the baseline, on sponsor_practitioner_relationships: not blocked) is in; the schema is not.
        assert rows(info, "SELECT version FROM vdp_runbook.schema_migrations ORDER BY 1") == [(SYNC_V,)]
        # Release the blocker while the module retries: it succeeds on a later attempt. Released only once an
        # attempt has been seen waiting and has timed out (a fixed timer raced the module's start on a loaded machine).
        threading.Thread(target=_release_after_a_timed_out_wait, args=(info, blocker, 0.6), daemon=True).start()
        result = apply_schema(run_module, info, lock_timeout="300ms", lock_retries=5, lock_retry_backoff=0.2)
        assert not result.failed, result.get("msg")
        assert [a["version"] for a in result["applied"]] == [SCHEMA_V] and result["applied"][0]["attempts"] > 1
    finally:
        blocker.close()


def test_no_statement_locks_more_than_one_batch_of_profiles(db: Any, run_module: Any) -> None:
    info = db()
    assert not apply_schema(run_module, info).failed
    with connect(info) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgrowlocks")
    assert not run_module("vdp_organization", dict(login(info), slug="individual-users", name="Individual Users")).failed
    peak = 0
    stop = threading.Event()

    def probe() -> None:
        nonlocal peak
        with connect(info) as conn:
            while not stop.is_set():
                peak = max(peak, conn.execute("SELECT count(*) FROM pgrowlocks('public.profiles')").fetchone()[0])
                time.sleep(0.005)

    thread = threading.Thread(target=probe)
    thread.start()
    try:
        result = run_module("vdp_org_membership", dict(login(info), batch_size=150, pause_between_batches=0.02))
    finally:
        stop.set()
        thread.join()
    assert not result.failed and result["batches"]["count"] == -(-USERS // 150)
    assert 0 < peak <= 150


def test_trigger_suppression_falls_back_where_replica_mode_would_differ(db: Any, run_module: Any) -> None:
    # An ENABLE ALWAYS updated_at trigger fires even under session_replication_role = replica: forcing replica mode
    # is refused before any write, auto disables the triggers per batch instead and restores the ALWAYS mode.
    info = db()
    assert not apply_schema(run_module, info).failed
    assert not run_module("vdp_organization", dict(login(info), slug="individual-users", name="Individual Users")).failed
    with connect(info) as conn:
        conn.execute("ALTER TABLE public.profiles ENABLE ALWAYS TRIGGER profiles_set_updated_at")
    stamps = "SELECT md5(string_agg(id::text || updated_at::text, ',' ORDER BY id)) FROM public.profiles"
    before, before_fp = scalar(info, stamps), fingerprint(info)
    forced = run_module("vdp_org_membership", dict(login(info), trigger_suppression="session_replication_role"))
    assert forced.failed and "ENABLE ALWAYS/REPLICA" in forced["msg"] and "alter_table" in forced["msg"]
    assert fingerprint(info) == before_fp  # nothing written, not even the capacity raise or the baseline
    result = run_module("vdp_org_membership", dict(login(info), batch_size=700))
    assert not result.failed, result.get("msg")
    assert result["trigger_suppression"] == "alter_table" and result["remaining"] == 0
    assert scalar(info, stamps) == before
    assert scalar(info, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'profiles_set_updated_at'") == "A"


def test_replica_mode_only_for_a_role_allowed_to_set_it(db: Any) -> None:
    from types import SimpleNamespace

    from tests.support.code import module_utils

    engine: Any = SimpleNamespace(choose_trigger_suppression=module_utils("vdp_membership").choose_trigger_suppression,
                                  EngineError=module_utils("vdp_errors").EngineError)  # fmt: skip
    info = db()
    role = f"vdp_plain_{os.getpid()}"
    triggers = [("profiles_set_updated_at", "O")]
    with connect(info, autocommit=False) as conn:
        assert engine.choose_trigger_suppression(conn, "auto", triggers) == "session_replication_role"
        assert engine.choose_trigger_suppression(conn, "auto", []) == "none"
        conn.execute(f'CREATE ROLE "{role}" NOLOGIN')
        conn.execute(f'SET ROLE "{role}"')
        conn.commit()
        try:
            assert engine.choose_trigger_suppression(conn, "auto", triggers) == "alter_table"
            with pytest.raises(engine.EngineError, match="may not set session_replication_role"):
                engine.choose_trigger_suppression(conn, "session_replication_role", triggers)
        finally:
            conn.rollback()
            conn.execute("RESET ROLE")
            conn.execute(f'DROP ROLE "{role}"')
            conn.commit()


def test_assignments_rerun_after_a_partial_loss_inserts_only_the_missing(db: Any, run_module: Any) -> None:
    # The second run's path: some assignments present, so the pair table probes each pair; the relationship
    # report it derives from that table equals the read-only one of check mode.
    info = db()
    assert not apply_schema(run_module, info).failed
    first = data_step(run_module, info)["assignments"]
    reference = migrated_state(info)["assignments"]
    with connect(info) as conn:
        conn.execute(
            "DELETE FROM public.practitioner_assignments WHERE id IN "
            "(SELECT id FROM public.practitioner_assignments ORDER BY supervisor_id DESC LIMIT 7)"
        )
    check = run_module("vdp_coach_assignments", dict(login(info), batch_size=100), check=True)
    again = run_module("vdp_coach_assignments", dict(login(info), batch_size=100))
    assert not again.failed, again.get("msg")
    assert (check["inserted"], again["inserted"]) == (7, 7)
    assert again["already_present"] == first["valid_pairs"] - 7
    assert again["not_converted"] == check["not_converted"] == first["not_converted"]
    assert migrated_state(info)["assignments"] == reference


# --------------------------------------------------------------------------- ledger


def test_edited_applied_migration_is_refused_and_nothing_applied(db: Any, run_module: Any, tmp_path: Path) -> None:
    info = db()
    folder = tmp_path / "migrations"
    shutil.copytree(MIGRATIONS, folder)
    first = run_module("vdp_schema_migrations", dict(login(info), path=str(folder), versions=[SCHEMA_V]))
    assert not first.failed
    schema_file = folder / f"{SCHEMA_V}.sql"
    old = first["ledger"][SCHEMA_V]["checksum"]
    schema_file.write_text(schema_file.read_text() + "\n-- a harmless-looking edit\n")
    before = fingerprint(info)
    second = run_module("vdp_schema_migrations", dict(login(info), path=str(folder)))
    assert second.failed
    assert f"{SCHEMA_V}.sql" in second["msg"] and old in second["msg"]
    import hashlib

    assert hashlib.sha256(schema_file.read_bytes()).hexdigest() in second["msg"]
    assert second["drift"][0]["version"] == SCHEMA_V
    assert fingerprint(info) == before  # the pending indexes file was not applied either
    checked = run_module("vdp_schema_migrations", dict(login(info), path=str(folder)), check=True)
    assert checked.failed and "edited" in checked["msg"]


def test_ledger_records_checksum_duration_and_who(db: Any, run_module: Any) -> None:
    info = db()
    results = full_migration(run_module, info)
    row = scalar(info, "SELECT row_to_json(m) FROM vdp_runbook.schema_migrations m WHERE version = %s", (SCHEMA_V,))
    import hashlib

    assert row["checksum"] == hashlib.sha256((MIGRATIONS / f"{SCHEMA_V}.sql").read_bytes()).hexdigest()
    assert row["kind"] == "schema" and row["transactional"] is True and row["duration_ms"] >= 0
    assert row["applied_by"].startswith("postgres from ")
    idx = scalar(info, "SELECT row_to_json(m) FROM vdp_runbook.schema_migrations m WHERE version = %s", (INDEXES_V,))
    assert idx["transactional"] is False and idx["kind"] == "indexes"
    assert scalar(info, "SELECT count(*) FROM vdp_runbook.schema_migrations WHERE version = %s", (DATA_V,)) == 1
    # Exactly the schema phase's two files (the online sync first: before the baseline), the data step, the indexes.
    applied = rows(info, "SELECT version FROM vdp_runbook.schema_migrations ORDER BY applied_at, version")
    assert [r[0] for r in applied] == [SYNC_V, SCHEMA_V, DATA_V, INDEXES_V]
    assert (
        scalar(
            info,
            "SELECT m.applied_at <= min(b.captured_at) FROM vdp_runbook.schema_migrations m, vdp_runbook.baseline b "
            "WHERE m.version = %s GROUP BY m.applied_at",
            (SYNC_V,),
        )
        is True
    )
    assert scalar(info, "SELECT convalidated FROM pg_constraint WHERE conname = 'profiles_organization_id_fkey'") is True
    assert results["schema"]["baseline_captured"] is True


def test_invalid_index_left_by_a_failed_concurrent_build_is_rebuilt(db: Any, run_module: Any) -> None:
    info = db()
    results = full_migration(run_module, info)
    assert not results["indexes"].failed
    with connect(info) as conn:
        # What an interrupted CREATE INDEX CONCURRENTLY leaves: the index exists, marked invalid.
        conn.execute("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'public.profiles_roles_idx'::regclass")
        conn.execute("DELETE FROM vdp_runbook.schema_migrations WHERE version = %s", (INDEXES_V,))
    result = apply_schema(run_module, info, [INDEXES_V])
    assert not result.failed, result.get("msg")
    assert result["rebuilt_invalid_indexes"] == ["public.profiles_roles_idx"]
    assert scalar(info, "SELECT indisvalid FROM pg_index WHERE indexrelid = 'public.profiles_roles_idx'::regclass") is True


def test_revert_restores_the_legacy_schema_and_keeps_a_copy(db: Any, run_module: Any) -> None:
    info = db("seed")
    original = fingerprint(info)
    legacy_flags = (
        "SELECT md5(string_agg(t::text, ',' ORDER BY flag_name)) FROM public.feature_flags t "
        "WHERE flag_name NOT IN ('organizational_model', 'multi_role_support')"
    )
    original_flags = scalar(info, legacy_flags)
    full_migration(run_module, info)
    assignments = scalar(info, "SELECT count(*) FROM public.practitioner_assignments")
    result = run_module("vdp_schema_migrations", dict(login(info), state="reverted", path=str(MIGRATIONS)))
    assert not result.failed, result.get("msg")
    assert result["reverted"] == [INDEXES_V, DATA_V, SCHEMA_V, SYNC_V]  # newest first (the sync was applied first)
    after = fingerprint(info)
    # The migration's own flags stay (disabled: the flag rollback's state); every legacy row is as before.
    legacy = {k: v for k, v in original.items() if not k.startswith("__") and k != "public.feature_flags"}
    assert {k: after[k] for k in legacy} == legacy
    assert scalar(info, legacy_flags) == original_flags
    assert scalar(info, "SELECT to_regclass('public.organizations')") is None
    assert scalar(info, "SELECT count(*) FROM vdp_runbook.reverted_practitioner_assignments") == assignments
    assert scalar(info, "SELECT count(*) FROM vdp_runbook.schema_migrations") == 0
    again = full_migration(run_module, info)  # and the migration can run again
    assert again["membership"]["migrated"] == USERS


# --------------------------------------------------------------------------- hostile and bad input

HOSTILE = [
    ("O'Brien; DROP TABLE profiles; --", "o'brien\"; DELETE FROM organizations; --"),
    ("Équipe «Vertu» 美徳 🌱", "équipe-美徳-🌱"),
    ("Robert'); DROP TABLE organizations;--", "$$; SELECT 1; $$"),
]


@pytest.mark.parametrize(("name", "slug"), HOSTILE)
def test_hostile_names_and_slugs_are_stored_literally(db: Any, run_module: Any, name: str, slug: str) -> None:
    info = db()
    assert not apply_schema(run_module, info).failed
    result = run_module("vdp_organization", dict(login(info), slug=slug, name=name, primary_color="#010203"), diff=True)
    assert not result.failed, result.get("msg")
    assert scalar(info, "SELECT name FROM public.organizations WHERE slug = %s", (slug,)) == name
    assert scalar(info, "SELECT count(*) FROM public.profiles") == USERS
    again = run_module("vdp_organization", dict(login(info), slug=slug, name=name, primary_color="#010203"))
    assert not again.changed
    renamed = run_module("vdp_organization", dict(login(info), slug=slug, name=name + " 2"), diff=True)
    assert renamed.changed and renamed["changed_attributes"] == ["name"]
    assert renamed["diff"]["before"]["name"] == name and renamed["diff"]["after"]["name"] == name + " 2"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (dict(primary_color="red"), "primary_color 'red' is not a colour: use #RRGGBB"),
        (dict(secondary_color="#12345"), "secondary_color '#12345' is not a colour"),
        (dict(max_users=0), "max_users 0 is not valid: use a positive number"),
        (dict(max_users=-5), "max_users -5 is not valid"),
        (dict(subscription_tier="platinum"), "subscription_tier must be one of"),
        (dict(max_users="many"), "max_users"),
        (dict(slug=" padded "), "slug ' padded ' is not valid"),
        (dict(slug="tab\there"), "is not valid"),
    ],
)
def test_bad_organization_values_are_refused_clearly(run_module: Any, args: dict[str, Any], needle: str) -> None:
    # No database is needed: the input is refused before connecting (port 1 would fail to connect).
    params = dict(dict(slug="acme", name="Acme"), **args, login_host="127.0.0.1", login_port=1, login_db="x", login_user="x")
    result = run_module("vdp_organization", params)
    assert result.failed
    assert needle in result["msg"]
    assert "cannot connect" not in result["msg"]


def test_errors_are_one_line_without_secret(run_module: Any) -> None:
    secret = "s3cr3t-Pa55word"
    result = run_module(
        "vdp_org_membership", dict(login_host="127.0.0.1", login_port=1, login_db="x", login_user="x", login_password=secret)
    )
    assert result.failed and "cannot connect to PostgreSQL" in result["msg"]
    assert secret not in json.dumps(result)
    assert "\n" not in result["msg"]


def test_data_step_before_schema_tells_what_to_do(db: Any, run_module: Any) -> None:
    info = db()
    result = run_module("vdp_org_membership", login(info))
    assert result.failed and "apply 20250103_organizational_model_schema first" in result["msg"]
    checked = data_step(run_module, info, check=True)  # check mode before the schema phase: counts, no failure
    assert checked["membership"]["migrated"] == USERS and checked["membership"]["capacity"]["action"] == "raised"
    assert checked["organization"]["created"] is True
