# Options that several vdp_* modules take, spelt once - type, default and allowed range - so the data step's
# modules (vdp_org_membership, vdp_coach_assignments) and the facts that validate them (vdp_migration_facts)
# cannot drift apart: the same batch size limit with the same message, the same default organization and
# feature flags. What an option means to a module stays in that module's DOCUMENTATION (tests/unit/
# test_one_source.py checks each documented default against these specs).
"""Shared option specs of the vdp_* modules, and the range checks that go with them."""

from __future__ import annotations

import copy
from typing import Any

from ansible.module_utils.vdp_names import BATCH_SIZE, DEFAULT_ORG_SLUG, FEATURE_FLAGS

MAX_BATCH_SIZE = 1_000_000

_OPTIONS: dict[str, dict[str, Any]] = dict(
    organization_slug=dict(type="str", default=DEFAULT_ORG_SLUG),
    batch_size=dict(type="int", default=BATCH_SIZE),
    feature_flags=dict(type="list", elements="str", default=list(FEATURE_FLAGS)),
    progress_file=dict(type="path"),
)


def shared_options(*names: str) -> dict[str, Any]:
    """The specs of the named shared options, as fresh copies (AnsibleModule may fill a spec in)."""
    return {name: copy.deepcopy(_OPTIONS[name]) for name in names}


def batch_size_problem(params: dict[str, Any]) -> str | None:
    size = params["batch_size"]
    if not 1 <= size <= MAX_BATCH_SIZE:
        return f"batch_size {size} is out of range: use 1 .. {MAX_BATCH_SIZE} (default {BATCH_SIZE})"
    return None


def range_problem(params: dict[str, Any], name: str, low: int, high: int) -> str | None:
    """`name must be between low and high` when the option is outside [low, high]."""
    if not low <= params[name] <= high:
        return f"{name} must be between {low} and {high}"
    return None


def first_problem(*problems: str | None) -> str | None:
    """The first problem found, in the order the checks are given (the one the operator fixes first)."""
    return next((problem for problem in problems if problem), None)
