"""The online migration's pure parts: the before-baseline marker, the expand/contract files agreeing with each other
and with the runbook's names, and the load generator's arithmetic (mix, percentiles, final states, the CLI's refusals).
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fixtures import load_generator as lg
from tests.support.code import ROOT, module_utils

sqlfiles = module_utils("vdp_sqlfiles")
names = module_utils("vdp_names")
MIGRATIONS = ROOT / "migrations"
SYNC = MIGRATIONS / "20250103_assignment_sync_expand.sql"
CONTRACT = MIGRATIONS / "20250105_assignment_sync_contract.sql"
TRIGGER = re.compile(r"CREATE TRIGGER (vdp_sync_assignments_\w+)\s+(.*?);", re.S)


def test_only_the_sync_is_applied_before_the_baseline_and_the_schema_phase_applies_it() -> None:
    files = {f.version: f for f in sqlfiles.discover(MIGRATIONS)}
    assert [v for v, f in files.items() if f.before_baseline] == [SYNC.stem]
    assert files[SYNC.stem].transactional and files[CONTRACT.stem].transactional
    assert not any(v.startswith(names.MIGRATION_NAME) for v in (SYNC.stem, CONTRACT.stem))  # not preflight's "migration"
    assert sqlfiles.declares("-- x\n  -- vdp:before-baseline\nSELECT 1;", sqlfiles.BEFORE_BASELINE_MARKER)
    assert not sqlfiles.declares("SELECT 1; -- vdp:before-baseline", sqlfiles.BEFORE_BASELINE_MARKER)
    defaults = (ROOT / "roles/schema_migration/defaults/main.yml").read_text()
    assert f"- {SYNC.stem}" in defaults and f"- {names.SCHEMA_VERSION}" in defaults


def test_the_contract_revert_puts_back_exactly_the_sync_triggers_the_contract_drops() -> None:
    forward = dict(TRIGGER.findall(SYNC.read_text()))
    revert = CONTRACT.with_name(f"{CONTRACT.stem}.revert.sql").read_text()
    restored = {name: " ".join(body.split()) for name, body in TRIGGER.findall(revert)}
    assert len(forward) == 3 and {n: " ".join(b.split()) for n, b in forward.items()} == restored
    dropped = re.findall(r"DROP TRIGGER IF EXISTS (vdp_sync_assignments_\w+)", CONTRACT.read_text())
    assert sorted(dropped) == sorted(forward)
    reverted = re.findall(r"DROP TRIGGER IF EXISTS (vdp_\w+)", SYNC.with_name(f"{SYNC.stem}.revert.sql").read_text())
    assert set(reverted) == set(forward) | {"vdp_journal_relationship_writes"}


def test_the_sync_names_the_default_organization_and_the_runbooks_sessions() -> None:
    text = SYNC.read_text()
    assert f"o.slug = '{names.DEFAULT_ORG_SLUG}'" in text
    assert f"LIKE '{names.APPLICATION_NAME_PREFIX}%'" in text
    baseline = module_utils("vdp_baseline")
    journal, key = baseline.JOURNALS["public.sponsor_practitioner_relationships"]
    assert f"CREATE TABLE IF NOT EXISTS {journal} (" in text and f"  {key} uuid NOT NULL," in text


def test_mix_parsing_refuses_unknown_kinds_and_nothing_to_do() -> None:
    assert lg.parse_mix(None) == lg.DEFAULT_MIX
    assert lg.parse_mix("signin=3,progress") == dict(signin=3.0, progress=1.0)
    for bad, message in (("signon=1", "unknown write kind 'signon'"), ("signin=0", "nothing to write"), ("signin=-1", ">= 0")):
        with pytest.raises(ValueError, match=message):
            lg.parse_mix(bad)


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (lg.percentile(values, 50), lg.percentile(values, 99), lg.percentile(values, 100)) == (50.0, 99.0, 100.0)
    assert lg.percentile([7.0], 99) == 7.0
    writes = [lg.Write(i, "signin", "during", 0, ok=i != 3, latency_ms=float(i)) for i in range(1, 5)]
    assert lg.latency_stats(writes) == dict(n=3, p50_ms=2.0, p99_ms=4.0, max_ms=4.0)
    assert lg.summarize(writes)["errors"] == 1 and lg.summarize(writes)["latency_by_phase"]["during"]["n"] == 3


def test_final_states_keep_the_last_write_of_each_row() -> None:
    rel = dict(relationship_id="r1", sponsor_id="s", practitioner_id="p")
    writes = [
        lg.Write(1, "relationship_new", "during", 0, True, dict(rel), dict(active=True, created_at="2026-01-01T00:00:00+00:00")),
        lg.Write(2, "profile_edit", "during", 0, True, dict(profile_id="u"), dict(full_name="first")),
        lg.Write(3, "relationship_end", "after", 0, True, dict(rel), dict(active=False)),
        lg.Write(4, "profile_edit", "after", 0, True, dict(profile_id="u"), dict(full_name="second")),
        lg.Write(5, "profile_edit", "after", 0, False, dict(profile_id="u"), dict(full_name="failed"), error="x"),
    ]
    state = lg.final_states(writes)
    assert state["relationship"]["r1"] == dict(rel, active=False)
    assert state["name"] == {"u": "second"}


def test_the_cli_refuses_a_password_on_the_command_line_and_impossible_bounds() -> None:
    script = str(ROOT / "fixtures" / "load_generator.py")
    for args, message in (
        (["--dsn", "host=x password=secret"], "put the password in PGPASSWORD"),
        (["--dsn", "host=127.0.0.1 port=1", "--rate", "0"], "rate must be between"),
        (["--dsn", "host=127.0.0.1 port=1", "--mix", "bogus=1"], "unknown write kind"),
    ):
        proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert "secret" not in proc.stdout + proc.stderr
