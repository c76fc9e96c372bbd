"""The app_deploy role on Kubernetes: its real kubernetes.core calls, run by ansible-playbook, against the API-server
double (tests/support/kube_double.py; no cluster can run here), with the feature flags in a real PostgreSQL (the
test sandbox) and the smoke checks against a small local HTTP app.

Every object the role made the double store (each PATCH result, each Scale) is validated offline with
kubernetes-validate (strict, for the double's Kubernetes version).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.support.kube_double import KubeDouble
from tests.support.sandbox import Sandbox
from tests.support.world import play, recap

NS, NAME = "virtue", "virtue-app"
OLD, NEW = "registry.example/virtue-app:1.0", "registry.example/virtue-app:2.0"
ROOT = Path(__file__).resolve().parents[2]


class _App(BaseHTTPRequestHandler):
    """The app the smoke checks reach: /health as the stand-in answers it."""

    def do_GET(self) -> None:
        body = json.dumps({"status": "ok", "version": "2.0", "maintenance": False}).encode()
        self.send_response(200 if self.path.split("?")[0] == "/health" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def app_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _App)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def double(tmp_path: Path) -> Iterator[KubeDouble]:
    with KubeDouble(folder=tmp_path) as kube:
        kube.add_deployment(NS, NAME, OLD, replicas=3)
        yield kube


def _vars(world: dict[str, Any], double: KubeDouble, app_url: str, tmp_path: Path, **k8s: Any) -> str:
    """The world's extra vars plus the role's settings, in a file (no secret on the command line)."""
    kubeconfig = double.write_kubeconfig(tmp_path / "kubeconfig", namespace=NS)
    settings = dict(json.loads(Path(world["vars_file"]).read_text()))
    settings.update(
        app_deploy_platform="kubernetes",
        app_deploy_kubernetes=dict(dict(kubeconfig=str(kubeconfig), context="double", namespace=NS, deployment=NAME,
                                        image=NEW, poll_seconds=1, rollout_timeout_seconds=60, scale_timeout_seconds=60), **k8s),
        app_deploy_smoke_base_url=app_url,
        app_deploy_smoke_queries={"user": "SELECT u.email FROM auth.users u ORDER BY u.created_at, u.id LIMIT 1"},
        app_deploy_smoke_checks=[{"name": "health", "path": "/health", "json": {"maintenance": False, "status": "ok"}},
                                 {"name": "picked user exists", "url": app_url + "/health?who={user.email}"}],
    )
    path = tmp_path / f"deploy-vars-{len(list(tmp_path.glob('deploy-vars-*')))}.json"
    path.write_text(json.dumps(settings))
    return str(path)


def _run(sandbox: Sandbox, world: dict[str, Any], double: KubeDouble, vars_file: str, action: str, *args: str) -> Any:
    proc = play(sandbox, world, "playbooks/deploy.yml", "-e", f"@{vars_file}", "-e", f"app_deploy_action={action}", *args)
    assert double.token not in proc.stdout + proc.stderr, "the bearer token leaked"
    return proc


def _flags(world: dict[str, Any]) -> dict[str, bool]:
    with psycopg.connect(**world["vdp_production_db"]) as conn:
        rows = conn.execute("SELECT flag_name, enabled FROM public.feature_flags "
                            "WHERE flag_name IN ('organizational_model', 'multi_role_support')").fetchall()
    return dict(rows)


def _container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]["containers"][0]


def _assert_settled(obj: dict[str, Any], replicas: int) -> None:
    """The rollout was complete when the playbook returned (the role waited for it, not the test)."""
    status = obj["status"]
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert status["observedGeneration"] == obj["metadata"]["generation"], status
    assert obj["spec"]["replicas"] == replicas
    assert status.get("updatedReplicas", 0) == status.get("availableReplicas", 0) == status.get("replicas", 0) == replicas, status
    assert progressing["reason"] == "NewReplicaSetAvailable", progressing


def _assert_valid(double: KubeDouble) -> None:
    writes = [r for r in double.writes() if r.after is not None]
    assert writes, "the role wrote nothing to the API server"
    assert double.validation_errors() == []


def test_deploy_cycle_scale_to_zero(sandbox: Sandbox, world: dict[str, Any], double: KubeDouble, app_url: str,
                                    tmp_path: Path) -> None:
    vars_file = _vars(world, double, app_url, tmp_path)

    proc = _run(sandbox, world, double, vars_file, "record")
    assert proc.returncode == 0, proc.stdout[-3000:]
    state = json.loads((world["run_dir"] / "app_state.json").read_text())
    assert (state["kubernetes"]["image"], state["kubernetes"]["replicas"], state["kubernetes"]["revision"]) == (OLD, 3, "1")

    proc = _run(sandbox, world, double, vars_file, "maintenance_start")
    assert proc.returncode == 0, proc.stdout[-3000:]
    obj = double.deployment(NS, NAME)
    assert obj["spec"]["replicas"] == 0
    assert "replicas" not in obj["status"] and "availableReplicas" not in obj["status"], obj["status"]
    scales = [r for r in double.writes() if r.target == "scale"]
    assert len(scales) == 1 and scales[0].method == "PATCH" and scales[0].after["spec"]["replicas"] == 0

    started = time.monotonic()
    proc = _run(sandbox, world, double, vars_file, "deploy")
    assert proc.returncode == 0, proc.stdout[-4000:]
    obj = double.deployment(NS, NAME)
    _assert_settled(obj, 3)
    assert _container(obj)["image"] == NEW
    assert obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    assert _flags(world) == {"organizational_model": True, "multi_role_support": True}
    record = json.loads((world["run_dir"] / "deploy.json").read_text())["actions"]["deploy"]
    assert record["outcome"] == "ok" and [c["ok"] for c in record["smoke"]] == [True, True]
    assert record["recorded_state"]["kubernetes"]["image"] == OLD  # a phase run alone read app_state.json back
    patches = [r for r in double.writes() if r.target == "deployment" and not r.dry_run]
    assert patches and all(r.content_type.startswith("application/strategic-merge-patch+json") for r in patches)
    print(f"deploy (image rollout + scale 0 -> 3 + flags + smoke): {time.monotonic() - started:.1f} s")

    generation = obj["metadata"]["generation"]
    proc = _run(sandbox, world, double, vars_file, "deploy")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert recap(proc.stdout)["changed"] == 0, proc.stdout[-3000:]
    assert double.deployment(NS, NAME)["metadata"]["generation"] == generation

    writes_before = len(double.writes())

    check_vars = _vars(world, double, app_url, tmp_path, image="registry.example/virtue-app:3.0")
    before = double.deployment(NS, NAME)
    proc = _run(sandbox, world, double, check_vars, "deploy", "--check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert recap(proc.stdout)["changed"] >= 1, "--check must report the change it would make"
    assert "Would patch Deployment virtue/virtue-app" in proc.stdout
    assert double.deployment(NS, NAME) == before, "--check changed the Deployment"
    new_writes = double.writes()[writes_before:]
    assert new_writes and all(r.dry_run for r in new_writes if r.is_write), [(r.method, r.path, r.query) for r in new_writes]
    _assert_valid(double)


def test_maintenance_mode_sets_and_restores_the_env_var(sandbox: Sandbox, world: dict[str, Any], double: KubeDouble,
                                                         app_url: str, tmp_path: Path) -> None:
    vars_file = _vars(world, double, app_url, tmp_path)
    proc = _run(sandbox, world, double, vars_file, "maintenance_start", "-e", "app_deploy_maintenance=maintenance_mode")
    assert proc.returncode == 0, proc.stdout[-3000:]
    obj = double.deployment(NS, NAME)
    _assert_settled(obj, 3)
    assert _container(obj)["env"] == [{"name": "MAINTENANCE_MODE", "value": "true"}]
    assert _container(obj)["image"] == OLD and _container(obj)["ports"], "the patch must leave the rest of the container alone"

    proc = _run(sandbox, world, double, vars_file, "deploy", "-e", "app_deploy_maintenance=maintenance_mode")
    assert proc.returncode == 0, proc.stdout[-4000:]
    obj = double.deployment(NS, NAME)
    _assert_settled(obj, 3)
    assert _container(obj)["image"] == NEW
    assert not _container(obj).get("env"), _container(obj)
    assert obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "4"  # env on, image, env off

    proc = _run(sandbox, world, double, vars_file, "maintenance_end", "-e", "app_deploy_maintenance=maintenance_mode")
    assert proc.returncode == 0 and recap(proc.stdout)["changed"] == 0, proc.stdout[-3000:]
    _assert_valid(double)


def test_never_ready_image_fails_within_the_timeout_and_rollback_restores(
        sandbox: Sandbox, world: dict[str, Any], double: KubeDouble, app_url: str, tmp_path: Path) -> None:
    timeout = 15
    vars_file = _vars(world, double, app_url, tmp_path, image="registry.example/virtue-app:never-ready-2.0",
                      rollout_timeout_seconds=timeout)
    assert _run(sandbox, world, double, vars_file, "record").returncode == 0

    started = time.monotonic()
    proc = _run(sandbox, world, double, vars_file, "deploy")
    elapsed = time.monotonic() - started
    assert proc.returncode != 0
    assert elapsed < timeout + 45, f"the failed deploy took {elapsed:.0f} s with a {timeout} s rollout timeout"
    record = json.loads((world["run_dir"] / "deploy.json").read_text())["actions"]["deploy"]
    error = record["error"]
    assert record["outcome"] == "failed" and "\n" not in error, error
    assert error.startswith("Deployment virtue/virtue-app did not finish rolling out to image "
                            f"registry.example/virtue-app:never-ready-2.0 within {timeout} s: expected"), error
    assert "ReplicaSetUpdated" in error and "updated 1, available 3" in error, error  # what was seen
    assert "deploy failed: Deployment virtue/virtue-app did not finish rolling out" in proc.stdout
    assert _flags(world).get("organizational_model") is not True, "flags must not be turned on after a failed rollout"

    proc = _run(sandbox, world, double, vars_file, "rollback")
    assert proc.returncode == 0, proc.stdout[-4000:]
    obj = double.deployment(NS, NAME)
    _assert_settled(obj, 3)
    assert _container(obj)["image"] == OLD
    assert _flags(world) == {"organizational_model": False, "multi_role_support": False}
    proc = _run(sandbox, world, double, vars_file, "rollback")
    assert proc.returncode == 0 and recap(proc.stdout)["changed"] == 0, proc.stdout[-3000:]
    _assert_valid(double)


def test_progress_deadline_exceeded_fails_fast(sandbox: Sandbox, world: dict[str, Any], app_url: str, tmp_path: Path) -> None:
    with KubeDouble(folder=tmp_path) as kube:
        kube.add_deployment(NS, NAME, OLD, replicas=2, progress_deadline_seconds=3)
        vars_file = _vars(world, kube, app_url, tmp_path, image="registry.example/virtue-app:never-ready-2.0",
                          rollout_timeout_seconds=300)
        started = time.monotonic()
        proc = _run(sandbox, world, kube, vars_file, "deploy")
        elapsed = time.monotonic() - started
    assert proc.returncode != 0
    error = json.loads((world["run_dir"] / "deploy.json").read_text())["actions"]["deploy"]["error"]
    assert "Progressing False ProgressDeadlineExceeded" in error, error
    assert elapsed < 90, f"took {elapsed:.0f} s: the wait must stop when the controller reports the deadline exceeded"


def test_bad_settings_fail_clearly_and_touch_nothing(sandbox: Sandbox, world: dict[str, Any], double: KubeDouble,
                                                      app_url: str, tmp_path: Path) -> None:
    vars_file = _vars(world, double, app_url, tmp_path, namespace="")
    proc = _run(sandbox, world, double, vars_file, "deploy")
    assert proc.returncode != 0
    assert "app_deploy_kubernetes (inventory: vdp_app.kubernetes) needs namespace" in proc.stdout
    vars_file = _vars(world, double, app_url, tmp_path, container="web")
    proc = _run(sandbox, world, double, vars_file, "deploy")
    assert proc.returncode != 0 and "there is no container web" in proc.stdout, proc.stdout[-2000:]
    assert double.writes() == []


def test_argument_spec_defaults_match_the_role_defaults() -> None:
    spec = yaml.safe_load((ROOT / "roles/app_deploy/meta/argument_specs.yml").read_text())["argument_specs"]
    internal = yaml.safe_load((ROOT / "roles/app_deploy/vars/main.yml").read_text())["__app_deploy_kubernetes_defaults"]
    documented = {k: v.get("default") for k, v in spec["main"]["options"]["app_deploy_kubernetes"]["options"].items()}
    assert documented == internal
    defaults = yaml.safe_load((ROOT / "roles/app_deploy/defaults/main.yml").read_text())
    for entry in spec.values():
        for name, option in entry["options"].items():
            if "default" in option and name in defaults:
                assert option["default"] == defaults[name], name
