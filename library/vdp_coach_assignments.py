#!/usr/bin/python
# The data step's assignment part: one coach assignment per distinct valid active
# (sponsor, practitioner) pair, assigned_at = the pair's earliest created_at; self and orphan
# relationships are skipped, counted and listed. Batched inserts, ON CONFLICT DO NOTHING; a re-run
# finds nothing pending and writes nothing. SQL in module_utils/vdp_rules.py, batching in vdp_assignments.py.
"""Ansible module: coach assignments from active sponsor relationships, batched and idempotent."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_coach_assignments
short_description: Convert active sponsor relationships into coach assignments, batched and idempotent
description:
  - Inserts into C(practitioner_assignments) one C(coach) assignment per distinct active
    (sponsor, practitioner) pair of C(sponsor_practitioner_relationships), in the organization
    I(organization_slug), with C(assigned_at) the earliest C(created_at) of the pair's active rows.
  - Skips, counts and lists (never silently) self-relationships (sponsor = practitioner) and orphan
    relationships (sponsor or practitioner without a profile). Duplicate active rows of a pair give one
    assignment; the collapsed rows are counted.
  - Inserts in batches of at most I(batch_size) pairs, one transaction each, each sized from the last ones' time to
    take about 0.25 s (the foreign-key checks lock the profiles they reference until the batch commits), in
    (practitioner, sponsor) order (the unique key's order), C(ON CONFLICT DO NOTHING) on the assignment's unique key.
    A batch that fails on one bad row is retried row by row, so one bad row never
    sinks the rest; failed rows are reported and fail the task.
  - A re-run finds no pending pair and writes nothing.
  - With I(progress_file), writes after each batch the assignments present (those of earlier runs included) of the
    valid pairs, the rate and the ETA.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_run, vdp_migration_lock, vdp_progress]
options:
  organization_slug:
    description: Slug of the organization of the assignments (it must exist).
    type: str
    default: individual-users
  batch_size:
    description: >-
      The largest batch of pairs (one transaction each); each batch is sized to take about 0.25 s
      (C(BATCH_TARGET_SECONDS) in module_utils/vdp_batching.py), at least 500 pairs.
    type: int
    default: 20000
  sample_limit:
    description: How many skipped or failed relationships to list in the result (the file I(not_converted_file) has them all).
    type: int
    default: 20
  not_converted_file:
    description:
      - A file on the controller that receives EVERY relationship not converted (self and orphan), one JSON object per
        line with its id, sponsor, practitioner, active flag, created_at and the reason - the complete list for the run
        record, not a sample. Written in check mode too (it is a report, not a change), streamed so memory stays flat.
    type: path
attributes:
  check_mode:
    support: full
    description: Counts the pairs that would be converted and the relationships that would be skipped, read-only.
  diff_mode:
    support: full
    description: Number of coach assignments of the organization before and after.
"""

EXAMPLES = r"""
- name: Create the coach assignments and list every relationship not converted
  vdp_coach_assignments:
    db: "{{ vdp_production_db }}"
    not_converted_file: "{{ vdp_run_dir }}/data.not_converted.jsonl"
"""

