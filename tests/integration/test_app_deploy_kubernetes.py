"""The app_deploy role on Kubernetes: its real kubernetes.core calls, run by ansible-playbook, against the API-server
double (tests/support/kube_double.py; no cluster can run here), with the feature flags in a real PostgreSQL (the
test sandbox) and the smoke checks against a small local HTTP app.

Every object the role made the double store (each PATCH result, each Scale) is validated offline with
kubernetes-validate (strict, for the double's Kubernetes version).
"""

from __future__ import annotations

import json
import subprocess
import sys
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
                # The same value, or a run-wide setting (vdp_*) whose fallback is the documented default.
                fallback = f"default({option['default']!r})"
                assert option["default"] == defaults[name] or (
                    str(defaults[name]).startswith("{{ vdp_") and fallback in defaults[name]
                ), name


# -- the double itself, through real clients (the kubernetes Python client that kubernetes.core uses, and kubectl) --

def _client(double: KubeDouble, tmp_path: Path, token: str | None = None) -> Any:
    from kubernetes import config, dynamic

    kubeconfig = double.write_kubeconfig(tmp_path / "client-kubeconfig", namespace=NS, token=token)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    return dynamic.DynamicClient(api).resources.get(api_version="apps/v1", kind="Deployment")


def _kubectl(double: KubeDouble, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    kubeconfig = double.write_kubeconfig(tmp_path / "kubectl-kubeconfig", namespace=NS)
    return subprocess.run([str(Path(sys.executable).parent / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
                          capture_output=True, text=True, timeout=60, check=False)


def test_double_status_lags_then_progresses_as_kubectl_judges_it(double: KubeDouble, tmp_path: Path) -> None:
    deployments = _client(double, tmp_path)
    deployments.patch(name=NAME, namespace=NS, content_type="application/strategic-merge-patch+json",
                      body={"spec": {"template": {"spec": {"containers": [{"name": "app", "image": NEW}]}}}})
    stale = double.deployment(NS, NAME)
    progressing = next(c for c in stale["status"]["conditions"] if c["type"] == "Progressing")
    assert stale["metadata"]["generation"] == 2 and stale["status"]["observedGeneration"] == 1
    assert progressing["reason"] == "NewReplicaSetAvailable", "right after a change the status is stale, as on a cluster"
    status = _kubectl(double, tmp_path, "rollout", "status", f"deployment/{NAME}", "-n", NS, "--watch=false")
    assert "Waiting for" in status.stdout, status.stdout + status.stderr
    seen = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        s = double.deployment(NS, NAME)["status"]
        seen.add((s.get("updatedReplicas", 0), s.get("replicas", 0), s.get("availableReplicas", 0)))
        counts = (s.get("updatedReplicas"), s.get("replicas"), s.get("availableReplicas"))
        if s["observedGeneration"] == 2 and counts == (3, 3, 3):
            break
        time.sleep(0.05)
    assert (3, 3, 3) in seen and len(seen) >= 3, f"the rollout must go through intermediate states: {seen}"
    assert any(u == 3 and r == 4 for u, r, _ in seen) or any(r > 3 for _, r, _ in seen), seen  # surge: old pod still there
    obj = double.wait_settled(NS, NAME)
    assert obj["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    status = _kubectl(double, tmp_path, "rollout", "status", f"deployment/{NAME}", "-n", NS, "--watch=false")
    assert 'deployment "virtue-app" successfully rolled out' in status.stdout, status.stdout + status.stderr

    deployments.patch(name=NAME, namespace=NS, content_type="application/merge-patch+json", body={"spec": {"replicas": 0}})
    status = double.wait_settled(NS, NAME)["status"]
    assert not {"replicas", "updatedReplicas", "readyReplicas", "availableReplicas"} & set(status), "zero counts are omitted"


def test_double_patch_formats_and_auth(double: KubeDouble, tmp_path: Path) -> None:
    from kubernetes.dynamic.exceptions import ForbiddenError, UnauthorizedError

    deployments = _client(double, tmp_path)
    smp = {"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "A", "value": "1"}]}]}}}}
    deployments.patch(name=NAME, namespace=NS, body=smp, content_type="application/strategic-merge-patch+json")
    container = _container(double.deployment(NS, NAME))
    assert container["image"] == OLD and container["env"] == [{"name": "A", "value": "1"}]  # merged by name, not replaced
    delete = {"spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "A", "$patch": "delete"}]}]}}}}
    deployments.patch(name=NAME, namespace=NS, body=delete, content_type="application/strategic-merge-patch+json")
    assert "env" not in _container(double.deployment(NS, NAME))  # an emptied list is omitted, as Go serialises it
    ops = [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": NEW}]
    deployments.patch(name=NAME, namespace=NS, body=ops, content_type="application/json-patch+json")
    assert _container(double.deployment(NS, NAME))["image"] == NEW
    dry = {"spec": {"replicas": 5}}
    result = deployments.patch(name=NAME, namespace=NS, body=dry, content_type="application/merge-patch+json", dry_run="All")
    assert result.spec.replicas == 5 and double.deployment(NS, NAME)["spec"]["replicas"] == 3
    assert double.validation_errors() == []
    with pytest.raises((UnauthorizedError, ForbiddenError)):
        _client(double, tmp_path, token="wrong").get(name=NAME, namespace=NS)
    from kubernetes.dynamic.exceptions import UnprocessibleEntityError

    with pytest.raises(UnprocessibleEntityError, match="replicas"):  # refused, as the API server refuses it
        deployments.patch(name=NAME, namespace=NS, body={"spec": {"replicas": "three"}},
                          content_type="application/merge-patch+json")
    assert double.deployment(NS, NAME)["spec"]["replicas"] == 3
    unknown = {"spec": {"template": {"spec": {"containers": [{"name": "app", "imagePullPolicyy": "Always"}]}}}}
    deployments.patch(name=NAME, namespace=NS, body=unknown, content_type="application/strategic-merge-patch+json")
    errors = double.validation_errors()
    assert len(errors) == 2 and "replicas" in errors[0] and "imagePullPolicyy" in errors[1], errors


def test_smoke_filters() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("smoke", ROOT / "roles/app_deploy/filter_plugins/app_deploy_smoke.py")
    assert spec and spec.loader
    smoke = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(smoke)
    picks = {"sponsor": {"sponsor_id": "abc", "practitioners": 12}}
    checks = [{"name": "d", "path": "/dashboard/coach/{sponsor.sponsor_id}", "json": {"count": "{sponsor.practitioners}"}}]
    filled = smoke.fill(checks, picks)
    assert filled[0]["path"] == "/dashboard/coach/abc" and filled[0]["json"]["count"] == 12
    with pytest.raises(smoke.PickError, match=r"\{user.email\}.*sponsor.sponsor_id"):
        smoke.fill({"body": {"email": "{user.email}"}}, picks)
    ok = smoke.smoke_verdicts([{"item": filled[0], "status": 200, "elapsed": 1, "json": {"count": 12}, "url": "u"}])
    assert ok[0]["ok"] and ok[0]["line"] == ""
    bad = smoke.smoke_verdicts([{"item": filled[0], "status": 200, "elapsed": 2, "json": {"count": 11}, "url": "u"}])
    assert bad[0]["problems"] == ["took 2 s or more (limit 2 s)", "count is 11, expected 12"]
    refused = smoke.smoke_verdicts([{"item": {"name": "h"}, "status": -1, "msg": "Connection refused", "url": "u"}])
    assert refused[0]["line"] == "Smoke check 'h' failed (GET u): expected HTTP 200, got -1 (Connection refused)."
