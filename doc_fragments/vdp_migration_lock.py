# What every writing vdp_* engine module says about the migration's advisory lock (module_utils/vdp_pg.py's
# migration_lock, taken by vdp_lifecycle.run_module), written once: `extends_documentation_fragment:
# [vdp_migration_lock]`. A fragment can add notes but not description lines, so the sentence is a note.
"""Doc fragment: the migration's session advisory lock held by the writing vdp_* modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options: {}
notes:
  - Holds the migration's session advisory lock; a second concurrent run fails at once naming the holder.
"""
