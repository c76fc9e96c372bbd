#!/usr/bin/python
# One run at a time: take, renew, inspect or release the run lease in production (vdp_runbook.run_lease),
# and ask a running run to stop. The logic is module_utils/vdp_lease.py's; this file is arguments and results.
"""Ansible module: the run lease (one migration run at a time) and the stop request."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_run_lease
short_description: Take, renew, release or inspect the migration's run lease; ask a run to stop
description:
  - The run lease is one row in production's C(vdp_runbook.run_lease) - run id, holder (operator or AWX job),
    controller host and ansible-playbook pid, phase, heartbeat - so two runs of the runbook never interleave (a
    second run's staging restore dropping the database under the first one's rehearsal).
  - I(state=acquired) takes the lease for I(run_id), or renews it when this run already holds it (every phase does
    this first). Another run holding it fails at once, naming it. A holder that is gone - its ansible-playbook process
    is dead on this host, or its heartbeat is older than its TTL, and none of its sessions is connected - is stale; it
    is taken over only when I(takeover) names that run, or resumed by the same run id; never silently.
  - I(state=released) releases it if I(run_id) holds it (the report does this). I(state=status) only reads it, with
    the sessions of the holding run still connected (a module still running after ansible-playbook was killed).
  - I(state=stop_requested) asks the holding run (or I(run_id)) to stop - its batch loops, backup upload and restore
    stop cleanly at their next safe point.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres]
options:
  run_id:
    description: The run id (the holder to be, or the run to stop; default for I(state=stop_requested) the holder).
    type: str
  state:
    description: What to do with the lease.
    type: str
    choices: [acquired, released, status, stop_requested]
    default: acquired
  phase:
    description: The phase now starting, recorded with the heartbeat (what status.yml shows).
    type: str
  operator:
    description: Who runs it (e.g. C(AWX job 42 launched by alice)); default the controller's user@host.
    type: str
  takeover:
    description: The run id of a STALE lease to take over explicitly. Refused while that run may be alive.
    type: str
  ttl_seconds:
    description: After how long without a heartbeat (and with none of its sessions connected) a holder is stale.
    type: int
    default: 1800
  migration_complete:
    description:
      - With I(state=released) - this run completed the migration (deployed, validated, watched, contracted). The
        release is logged as such, and the next run's preflight, finding no other run logged since, has nothing to do.
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Reports what it would take, renew, release or request; writes nothing.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Take or renew the run lease
  vdp_run_lease:
    run_id: "{{ vdp_run_id }}"
    phase: backup
    db: "{{ vdp_production_db }}"

- name: Take over the lease of a run that crashed
  vdp_run_lease:
    run_id: "{{ vdp_run_id }}"
    takeover: 20261201T101500Z-ab12
"""

RETURN = r"""
action:
  description: taken, renewed, resumed, taken_over, released, would_take, stop_requested or none.
  returned: always
  type: str
message:
  description: One line saying what happened.
  returned: always
  type: str
lease:
  description: The lease after the action (run_id, holder, controller_host, controller_pid, phase, heartbeat_age, sessions, ...).
  returned: always
  type: dict
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_errors import OperatorError
from ansible.module_utils.vdp_lease import LEASE_TTL_SECONDS, acquire, read_lease, release, request_cancel, this_controller
from ansible.module_utils.vdp_lifecycle import run_module
from ansible.module_utils.vdp_pg import pg_connection_argument_spec


def argument_spec() -> dict[str, Any]:
    spec = pg_connection_argument_spec()
    spec.update(
        run_id=dict(type="str"),
        state=dict(type="str", default="acquired", choices=["acquired", "released", "status", "stop_requested"]),
        phase=dict(type="str"),
        operator=dict(type="str"),
        takeover=dict(type="str"),
        ttl_seconds=dict(type="int", default=LEASE_TTL_SECONDS),
        migration_complete=dict(type="bool", default=False),
    )
    return spec


def input_problem(p: dict[str, Any]) -> str | None:
    if p["state"] in ("acquired", "released") and not p.get("run_id"):
        return f"state={p['state']} needs run_id (the run context sets vdp_run_id)"
    if p["ttl_seconds"] < 60:
        return "ttl_seconds must be at least 60"
    return None


def work(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    me = this_controller(p.get("operator"))
    state = p["state"]
    if state == "status":
        lease = read_lease(conn)
        result.update(action="none", lease=lease.as_dict() if lease else None,
                      message=lease.describe() if lease else "no run has taken the lease yet")  # fmt: skip
        return
    if state == "stop_requested":
        lease = read_lease(conn)
        run_id = p.get("run_id") or (lease.run_id if lease and lease.released_at is None else None)
        if not run_id:
            raise OperatorError("no run holds the lease: there is nothing to stop")
        asked = request_cancel(conn, run_id, me, module.check_mode)
        result.update(action="stop_requested" if asked else "none", changed=asked, lease=(read_lease(conn) or lease).as_dict(),
                      message=f"{'asked' if asked else 'already asked, or not holding:'} run {run_id} to stop")  # fmt: skip
        return
    if state == "released":
        outcome = release(conn, p["run_id"], me, module.check_mode, complete=p["migration_complete"])
    else:
        outcome = acquire(conn, p["run_id"], me, p.get("phase"), p["ttl_seconds"], p.get("takeover"), module.check_mode)
    result.update(action=outcome.action, message=outcome.message, changed=outcome.changed,
                  lease=outcome.lease.as_dict() if outcome.lease else None)  # fmt: skip


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, action="none", message="", lease=None)
    run_module(module, result, work, component="lease", lock=False, problem=input_problem(module.params))


if __name__ == "__main__":
    main()
