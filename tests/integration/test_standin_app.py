"""The sandbox's stand-in virtue app (roles/sandbox/files/virtue_app.py) against real PostgreSQL.

Each test starts its own instance of the script on a free port against a clone of the legacy fixture;
the last tests check the instance the sandbox role itself started (base+14) and the role's up/down.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.support import sandbox as sb
from tests.support.engine import full_migration

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "roles" / "sandbox" / "files" / "virtue_app.py"
TOKEN = "admin-token-for-tests-0123456789"
NO_SUCH_USER = "00000000-0000-4000-8000-000000000000"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text)


@dataclass
class App:
    port: int
    proc: subprocess.Popen[bytes] | None  # None: an instance this test did not start
    folder: Path
    db: dict[str, Any]
    seen: list[str] = field(default_factory=list)  # every response body, to check for leaked secrets

    def call(self, method: str, path: str, body: Any = None, token: str | None = None) -> Reply:
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            resp = conn.getresponse()
            reply = Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read().decode())
        finally:
            conn.close()
        self.seen.append(reply.text)
        return reply

    def admin(self, method: str, path: str, body: Any = None) -> Reply:
        return self.call(method, path, body, token=TOKEN)

    def log(self) -> str:
        return (self.folder / "app.log").read_text()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def launch(folder: Path, db: dict[str, Any], port: int | None = None, **settings: Any) -> App:
    """Start the script as the role does (config file, secrets in files) and wait for it to listen."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    config = dict(
        listen_host="127.0.0.1",
        listen_port=port,
        database=dict(host=db["host"], port=db["port"], dbname=db["dbname"], user=db["user"],
                      password_file=str(write_private(folder / "pg_password", db["password"] + "\n"))),
        admin_token_file=str(write_private(folder / "token", TOKEN + "\n")),
        state_file=str(folder / "state.json"),
        **settings,
    )
    write_private(folder / "config.json", json.dumps(config))
    with open(folder / "app.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, str(APP), "--config", str(folder / "config.json")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    app = App(port, proc, folder, db)
    deadline = time.monotonic() + 20
    while True:
        try:
            app.call("GET", "/metrics")
            return app
        except OSError:
            assert proc.poll() is None, f"the app exited at start:\n{app.log()}"
            assert time.monotonic() < deadline, f"the app did not listen:\n{app.log()}"
            time.sleep(0.1)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., App]]:
    apps: list[App] = []

    def make(db: dict[str, Any], name: str = "app", **settings: Any) -> App:
        app = launch(tmp_path / name, db, **settings)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.stop()
        for secret in (TOKEN, app.db["password"]):
            assert secret not in app.log(), "a secret is in the app's log"
            assert not any(secret in text for text in app.seen), "a secret is in a response"


def q(db: dict[str, Any], query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(**db, autocommit=True) as conn:
        return conn.execute(query, params).fetchall()


def metrics(app: App) -> dict[str, float]:
    """The samples of /metrics as {'name{label="v",...}': value} (labels in the order the app writes them)."""
    reply = app.call("GET", "/metrics")
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in reply.text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def promtool_accepts(text: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian package prometheus, installed by scripts/bootstrap.sh) is missing"
    return subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False)


# A sponsor whose active relationships all point at existing people other than themself, with at
# least two practitioners and (preferably) an ended relationship too: both models must show the same people.
NORMAL_SPONSOR_SQL = """
SELECT r.sponsor_id FROM public.sponsor_practitioner_relationships r
LEFT JOIN public.profiles p ON p.id = r.practitioner_id
GROUP BY r.sponsor_id
HAVING count(*) FILTER (WHERE r.active AND (p.id IS NULL OR r.practitioner_id = r.sponsor_id)) = 0
   AND count(DISTINCT r.practitioner_id) FILTER (WHERE r.active) >= 2
ORDER BY bool_or(NOT r.active) DESC, r.sponsor_id LIMIT 1
"""
# What the legacy sponsor dashboard's own view shows for a sponsor.
LEGACY_VIEW_SQL = """
SELECT DISTINCT practitioner_id::text FROM public.sponsor_practitioner_overview
WHERE sponsor_id = %s AND active AND practitioner_id IS DISTINCT FROM sponsor_id ORDER BY 1
"""


