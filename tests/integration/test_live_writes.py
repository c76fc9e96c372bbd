"""Issue 7 items 5 and 11, reproduced on the real sandbox: production lives on while the data step runs.

Item 5 - the application writes during the membership batches (Supabase's auth service does even with the app
scaled to 0): a sign-up (auth.users INSERT; the sign-up trigger creates the profile), a sign-in (last_sign_in_at
and updated_at), a profile edit (the legacy trigger moves updated_at) and a progress update. Validation passes
and reports them as the application's writes. A legacy value changed WITHOUT moving updated_at, a row of a table
that has no updated_at (user_sessions) changed, and a deleted row each fail validation, naming the table; the
operator then re-takes the baseline with a reason (playbooks/rebaseline.yml, recorded in
vdp_runbook.baseline_history; refused without one) and validation passes again.

Item 11 - PostgreSQL restarts mid-batch (pg_ctl restart -m fast of the production cluster): the failure says the
connection broke (not "PostgreSQL error None"), reports the profiles the committed batches migrated, and after the
resume the ledger's role counts are the database's.

Before (issue 7): one sign-up and one profile edit gave legacy_unchanged:auth.users, legacy_unchanged:public.profiles
and a capacity failure that no re-run could clear; after a restart the failure said `migrated: 0` although 3,000
rows were committed, "PostgreSQL error None: ...", and the ledger's role counts covered only the resumed run.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.attack import failure_of, migrated, restart_production, start_playbook, wait_for
from tests.support.engine import apply_schema, rows, scalar
from tests.support.sandbox import Sandbox
from tests.support.world import play, record

pytestmark = pytest.mark.slow  # ansible-playbook runs against the sandbox

USERS = 2000
SLOW_DATA = ["-e", "vdp_batch_size=50", "-e", "org_data_migration_pause_between_batches=0.3"]


def execute(info: dict[str, Any], *statements: str, params: Any = None) -> None:
    """The statements in one transaction of their own, as the application would run them."""
    with psycopg.connect(**info, application_name="attack-application") as conn:
        for statement in statements:
            conn.execute(statement, params)


def application_writes(info: dict[str, Any]) -> dict[str, Any]:
    """A sign-up, a sign-in, a profile edit and a progress update; returns the ids touched."""
    signed_in, edited = (r[0] for r in rows(
        info, "SELECT id FROM public.profiles WHERE organization_id IS NOT NULL ORDER BY id LIMIT 2"))  # fmt: skip
    progress = scalar(info, "SELECT min(id) FROM public.user_virtue_progress")
    new_user = uuid.uuid4()
    execute(
        info,
        "INSERT INTO auth.users (id, email, created_at, updated_at, raw_user_meta_data) "
        "VALUES (%(id)s, %(email)s, now(), now(), jsonb_build_object('full_name', 'Signed Up Mid-Migration'))",
        params=dict(id=new_user, email=f"{new_user}@example.test"),
    )
    execute(
        info, "UPDATE auth.users SET last_sign_in_at = now(), updated_at = now() WHERE id = %(id)s", params=dict(id=signed_in)
    )
    execute(info, "UPDATE public.profiles SET full_name = 'Edited Mid-Migration' WHERE id = %(id)s", params=dict(id=edited))
    execute(info, "UPDATE public.user_virtue_progress SET points = points + 5 WHERE id = %(id)s", params=dict(id=progress))
    return dict(new_user=new_user, signed_in=signed_in, edited=edited, progress=progress)


def test_application_writes_during_the_batches_are_attributed_and_unexplained_changes_fail_until_rebaselined(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path, run_module: Any
) -> None:
    prod = world["vdp_production_db"]
    assert not apply_schema(run_module, prod).failed  # the legacy baseline is taken here, before the first write
    data = start_playbook(sandbox, world, "playbooks/data.yml", *SLOW_DATA, log=tmp_path / "data.log")
    try:
        wait_for(lambda: migrated(prod) >= 300, 180, "the membership batches")
        touched = application_writes(prod)
        assert migrated(prod) < USERS, "the batches were over before the application wrote: nothing interleaved"
    finally:
        rc = data.wait(timeout=600)
    assert rc == 0, data.output()[-4000:]

    # Validation passes and says what the application wrote, table by table.
    valid = play(sandbox, world, "playbooks/validate.yml")
    (tmp_path / "validate-1.log").write_text(valid.stdout)
    assert valid.returncode == 0, valid.stdout[-4000:]
    result = record(world, "validate")
    assert result["valid"] is True and result["failed_checks"] == []
    writes = result["application_writes"]
    assert writes["legacy_unchanged:auth.users"] == 2, writes  # the sign-up and the sign-in
    assert writes["legacy_unchanged:public.profiles"] == 2, writes  # the sign-up's profile and the edit
    assert writes["legacy_unchanged:public.user_virtue_progress"] == 1, writes
    legacy = result["legacy"]
    assert (legacy["auth.users"]["inserted"], legacy["auth.users"]["app_updated"]) == (1, 1)
    assert (legacy["public.profiles"]["inserted"], legacy["public.profiles"]["app_updated"]) == (1, 1)
    assert str(touched["edited"]) in legacy["public.profiles"]["samples"]["app_updated"]
    assert "application writes since the baseline (legacy_unchanged:public.profiles): 2 rows" in valid.stdout
    assert result["report"]["capacity"]["members"] == USERS + 1  # the sign-up fits the default headroom

    # Changes nothing attributes to the application: a legacy value changed without moving updated_at, a row of
    # a table without updated_at changed, a row deleted. Each fails, naming its table.
    hidden = scalar(prod, "SELECT id FROM public.profiles WHERE id <> ALL(%s) ORDER BY id DESC LIMIT 1",
                    ([touched["edited"], touched["signed_in"], touched["new_user"]],))  # fmt: skip
    behind_its_back = "UPDATE public.profiles SET full_name = 'Changed Behind Its Back' WHERE id = %(id)s"
    execute(prod, "SET LOCAL session_replication_role = replica", behind_its_back, params=dict(id=hidden))
    execute(prod, "UPDATE public.user_sessions SET user_agent = 'tampered' WHERE id = (SELECT min(id) FROM public.user_sessions)")
    deleted = scalar(prod, "SELECT max(id) FROM public.user_virtue_progress")
    execute(prod, "DELETE FROM public.user_virtue_progress WHERE id = %(id)s", params=dict(id=deleted))
    invalid = play(sandbox, world, "playbooks/validate.yml")
    (tmp_path / "validate-2.log").write_text(invalid.stdout)
    assert invalid.returncode != 0
    failed = {c["name"]: c for c in record(world, "validate")["failed_checks"]}
    assert set(failed) == {
        "legacy_unchanged:public.profiles",
        "legacy_unchanged:public.user_sessions",
        "legacy_unchanged:public.user_virtue_progress",
    }, failed
    assert "0 rows deleted and 1 rows changed" in failed["legacy_unchanged:public.profiles"]["detail"]
    assert failed["legacy_unchanged:public.profiles"]["sample"] == [str(hidden)]
    assert "1 rows deleted and 0 rows changed" in failed["legacy_unchanged:public.user_virtue_progress"]["detail"]
    assert failed["legacy_unchanged:public.user_virtue_progress"]["sample"] == [str(deleted)]
    assert "Validation FAILED" in invalid.stdout and "legacy_unchanged:public.user_sessions" in invalid.stdout

    # A re-baseline needs a reason; with one it is recorded, and validation passes again.
    history = "SELECT count(*) FROM vdp_runbook.baseline_history"
    no_reason = play(sandbox, world, "playbooks/rebaseline.yml")
    assert no_reason.returncode != 0 and "say why with -e vdp_rebaseline_reason" in no_reason.stdout, no_reason.stdout[-3000:]
    assert (scalar(prod, "SELECT to_regclass('vdp_runbook.baseline_history')") is None) or scalar(prod, history) == 0
    reason = "tickets 4411-4413: support fixed a name, a session and removed a duplicate progress row"
    rebased = play(sandbox, world, "playbooks/rebaseline.yml", "-e", json.dumps({"vdp_rebaseline_reason": reason}))
    assert rebased.returncode == 0, rebased.stdout[-4000:]
    ((reason_row, by, differences),) = rows(prod, "SELECT reason, replaced_by, differences FROM vdp_runbook.baseline_history")
    assert reason_row == reason and by
    changed = {d["table"] for d in differences if not d["unchanged_by_migration"]}
    assert changed == {"public.profiles", "public.user_sessions", "public.user_virtue_progress"}, differences
    again = play(sandbox, world, "playbooks/validate.yml")
    (tmp_path / "validate-3.log").write_text(again.stdout)
    assert again.returncode == 0, again.stdout[-4000:]
    assert record(world, "validate")["valid"] is True


# --------------------------------------------------------------------------- item 11


ROLE_COUNTS_SQL = """
SELECT count(*) FILTER (WHERE roles = ARRAY['coach']), count(*) FILTER (WHERE roles = ARRAY['coach', 'practitioner']),
       count(*) FILTER (WHERE roles = ARRAY['practitioner'])
