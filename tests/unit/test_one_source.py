"""One source for each fact: the defaults the modules take from module_utils/vdp_names.py (and vdp_lockwait.py)
are the ones the documentation, the roles, the schema SQL and the README state. A change made in one place and not
the others fails here."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.code import ROOT, library, module_utils
from tests.support.tiers import extended_tests

names: Any = module_utils("vdp_names")
lockwait: Any = module_utils("vdp_lockwait")
MODULES = sorted(p.stem for p in (ROOT / "library").glob("vdp_*.py"))


def ansible_doc(name: str) -> dict[str, Any]:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-M", str(ROOT / "library"), "--json", name],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    return json.loads(proc.stdout)[name]["doc"]


@pytest.mark.parametrize("name", MODULES)
def test_module_docs_state_the_argument_specs_defaults(name: str) -> None:
    """DOCUMENTATION (with its fragments) and argument_spec() agree on every option and its default."""
    spec = library(name).argument_spec()
    documented = ansible_doc(name)["options"]
    assert set(spec) == set(documented), f"{name}: documented {sorted(set(documented) ^ set(spec))} differ"
    for option, entry in spec.items():
        if "default" in entry and not callable(entry["default"]):
            assert documented[option].get("default") == entry["default"], f"{name}.{option}"


def readme_knobs() -> dict[str, str]:
    """The README's knobs table: `variable` -> default text."""
    text = (ROOT / "README.md").read_text()
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^\| `([a-z_]+)` \| ([^|]+) \|", text, re.M)}


def test_readme_states_the_modules_defaults() -> None:
    knobs = readme_knobs()
    expected = {
        "vdp_batch_size": str(names.BATCH_SIZE),
        "vdp_capacity_policy": names.CAPACITY_POLICY,
        "vdp_capacity_headroom_percent": str(names.CAPACITY_HEADROOM_PERCENT),
        "vdp_lock_timeout": lockwait.LOCK_TIMEOUT,
        "vdp_lock_retries": str(lockwait.LOCK_RETRIES),
        "vdp_lock_retry_backoff": str(lockwait.LOCK_RETRY_BACKOFF),
        "vdp_feature_flags": ", ".join(names.FEATURE_FLAGS),
    }
    for knob, value in expected.items():
        assert knob in knobs, f"the README's knobs table lacks {knob}"
        assert knobs[knob].strip("`") == value, f"README says {knob} = {knobs[knob]}, the modules use {value}"


def role_specs() -> list[tuple[str, str, dict[str, Any], dict[str, Any]]]:
    out = []
    for spec_file in sorted((ROOT / "roles").glob("*/meta/argument_specs.yml")):
        role = spec_file.parent.parent
        defaults_file = role / "defaults" / "main.yml"
        defaults = yaml.safe_load(defaults_file.read_text()) if defaults_file.exists() else {}
        for entry, spec in (yaml.safe_load(spec_file.read_text())["argument_specs"] or {}).items():
            out.append((role.name, entry, spec.get("options") or {}, defaults or {}))
    return out


@pytest.mark.parametrize(("role", "entry", "options", "defaults"), role_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_role_argument_specs_state_the_roles_defaults(
    role: str, entry: str, options: dict[str, Any], defaults: dict[str, Any]
) -> None:
    for name, option in options.items():
        if "default" in option and name in defaults and "{{" not in str(defaults[name]):
            assert option["default"] == defaults[name], (
                f"{role} ({entry}): {name} spec {option['default']!r} != default {defaults[name]!r}"
            )


def test_the_schema_files_signup_trigger_names_the_default_organization() -> None:
    text = (ROOT / "migrations" / f"{names.SCHEMA_VERSION}.sql").read_text()
    assert f"o.slug = '{names.DEFAULT_ORG_SLUG}'" in text


def test_the_default_organization_is_created_with_the_seeds_capacity() -> None:
    defaults = yaml.safe_load((ROOT / "roles/org_data_migration/defaults/main.yml").read_text())
    assert defaults["org_data_migration_organization"]["max_users"] == names.DEFAULT_ORG_MAX_USERS


def test_roles_that_name_the_feature_flags_name_the_modules() -> None:
    """app_deploy turns the flags on and off from Ansible: its fallback list is the modules' (vdp_names.FEATURE_FLAGS)."""
    text = (ROOT / "roles/app_deploy/defaults/main.yml").read_text()
    fallback = re.search(r"app_deploy_feature_flags: .*default\(\[([^\]]*)\]\)", text)
    assert fallback, "app_deploy_feature_flags must fall back to a literal list"
    assert [f.strip().strip("'\"") for f in fallback.group(1).split(",")] == list(names.FEATURE_FLAGS)
    spec = yaml.safe_load((ROOT / "roles/app_deploy/meta/argument_specs.yml").read_text())
    assert spec["argument_specs"]["main"]["options"]["app_deploy_feature_flags"]["default"] == list(names.FEATURE_FLAGS)


def test_readme_states_the_roles_run_wide_defaults() -> None:
    """The run-wide knobs a role defines (the rollback strategy, the time budgets): the README says the same."""
    knobs = readme_knobs()
    rollback = yaml.safe_load((ROOT / "roles" / "rollback" / "defaults" / "main.yml").read_text())
    strategy = re.fullmatch(r"\{\{ vdp_rollback_strategy \| default\('(\w+)'\) \}\}", rollback["rollback_strategy"])
    assert strategy, rollback["rollback_strategy"]
    assert knobs["vdp_rollback_strategy"] == strategy.group(1)
    budgets = yaml.safe_load((ROOT / "roles" / "run_context" / "defaults" / "main.yml").read_text())["run_context_budgets"]
    assert knobs["vdp_budgets"] == " / ".join(str(b["minutes"]) for b in budgets) + " min"
    monitor = yaml.safe_load((ROOT / "roles" / "monitor" / "defaults" / "main.yml").read_text())
    row = re.search(r"^\| `monitor_period_seconds` / `monitor_interval_seconds` \| (\d+) / (\d+) \|",
                    (ROOT / "README.md").read_text(), re.M)
    assert row, "the README's knobs table lacks the monitor gate's period and interval"
    assert (int(row.group(1)), int(row.group(2))) == (monitor["monitor_period_seconds"], monitor["monitor_interval_seconds"])



def test_every_extended_test_listed_exists() -> None:
    """tests/extended.txt names tests that exist: a renamed test would otherwise slip back into make test unnoticed."""
    for line in sorted(extended_tests()):
        path, _, name = line.partition("::")
        source = ROOT / path
        assert source.is_file(), line
        assert f"def {name.split('[')[0]}(" in source.read_text(), line
