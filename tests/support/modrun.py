"""Run one of library/*.py exactly as Ansible does (JSON in, JSON out) in a subprocess.

The project's module_utils/ is put on ansible.module_utils' package path, as ansible.cfg's
`module_utils = ./module_utils` does for a playbook run. No Ansible controller is involved, so a
module call costs a Python start-up (~0.3 s), not an ansible-playbook run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

_BOOTSTRAP = """
import runpy, sys
import ansible.module_utils as mu
mu.__path__.append(sys.argv[1] + '/module_utils')
path = sys.argv[2]
sys.argv = [path]
runpy.run_path(path, run_name='__main__')
"""


class ModuleResult(dict):
    """The module's JSON result; `.failed` and `.changed` for readable asserts."""

    @property
    def failed(self) -> bool:
        return bool(self.get("failed"))

    @property
    def changed(self) -> bool:
        return bool(self.get("changed"))


def run_module(
    name: str,
    args: dict[str, Any],
    check: bool = False,
    diff: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 600,
) -> ModuleResult:
    """Run library/<name>.py with `args`; return its result (failures are results, not exceptions)."""
    module_args = dict(args, _ansible_check_mode=check, _ansible_diff=diff)
    proc = subprocess.run(
        [sys.executable, "-c", _BOOTSTRAP, str(ROOT), str(ROOT / "library" / f"{name}.py")],
        input=json.dumps({"ANSIBLE_MODULE_ARGS": module_args}),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    out = proc.stdout.strip()
    try:
        result = json.loads(out[out.index("{"):]) if "{" in out else {}
    except ValueError:
        result = {}
    if not result:
        raise AssertionError(f"module {name} printed no JSON (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    result.setdefault("_stderr", proc.stderr)
    return ModuleResult(result)
