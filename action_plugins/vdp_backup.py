# The module vdp_backup, run by the runbook's progress action (action_plugins/vdp_progress_action.py):
# its progress file's line is printed while it runs. Nothing else differs from Ansible's normal action.
"""Action plugin of vdp_backup: the module with its progress shown while it runs."""

from __future__ import annotations

from ansible.plugins.loader import action_loader

ActionModule = action_loader.get("vdp_progress_action", class_only=True)
