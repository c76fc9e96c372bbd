"""Issue 7 item 12 through the playbook: a wrongly typed organization name or flag name given as extra vars.

The module-level refusals are tests/unit/test_input_types.py. Here the operator's own path - data.yml with
`-e '{"org_data_migration_organization": {"name": 5}}'` - must stop with a message naming the inventory key,
before anything is written: production's rows are physically unchanged (every row's ctid and xmin).

Before (issue 7): the integer crashed a Jinja filter (`object of type '_AnsibleTaggedInt' has no len()`), a
list was stored as the organization's name "['a', 'b']", a flag name with a NUL reached PostgreSQL.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.engine import apply_schema, fingerprint, login, scalar
from tests.support.sandbox import Sandbox
from tests.support.world import play

pytestmark = pytest.mark.slow  # ansible-playbook runs against the sandbox

NAME = "org_data_migration_organization.name must be text"
FLAGS = "vdp_feature_flags must be a list of flag names, each text"


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"org_data_migration_organization": {"name": 5}}, f"{NAME} (got int)"),
        ({"org_data_migration_organization": {"name": ["a", "b"]}}, f"{NAME} (got list)"),
        ({"vdp_feature_flags": ["organizational_model", 5]}, FLAGS),
        ({"vdp_feature_flags": ["organizational\u0000model"]}, FLAGS),
    ],
    ids=["name-int", "name-list", "flag-int", "flag-nul"],
)
def test_data_step_refuses_wrongly_typed_names_before_writing_anything(
    sandbox: Sandbox, world: dict[str, Any], run_module: Any, extra: dict[str, Any], needle: str
) -> None:
    prod = world["vdp_production_db"]
    assert not apply_schema(run_module, prod).failed
    # The run lease's own tables exist beforehand: the fingerprint then covers every relation, lease left aside.
    assert not run_module("vdp_run_lease", dict(login(prod), run_id="setup")).failed
    assert not run_module("vdp_run_lease", dict(login(prod), run_id="setup", state="released")).failed
    before = fingerprint(prod, physical=True)
    result = play(sandbox, world, "playbooks/data.yml", "-e", json.dumps(extra))
    out = result.stdout
    assert result.returncode != 0, out[-3000:]
    assert needle in out, out[-3000:]
    assert "has no len()" not in out and "Traceback" not in out, out[-3000:]
    assert "TASK [org_data_migration : Ensure the default organization exists]" not in out, "it got as far as writing"
    assert fingerprint(prod, physical=True) == before, "the refused data step wrote to production"
    assert scalar(prod, "SELECT count(*) FROM public.organizations") == 0
