#!/usr/bin/python
# Read-only facts of the organizational migration: the seed's pre- and post-migration metrics
# (metric names verbatim), the relationship anomalies, and every invariant of DESIGN §4 as a list of
# checks with counts and samples, plus the legacy content checksums against the stored baseline.
# The validation role asserts on `failed`; this module never writes.
"""Ansible module: pre/post migration metrics and invariant checks, as data (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_migration_facts
short_description: Seed metrics, anomalies and the organizational migration's invariants, as data
description:
  - I(phase=pre) returns the seed's pre-migration counts (C(Total Users), C(Active Sponsor Relationships),
    C(Total Virtue Progress Records)), the relationship anomalies (self, orphan, duplicate active pairs), where
    the sign-in time lives, the current legacy content checksums and the ledger.
  - I(phase=post) adds the seed's post-migration metrics (C(Users with Organization), C(Coach Assignments Created),
    C(Users with Roles Assigned)) and integrity issues (C(Orphaned Users), C(Missing Role Assignments),
    C(Invalid Organization References)), and checks every invariant - roles rule, last_activity rule, one assignment
    per valid active pair with the earliest created_at, no self/orphan assignment, RLS and no C(anon) access on the new
    tables, the sign-up defaults trigger, the feature flags, the default organization's capacity, ledger versions,
    the foreign key validated, no INVALID index, and each legacy table against the baseline stored before the
    migration's first write, row by row - rows the application wrote since (inserted, or with C(updated_at) /
    C(last_sign_in_at) moved past the baseline) are reported as application writes, never as loss; a row deleted
    or changed any other way fails; triggers, policies and RLS must be intact.
  - Robust to stale planner statistics (every set comparison is a hash or merge join).
  - Never writes and never changes anything; C(failed_checks) lists what the caller must treat as a failure.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_run]
options:
  phase:
    description: Which facts to gather.
    type: str
    choices: [pre, post]
    default: post
  organization_slug:
    description: The default organization the legacy users joined.
    type: str
    default: individual-users
  capacity_policy:
    description:
      - The capacity policy to judge by; with C(report) an organization over capacity is a warning, not a failure.
      - C(from_ledger) (default) follows the policy the data step recorded in the ledger (falling back to C(raise)).
    type: str
    choices: [from_ledger, raise, fail, report]
    default: from_ledger
  feature_flags:
    description: The migration's feature flags that must exist (and are left out of the legacy comparison).
    type: list
    elements: str
    default: [organizational_model, multi_role_support]
  require_versions:
    description: Ledger versions that must be recorded (post phase).
    type: list
    elements: str
    default: []
  sample_limit:
    description: How many offending rows each check lists.
    type: int
    default: 10
  baseline_key:
    description: Key of the legacy baseline in C(vdp_runbook.baseline).
    type: str
    default: organizational_model
attributes:
  check_mode:
    support: full
    description: Read-only in any mode; gathers the same facts.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Gather the post-migration facts
  vdp_migration_facts:
    phase: post
    require_versions: [20250103_organizational_model_schema, 20250103_organizational_model_data]
  register: __validation_facts

- name: Fail on any broken invariant
  ansible.builtin.assert:
    that: __validation_facts.failed_checks | length == 0
    fail_msg: "{{ __validation_facts.failed_checks | map(attribute='name') | join(', ') }}"
"""

RETURN = r"""
seed_pre_migration:
  description: The seed's pre-migration metrics, metric name -> count.
  returned: always
  type: dict
  sample: {Total Users: 2000, Active Sponsor Relationships: 1530, Total Virtue Progress Records: 10012}
seed_post_migration:
  description: The seed's post-migration metrics, metric name -> count.
  returned: phase=post
  type: dict
seed_integrity:
  description: The seed's integrity issues, issue -> count (all must be 0).
  returned: phase=post
  type: dict
anomalies:
  description: Self, orphan and duplicate-active relationships, each {count, active, sample}.
  returned: always
  type: dict
sign_in_source:
  description: Where the last sign-in time lives (profiles, auth.users or none).
  returned: always
  type: str
checks:
  description: Every invariant checked, [{name, ok, detail, count, sample, severity}].
  returned: phase=post
  type: list
  elements: dict
failed_checks:
  description: The checks with ok=false and severity error.
  returned: always
  type: list
  elements: dict
warnings_checks:
  description: The checks with ok=false and severity warning.
  returned: always
  type: list
  elements: dict
legacy:
  description: Per legacy table, rows and checksum before (baseline) and after, and whether unchanged.
  returned: phase=post
  type: dict
legacy_checksums:
  description: Current content checksums of the legacy tables (phase=pre).
  returned: phase=pre
  type: dict
ledger:
  description: Applied versions.
  returned: always
  type: list
  elements: str
report:
  description: Supporting figures (capacity, feature flags, foreign key state).
  returned: phase=post
  type: dict
"""

