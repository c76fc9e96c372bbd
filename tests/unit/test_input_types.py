"""Issue 7 item 12: values of the wrong type are refused up front, in the operator's words, before any connection.

Before (issue 7): an organization name given as an integer crashed a filter (`object of type '_AnsibleTaggedInt'
has no len()`), a list was stored as the text "['a', 'b']", and a flag name with a NUL reached PostgreSQL
(which alone refused it). Now the name, slug and flag names are `raw` options checked by text_problem.

No database is needed: every module call points at port 1, where nothing listens, so a refusal that names the
setting (and not "cannot connect") proves the module refused before connecting - it wrote nothing. The same
input through the playbook is tests/integration/test_input_types_playbook.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.code import module_utils

NOWHERE = dict(login_host="127.0.0.1", login_port=1, login_db="x", login_user="x")


def refused(result: dict[str, Any], *needles: str) -> None:
    assert result.get("failed"), result
    for needle in needles:
        assert needle in result["msg"], result["msg"]
    assert "cannot connect" not in result["msg"], "the module connected before checking its input"
    assert "Traceback" not in result["msg"] and "has no len()" not in result["msg"], result["msg"]


# --------------------------------------------------------------------------- text_problem itself


@pytest.mark.parametrize(
    ("value", "needle"),
    [
        (5, "must be text, got int 5: quote it in the inventory"),
        (5.0, "must be text, got float 5.0"),
        (True, "must be text, got bool True"),
        (["a", "b"], "must be text, got list ['a', 'b']"),
        ({"a": 1}, "must be text, got dict"),
        (None, "must be text, got NoneType"),
        ("a\x00b", "contains a NUL character: PostgreSQL cannot store it; remove it"),
        ("   ", "is empty"),
        ("x" * 201, "is 201 characters long: at most 200"),
    ],
)
def test_text_problem_names_the_setting_and_what_is_wrong(value: Any, needle: str) -> None:
    problem = module_utils("vdp_lifecycle").text_problem("organization name", value)
    assert problem is not None and problem.startswith("organization name ") and needle in problem, problem


@pytest.mark.parametrize("value", ["Individual Users", "Ünïcode ✓", "Robert'); DROP TABLE organizations;--"])
def test_text_problem_accepts_text(value: str) -> None:
    assert module_utils("vdp_lifecycle").text_problem("organization name", value) is None


# --------------------------------------------------------------------------- the modules


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (dict(name=5), ["organization name must be text, got int 5"]),
        (dict(name=["a", "b"]), ["organization name must be text, got list ['a', 'b']"]),
        (dict(name={"en": "Acme"}), ["organization name must be text, got dict"]),
        (dict(name="Acme\x00Corp"), ["organization name contains a NUL character"]),
        (dict(slug=5), ["slug must be text, got int 5"]),
        (dict(slug=["a"]), ["slug must be text, got list"]),
        (dict(slug="acme\x00"), ["slug contains a NUL character"]),
    ],
)
def test_organization_refuses_wrong_types_before_connecting(run_module: Any, args: dict[str, Any], needles: list[str]) -> None:
    result = run_module("vdp_organization", dict(dict(slug="acme", name="Acme"), **args, **NOWHERE))
    refused(result, *needles)
    assert not result.get("changed")


@pytest.mark.parametrize(
    ("names", "needles"),
    [
        ([5], ["flag name 5 must be text, got int 5"]),
        (["organizational_model", 7.5], ["flag name 7.5 must be text, got float"]),
        (["multi\x00role"], ["flag name 'multi\\x00role' contains a NUL character"]),
        ([["nested"]], ["must be text, got list"]),
        ([None], ["must be text, got NoneType"]),
    ],
)
def test_feature_flag_refuses_wrong_types_before_connecting(run_module: Any, names: list[Any], needles: list[str]) -> None:
    result = run_module("vdp_feature_flag", dict(names=names, **NOWHERE))
    refused(result, *needles)
    assert not result.get("changed")


def test_a_lone_integer_flag_name_is_refused_not_turned_into_text(run_module: Any) -> None:
    """`names: 5` (no list) would otherwise become ['5'] (Ansible's list conversion) and create a flag named 5."""
    result = run_module("vdp_feature_flag", dict(names=5, **NOWHERE))
    refused(result, "names must be a list of flag names, got int 5")


def test_one_flag_name_alone_still_counts_as_a_list_of_one(run_module: Any) -> None:
    result = run_module("vdp_feature_flag", dict(names="organizational_model", **NOWHERE))
    assert result.failed and "cannot connect" in result["msg"]  # accepted: it went on to connect
