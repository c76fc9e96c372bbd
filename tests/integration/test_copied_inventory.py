"""inventories/prod copied and filled the way the README tells an operator to (issue 8): secrets in an
ansible-vault file, or only in the environment as an AWX credential injects them; preflight then says GO
against the sandbox servers, and no secret shows in what it prints or records."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support import sandbox as sb
from tests.support.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[2]


def copy_prod_inventory(world: dict[str, Any], folder: Path) -> Path:
    """Step 1 of the README: copy inventories/prod and fill in the servers (never a secret)."""
    target = folder / "inventory"
    shutil.copytree(ROOT / "inventories" / "prod", target)
    main = target / "group_vars" / "all" / "main.yml"
    data = yaml.safe_load(main.read_text())
    prod, stg, s3 = world["vdp_production_db"], world["vdp_staging_db"], world["vdp_s3"]
    for key, db in (("vdp_production_db", prod), ("vdp_staging_db", stg)):
        data[key].update(host=db["host"], port=db["port"], dbname=db["dbname"])  # user and password stay as shipped
    data["vdp_s3"].update(endpoint_url=s3["endpoint_url"], region=s3["region"], bucket=s3["bucket"],
                          prefix=s3["prefix"], sse="AES256", kms_key_id="")  # fmt: skip
    main.write_text(yaml.safe_dump(data, sort_keys=False))
    return target


def preflight(box: Sandbox, world: dict[str, Any], inventory: Path, *args: str,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run = {"vdp_run_id": world["vdp_run_id"], "vdp_run_dir": str(world["run_dir"])}
    return sb.run_playbook("playbooks/preflight.yml", "-i", str(inventory), "-e", json.dumps(run), *args,
                           env=dict(box.env, **(env or {})))  # fmt: skip


def assert_go_without_secrets(box: Sandbox, world: dict[str, Any], proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:]
    record = json.loads((world["run_dir"] / "preflight.json").read_text())
    assert record["go"] is True, record.get("blocking")
    written = proc.stdout + proc.stderr + "".join(p.read_text() for p in world["run_dir"].rglob("*") if p.is_file())
    for secret in (box.password, box.s3_access_key, box.s3_secret_key):
        assert secret not in written


@pytest.mark.slow
def test_copied_prod_inventory_with_an_ansible_vault_file(sandbox: Sandbox, world: dict[str, Any], tmp_path: Path) -> None:
    inventory = copy_prod_inventory(world, tmp_path)
    vault = inventory / "group_vars" / "all" / "vault.yml"
    vault.write_text(yaml.safe_dump({
        "vault_vdp_production_db_password": sandbox.password,
        "vault_vdp_staging_db_password": sandbox.password,
        "vault_vdp_s3_access_key": sandbox.s3_access_key,
        "vault_vdp_s3_secret_key": sandbox.s3_secret_key,
    }))  # fmt: skip
    secret_file = tmp_path / "vault-pass"
    secret_file.write_text("a vault password for the test\n")
    subprocess.run([str(sb.VENV_BIN / "ansible-vault"), "encrypt", "--vault-password-file", str(secret_file), str(vault)],
                   check=True, capture_output=True, env=sandbox.env)  # fmt: skip
    assert sandbox.password not in vault.read_text()  # encrypted at rest
    proc = preflight(sandbox, world, inventory, "--vault-password-file", str(secret_file),
                     env={"VDP_PRODUCTION_PGHOST": "", "VDP_STAGING_PGHOST": ""})  # fmt: skip
    assert_go_without_secrets(sandbox, world, proc)


@pytest.mark.slow
def test_copied_prod_inventory_with_credentials_only_in_the_environment(
    sandbox: Sandbox, world: dict[str, Any], tmp_path: Path
) -> None:
    inventory = copy_prod_inventory(world, tmp_path)
    env = {
        "VDP_PRODUCTION_PGPASSWORD": sandbox.password,
        "VDP_STAGING_PGPASSWORD": sandbox.password,
        "AWS_ACCESS_KEY_ID": sandbox.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": sandbox.s3_secret_key,
    }
    proc = preflight(sandbox, world, inventory, env=env)
    assert_go_without_secrets(sandbox, world, proc)