FROM public.profiles p JOIN public.organizations o ON o.id = p.organization_id WHERE o.slug = 'individual-users'
"""


def test_a_postgresql_restart_mid_batch_is_reported_honestly_and_the_resume_records_the_databases_counts(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path, run_module: Any
) -> None:
    prod = world["vdp_production_db"]
    assert not apply_schema(run_module, prod).failed
    data = start_playbook(sandbox, world, "playbooks/data.yml", *SLOW_DATA, log=tmp_path / "data.log")
    try:
        wait_for(lambda: migrated(prod) >= 300, 180, "the membership batches")
        restart_production(sandbox)
    finally:
        rc = data.wait(timeout=600)
    out = data.output()
    assert rc != 0, out[-4000:]
    failure = failure_of(out)
    committed = migrated(prod)
    # The operator reads: the connection broke; this many profiles were migrated by the batches that committed.
    assert failure["msg"].startswith("the connection to PostgreSQL broke ("), failure["msg"]
    assert "re-run to resume (completed batches are kept)" in failure["msg"]
    assert "PostgreSQL error None" not in out
    assert 300 <= committed < USERS and committed % 50 == 0
    assert failure["migrated"] == committed, (failure["migrated"], committed)
    assert failure["batches"]["count"] == committed // 50

    resumed = play(sandbox, world, "playbooks/data.yml", "-e", "vdp_batch_size=50")
    assert resumed.returncode == 0, resumed.stdout[-4000:]
    assert f"Migrated {USERS - committed} profiles ({committed} already done" in resumed.stdout, resumed.stdout[-4000:]
    details = scalar(prod, "SELECT details FROM vdp_runbook.schema_migrations WHERE version LIKE '%%_data'")
    coach, both, practitioner = rows(prod, ROLE_COUNTS_SQL)[0]
    assert details["roles"] == dict(coach_only=coach, coach_and_practitioner=both, practitioner_only=practitioner), details
    assert coach + both + practitioner == USERS
    assert int(details["profiles_migrated"]) == USERS - committed  # what this run did, beside the database's totals
