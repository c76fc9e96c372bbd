# What every vdp_* module's DOCUMENTATION shares besides its options, written once:
# `extends_documentation_fragment: [vdp_module]` (ansible-doc merges the attributes and the author).
"""Doc fragment: the platform attribute and the author of every vdp_* module."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
attributes:
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
author:
  - Virtue platform team
"""
