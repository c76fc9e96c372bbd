"""Unit tests of the migration engine's modules and module_utils (no database).

What runs against PostgreSQL is in tests/integration/test_rules_engine.py and test_migration_engine.py;
here: SQL file handling, the ledger's drift logic, pure decisions, input validation, documentation.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.ansible_doc import ansible_doc
from tests.support.code import library, module_utils

ROOT = Path(__file__).resolve().parents[2]
ENGINE_MODULES = [
    "vdp_organization",
    "vdp_org_membership",
    "vdp_coach_assignments",
    "vdp_schema_migrations",
    "vdp_feature_flag",
    "vdp_migration_facts",
]


def load(name: str) -> Any:
    """library/<name>.py, or ansible.module_utils.<name> from module_utils/."""
    return library(name) if (ROOT / "library" / f"{name}.py").exists() else module_utils(name)


# The engine's code, each name from the module_utils file that owns it (split by job: see module_utils/).
_ENGINE_NAMES = {
    "vdp_errors": ["EngineError"],
    "vdp_sqlfiles": ["split_statements", "body_statements", "declares_no_transaction", "kind_of", "discover"],
    "vdp_ledger": ["LedgerRow", "drift", "_CIC_RE"],
    "vdp_rules": ["data_step_checksum", "sign_in_expr"],
    "vdp_membership": ["_batch_prologue", "_batch_epilogue"],
    "vdp_lifecycle": ["application_name"],
}


@pytest.fixture(scope="module")
def engine() -> Any:
    return SimpleNamespace(**{n: getattr(module_utils(m), n) for m, names in _ENGINE_NAMES.items() for n in names})


# --------------------------------------------------------------------------- SQL files


def test_split_statements_respects_quotes_comments_and_dollar_quotes(engine: Any) -> None:
    text = """-- a comment; with a semicolon
