#!/usr/bin/python
# The run record, written one way by every phase: <phase>.json beside run.json, which is rewritten (atomically)
# at every step, so a run killed half-way still leaves a run.json that says how far it got.
"""Ansible module: write a phase's record and keep the run's run.json up to date (incrementally, atomically)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_run_record
short_description: Write a phase record and update the run's run.json, incrementally and atomically
description:
  - I(state=started) opens (or resumes) the run record - C(run.json) in I(run_dir) with the run id, start time,
    operator, runbook version (the git commit of I(project_dir)), environment, the targets (host:port/db and the
    bucket, never a secret) and whether it is a dry run - and marks I(phase) as running.
  - I(state=recorded) writes I(record) to C(<phase>.json) and notes the phase in C(run.json) with its status, start,
    end and duration, and its budget when one is given (whether it was met).
  - I(state=finished) stamps the run's end time and outcome.
  - Every file is written to a temporary name and renamed, so C(run.json) is always whole; a run killed at any
    point leaves the record of everything before the kill.
  - The run record is a log of what happened, not a change to a managed system - it is written in check mode too,
    and never reported as changed.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module]
options:
  run_dir:
    description: The run's record folder (artifacts/runs/<run id>).
    type: path
    required: true
  run_id:
    description: The run id.
    type: str
    required: true
  state:
    description: Open the record, record a phase, or close the record.
    type: str
    choices: [started, recorded, finished]
    default: recorded
  phase:
    description: The phase (C(preflight), C(backup), ...); required for I(state=recorded).
    type: str
  status:
    description: The phase's (or, for I(state=finished), the run's) outcome, e.g. C(ok), C(failed), C(skipped), C(planned).
    type: str
  summary:
    description: One line an operator reads first (what the phase did or would do).
    type: str
  record:
    description: The phase's full record (written to C(<phase>.json)).
    type: dict
  started_at:
    description: When the phase started (ISO 8601, UTC); default the time it was first marked running.
    type: str
  budget_seconds:
    description: The phase's own time budget, to say whether it was met (the rehearsal's, against the window).
    type: float
  budgets:
    description:
      - With I(state=finished), the seed's time budgets (vdp_budgets) - each is measured from the first start to the
        last end of its I(phases) that ran and written to C(run.json) as C(budgets) with C(seconds) and C(met).
    type: list
    elements: dict
  operator:
    description: Who runs it (user@host or the AWX job and launcher).
    type: str
  project_dir:
    description: The runbook's folder, whose git commit names the runbook version.
    type: path
  environment:
    description: The inventory's environment (sandbox, staging, production).
    type: str
  targets:
    description: Where the run works - production, staging, S3 (addresses only; never a secret).
    type: dict
  check_mode_run:
    description: Whether this is a dry run (C(--check)).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Writes the record in check mode too (what a dry run found is its point); changes no managed system.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Record the backup phase
  vdp_run_record:
    run_dir: "{{ vdp_run_dir }}"
    run_id: "{{ vdp_run_id }}"
    phase: backup
    status: ok
    summary: "412.3 MiB to s3://virtue-db-backups/..."
    record: "{{ __backup_record }}"
"""

RETURN = r"""
run_json:
  description: Path of run.json.
  returned: always
  type: str
phase_file:
  description: Path of the phase's record file.
  returned: when state=recorded
  type: str
budgets:
  description: Each budget with the measured C(seconds) and whether it was C(met) (C(null) when its phases did not run).
  returned: when state=finished
  type: list
  elements: dict
  sample: [{id: maintenance_window, name: Maintenance window, minutes: 30, phases: [schema, data], seconds: 41.2, met: true}]
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_lifecycle import run_module
from ansible.module_utils.vdp_record import close_run, open_run, record_phase


def argument_spec() -> dict[str, Any]:
    return dict(
        run_dir=dict(type="path", required=True),
        run_id=dict(type="str", required=True),
        state=dict(type="str", default="recorded", choices=["started", "recorded", "finished"]),
        phase=dict(type="str"),
        status=dict(type="str"),
        summary=dict(type="str"),
        record=dict(type="dict"),
        started_at=dict(type="str"),
        budget_seconds=dict(type="float"),
        budgets=dict(type="list", elements="dict"),
        operator=dict(type="str"),
        project_dir=dict(type="path"),
        environment=dict(type="str"),
        targets=dict(type="dict"),
        check_mode_run=dict(type="bool", default=False),
    )


def work(module: AnsibleModule, _conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    if p["state"] == "started":
        result.update(open_run(p))
    elif p["state"] == "finished":
        result.update(close_run(p))
    else:
        result.update(record_phase(p))


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    problem = "state=recorded needs phase" if module.params["state"] == "recorded" and not module.params["phase"] else None
    run_module(module, {"changed": False}, work, component="record", database=False, problem=problem)


if __name__ == "__main__":
    main()
