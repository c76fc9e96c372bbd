#!/usr/bin/python
# The legacy baseline as an operation of its own: show it, take it (once, before the migration's first write), or -
# explicitly, with a reason that is recorded - take it again when the operator has explained what the application
# changed in the legacy tables since (deleted accounts, say). The baseline itself is module_utils/vdp_baseline.py's.
"""Ansible module: show, capture or re-take (recorded, with a reason) the legacy baseline the validation compares with."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_legacy_baseline
short_description: Show, capture or re-take the legacy baseline that proves the migration changed no legacy value
description:
  - The baseline holds, for every legacy table, a hash of every row (by primary key), the table's checksum and its
    triggers / policies / RLS, captured in one snapshot before the migration's first write. Validation compares the
    tables with it row by row and attributes to the application the rows it wrote since (new rows, rows whose
    C(updated_at) / C(last_sign_in_at) moved past the baseline).
  - I(state=present) captures it when there is none (the schema and data modules do this on their own).
  - I(state=rebaselined) replaces it with the legacy tables as they are now, and records in
    C(vdp_runbook.baseline_history) who did it, when, why (I(reason), required) and how the tables differed from the old
    baseline - for changes validation cannot attribute (a row deleted by the application, an edit without C(updated_at)),
    once the operator has explained them. Never silent, never automatic.
  - I(state=status) only reads it; with I(compare) it also compares the legacy tables with it, row by row (what the
    rollback proves at its end - C(unchanged_by_migration) for every table).
  - The baseline outlives a rollback (a second rollback proves against it again); the next forward run of the
    schema version keeps its summary under another key and takes a fresh one.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_run]
options:
  state:
    description: Show, capture once, or re-take with a reason.
    type: str
    choices: [status, present, rebaselined]
    default: status
  reason:
    description: Why the baseline is re-taken (what the application changed). Required with I(state=rebaselined).
    type: str
  operator:
    description: Who re-takes it (recorded); default the controller's user@host.
    type: str
  compare:
    description: With I(state=status), compare every legacy table with the baseline (read-only).
    type: bool
    default: false
  feature_flags:
    description: The migration's own feature flags, left out of the baseline (they are not legacy rows).
    type: list
    elements: str
    default: [organizational_model, multi_role_support]
  baseline_key:
    description: Key of the baseline in C(vdp_runbook.baseline).
    type: str
    default: organizational_model
attributes:
  check_mode:
    support: full
    description: Shows what would be captured or replaced (and the current differences); writes nothing.
  diff_mode:
    support: full
    description: Each table's rows and checksum before and after a re-baseline.
"""

EXAMPLES = r"""
- name: Re-take the baseline after the support team deleted three accounts during the migration
  vdp_legacy_baseline:
    db: "{{ vdp_production_db }}"
    state: rebaselined
    reason: "tickets 4411-4413: accounts deleted on request during the maintenance window"
"""

RETURN = r"""
baseline:
  description: Per table - rows, checksum, captured_at, run_id, whether rows are hashed one by one, reason.
  returned: always
  type: dict
differences:
  description: With I(state=rebaselined) or I(compare), each table against the baseline (new, app, deleted, changed rows).
  returned: when rebaselined or compared
  type: list
  elements: dict
unchanged:
  description: With I(compare) - true when the migration changed no legacy value (application writes aside).
  returned: when compared
  type: bool
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_baseline import compare_legacy, ensure_baseline, read_baseline, rebaseline
from ansible.module_utils.vdp_lease import this_controller
from ansible.module_utils.vdp_lifecycle import engine_argument_spec, run_module, text_problem
from ansible.module_utils.vdp_names import BASELINE_KEY, FEATURE_FLAGS


def argument_spec() -> dict[str, Any]:
    return engine_argument_spec(
        state=dict(type="str", default="status", choices=["status", "present", "rebaselined"]),
        reason=dict(type="str"),
        operator=dict(type="str"),
        compare=dict(type="bool", default=False),
        feature_flags=dict(type="list", elements="str", default=list(FEATURE_FLAGS)),
        baseline_key=dict(type="str", default=BASELINE_KEY, no_log=False),
    )


def input_problem(p: dict[str, Any]) -> str | None:
    if p["state"] == "rebaselined":
        if not p.get("reason"):
            return "a re-baseline needs a reason (vdp_rebaseline_reason): say what the application changed and why it is fine"
        return text_problem("reason", p["reason"], 1000)
    return None


def summary(baseline: dict[str, dict[str, Any]]) -> dict[str, Any]:
    keep = ("rows", "checksum", "captured_at", "run_id", "reason")
    return {t: dict({k: b.get(k) for k in keep}, per_row=bool(b.get("rows_table"))) for t, b in baseline.items()}


def work(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    before = read_baseline(conn, p["baseline_key"])
    result["baseline"] = summary(before)
    if p["state"] == "status":
        if p["compare"]:
            compared = compare_legacy(conn, p["baseline_key"]) or []
            result.update(
                differences=[c.as_dict() for c in compared],
                unchanged=bool(compared) and all(c.unchanged_by_migration and not c.structure_lost for c in compared),
            )
        return
    if p["state"] == "present":
        if before:
            return
        result["changed"] = True
        if not module.check_mode:
            ensure_baseline(conn, p.get("run_id"), p["baseline_key"], p["feature_flags"])
            result["baseline"] = summary(read_baseline(conn, p["baseline_key"]))
        return
    if module.check_mode:
        result.update(changed=True, differences=[c.as_dict() for c in (compare_legacy(conn, p["baseline_key"]) or [])])
        conn.rollback()
        return
    who = this_controller(p.get("operator")).holder
    outcome = rebaseline(conn, p.get("run_id"), who, p["reason"], p["baseline_key"], p["feature_flags"])
    after = read_baseline(conn, p["baseline_key"])
    result.update(changed=True, differences=outcome["differences"], baseline=summary(after),
                  diff=dict(before=summary(before), after=summary(after)))  # fmt: skip


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, baseline={})
    lock = module.params["state"] != "status"  # reading (and comparing) needs no lock: it answers while a run works
    run_module(module, result, work, component="baseline", lock=lock, problem=input_problem)


if __name__ == "__main__":
    main()