from dataclasses import asdict
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_argspec import range_problem, shared_options
from ansible.module_utils.vdp_baseline import legacy_snapshot
from ansible.module_utils.vdp_invariants import SEED_INTEGRITY_SQL, SEED_POST_MIGRATION_SQL, metric_rows, post_migration_checks
from ansible.module_utils.vdp_ledger import ledger
from ansible.module_utils.vdp_legacy import detect_sign_in_source, relationship_anomalies, seed_pre_migration_counts
from ansible.module_utils.vdp_lifecycle import engine_argument_spec, run_module
from ansible.module_utils.vdp_names import BASELINE_KEY, CAPACITY_POLICIES, CAPACITY_POLICY, DATA_VERSION
from ansible.module_utils.vdp_target import target_schema_missing


def argument_spec() -> dict[str, Any]:
    return engine_argument_spec(
        **shared_options("organization_slug", "feature_flags"),
        phase=dict(type="str", default="post", choices=["pre", "post"]),
        capacity_policy=dict(type="str", default="from_ledger", choices=["from_ledger", *CAPACITY_POLICIES]),
        require_versions=dict(type="list", elements="str", default=[]),
        sample_limit=dict(type="int", default=10),
        baseline_key=dict(type="str", default=BASELINE_KEY, no_log=False),
    )


def capacity_policy(conn: Any, wanted: str) -> str:
    """The policy to judge capacity by: the one the data step recorded (one source), unless one is given."""
    if wanted != "from_ledger":
        return wanted
    row = ledger(conn).get(DATA_VERSION)
    recorded = ((row.details if row else {}).get("capacity") or {}).get("policy")
    return recorded if recorded in CAPACITY_POLICIES else CAPACITY_POLICY


def gather(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    source = detect_sign_in_source(conn)
    result["sign_in_source"] = source or "none"
    result["seed_pre_migration"] = seed_pre_migration_counts(conn)
    result["anomalies"] = relationship_anomalies(conn, p["sample_limit"])
    result["ledger"] = sorted(ledger(conn))
    if p["phase"] == "pre":
        snapshot = legacy_snapshot(conn, flags=p["feature_flags"])
        result["legacy_checksums"] = {t: dict(rows=s["rows"], checksum=s["checksum"]) for t, s in snapshot.items()}
        return
    if not target_schema_missing(conn):
        result["seed_post_migration"] = metric_rows(conn, SEED_POST_MIGRATION_SQL)
        result["seed_integrity"] = metric_rows(conn, SEED_INTEGRITY_SQL)
    policy = capacity_policy(conn, p["capacity_policy"])
    result["capacity_policy"] = policy
    checks, report = post_migration_checks(
        conn,
        p["organization_slug"],
        source,
        sample_limit=p["sample_limit"],
        capacity_policy=policy,
        require_versions=p["require_versions"],
        baseline_key=p["baseline_key"],
        flags=p["feature_flags"],
    )
    result["legacy"] = report.pop("legacy", {})
    result["report"] = report
    result["checks"] = [asdict(c) for c in checks]
    result["failed_checks"] = [asdict(c) for c in checks if not c.ok and c.severity == "error"]
    result["warnings_checks"] = [asdict(c) for c in checks if not c.ok and c.severity != "error"]


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    problem = range_problem(module.params, "sample_limit", 0, 1000)
    result: dict[str, Any] = dict(changed=False, checks=[], failed_checks=[], warnings_checks=[])
    # Read-only: one REPEATABLE READ snapshot, so every figure describes the same moment.
    run_module(module, result, gather, component="facts", read_only=True, problem=problem)


if __name__ == "__main__":
    main()