RETURN = r"""
inserted:
  description: Assignments inserted by this run (in check mode, that would be inserted).
  returned: always
  type: int
already_present:
  description: Valid pairs whose assignment already existed.
  returned: always
  type: int
valid_pairs:
  description: Distinct valid active (sponsor, practitioner) pairs, the number of coach assignments expected.
  returned: always
  type: int
duplicates:
  description: Pairs with more than one active row, and the rows collapsed into their one assignment.
  returned: always
  type: dict
not_converted:
  description: >-
    Relationships not converted, {self_relationships, orphan_relationships}, each with count (all rows),
    active (active rows: the ones a naive conversion would have tried) and a sample.
  returned: always
  type: dict
failed_rows:
  description: Pairs whose insert failed (with the error), {count, sample}; the task fails when count > 0.
  returned: always
  type: dict
batches:
  description: >-
    Batches committed, the largest allowed (size), the slowest one (ms), lock-timeout retries, and the sizes the
    batches took (sizes: limit, target_ms, smallest, largest, slowest_ms).
  returned: always
  type: dict
organization_id:
  description: Id of the organization of the assignments.
  returned: always
  type: str
duration_ms:
  description: Wall time of the run's database work (without the module's start-up).
  returned: always
  type: int
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_argspec import batch_size_problem, first_problem, range_problem, shared_options
from ansible.module_utils.vdp_assignments import (
    AssignmentProgress,
    assignments_plan,
    build_pairs,
    drop_pairs,
    has_coach_assignments,
    migrate_assignments,
    write_not_converted,
)
from ansible.module_utils.vdp_data_step import analyze, target_organization
from ansible.module_utils.vdp_errors import EngineError
from ansible.module_utils.vdp_legacy import relationship_classes
from ansible.module_utils.vdp_lifecycle import engine_argument_spec, lock_policy, run_module, run_options_problem
from ansible.module_utils.vdp_progress import ProgressFile, progress_file

# What the step wrote or read most, re-analyzed after the inserts.
ANALYZED_TABLES = ("public.practitioner_assignments", "public.profiles", "public.organizations")


def argument_spec() -> dict[str, Any]:
    return engine_argument_spec(
        **shared_options("organization_slug", "batch_size", "progress_file"),
        sample_limit=dict(type="int", default=20),
        not_converted_file=dict(type="path"),
    )


def validate(params: dict[str, Any]) -> str | None:
    return first_problem(
        batch_size_problem(params), range_problem(params, "sample_limit", 0, 10_000), run_options_problem(params)
    )


def run(module: AnsibleModule, conn: Any, result: dict[str, Any], pfile: ProgressFile) -> None:
    p = module.params
    pfile.start(None, 0, "reading the relationships")
    schema_ready, org_id = target_organization(conn, p["organization_slug"], module.check_mode)
    result["organization_id"] = None if org_id is None else str(org_id)
    if module.check_mode or has_coach_assignments(conn, org_id):
        plan = assignments_plan(conn, org_id, schema_ready)  # read-only pass: a re-run stops here
        if module.check_mode or plan["pending"] == 0:
            classes = relationship_classes(conn, p["sample_limit"])
        else:
            plan, classes = build_pairs(conn, org_id, p["sample_limit"])
    else:  # first run: nothing can be present; count and classify while building the pair table
        plan, classes = build_pairs(conn, org_id, p["sample_limit"], none_present=True)
    result["not_converted"] = classes
    conn.commit()
    if p.get("not_converted_file"):
        result["not_converted_file"] = write_not_converted(conn, p["not_converted_file"])
    result.update(
        valid_pairs=plan["valid_pairs"],
        already_present=plan["already_present"],
        duplicates=dict(pairs=plan["duplicate_pairs"], rows_collapsed=plan["duplicate_rows_collapsed"]),
    )
    result["diff"] = dict(
        before=dict(coach_assignments=plan["already_present"]), after=dict(coach_assignments=plan["valid_pairs"])
    )
    if module.check_mode:
        result.update(inserted=plan["pending"], changed=plan["pending"] > 0)
        return
    pfile.stage("assignments", "pairs", plan["valid_pairs"], plan["already_present"])
    if plan["pending"] == 0:
        drop_pairs(conn)
        return
    insert(module, conn, result, org_id, pfile)


def insert(module: AnsibleModule, conn: Any, result: dict[str, Any], org_id: Any, pfile: ProgressFile) -> None:
    """The batches, then ANALYZE; fails (after reporting them) when rows could not be inserted."""
    p = module.params
    present = pfile.done
    progress = AssignmentProgress()
    try:
        migrate_assignments(
            conn,
            org_id,
            p["batch_size"],
            progress,
            lock_policy(module, "assignments"),
            sample_limit=p["sample_limit"],
            run_id=p.get("run_id"),
            report=lambda inserted: pfile.update(present + inserted),
        )
    finally:
        result.update(
            inserted=progress.inserted,
            changed=progress.inserted > 0,
            failed_rows=dict(count=progress.failed_count, sample=progress.failed),
            batches=dict(
                count=progress.batches, size=p["batch_size"], slowest_ms=progress.max_batch_ms,
                lock_retries=progress.lock_retries, sizes=progress.sizes,
            ),
        )
    pfile.update(present + progress.inserted, note="ANALYZE")
    for note in analyze(conn, *ANALYZED_TABLES):
        module.warn(note)
    if progress.failed_count:
        raise EngineError(
            f"{progress.failed_count} coach assignment(s) could not be inserted (first: {progress.failed[0]['error']}); "
            f"the other {progress.inserted} were committed. Fix the listed rows and re-run: only the missing ones are inserted",
            failed_rows=result["failed_rows"],
        )


def timed_run(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    started = time.monotonic()
    try:
        with progress_file(module.params.get("progress_file"), "assignments", "pairs", module.check_mode) as pfile:
            run(module, conn, result, pfile)
    finally:
        result["duration_ms"] = int((time.monotonic() - started) * 1000)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(
        changed=False,
        inserted=0,
        already_present=0,
        valid_pairs=0,
        duplicates=dict(pairs=0, rows_collapsed=0),
        not_converted={},
        failed_rows=dict(count=0, sample=[]),
        batches=dict(count=0, size=module.params["batch_size"], slowest_ms=0, lock_retries=0),
        organization_id=None,
        duration_ms=0,
    )
    run_module(module, result, timed_run, component="assignments", problem=validate(module.params))


if __name__ == "__main__":
    main()
