# Documentation of the options that pick the backup a reader works on (module_utils/vdp_archive.py's
# backup_source_spec), written once for vdp_backup_verify and vdp_restore: `extends_documentation_fragment:
# [vdp_backup_source]`. A module may describe run_id in its own words (vdp_restore also renews the run lease with it).
"""Doc fragment: which backup vdp_backup_verify and vdp_restore read."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  source:
    description: Which backup - C(run) (I(run_id)), C(latest), or C(key) (I(key)).
    type: str
    choices: [run, latest, key]
    default: run
  run_id:
    description: Run id of the backup, for I(source=run).
    type: str
  key:
    description: Key of the dump object (or of its manifest.json), for I(source=key).
    type: str
  tables:
    description: Tables (schema.name) that must be in the archive. Default - the legacy tables (vdp_legacy.LEGACY_TABLES).
    type: list
    elements: str
"""