def test_health_and_login_record_the_sign_in(legacy_db: Callable[..., dict[str, Any]], start: Callable[..., App]) -> None:
    db = legacy_db()
    app = start(db)
    health = app.call("GET", "/health")
    assert (health.status, health.json) == (200, {"status": "ok", "version": "legacy-1", "maintenance": False,
                                                  "model": "legacy", "database": "ok"})

    user_id, email = q(db, "SELECT id::text, email FROM auth.users WHERE last_sign_in_at < now() - interval '1 day' LIMIT 1")[0]
    ok = app.call("POST", "/login", {"email": email.upper()})  # emails match case-insensitively
    assert (ok.status, ok.json) == (200, {"user_id": user_id, "roles": None})
    last, updated, recent = q(db, "SELECT last_sign_in_at, updated_at, now() - last_sign_in_at < interval '1 minute' "
                                  "FROM auth.users WHERE id = %s", (user_id,))[0]
    assert recent and updated == last, "a sign-in stamps last_sign_in_at and updated_at, as Supabase's auth does"

    assert app.call("POST", "/login", {"email": "nobody@example.org"}).status == 401
    assert app.call("POST", "/login", {"mail": email}).status == 400
    assert app.call("POST", "/login", "not an object").status == 400
    assert app.call("POST", "/login", {"email": "x" * 70000}).status == 413

    # record_sign_ins off: the same sign-in succeeds and writes nothing.
    assert app.admin("POST", "/admin/state", {"record_sign_ins": False}).json["record_sign_ins"] is False
    before = q(db, "SELECT last_sign_in_at, updated_at FROM auth.users WHERE id = %s", (user_id,))
    assert app.call("POST", "/login", {"email": email}).status == 200
    assert q(db, "SELECT last_sign_in_at, updated_at FROM auth.users WHERE id = %s", (user_id,)) == before

    samples = metrics(app)
    assert samples['virtue_login_attempts_total{result="success"}'] == 2
    # unknown email, missing email, a body that is no object (the oversized body never reached the sign-in)
    assert samples['virtue_login_attempts_total{result="failure"}'] == 3
    assert samples['virtue_http_requests_total{path="/login",code="401"}'] == 1
    assert samples['virtue_http_requests_total{path="/login",code="200"}'] == 2


def test_dashboard_follows_the_model_from_legacy_to_organizational(
    legacy_db: Callable[..., dict[str, Any]], start: Callable[..., App], run_module: Callable[..., Any]
) -> None:
    db = legacy_db()
    app = start(db)
    sponsor = str(q(db, NORMAL_SPONSOR_SQL)[0][0])
    legacy = app.call("GET", f"/dashboard/coach/{sponsor}")
    expected = [r[0] for r in q(db, LEGACY_VIEW_SQL, (sponsor,))]
    assert legacy.status == 200 and legacy.json == {"model": "legacy", "practitioners": expected, "count": len(expected)}
    assert len(expected) >= 2
    assert app.call("GET", f"/dashboard/coach/{NO_SUCH_USER}").status == 404
    assert app.call("GET", "/dashboard/coach/not-a-uuid").status == 400

    # The showcase sponsor has a self-relationship and one to a deleted user: the legacy view lists the
    # deleted one (as the old dashboard did), never the sponsor themself.
    messy = str(q(db, "SELECT sponsor_id FROM public.sponsor_practitioner_relationships "
                      "WHERE sponsor_id = practitioner_id AND active LIMIT 1")[0][0])
    messy_legacy = app.call("GET", f"/dashboard/coach/{messy}").json["practitioners"]
    assert messy not in messy_legacy and messy_legacy == [r[0] for r in q(db, LEGACY_VIEW_SQL, (messy,))]

    practitioner = expected[0]
    view = app.call("GET", f"/practitioner/{practitioner}")
    count, points = q(db, "SELECT count(*), coalesce(sum(points), 0) FROM public.user_virtue_progress WHERE user_id = %s",
                      (practitioner,))[0]
    email, name = q(db, "SELECT email, full_name FROM public.profiles WHERE id = %s", (practitioner,))[0]
    assert view.status == 200 and view.json == {"id": practitioner, "email": email, "full_name": name,
                                                "progress_count": count, "total_points": points}
    assert app.call("GET", f"/practitioner/{NO_SUCH_USER}").status == 404

    # The migration alone does not switch the app: the flag is created disabled.
    full_migration(run_module, db)
    assert app.call("GET", f"/dashboard/coach/{sponsor}").json["model"] == "legacy"
    q(db, "UPDATE public.feature_flags SET enabled = true WHERE flag_name = 'organizational_model' RETURNING 1")
    org = app.call("GET", f"/dashboard/coach/{sponsor}")
    assert org.status == 200 and org.json == {"model": "organizational", "practitioners": expected, "count": len(expected)}
    assert app.call("GET", "/health").json["model"] == "organizational"
    # Not converted (and reported by the migration): the deleted practitioner and the self-relationship.
    existing = {r[0] for r in q(db, "SELECT id::text FROM public.profiles")}
    assert app.call("GET", f"/dashboard/coach/{messy}").json["practitioners"] == [p for p in messy_legacy if p in existing]

    # In the organizational model a sign-in also stamps profiles.last_activity, and roles come back.
    email = q(db, "SELECT email FROM public.profiles WHERE id = %s", (sponsor,))[0][0]
    signed = app.call("POST", "/login", {"email": email})
    assert signed.status == 200 and "coach" in signed.json["roles"]
    assert q(db, "SELECT now() - last_activity < interval '1 minute' FROM public.profiles WHERE id = %s", (sponsor,)) == [(True,)]

    # Rolling the flag back (the seed's feature-flag rollback) brings the legacy dashboard back.
    q(db, "UPDATE public.feature_flags SET enabled = false WHERE flag_name = 'organizational_model' RETURNING 1")
    assert app.call("GET", f"/dashboard/coach/{sponsor}").json["model"] == "legacy"