SELECT 'a;b' AS x;  /* block; comment */
CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $fn$ BEGIN RETURN 1; END $fn$;
DO $$ BEGIN PERFORM 1; END $$;
SELECT "we;ird" FROM t
"""
    statements = engine.split_statements(text)
    assert [s.text.split()[0] for s in statements] == ["SELECT", "CREATE", "DO", "SELECT"]
    assert "'a;b'" in statements[0].text
    assert statements[1].text.endswith("$fn$ BEGIN RETURN 1; END $fn$")
    assert [s.line for s in statements] == [2, 3, 4, 5]


def test_transactional_file_loses_its_begin_commit_and_lock_timeout(engine: Any, tmp_path: Path) -> None:
    f = tmp_path / "20990101_x_schema.sql"
    f.write_text(
        "BEGIN;\nSET LOCAL lock_timeout = '5s';\nSET LOCAL statement_timeout = '1min';\nCREATE TABLE t (id int);\nCOMMIT;\n"
    )
    assert [s.text for s in engine.body_statements(f, True)] == [
        "SET LOCAL statement_timeout = '1min'",
        "CREATE TABLE t (id int)",
    ]


def test_transaction_control_inside_a_transactional_file_is_refused(engine: Any, tmp_path: Path) -> None:
    f = tmp_path / "20990101_x_schema.sql"
    f.write_text("BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\nCREATE TABLE b (id int);\nCOMMIT;\n")
    with pytest.raises(engine.EngineError, match="line 3: a transaction statement inside"):
        engine.body_statements(f, True)


def test_no_transaction_marker_and_kinds(engine: Any, tmp_path: Path) -> None:
    assert engine.declares_no_transaction("-- header\n-- vdp:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);")
    assert not engine.declares_no_transaction("SELECT '-- vdp:no-transaction';")
    assert [engine.kind_of(v) for v in ("x_schema", "x_data", "x_indexes", "x_misc")] == ["schema", "data", "indexes", "other"]


def test_discover_lists_forward_files_with_checksum_and_revert(engine: Any) -> None:
    files = engine.discover(ROOT / "migrations")
    versions = [f.version for f in files]
    assert versions == [
        "20250103_assignment_sync_expand",
        "20250103_organizational_model_indexes",
        "20250103_organizational_model_schema",
        "20250104_monitoring",
        "20250105_assignment_sync_contract",
    ]
    by_version = {f.version: f for f in files}
    schema, indexes = by_version["20250103_organizational_model_schema"], by_version["20250103_organizational_model_indexes"]
    assert schema.checksum == hashlib.sha256(schema.path.read_bytes()).hexdigest()
    assert schema.transactional and not indexes.transactional
    assert all(f.revert_path and f.revert_path.exists() for f in files)


def test_discover_missing_directory_says_what_to_do(engine: Any, tmp_path: Path) -> None:
    with pytest.raises(engine.EngineError, match="does not exist: set the path"):
        engine.discover(tmp_path / "nope")


def test_drift_names_file_and_both_checksums(engine: Any, tmp_path: Path) -> None:
    f = tmp_path / "20990101_x_schema.sql"
    f.write_text("SELECT 1;\n")
    [mf] = engine.discover(tmp_path)
    row = engine.LedgerRow("20990101_x_schema", "schema", "0" * 64, "2025-01-03T00:00:00", 1, "me", None, {})
    assert engine.drift([mf], {mf.version: row}) == [
        dict(version=mf.version, file=mf.name, ledger_checksum="0" * 64, file_checksum=mf.checksum)
    ]
    assert engine.drift([mf], {mf.version: engine.LedgerRow(mf.version, "schema", mf.checksum, "", 1, "me", None, {})}) == []


def test_concurrent_index_statement_is_recognised(engine: Any) -> None:
    match = engine._CIC_RE.match(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS profiles_roles_idx\nON public.profiles USING gin (roles)"
    )
    assert match and match.group("name") == "profiles_roles_idx" and match.group("schema") == "public"
    assert engine._CIC_RE.match("CREATE UNIQUE INDEX CONCURRENTLY u ON t (a)").group("table") == "t"
    assert engine._CIC_RE.match("CREATE INDEX i ON t (a)") is None


# The data step's fingerprint, as recorded in the ledger of every database migrated with these rules. It changes
# only when the rules (their SQL) change: then a re-run must not treat the old data version as the new one, and
# this value is updated deliberately, together with the rules.
DATA_STEP_CHECKSUM = "817a00d2e7df7576879785b5ba2f0f1279bd515da3228c6e570ad8f02b0f75cd"


def test_data_step_checksum_is_pinned_to_the_rules(engine: Any) -> None:
    assert engine.data_step_checksum() == DATA_STEP_CHECKSUM


def test_membership_batch_holds_triggers_off_inside_its_own_transaction(engine: Any) -> None:
    triggers = [("profiles_set_updated_at", "O"), ("audit", "A")]
    alter = engine._batch_prologue("alter_table", triggers).as_string(None)
    assert 'DISABLE TRIGGER "profiles_set_updated_at"' in alter and 'DISABLE TRIGGER "audit"' in alter
    restore = engine._batch_epilogue("alter_table", triggers).as_string(None)
    assert 'ENABLE TRIGGER "profiles_set_updated_at"' in restore and 'ENABLE ALWAYS TRIGGER "audit"' in restore
    replica = engine._batch_prologue("session_replication_role", triggers).as_string(None)
    assert "SET LOCAL session_replication_role = replica" in replica and "ALTER" not in replica
    assert engine._batch_epilogue("session_replication_role", triggers) is None  # SET LOCAL ends with the batch
    for mode in ("alter_table", "session_replication_role", "none"):  # every batch: index nested loops only
        text = engine._batch_prologue(mode, triggers if mode != "none" else []).as_string(None)
        assert "SET LOCAL enable_hashjoin = off" in text and "SET LOCAL enable_mergejoin = off" in text


def test_application_name_carries_component_and_run_id(engine: Any) -> None:
    assert engine.application_name({"application_name": "vdp-runbook", "run_id": "20261125T0915Z-ab12"}, "membership") == (
        "vdp-runbook/membership run 20261125T0915Z-ab12"
    )
    assert engine.application_name({"application_name": "custom"}, "x") == "custom"
    assert len(engine.application_name({"run_id": "r" * 100}, "membership")) == 63


def test_sign_in_expression_follows_the_source(engine: Any) -> None:
    assert engine.sign_in_expr("profiles")[1] == "coalesce(p.last_sign_in_at, p.created_at)"
    join, expr = engine.sign_in_expr("auth.users")
    assert "auth.users u" in join and expr == "coalesce(u.last_sign_in_at, p.created_at)"
    assert engine.sign_in_expr(None) == ("", "p.created_at")


# --------------------------------------------------------------------------- pure decisions


@pytest.mark.parametrize(
    ("policy", "max_users", "members", "action", "after"),
    [
        ("raise", 1000, 2000, "raised", 2000),
        ("raise", 1000, 900, "none", 1000),
        ("fail", 1000, 1001, "failed", 1000),
        ("report", 1000, 1500, "reported", 1000),
        ("raise", None, 5000, "none", None),
    ],
)
def test_capacity_decision(policy: str, max_users: int | None, members: int, action: str, after: int | None) -> None:
    membership = load("vdp_org_membership")
    decision = membership.capacity_decision(dict(capacity_policy=policy, capacity_headroom_percent=0), max_users, members)
    assert decision["action"] == action and decision["max_users_after"] == after
    assert decision["max_users_before"] == max_users


def test_capacity_headroom_rounds_up() -> None:
    membership = load("vdp_org_membership")
    decision = membership.capacity_decision(dict(capacity_policy="raise", capacity_headroom_percent=10), 1000, 2001)
    assert decision["max_users_after"] == 2202


def test_feature_flag_plan_create_only_never_flips_existing() -> None:
    flags = load("vdp_feature_flag")
    params = dict(names=["a", "b"], enabled=False, state="present", create_only=True)
    assert flags.plan(params, {"a": True}) == (["b"], [], [])
    assert flags.plan(dict(params, create_only=False), {"a": True}) == (["b"], ["a"], [])
    assert flags.plan(dict(params, state="absent"), {"a": True}) == ([], [], ["a"])


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        (dict(primary_color="#12345G"), "primary_color '#12345G' is not a colour"),
        (dict(max_users=0), "max_users 0 is not valid"),
        (dict(slug=""), "slug '' is not valid"),
        (dict(slug="x" * 101), "is not valid"),
        (dict(name="   "), "name '   ' is not valid"),
    ],
)
def test_organization_validation_messages(changes: dict[str, Any], problem: str) -> None:
    org = load("vdp_organization")
    params = dict(dict(slug="acme", name="Acme", primary_color=None, secondary_color=None, max_users=None), **changes)
    assert any(problem in p for p in org.validate(params))


def test_organization_accepts_hostile_but_valid_text() -> None:
    org = load("vdp_organization")
    params = dict(
        slug="o'brien; drop table x; -- 美徳",
        name="Robert'); DROP TABLE organizations;--",
        primary_color="#A8A29E",
        secondary_color=None,
        max_users=1000,
    )
    assert org.validate(params) == []


def test_organization_create_only_attributes_are_not_diffed() -> None:
    org = load("vdp_organization")
    current = dict(name="Individual Users", max_users=2000, primary_color="#5F4339")
    params = dict(
        name="Individual Users",
        max_users=1000,
        primary_color="#000000",
        secondary_color=None,
        subscription_tier=None,
        create_only=["max_users"],
    )
    assert org.wanted_changes(current, params) == {"primary_color": "#000000"}


def test_schema_migrations_input_validation() -> None:
    mod = load("vdp_schema_migrations")
    base = dict(state="applied", path=None, record_version=None, record_checksum=None, lock_retries=5, lock_retry_backoff=1.0)
    assert "path is required" in mod.validate(base)
    assert "record_version is required" in mod.validate(dict(base, state="recorded", path="x"))
    assert "sha256" in mod.validate(dict(base, path="x", record_checksum="abc"))
    assert mod.validate(dict(base, path="x")) is None


def test_legacy_split_name_and_tables() -> None:
    legacy = load("vdp_legacy")
    assert legacy.split_name("auth.users") == ("auth", "users")
    assert legacy.split_name("profiles") == ("public", "profiles")
    assert "public.profiles" in legacy.LEGACY_TABLES and "auth.users" in legacy.LEGACY_TABLES
    assert set(load("vdp_names").FEATURE_FLAGS) == {"organizational_model", "multi_role_support"}


# --------------------------------------------------------------------------- documentation and lint


@pytest.mark.parametrize("name", ENGINE_MODULES)
def test_module_documentation_renders_and_matches_the_argument_spec(name: str) -> None:
    import yaml

    proc = ansible_doc("--json", name)
    assert proc.returncode == 0, proc.stderr
    import json

    doc = json.loads(proc.stdout)[name]
    documented = set(doc["doc"]["options"])
    spec = set(load(name).argument_spec())
    assert spec == documented
    assert {"check_mode", "diff_mode", "platform"} <= set(doc["doc"]["attributes"])
    assert yaml.safe_load(doc["examples"]) and doc["return"]


def test_password_option_is_no_log() -> None:
    for name in ENGINE_MODULES:
        assert load(name).argument_spec()["login_password"]["no_log"] is True


def test_migrations_pass_squawk() -> None:
    proc = subprocess.run(
        [str(ROOT / ".venv/bin/squawk"), *sorted(str(p) for p in (ROOT / "migrations").glob("*.sql"))],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_seed_sql_for_the_benchmark_is_the_seeds() -> None:
    text = (ROOT / "benchmarks/seed_sql/20250103_organizational_model_data.seed.sql").read_text()
    assert "THEN ARRAY['coach']" in text and "WHERE spr.active = true;" in text and "1000, -- Higher limit" in text


def test_coach_assignments_and_membership_refuse_bad_batch_sizes() -> None:
    coach, membership = load("vdp_coach_assignments"), load("vdp_org_membership")
    assert "batch_size 0 is out of range" in coach.validate(dict(batch_size=0, sample_limit=20, lock_retries=5))
    assert coach.validate(dict(batch_size=5000, sample_limit=20, lock_retries=5)) is None
    good = dict(batch_size=5000, pause_between_batches=0.0, max_batches=0, capacity_headroom_percent=0, lock_retries=5)
    assert membership.validate(good) is None
    assert "out of range" in membership.validate(dict(good, batch_size=2_000_000))
    assert ">= 0" in membership.validate(dict(good, pause_between_batches=-1))
