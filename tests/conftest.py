"""Session fixtures: a real sandbox (PostgreSQL x2 + SeaweedFS S3) and legacy databases built from the fixture.

- `sandbox`: the project's own sandbox role started once per test session in a temp folder on ports
  VDP_TEST_PORT_BASE (default 25430) .. +15, plus 40 per pytest-xdist worker; stopped at the end
  (VDP_TEST_KEEP_SANDBOX=1 keeps it).
- `legacy_db(shape, users, seed)`: a fresh database holding the legacy fixture. Each (shape, users, seed) is
  generated once into a template database; every call clones it (CREATE DATABASE ... TEMPLATE), so tests
  are isolated and fast.
- `run_module`: run a library/ module as Ansible does (JSON in and out), see tests/support/modrun.py.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support import sandbox as sandbox_support
from tests.support.modrun import run_module as _run_module
from tests.support.tiers import extended_tests
from tests.support.world import make_world

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # fixtures/ and benchmarks/ are importable as packages


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests tests/extended.txt lists `extended` (make test deselects them; make test-extended runs them)."""
    listed = extended_tests()
    for item in items:
        if item.nodeid in listed or item.nodeid.split("[")[0] in listed:
            item.add_marker(pytest.mark.extended)


@pytest.fixture(scope="session")
def project_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def sandbox() -> Iterator[sandbox_support.Sandbox]:
    # Under pytest-xdist each worker (gw0, gw1, ...) gets its own sandbox 40 ports further on.
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker.startswith("gw") and worker[2:].isdigit() else 0
    port_base = int(os.environ.get("VDP_TEST_PORT_BASE", "25430")) + 40 * index
    keep = os.environ.get("VDP_TEST_KEEP_SANDBOX") == "1"
    chosen = os.environ.get("VDP_TEST_SANDBOX_DIR")
    folder = Path(f"{chosen}-{worker}" if chosen and index else chosen or tempfile.mkdtemp(prefix="vdp-test-sandbox-"))
    os.chmod(folder, 0o755)  # noqa: S103 - the postgres system user must traverse it
    box = sandbox_support.start(folder, port_base)
    try:
        yield box
    finally:
        if not keep:
            sandbox_support.stop(box)


_counter = itertools.count()


def _admin(box: sandbox_support.Sandbox, which: str = "production") -> psycopg.Connection[Any]:
    return psycopg.connect(**box.pg(which, "postgres"), autocommit=True)


@pytest.fixture(scope="session")
def legacy_template(sandbox: sandbox_support.Sandbox) -> Callable[..., str]:
    """Name of a template database holding the legacy fixture for (shape, users, seed); built once."""
    from fixtures.generate_legacy import load_legacy

    built: dict[tuple[str, int, int], str] = {}

    def get(shape: str = "supabase", users: int = 2000, seed: int = 42) -> str:
        key = (shape, users, seed)
        if key not in built:
            name = f"tpl_{shape}_{users}_{seed}"
            with _admin(sandbox) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                conn.execute(f'CREATE DATABASE "{name}"')
            load_legacy(sandbox.pg("production", name), shape=shape, users=users, seed=seed)
            built[key] = name
        return built[key]

    return get


@pytest.fixture
def legacy_db(sandbox: sandbox_support.Sandbox, legacy_template: Callable[..., str]) -> Iterator[Callable[..., dict[str, Any]]]:
    """Factory: a new database cloned from the legacy fixture; returns psycopg.connect kwargs (with 'dbname')."""
    created: list[str] = []

    def make(shape: str = "supabase", users: int = 2000, seed: int = 42, which: str = "production") -> dict[str, Any]:
        template = legacy_template(shape, users, seed)
        name = f"t{os.getpid()}_{next(_counter)}_{shape}"
        with _admin(sandbox) as conn:
            if which == "production":
                conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
            created.append(name)
        if which != "production":
            raise ValueError("legacy databases are built on the production cluster")
        return sandbox.pg(which, name)

    yield make
    with _admin(sandbox) as conn:
        for name in created:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db(sandbox: sandbox_support.Sandbox) -> Iterator[Callable[..., dict[str, Any]]]:
    """Factory: a new empty database on a cluster; dropped after the test."""
    created: list[tuple[str, str]] = []

    def make(which: str = "production") -> dict[str, Any]:
        name = f"e{os.getpid()}_{next(_counter)}"
        with _admin(sandbox, which) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        created.append((which, name))
        return sandbox.pg(which, name)

    yield make
    for which, name in created:
        with _admin(sandbox, which) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def run_module() -> Callable[..., Any]:
    return _run_module


@pytest.fixture
def world(sandbox: sandbox_support.Sandbox, legacy_template: Callable[..., str], tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Extra vars for one isolated playbook run: a legacy clone as production, a fresh staging db, an S3 prefix, a run id."""
    with make_world(sandbox, legacy_template(), tmp_path) as w:
        yield w