def test_maintenance_release_and_admin_auth(legacy_db: Callable[..., dict[str, Any]], start: Callable[..., App]) -> None:
    db = legacy_db()
    app = start(db)
    sponsor = str(q(db, NORMAL_SPONSOR_SQL)[0][0])
    for token in (None, "wrong", TOKEN[:-1]):
        assert app.call("POST", "/admin/maintenance", {"enabled": True}, token=token).status == 401
        assert app.call("GET", "/admin/state", token=token).status == 401
    refused = app.call("GET", "/admin/state")
    assert refused.json == {"error": "admin token required (Authorization: Bearer ...)"}
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert app.call("GET", f"/dashboard/coach/{sponsor}").status == 200, "a refused admin call changes nothing"

    on = app.admin("POST", "/admin/maintenance", {"enabled": True, "message": "Step 2/5: <schema> migration"})
    assert on.status == 200 and on.json["maintenance"] is True
    for method, path, body in (("GET", f"/dashboard/coach/{sponsor}", None), ("POST", "/login", {"email": "a@b"}),
                               ("GET", f"/practitioner/{sponsor}", None), ("GET", "/nowhere", None)):
        page = app.call(method, path, body)
        assert page.status == 503 and page.headers["content-type"].startswith("text/html")
        assert "Step 2/5: &lt;schema&gt; migration" in page.text and "<script" not in page.text
    health = app.call("GET", "/health")
    assert health.status == 200 and health.json["maintenance"] is True and health.json["database"] == "ok"
    assert metrics(app)["virtue_maintenance_mode"] == 1

    # Progress updates are new messages.
    app.admin("POST", "/admin/maintenance", {"enabled": True, "message": "Step 4/5: validating"})
    assert "Step 4/5: validating" in app.call("GET", f"/dashboard/coach/{sponsor}").text

    assert app.admin("POST", "/admin/release", {"version": "organizational-2"}).json["version"] == "organizational-2"
    assert app.admin("POST", "/admin/release", {"version": ""}).status == 400
    assert app.admin("POST", "/admin/maintenance", {"enabled": "yes"}).status == 400

    # Release, maintenance and message survive a restart (the state file).
    app.stop()
    again = launch(app.folder, db, port=app.port)
    try:
        state = again.admin("GET", "/admin/state").json
        assert state == {"version": "organizational-2", "maintenance": True, "message": "Step 4/5: validating",
                         "faults": {}, "record_sign_ins": True}
        assert again.call("GET", f"/dashboard/coach/{sponsor}").status == 503
        assert again.admin("POST", "/admin/maintenance", {"enabled": False}).json["maintenance"] is False
        assert again.call("GET", f"/dashboard/coach/{sponsor}").status == 200
        samples = metrics(again)
        assert samples['virtue_app_info{version="organizational-2"}'] == 1 and samples["virtue_maintenance_mode"] == 0
    finally:
        again.stop()
        for secret in (TOKEN, db["password"]):
            assert secret not in app.log() and not any(secret in t for t in again.seen)


