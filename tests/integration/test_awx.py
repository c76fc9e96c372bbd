"""The AWX workflow's jobs, run the way AWX 24 runs them, on the test sandbox's real servers.

Each job gets what AWX gives it, built from awx/apply.yml's own objects: the production inventory as AWX's SCM
inventory source imports it (inventories/prod through ansible-inventory, values untemplated: no password, only the
environment lookups) written as AWX's executable inventory script; the survey's answers (checked with AWX's survey
rules) merged with the job template's extra vars, its survey defaults and the earlier jobs' set_stats artifacts,
written as AWX's !unsafe extra-vars file; the environment the "Virtue migration" credential injects. Only the
coordinates of the world (ports, database names, S3 endpoint and prefix) and the sandbox's site settings (the
stand-in app, monitoring) replace the production inventory's placeholders - an AWX site sets its own.

The chain: preflight publishes the run id; migrate continues that run (its own preflight, backup, rehearsal, then the
maintenance window, schema, data, the deploy of the survey's release on a stand-in app through the inventory's
vdp_app, validation and the monitor gate) with the survey's batch size, window, capacity policy and monitoring
period; validate checks again. Every job's artifacts are read back.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import ansible_runner
import pytest

from tests.integration.test_app_deploy_standin import TOKEN, StandIn
from tests.support import awx
from tests.support.awx import ROOT
from tests.support.sandbox import Sandbox

ANSWERS = {
    "vdp_app_release": "organizational-2",
    "rollback_strategy": "flags",
    "vdp_rollback_confirm": "",  # left blank (AWX's own survey validation refuses a null text answer)
    "vdp_capacity_policy": "report",
    "vdp_batch_size": 1000,
    "rehearsal_window_budget_minutes": 45,
    "monitor_period_seconds": 60,
}
SITE_KEYS = ("vdp_notify", "vdp_sandbox_dir", "vdp_sandbox_port_base", "vdp_connection_hint")
# What AWX's settings put in every job's environment (awx/settings/defaults.py), and the job's own ids.
AWX_ENV = {"ANSIBLE_INVENTORY_UNPARSED_FAILED": "True", "ANSIBLE_HOST_KEY_CHECKING": "False",
           "ANSIBLE_PARAMIKO_RECORD_HOST_KEYS": "False", "ANSIBLE_RETRY_FILES_ENABLED": "False",
           "INVENTORY_ID": "7", "AWX_HOST": "https://awx.example.internal"}


def site_inventory(world: dict[str, Any], app: StandIn) -> dict[str, Any]:
    """inventories/prod as AWX imports it, with the world's coordinates and the sandbox's site settings."""
    inventory = awx.exported_inventory("inventories/prod/hosts.yml")
    site = awx.exported_inventory("inventories/local/hosts.yml")["all"]["vars"]
    group = inventory["all"]["vars"]
    group.update({k: site[k] for k in SITE_KEYS if k in site})
    for key in ("vdp_production_db", "vdp_staging_db"):
        group[key].update(port=world[key]["port"], dbname=world[key]["dbname"])  # host: the credential's input
    s3 = world["vdp_s3"]
    group["vdp_s3"].update({k: s3[k] for k in ("endpoint_url", "region", "bucket", "prefix", "sse", "kms_key_id",
                                                 "create_bucket")})
    # The sandbox's app is the stand-in (platform none); the release stays the production inventory's expression.
    group["vdp_app"] = dict(platform="none", base_url=app.url, admin_token=TOKEN, release=group["vdp_app"]["release"])
    # Monitoring of this world: its database and its app. (The sandbox's Prometheus measures this shared 2-core
    # machine, not a database host: its CPU would judge the other tests running beside this one.)
    group["vdp_monitor"] = {"sql": {"long_query_seconds": 30},
                            "http": {"probes": [{"name": "health", "url": f"{app.url}/health"}]}}
    group["monitor_interval_seconds"] = 10
    return inventory


def credential_env(objects: dict[str, Any], sandbox: Sandbox) -> dict[str, str]:
    (ctype,) = objects["credential_type"]
    return awx.inject_credential(ctype, {
        "production_password": sandbox.password, "staging_password": sandbox.password,
        "aws_access_key_id": sandbox.s3_access_key, "aws_secret_access_key": sandbox.s3_secret_key,
        "production_host": "127.0.0.1", "staging_host": "127.0.0.1",
    })


class Workflow:
    """Runs job templates as nodes of one AWX workflow job: answers, artifacts and environment passed on as AWX does."""

    def __init__(self, objects: dict[str, Any], sandbox: Sandbox, inventory: dict[str, Any], folder: Path) -> None:
        self.templates = {jt["name"]: jt for jt in objects["job_template"]}
        (self.workflow,) = objects["workflow_job_template"]
        self.sandbox, self.inventory, self.folder = sandbox, inventory, folder
        self.env = {**AWX_ENV, **credential_env(objects, sandbox), "PATH": sandbox.env["PATH"],
                    "VDP_SANDBOX_DIR": str(sandbox.dir), "VDP_SANDBOX_PORT_BASE": str(sandbox.port_base)}
        self.answers = self.launch(ANSWERS)
        self.artifacts: dict[str, Any] = {}
        self.job_id = 4200

    def launch(self, answers: dict[str, Any]) -> dict[str, Any]:
        """The workflow's launch: AWX accepts the answers (its survey rules) and keeps them as the job's extra vars."""
        survey = self.workflow["survey_spec"]["spec"]
        errors = [e for q in survey for e in awx.answer_errors(q, answers)]
        assert not errors, errors
        defaults = {q["variable"]: q["default"] for q in survey if "default" in q}
        return {**defaults, **answers}

    def run(self, node: str) -> tuple[Any, str, dict[str, Any]]:
        (spec,) = [n for n in self.workflow["workflow_nodes"] if n["identifier"] == node]
        template = self.templates[spec["unified_job_template"]["name"]]
        self.job_id += 1
        private = self.folder / f"job_{self.job_id}"
        meta = dict(awx_job_id=self.job_id, awx_job_template_name=template["name"], awx_user_name="migration-operator",
                    awx_workflow_job_id=4100, awx_workflow_job_name=self.workflow["name"])
        extra = {**awx.launch_extra_vars(template, workflow_vars=self.answers, artifacts=self.artifacts), **meta}
        awx.write_extra_vars(private, extra, safe=template["extra_vars"])
        script = awx.write_inventory_script(private, self.inventory)
        assert self.sandbox.password not in script.read_text(), "the inventory must not hold a password"
        result = ansible_runner.run(private_data_dir=str(private), project_dir=str(ROOT),
                                    playbook=template["playbook"], inventory=str(script),
                                    envvars=dict(self.env, JOB_ID=str(self.job_id)), quiet=True, timeout=900)
        output = result.stdout.read()
        for secret in (self.sandbox.password, self.sandbox.s3_access_key, self.sandbox.s3_secret_key, TOKEN):
            assert secret not in output, f"a credential leaked into the output of {node}"
        stats = [e for e in result.events if e.get("event") == "playbook_on_stats"]
        artifacts = stats[-1]["event_data"].get("artifact_data", {}) if stats else {}
        self.artifacts = {**self.artifacts, **artifacts}  # a child's artifacts overwrite its ancestors'
        return result, output, artifacts


@pytest.fixture
def standin(world: dict[str, Any], tmp_path: Path) -> Any:
    app = StandIn(tmp_path / "standin", world["vdp_production_db"])
    yield app
    app.stop()


def record(runs: Path, run_id: str, name: str) -> dict[str, Any]:
    return json.loads((runs / run_id / f"{name}.json").read_text())


@pytest.mark.slow
def test_the_workflow_jobs_run_as_awx_runs_them(sandbox: Sandbox, world: dict[str, Any], standin: StandIn,
                                                tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGUSER", "PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "VDP_RUN_ID"):
        monkeypatch.delenv(name, raising=False)  # only what the credential injects
    runs = tmp_path / "runs"  # the container group's run records volume
    objects = awx.render_objects(tmp_path, "-e", f"vdp_awx_run_records_dir={runs}")
    flow = Workflow(objects, sandbox, site_inventory(world, standin), tmp_path)

    result, output, artifacts = flow.run("preflight")
    assert (result.status, result.rc) == ("successful", 0), output[-4000:]
    run_id = artifacts["vdp_run_id"]
    assert re.fullmatch(r"\d{8}T\d{6}Z-[a-z0-9]{4}", run_id), run_id
    assert record(runs, run_id, "preflight")["go"] is True

    result, output, artifacts = flow.run("migrate")
    assert (result.status, result.rc) == ("successful", 0), output[-4000:]
    assert artifacts["vdp_run_id"] == run_id, "the migrate job must continue the run the preflight job started"
    summary = "\n".join(artifacts["vdp_run_summary"])
    assert "validate" in summary and "passed" in summary, summary
    assert f"AWX job {flow.job_id} launched by migration-operator" in json.dumps(record(runs, run_id, "run"))
    # The survey's answers reached the roles.
    assert record(runs, run_id, "rehearsal")["window_budget_minutes"] == 45
    membership = record(runs, run_id, "data")["membership"]
    assert membership["batches"]["size"] == 1000 and membership["batches"]["count"] >= 2
    assert membership["capacity"]["policy"] == "report" and membership["capacity"]["action"] != "raised"

    # The deploy inside migrate.yml rolled out the survey's release through the inventory's vdp_app, and the app's
    # previous state is in the run folder on the shared volume, where a rollback job in another pod finds it.
    health = standin.call("GET", "/health")[1]
    assert (health["version"], health["model"]) == ("organizational-2", "organizational"), health
    assert json.loads((runs / run_id / "app_state.json").read_text())["standin"]["version"] == "legacy-1"
    assert record(runs, run_id, "monitor")["period_seconds"] == 60

    result, output, artifacts = flow.run("validate")
    assert (result.status, result.rc) == ("successful", 0), output[-4000:]
    assert artifacts["vdp_run_id"] == run_id


def test_the_project_configuration_accepts_awx_inventory_script(tmp_path: Path) -> None:
    """AWX hands every job its inventory as an executable script; the project's ansible.cfg must let Ansible read it
    (AWX also sets ANSIBLE_INVENTORY_UNPARSED_FAILED, so an unreadable inventory fails the job)."""
    script = awx.write_inventory_script(tmp_path, awx.exported_inventory("inventories/prod/hosts.yml"))
    proc = subprocess.run([str(awx.BIN / "ansible-inventory"), "-i", str(script), "--list"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120, check=False,
                          env=awx.ansible_env(AWX_ENV))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["controller"]["hosts"] == ["localhost"]
