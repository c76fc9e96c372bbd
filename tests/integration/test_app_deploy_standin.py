"""The app_deploy role on platform none: the sandbox's real stand-in virtue app (roles/sandbox/files/virtue_app.py)
on a migrated clone of the legacy fixture, driven by ansible-playbook over its HTTP admin API, with the role's
DEFAULT smoke checks (sign-in, the sponsor's dashboard as a coach dashboard, the practitioner's page).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.engine import full_migration
from tests.support.sandbox import Sandbox
from tests.support.standin import TOKEN, StandIn
from tests.support.world import play, recap


@pytest.fixture
def standin(world: dict[str, Any], run_module: Callable[..., Any], tmp_path: Path) -> Iterator[StandIn]:
    """The stand-in on the world's database, migrated to the organizational model (flags created disabled)."""
    full_migration(run_module, world["vdp_production_db"])
    app = StandIn(tmp_path / "standin", world["vdp_production_db"])
    yield app
    app.stop()
    assert TOKEN not in app.log.read_text()


def _vars(world: dict[str, Any], app: StandIn, tmp_path: Path, version: str = "org-2.0") -> str:
    settings = dict(json.loads(Path(world["vars_file"]).read_text()))
    settings.update(app_deploy_platform="none",
                    app_deploy_standin=dict(base_url=app.url, admin_token=TOKEN, version=version),
                    app_deploy_smoke_base_url=app.url)
    path = tmp_path / f"standin-vars-{version}.json"
    path.write_text(json.dumps(settings))
    return str(path)


def _run(sandbox: Sandbox, world: dict[str, Any], vars_file: str, action: str, *args: str) -> Any:
    proc = play(sandbox, world, "playbooks/deploy.yml", "-e", f"@{vars_file}", "-e", f"app_deploy_action={action}", *args)
    assert TOKEN not in proc.stdout + proc.stderr, "the admin token leaked"
    return proc


def _flags(world: dict[str, Any]) -> dict[str, bool]:
    with psycopg.connect(**world["vdp_production_db"]) as conn:
        return dict(conn.execute("SELECT flag_name, enabled FROM public.feature_flags "
                                 "WHERE flag_name IN ('organizational_model', 'multi_role_support')").fetchall())


def test_deploy_and_rollback_on_the_standin(sandbox: Sandbox, world: dict[str, Any], standin: StandIn, tmp_path: Path) -> None:
    vars_file = _vars(world, standin, tmp_path)

    proc = _run(sandbox, world, vars_file, "maintenance_start")
    assert proc.returncode == 0, proc.stdout[-3000:]
    state = json.loads((world["run_dir"] / "app_state.json").read_text())
    assert state["standin"]["version"] == "legacy-1" and state["standin"]["maintenance"] is False
    assert standin.call("GET", "/health")[1]["maintenance"] is True
    assert standin.call("POST", "/login", {"email": "x@example.org"})[0] == 503  # writes stopped

    proc = _run(sandbox, world, vars_file, "deploy")
    assert proc.returncode == 0, proc.stdout[-4000:]
    health = standin.call("GET", "/health")[1]
    assert (health["version"], health["maintenance"], health["model"]) == ("org-2.0", False, "organizational")
    assert _flags(world) == {"organizational_model": True, "multi_role_support": True}
    record = json.loads((world["run_dir"] / "deploy.json").read_text())["actions"]
    smoke = record["deploy"]["smoke"]
    assert [c["name"] for c in smoke] == ["health", "existing user signs in", "sponsor dashboard works as a coach dashboard",
                                          "practitioner access unchanged"]
    assert all(c["ok"] for c in smoke), smoke
    assert "the stand-in cannot scale" in record["maintenance_start"]["maintenance_note"]
    dashboard = next(c for c in smoke if c["name"].startswith("sponsor"))
    code, body = standin.call("GET", dashboard["url"].removeprefix(standin.url))
    assert code == 200 and body["model"] == "organizational" and body["count"] >= 1

    proc = _run(sandbox, world, vars_file, "deploy")
    assert proc.returncode == 0 and recap(proc.stdout)["changed"] == 0, proc.stdout[-3000:]

    check_vars = _vars(world, standin, tmp_path, version="org-3.0")
    before = standin.call("GET", "/admin/state", admin=True)[1]
    proc = _run(sandbox, world, check_vars, "deploy", "--check")
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert recap(proc.stdout)["changed"] >= 1 and '"version": "org-3.0"' in proc.stdout
    assert standin.call("GET", "/admin/state", admin=True)[1] == before, "--check changed the app"

    proc = _run(sandbox, world, vars_file, "rollback")
    assert proc.returncode == 0, proc.stdout[-3000:]
    health = standin.call("GET", "/health")[1]
    assert (health["version"], health["maintenance"], health["model"]) == ("legacy-1", False, "legacy")
    assert _flags(world) == {"organizational_model": False, "multi_role_support": False}


