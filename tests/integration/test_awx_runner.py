"""migrate.yml as AWX runs it: through ansible-runner, credentials injected as libpq / AWS environment.

AWX job templates run the project with ansible-runner and hand database and S3 credentials to the job as
environment variables (a custom credential type). Here the inventory's connection settings carry no
password and no key at all: every module must fall back to PGPASSWORD / AWS_* and still never print them.
The run summary must reach AWX as set_stats artifacts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ansible_runner

from tests.support.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]


def without_secrets(db: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in db.items() if k != "password"}


def test_migrate_through_ansible_runner_with_credentials_from_the_environment(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path
) -> None:
    s3 = {k: v for k, v in world["vdp_s3"].items() if k not in ("access_key", "secret_key")}
    extravars = {
        "vdp_production_db": without_secrets(world["vdp_production_db"]),
        "vdp_staging_db": without_secrets(world["vdp_staging_db"]),
        "vdp_s3": s3,
        "vdp_run_id": world["vdp_run_id"],
        "vdp_run_dir": str(world["run_dir"]),
    }
    envvars = {
        "PGPASSWORD": sandbox.password,
        "AWS_ACCESS_KEY_ID": sandbox.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": sandbox.s3_secret_key,
        "VDP_SANDBOX_DIR": str(sandbox.dir),
        "VDP_SANDBOX_PORT_BASE": str(sandbox.port_base),
        "PATH": sandbox.env["PATH"],
    }
    (tmp_path / "runner").mkdir()
    result = ansible_runner.run(
        private_data_dir=str(tmp_path / "runner"),
        project_dir=str(ROOT),
        playbook="migrate.yml",
        inventory=str(ROOT / "inventories" / "local" / "hosts.yml"),
        extravars=extravars,
        envvars=envvars,
        quiet=True,
        timeout=900,
    )
    output = result.stdout.read()
    assert result.status == "successful" and result.rc == 0, output[-4000:]
    for secret in (sandbox.password, sandbox.s3_access_key, sandbox.s3_secret_key):
        assert secret not in output, "a credential from the environment leaked into the job output"

    stats = [e for e in result.events if e.get("event") == "playbook_on_stats"][-1]["event_data"]
    artifacts = stats.get("artifact_data", {})
    assert artifacts.get("vdp_run_id") == world["vdp_run_id"]
    summary = "\n".join(artifacts.get("vdp_run_summary", []))
    assert "validate" in summary and "passed" in summary, summary
    assert "backup" in summary and "rehearsal" in summary
