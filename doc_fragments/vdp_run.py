# Documentation of the options every vdp_* engine module shares besides the connection
# (module_utils/vdp_lifecycle.py's run_options_spec), written once: `extends_documentation_fragment: [vdp_run]`.
"""Doc fragment: run id and lock-wait options of the vdp_* engine modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  run_id:
    description:
      - The runbook's run id. It ends the session's C(application_name) (C(vdp-runbook/<step> run <run id>)), which is
        how the run lease recognises a run's sessions and how a lock-holder message names the run; it is recorded
        with what the module writes (ledger, baseline); the batch loops renew the run lease's heartbeat and stop
        cleanly when a stop was requested for it (playbooks/stop.yml).
    type: str
  lock_retries:
    description:
      - How many times a statement or batch that timed out waiting for a lock (C(lock_timeout), about a second) is
        retried, with exponential backoff and jitter. When all fail, the module fails naming the sessions that
        blocked it (pid, user, application_name, state, since when).
    type: int
    default: 10
  lock_retry_backoff:
    description: Seconds of the first backoff; each retry waits a random time up to double the previous (capped at 15 s).
    type: float
    default: 0.5
"""