def test_a_slow_app_fails_the_smoke_checks(sandbox: Sandbox, world: dict[str, Any], standin: StandIn, tmp_path: Path) -> None:
    vars_file = _vars(world, standin, tmp_path)
    assert standin.call("POST", "/admin/faults", {"latency_ms": 2300}, admin=True)[0] == 200
    proc = _run(sandbox, world, vars_file, "smoke")
    assert proc.returncode != 0
    error = json.loads((world["run_dir"] / "deploy.json").read_text())["actions"]["smoke"]["error"]
    assert "smoke checks failed" in error and "took 2 s or more (limit 2 s)" in error, error
    assert standin.call("POST", "/admin/faults", {}, admin=True)[0] == 200
    proc = _run(sandbox, world, vars_file, "smoke")
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_a_wrong_admin_token_is_named_without_printing_it(sandbox: Sandbox, world: dict[str, Any], standin: StandIn,
                                                         tmp_path: Path) -> None:
    settings = json.loads(Path(_vars(world, standin, tmp_path)).read_text())
    settings["app_deploy_standin"]["admin_token"] = "not-the-token-42"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(settings))
    proc = _run(sandbox, world, str(path), "maintenance_start")
    assert proc.returncode != 0 and "not-the-token-42" not in proc.stdout
    error = json.loads((world["run_dir"] / "deploy.json").read_text())["actions"]["maintenance_start"]["error"]
    assert "answered 401" in error and "vdp_app.admin_token" in error, error
    assert standin.call("GET", "/health")[1]["maintenance"] is False


def test_a_run_that_takes_over_a_crashed_run_returns_the_app_to_its_state_before_the_crash(
    sandbox: Sandbox, world: dict[str, Any], standin: StandIn, tmp_path: Path
) -> None:
    """A run killed after maintenance start leaves the app in maintenance; the run that takes over its lease must
    return the app to what the crashed run recorded, not to the maintenance it finds (the chaos suite's kill_tree)."""
    vars_file = _vars(world, standin, tmp_path)
    crashed = _run(sandbox, world, vars_file, "maintenance_start")
    assert crashed.returncode == 0, crashed.stdout[-3000:]
    assert standin.call("GET", "/health")[1]["maintenance"] is True
    taker_dir = world["run_dir"].parent / "taker"
    taker = _run(sandbox, world, vars_file, "maintenance_start", "-e", "vdp_run_id=taker", "-e", f"vdp_run_dir={taker_dir}",
                 "-e", f"vdp_lease_takeover={world['vdp_run_id']}", "-e", "run_context_lease=false")
    assert taker.returncode == 0, taker.stdout[-3000:]
    state = json.loads((taker_dir / "app_state.json").read_text())
    assert state["standin"]["maintenance"] is False and state["standin"]["version"] == "legacy-1", state
    assert state["carried_from_run"] == world["vdp_run_id"]
