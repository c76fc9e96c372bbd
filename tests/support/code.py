"""The project's Python code as the tests import it: module_utils as `ansible.module_utils.<name>` (as ansible.cfg's
`module_utils = ./module_utils` makes it for a playbook run) and library modules by file. The one place that puts
module_utils/ on ansible.module_utils' package path."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import ansible.module_utils as _mu

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "module_utils") not in list(_mu.__path__):
    _mu.__path__.append(str(ROOT / "module_utils"))


def module_utils(name: str) -> ModuleType:
    """ansible.module_utils.<name> from the project's module_utils/."""
    return importlib.import_module(f"ansible.module_utils.{name}")


def library(name: str) -> ModuleType:
    """library/<name>.py, imported (not run) so its functions can be tested."""
    spec = importlib.util.spec_from_file_location(f"vdp_library_{name}", ROOT / "library" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module
