#!/usr/bin/python
# Where the long steps of a run stand, from the progress files they wrote (module_utils/vdp_progress.py) into the
# run record folder: running (with its ETA), done, failed, stopped - or interrupted, when a step's last update is
# old and nothing of its run is connected any more. playbooks/status.yml prints the lines. Read-only.
"""Ansible module: read a run's progress files and say where each long step stands."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_progress_info
short_description: Say where the long steps of a migration run stand, from their progress files
description:
  - Reads every progress file of the run record folder I(run_dir) (C(<run_dir>/progress/*.json), written by the long
    modules - backup, its verification, restore, the data batches - while they run) and says for each where it stands,
    with one line in words.
  - C(running) with its count, rate and ETA; C(done), C(failed) or C(stopped) with its last count; C(stalled) when its
    last update is older than I(stale_after_seconds) while the run is still connected (I(run_connected)); and
    C(interrupted) when its last update is that old and nothing of the run is connected - the run was killed there.
  - Read-only; nothing is written, so it runs the same in check mode.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module]
options:
  run_dir:
    description: The run record folder (C(artifacts/runs/<run id>)).
    type: path
    required: true
  run_connected:
    description:
      - Whether a session of the run is connected right now (the run lease's sessions); a running step without a
        recent update is then C(stalled), not C(interrupted).
    type: bool
    default: false
  stale_after_seconds:
    description: After how long without an update a running step is no longer taken as running.
    type: int
    default: 120
attributes:
  check_mode:
    support: full
    description: Reads only; the same in check mode.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Read where the run's long steps stand
  vdp_progress_info:
    run_dir: "{{ vdp_run_dir }}"
    run_connected: "{{ (lease.sessions | default([])) | length > 0 }}"
  register: progress
"""

RETURN = r"""
steps:
  description:
    - Each progress file, oldest first - its content (what, unit, done, total, started_at, updated_at, rate_per_s,
      eta_seconds, note) and name (the file's, C(<phase>-<module>)), state (running, stalled, interrupted, done, failed,
      stopped), age_seconds (since its last update), percent (null when the total is unknown) and line.
  returned: always
  type: list
  elements: dict
lines:
  description: One line per step, in words (what status.yml prints).
  returned: always
  type: list
  elements: str
"""

import os
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_lifecycle import run_module
from ansible.module_utils.vdp_progress import STALE_AFTER_SECONDS, read_steps

PROGRESS_DIR = "progress"


def argument_spec() -> dict[str, Any]:
    return dict(
        run_dir=dict(type="path", required=True),
        run_connected=dict(type="bool", default=False),
        stale_after_seconds=dict(type="int", default=STALE_AFTER_SECONDS),
    )


def input_problem(p: dict[str, Any]) -> str | None:
    if not 10 <= p["stale_after_seconds"] <= 86400:
        return f"stale_after_seconds must be between 10 and 86400, got {p['stale_after_seconds']}"
    return None


def work(module: AnsibleModule, _conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    steps = read_steps(os.path.join(p["run_dir"], PROGRESS_DIR), time.time(), p["run_connected"], p["stale_after_seconds"])
    result.update(steps=steps, lines=[step["line"] for step in steps])


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, steps=[], lines=[])
    run_module(module, result, work, component="progress", database=False, problem=input_problem(module.params))


if __name__ == "__main__":
    main()