def test_injected_faults_and_metrics(legacy_db: Callable[..., dict[str, Any]], start: Callable[..., App]) -> None:
    db = legacy_db()
    app = start(db)
    sponsor = str(q(db, NORMAL_SPONSOR_SQL)[0][0])
    email = q(db, "SELECT email FROM auth.users LIMIT 1")[0][0]
    dash = f"/dashboard/coach/{sponsor}"
    base = metrics(app)

    assert app.admin("POST", "/admin/faults", {"latency_ms": 600}).json["faults"] == {"latency_ms": 600}
    started = time.monotonic()
    assert app.call("GET", dash).status == 200
    assert time.monotonic() - started >= 0.6
    slow = metrics(app)
    template = 'path="/dashboard/coach/{user_id}"'
    assert slow[f'virtue_http_request_duration_seconds_bucket{{{template},le="0.5"}}'] == 0
    assert slow[f'virtue_http_request_duration_seconds_bucket{{{template},le="1.0"}}'] == 1
    assert slow[f"virtue_http_request_duration_seconds_sum{{{template}}}"] >= 0.6
    started = time.monotonic()
    metrics(app)
    assert time.monotonic() - started < 0.5, "/metrics is never slowed down"

    app.admin("POST", "/admin/faults", {"error_rate": 1, "fail_logins": True})
    assert app.call("GET", dash).status == 500
    assert app.call("GET", "/health").status == 500
    app.admin("POST", "/admin/faults", {"fail_logins": True})
    assert app.call("POST", "/login", {"email": email}).status == 401
    app.admin("POST", "/admin/faults", {"error_rate": 0.5})
    codes = [app.call("GET", dash).status for _ in range(60)]
    assert 10 < codes.count(500) < 50 and codes.count(500) + codes.count(200) == 60

    for bad in ({"latency_ms": -1}, {"latency_ms": True}, {"error_rate": 2}, {"fail_logins": 1}, {"slow": 1}, [1]):
        assert app.admin("POST", "/admin/faults", bad).status == 400, bad
    assert app.admin("POST", "/admin/faults", {}).json["faults"] == {}
    assert app.call("GET", dash).status == 200
    assert app.call("POST", "/login", {"email": email}).status == 200

    final = metrics(app)
    assert final['virtue_http_requests_total{path="/dashboard/coach/{user_id}",code="500"}'] == 1 + codes.count(500)
    assert final['virtue_login_attempts_total{result="failure"}'] == base['virtue_login_attempts_total{result="failure"}'] + 1
    assert final['virtue_login_attempts_total{result="success"}'] == base['virtue_login_attempts_total{result="success"}'] + 1
    assert 'virtue_http_requests_total{path="other",code="404"}' not in final
    assert app.call("GET", "/no/such/path?email=x").status == 404
    assert app.call("DELETE", "/health").status in (501, 405)
    after = metrics(app)
    assert after['virtue_http_requests_total{path="other",code="404"}'] == 1
    assert not [name for name in after if "/no/such" in name], "raw URLs never become labels"
    checked = promtool_accepts(app.call("GET", "/metrics").text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_database_down_answers_503_and_recovers(
    sandbox: sb.Sandbox, legacy_db: Callable[..., dict[str, Any]], start: Callable[..., App]
) -> None:
    db = legacy_db()
    app = start(db, statement_timeout_ms=500)
    sponsor = str(q(db, NORMAL_SPONSOR_SQL)[0][0])
    email = q(db, "SELECT email FROM auth.users LIMIT 1")[0][0]
    assert app.call("GET", f"/dashboard/coach/{sponsor}").status == 200  # a pooled connection now exists

    name = sql.Identifier(db["dbname"])
    with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(name))
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (db["dbname"],))
        health = app.call("GET", "/health")
        assert health.status == 503 and health.json["database"] == "unreachable" and health.json["status"] == "error"
        down = app.call("GET", f"/dashboard/coach/{sponsor}")
        assert down.status == 503 and down.json["error"] == "database unavailable"
        assert app.call("POST", "/login", {"email": email}).status == 503
        assert metrics(app)['virtue_login_attempts_total{result="failure"}'] == 1
        admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(name))
    assert app.call("GET", "/health").status == 200
    assert app.call("GET", f"/dashboard/coach/{sponsor}").status == 200

    # A lock held by someone else: the statement_timeout answers 503 quickly, and the app keeps serving.
    with psycopg.connect(**db) as locker:
        locker.execute("LOCK TABLE public.sponsor_practitioner_relationships IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        blocked = app.call("GET", f"/dashboard/coach/{sponsor}")
        assert blocked.status == 503 and blocked.json["sqlstate"] == "57014"
        assert time.monotonic() - started < 3
    assert app.call("GET", f"/dashboard/coach/{sponsor}").status == 200

    # Nothing listens on the database port at all.
    dead = start(dict(db, port=free_port()), name="dead")
    assert dead.call("GET", "/health").status == 503
    assert dead.call("GET", f"/practitioner/{sponsor}").json["database"] == "unreachable"


def test_bad_config_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"listen_port": 1, "database": {"host": "h", "port": 1, "dbname": "d", "user": "u",
                                                                 "password_file": str(tmp_path / "missing")}}))
    run = subprocess.run([sys.executable, str(APP), "--config", str(config)], capture_output=True, text=True, timeout=30,
                         check=False)
    assert run.returncode == 2 and "lacks the key 'admin_token_file'" in run.stderr
    data = json.loads(config.read_text())
    data.update(admin_token_file=str(tmp_path / "token"), state_file=str(tmp_path / "state.json"))
    config.write_text(json.dumps(data))
    run = subprocess.run([sys.executable, str(APP), "--config", str(config)], capture_output=True, text=True, timeout=30,
                         check=False)
    assert run.returncode == 2 and f"cannot read the database password file {tmp_path / 'missing'}" in run.stderr


