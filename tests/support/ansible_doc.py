"""ansible-doc of the project's modules (library/), as the tests that check the documentation run it (no tests here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.code import ROOT


def ansible_doc(*args: str) -> subprocess.CompletedProcess[str]:
    """The venv's `ansible-doc -M library <args>` from the project root; output captured, never raises on failure."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-doc"), "-M", str(ROOT / "library"), *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=120,
    )
