"""One isolated migration "world" on the test sandbox, for tests that run the playbooks themselves.

A world is: a clone of the legacy fixture as "production", a fresh database name on the staging cluster,
its own S3 prefix, run id and run folder, all passed to ansible-playbook as an extra-vars file (so no
password is ever on a command line). `play()` also asserts that no secret shows in the output.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

from tests.support.sandbox import Sandbox


@contextmanager
def make_world(sandbox: Sandbox, template: str, folder: Path) -> Iterator[dict[str, Any]]:
    prod_name, stg_name = f"pp_{uuid.uuid4().hex[:8]}", f"ps_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{prod_name}" TEMPLATE "{template}"')
    run_id = f"t{uuid.uuid4().hex[:8]}"
    extra = {
        "vdp_production_db": sandbox.pg("production", prod_name),
        "vdp_staging_db": sandbox.pg("staging", stg_name),
        "vdp_s3": dict(sandbox.s3, prefix=f"test-playbooks/{uuid.uuid4().hex[:10]}", sse="AES256", kms_key_id="",
                       create_bucket=False),
        "vdp_run_id": run_id,
        "vdp_run_dir": str(folder / run_id),
    }
    (folder / run_id).mkdir()
    vars_file = folder / "vars.json"
    vars_file.write_text(json.dumps(extra))
    try:
        yield dict(extra, vars_file=str(vars_file), run_dir=folder / run_id)
    finally:
        with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{prod_name}" WITH (FORCE)')
        with psycopg.connect(**sandbox.pg("staging", "postgres"), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{stg_name}" WITH (FORCE)')


def play(box: Sandbox, world: dict[str, Any], playbook: str, *args: str, timeout: float = 600) -> Any:
    """Run a playbook (path relative to the project root) in the world; no secret may appear in its output."""
    proc = box.playbook(playbook, "-e", f"@{world['vars_file']}", *args, timeout=timeout)
    for secret in (box.password, box.s3_secret_key, box.s3_access_key):
        assert secret not in proc.stdout and secret not in proc.stderr, f"a secret leaked in {playbook}'s output"
    return proc


def record(world: dict[str, Any], name: str) -> dict[str, Any]:
    """A phase's record (<name>.json) in the world's run folder."""
    return json.loads((world["run_dir"] / f"{name}.json").read_text())


def recap(output: str) -> dict[str, int]:
    match = re.search(r"localhost\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", output)
    assert match, output[-3000:]
    return dict(ok=int(match.group(1)), changed=int(match.group(2)), failed=int(match.group(3)))