def test_the_sandbox_role_runs_the_app(sandbox: sb.Sandbox) -> None:
    port = sandbox.port_base + 14
    token = (sandbox.dir / "secrets" / "app_admin_token").read_text().split()[0]
    app = App(port, None, sandbox.dir / "app", sandbox.pg())
    health = app.call("GET", "/health")
    assert health.status == 200 and health.json["database"] == "ok" and health.json["version"]
    assert app.call("GET", "/admin/state").status == 401
    assert app.call("GET", "/admin/state", token=token).status == 200

    app_dir = sandbox.dir / "app"
    for path in (app_dir / "config.json", sandbox.dir / "secrets" / "app_admin_token"):
        assert oct(path.stat().st_mode)[-3:] == "600", path
    config = json.loads((app_dir / "config.json").read_text())
    assert config["listen_port"] == port and config["database"]["port"] == sandbox.port_base + 2
    assert config["database"]["dbname"] == "virtue"
    pid = int((app_dir / "app.pid").read_text())
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode()
    assert "virtue_app.py" in cmdline
    for secret in (sandbox.password, token):
        assert secret not in cmdline and secret not in (app_dir / "config.json").read_text()
        assert secret not in (app_dir / "app.log").read_text()


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper has exited: it counts as stopped)."""
    try:
        return "\nState:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def stand_in_task_results(output: str) -> dict[str, str]:
    """{task name: status of its last result} for the role's stand-in app tasks."""
    results: dict[str, str] = {}
    for block in re.split(r"\nTASK \[", output)[1:]:
        name = block.split("]", 1)[0].removeprefix("sandbox : ")
        status = re.search(r"^(ok|changed|skipping|failed|fatal)", block.split("\n", 1)[1], re.MULTILINE)
        if "stand-in" in name and status:
            results[name] = status.group(1)
    return results


def test_sandbox_up_starts_the_app_restarts_it_on_change_and_down_stops_exactly_it() -> None:
    """(A second `up` changing nothing at all, the app included, is test_sandbox.py's check.)"""
    base = int(os.environ.get("VDP_TEST_APP_LIFECYCLE_PORT_BASE", "26730"))
    folder = Path(tempfile.mkdtemp(prefix="vdp-sandbox-app-"))
    folder.chmod(0o755)
    env = sb.playbook_env(folder, base)
    up = ("playbooks/sandbox.yml", "-e", "sandbox_action=up", "-e", "sandbox_pg_fsync=false")
    pids: list[int] = []
    try:
        first = sb.run_playbook(*up, env=env)
        assert first.returncode == 0, first.stdout[-3000:]
        pids.append(int((folder / "app" / "app.pid").read_text()))
        assert alive(pids[0])

        # A changed setting restarts it (a new process) with the role's new value; the rest stays as it was.
        second = sb.run_playbook(*up, "-e", "sandbox_app_version=legacy-7", env=env)
        assert second.returncode == 0, second.stdout[-3000:]
        results = stand_in_task_results(second.stdout)
        assert results["Write the stand-in app configuration"] == "changed"
        assert results["Write the admin token of the stand-in app"] == results["Install the stand-in app"] == "ok"
        pids.append(int((folder / "app" / "app.pid").read_text()))
        assert pids[1] != pids[0] and alive(pids[1]) and not alive(pids[0])
        conn = http.client.HTTPConnection("127.0.0.1", base + 14, timeout=10)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["version"] == "legacy-7"
        conn.close()
    finally:
        down = sb.run_playbook("playbooks/sandbox.yml", "-e", "sandbox_action=down", env=env)
    assert down.returncode == 0, down.stdout[-3000:]
    assert pids and not any(alive(p) for p in pids), "down must stop the app up started"
    with socket.socket() as s:
        s.settimeout(0.5)
        assert s.connect_ex(("127.0.0.1", base + 14)) != 0, "the app still listens after down"
    assert "stand-in app stopped" in down.stdout, "down reports the status"
    shutil.rmtree(folder, ignore_errors=True)
