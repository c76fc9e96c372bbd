# Documentation of the progress_file option of the long-running vdp_* modules (module_utils/vdp_progress.py),
# written once: `extends_documentation_fragment: [vdp_progress]`.
"""Doc fragment: the progress file of the long-running vdp_* modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  progress_file:
    description:
      - A JSON file on the controller that the module rewrites while it works (atomically, at most about once a second,
        mode 0640) - C(what), C(unit) (bytes, rows, profiles, pairs or steps), C(done), C(total) (null when unknown),
        C(started_at), C(updated_at), C(rate_per_s), C(eta_seconds), C(note), C(state) (running, done, failed, stopped),
        C(finished) and C(line), the same in words. Counts and times only, never a secret.
      - The runbook's action plugin of the same name (C(action_plugins/)) sets it to
        C(<vdp_run_dir>/progress/<phase>-<module>.json) when the task does not, and prints C(line) while the module
        runs, every C(vdp_progress_interval) seconds (default 10, 0 = quiet); C(playbooks/status.yml) reads it back
        (a step killed mid-way leaves its last count and time there).
      - Not written in check mode. A file that cannot be written never stops the module.
    type: path
"""
