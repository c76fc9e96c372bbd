"""Stand-in for the virtue app in the embedded sandbox: a small real HTTP service on the platform's database.

It reads and writes PostgreSQL the way the real app does (sign-in recorded on auth.users, the
sponsor/coach dashboard from the legacy relationships or from practitioner_assignments once the
`organizational_model` flag is on), so smoke checks, monitoring probes and load generators hit
something real. Started by the sandbox role (roles/sandbox/tasks/app.yml):

    python virtue_app.py --config <sandbox_dir>/app/config.json

The config (JSON, mode 0600) names files, never secrets:

    {"listen_host": "127.0.0.1", "listen_port": 15444,
     "database": {"host": "127.0.0.1", "port": 15432, "dbname": "virtue", "user": "postgres",
                  "password_file": "<sandbox_dir>/secrets/postgres_password"},
     "admin_token_file": "<sandbox_dir>/secrets/app_admin_token",
     "state_file": "<sandbox_dir>/app/state.json",
     "initial_version": "legacy-1", "record_sign_ins": true,
     "connect_timeout": 3, "statement_timeout_ms": 5000, "max_connections": 16}

Endpoints: GET /health, POST /login, GET /dashboard/coach/<uuid>, GET /practitioner/<uuid>,
GET /metrics (Prometheus text format 0.0.4), and, with `Authorization: Bearer <admin token>`,
GET|POST /admin/state, POST /admin/maintenance, /admin/release, /admin/faults.
Release, maintenance and faults persist in the state file across restarts.
"""

from __future__ import annotations

import argparse
import hmac
import html
import json
import os
import queue
import random
import re
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import psycopg

T = TypeVar("T")
MAX_BODY = 64 * 1024
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 2.5, 5.0, 10.0)
DEFAULT_MESSAGE = "Scheduled maintenance in progress. We will be back shortly."
FAULTS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "latency_ms": (lambda v: type(v) is int and 0 <= v <= 60000, "an integer from 0 to 60000"),
    "error_rate": (lambda v: type(v) in (int, float) and 0 <= v <= 1, "a number from 0 to 1"),
    "fail_logins": (lambda v: type(v) is bool, "true or false"),
}


class ConfigError(Exception):
    """The config file is unusable; the message says what to fix."""


class RequestError(Exception):
    """A client error answered with `status` and a JSON error message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Config:
    listen_host: str
    listen_port: int
    db: dict[str, Any]
    password_file: Path
    admin_token_file: Path
    state_file: Path
    initial_version: str = "legacy-1"
    record_sign_ins: bool = True
    connect_timeout: int = 3
    statement_timeout_ms: int = 5000
    max_connections: int = 16


def read_secret(path: Path, what: str) -> str:
    """First word of a secret file (Ansible's password lookup may append ' salt=...')."""
    try:
        words = path.read_text(encoding="utf-8").split()
    except OSError as exc:
        raise ConfigError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not words:
        raise ConfigError(f"the {what} file {path} is empty")
    return words[0]


def load_config(path: Path) -> Config:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        db = raw["database"]
        config = Config(
            listen_host=str(raw.get("listen_host", "127.0.0.1")),
            listen_port=int(raw["listen_port"]),
            db={k: db[k] for k in ("host", "port", "dbname", "user")},
            password_file=Path(db["password_file"]),
            admin_token_file=Path(raw["admin_token_file"]),
            state_file=Path(raw["state_file"]),
            initial_version=str(raw.get("initial_version", "legacy-1")),
            record_sign_ins=bool(raw.get("record_sign_ins", True)),
            connect_timeout=int(raw.get("connect_timeout", 3)),
            statement_timeout_ms=int(raw.get("statement_timeout_ms", 5000)),
            max_connections=int(raw.get("max_connections", 16)),
        )
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"the config file {path} is not valid: {exc}") from None
    except KeyError as exc:
        raise ConfigError(f"the config file {path} lacks the key {exc}") from None
    read_secret(config.password_file, "database password")  # fail at start, not at the first request
    return config


@dataclass
class State:
    version: str
    maintenance: bool = False
    message: str = DEFAULT_MESSAGE
    faults: dict[str, Any] = field(default_factory=dict)
    record_sign_ins: bool = True


class StateStore:
    """The running release, maintenance flag and faults; persisted (atomically) on every change."""

    def __init__(self, path: Path, initial: State) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.state = initial
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            saved = {}
        for key in asdict(initial):
            if key in saved:
                setattr(self.state, key, saved[key])

    def snapshot(self) -> State:
        with self.lock:
            return State(**json.loads(json.dumps(asdict(self.state))))

    def update(self, **changes: Any) -> State:
        with self.lock:
            for key, value in changes.items():
                setattr(self.state, key, value)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(asdict(self.state), indent=2) + "\n", encoding="utf-8")
            os.replace(tmp, self.path)
            return State(**json.loads(json.dumps(asdict(self.state))))


def header(name: str, kind: str, text: str) -> list[str]:
    return [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]


def label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """Counters and a latency histogram, rendered in Prometheus text exposition format 0.0.4."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: dict[tuple[str, int], int] = {}
        self.durations: dict[str, list[float]] = {}  # path -> per-bucket counts, then +Inf count, then sum
        self.logins = {"success": 0, "failure": 0}

    def observe(self, path: str, code: int, seconds: float) -> None:
        with self.lock:
            self.requests[(path, code)] = self.requests.get((path, code), 0) + 1
            cells = self.durations.setdefault(path, [0.0] * (len(BUCKETS) + 2))
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    cells[i] += 1
            cells[-2] += 1
            cells[-1] += seconds

    def login(self, success: bool) -> None:
        with self.lock:
            self.logins["success" if success else "failure"] += 1

    def render(self, state: State) -> str:
        req, dur, login = "virtue_http_requests_total", "virtue_http_request_duration_seconds", "virtue_login_attempts_total"
        with self.lock:
            lines = header(req, "counter", "HTTP requests answered, by route template and status code.")
            lines += [f'{req}{{path="{label_value(p)}",code="{c}"}} {n}' for (p, c), n in sorted(self.requests.items())]
            lines += header(dur, "histogram", "Time to answer an HTTP request, by route template.")
            for path, cells in sorted(self.durations.items()):
                p = label_value(path)
                lines += [f'{dur}_bucket{{path="{p}",le="{b}"}} {int(n)}' for b, n in zip(BUCKETS, cells, strict=False)]
                lines.append(f'{dur}_bucket{{path="{p}",le="+Inf"}} {int(cells[-2])}')
                lines.append(f'{dur}_sum{{path="{p}"}} {cells[-1]:.6f}')
                lines.append(f'{dur}_count{{path="{p}"}} {int(cells[-2])}')
            lines += header(login, "counter", "Sign-in attempts, by result.")
            lines += [f'{login}{{result="{r}"}} {n}' for r, n in sorted(self.logins.items())]
        lines += header("virtue_app_info", "gauge", "The running release of the app.")
        lines.append(f'virtue_app_info{{version="{label_value(state.version)}"}} 1')
        lines += header("virtue_maintenance_mode", "gauge", "1 while the maintenance page is shown.")
        lines.append(f"virtue_maintenance_mode {int(state.maintenance)}")
        return "\n".join(lines) + "\n"


class DatabaseUnavailable(Exception):
    """No connection could be had (server down, refusing connections, or every slot busy)."""


class Database:
    """A tiny pool: idle connections are reused; at most `max_connections` are open at once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.idle: queue.LifoQueue[psycopg.Connection[Any]] = queue.LifoQueue()
        self.slots = threading.BoundedSemaphore(config.max_connections)

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            password = read_secret(self.config.password_file, "database password")
        except ConfigError as exc:
            raise DatabaseUnavailable(str(exc)) from None
        try:
            return psycopg.connect(
                **self.config.db,
                password=password,
                connect_timeout=self.config.connect_timeout,
                application_name="virtue-app-standin",
                options=f"-c statement_timeout={self.config.statement_timeout_ms}",
                autocommit=True,
            )
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(first_line(exc)) from None

    def run(self, work: Callable[[psycopg.Connection[Any]], T]) -> T:
        """Run `work` on a connection; a pooled connection found dead is replaced once."""
        if not self.slots.acquire(timeout=self.config.connect_timeout):
            raise DatabaseUnavailable("every database connection is busy")
        try:
            for attempt in (1, 2):
                try:
                    conn, pooled = self.idle.get_nowait(), True
                except queue.Empty:
                    conn, pooled = self._connect(), False
                try:
                    result = work(conn)
                except psycopg.Error as exc:
                    if not (conn.broken or conn.closed):
                        self.idle.put(conn)  # a failed statement (autocommit) leaves the session usable
                        raise
                    conn.close()
                    if pooled and attempt == 1:
                        continue  # the server restarted or dropped an idle session since it was last used
                    raise DatabaseUnavailable(first_line(exc)) from None
                except BaseException:
                    conn.close()
                    raise
                self.idle.put(conn)
                return result
        finally:
            self.slots.release()
        raise AssertionError("unreachable")

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


DETECT_SQL = """
SELECT to_regclass('public.practitioner_assignments') IS NOT NULL, to_regclass('public.feature_flags') IS NOT NULL,
       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('public.profiles') AND attname = 'last_activity'
               AND NOT attisdropped),
       EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass('public.profiles') AND attname = 'roles'
               AND NOT attisdropped)
"""
FLAG_SQL = "SELECT coalesce(bool_or(enabled), false) FROM public.feature_flags WHERE flag_name = 'organizational_model'"
USER_BY_EMAIL_SQL = "SELECT id FROM auth.users WHERE lower(email) = lower(%s)"
ROLES_SQL = "SELECT roles FROM public.profiles WHERE id = %s"
RECORD_SIGN_IN_SQL = "UPDATE auth.users SET last_sign_in_at = now(), updated_at = now() WHERE id = %s"
RECORD_ACTIVITY_SQL = "UPDATE public.profiles SET last_activity = now() WHERE id = %s"
PROFILE_SQL = "SELECT id, email, full_name FROM public.profiles WHERE id = %s"
LEGACY_DASHBOARD_SQL = """
SELECT DISTINCT practitioner_id FROM public.sponsor_practitioner_relationships
WHERE sponsor_id = %s AND active AND practitioner_id <> sponsor_id
"""
ORG_DASHBOARD_SQL = """
SELECT DISTINCT practitioner_id FROM public.practitioner_assignments
WHERE supervisor_id = %s AND supervisor_role = 'coach' AND active
"""
PROGRESS_SQL = "SELECT count(*), coalesce(sum(points), 0) FROM public.user_virtue_progress WHERE user_id = %s"


@dataclass(frozen=True)
class Schema:
    model: str
    has_last_activity: bool
    has_roles: bool


def detect_schema(conn: psycopg.Connection[Any]) -> Schema:
    """Organizational when practitioner_assignments exists and the organizational_model flag is on."""
    has_assignments, has_flags, has_last_activity, has_roles = conn.execute(DETECT_SQL).fetchone() or (False,) * 4
    enabled = bool(has_assignments and has_flags and (conn.execute(FLAG_SQL).fetchone() or (False,))[0])
    return Schema("organizational" if enabled else "legacy", bool(has_last_activity), bool(has_roles))


def sign_in(conn: psycopg.Connection[Any], email: str, record: bool) -> dict[str, Any] | None:
    row = conn.execute(USER_BY_EMAIL_SQL, (email,)).fetchone()
    if row is None:
        return None
    user_id = row[0]
    schema = detect_schema(conn)
    roles = None
    if schema.has_roles:
        found = conn.execute(ROLES_SQL, (user_id,)).fetchone()
        roles = found[0] if found else None
    if record:
        with conn.transaction():
            conn.execute(RECORD_SIGN_IN_SQL, (user_id,))
            if schema.model == "organizational" and schema.has_last_activity:
                conn.execute(RECORD_ACTIVITY_SQL, (user_id,))
    return {"user_id": str(user_id), "roles": roles}


def coach_dashboard(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> dict[str, Any] | None:
    if conn.execute(PROFILE_SQL, (user_id,)).fetchone() is None:
        return None
    model = detect_schema(conn).model
    query = ORG_DASHBOARD_SQL if model == "organizational" else LEGACY_DASHBOARD_SQL
    ids = sorted(str(r[0]) for r in conn.execute(query, (user_id,)).fetchall())
    return {"model": model, "practitioners": ids, "count": len(ids)}


def practitioner_view(conn: psycopg.Connection[Any], user_id: uuid.UUID) -> dict[str, Any] | None:
    profile = conn.execute(PROFILE_SQL, (user_id,)).fetchone()
    if profile is None:
        return None
    count, points = conn.execute(PROGRESS_SQL, (user_id,)).fetchone() or (0, 0)
    return {"id": str(profile[0]), "email": profile[1], "full_name": profile[2], "progress_count": int(count),
            "total_points": int(points)}


def parse_uuid(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise RequestError(400, f"not a user id (uuid expected): {text[:60]!r}") from None


def parse_faults(body: dict[str, Any]) -> dict[str, Any]:
    """The faults to inject from now on ({} clears them all)."""
    for key, value in body.items():
        if key not in FAULTS:
            raise RequestError(400, f"unknown fault {key!r}: use {', '.join(FAULTS)}")
        valid, what = FAULTS[key]
        if not valid(value):
            raise RequestError(400, f"{key} must be {what}")
    return dict(body)


def require_bool(body: dict[str, Any], key: str) -> bool:
    if not isinstance(body.get(key), bool):
        raise RequestError(400, f"'{key}' must be true or false")
    return bool(body[key])


def require_text(body: dict[str, Any], key: str, limit: int) -> str:
    value = body.get(key)
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise RequestError(400, f"'{key}' must be a non-empty string of at most {limit} characters")
    return value.strip()


MAINTENANCE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<title>Virtue - maintenance</title>
<style>body{{font-family:system-ui,sans-serif;background:#f5f5f4;color:#292524;margin:0;display:flex;
min-height:100vh;align-items:center;justify-content:center}}main{{max-width:32rem;padding:2rem;background:#fff;
border-radius:.75rem;box-shadow:0 1px 4px #0002}}h1{{color:#5f4339;margin-top:0}}</style></head>
<body><main><h1>We are upgrading the platform</h1><p id="message">{message}</p>
<p><small>This page refreshes itself. Version {version}.</small></p></main></body></html>
"""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_reply(status: int, payload: Any) -> Reply:
    return Reply(status, (json.dumps(payload) + "\n").encode())


ROUTES = [(verb, re.compile(re.sub(r"\{\w+\}", "(?P<id>[^/]+)", template)), template) for verb, template in (
    ("GET", "/health"), ("GET", "/metrics"), ("POST", "/login"), ("GET", "/dashboard/coach/{user_id}"),
    ("GET", "/practitioner/{user_id}"), ("GET", "/admin/state"), ("POST", "/admin/state"),
    ("POST", "/admin/maintenance"), ("POST", "/admin/release"), ("POST", "/admin/faults"))]
ALWAYS_SERVED = {"/health", "/metrics"}


class App:
    """Everything a request needs: config, state, metrics, database, and the route handlers."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.token = read_secret(config.admin_token_file, "admin token").encode()
        initial = State(version=config.initial_version, record_sign_ins=config.record_sign_ins)
        self.store = StateStore(config.state_file, initial)
        self.metrics = Metrics()
        self.db = Database(config)
        self.log_lock = threading.Lock()

    def route(self, method: str, path: str) -> tuple[str, Callable[[dict[str, str], Any], Reply] | None, dict[str, str]]:
        """(route template, handler, path parameters); handler None: 404 or 405."""
        allowed = False
        for verb, pattern, template in ROUTES:
            match = pattern.fullmatch(path)
            if match:
                if verb == method:
                    name = template.strip("/").split("/{")[0].replace("/", "_")
                    return template, getattr(self, f"do_{name}"), match.groupdict()
                allowed = True
        return ("method_not_allowed" if allowed else "not_found"), None, {}

    def authorized(self, header: str | None) -> bool:
        given = (header or "").removeprefix("Bearer ").strip().encode()
        return hmac.compare_digest(given, self.token)

    def faulted(self, template: str, state: State) -> Reply | None:
        """Injected slowness and errors (never on /metrics or /admin/*)."""
        if template == "/metrics" or template.startswith("/admin/"):
            return None
        latency = state.faults.get("latency_ms", 0)
        if latency:
            time.sleep(latency / 1000)
        if random.random() < state.faults.get("error_rate", 0):  # noqa: S311 - fault injection, not security
            return json_reply(500, {"error": "injected fault"})
        return None

    def database_error(self, exc: Exception) -> Reply:
        if isinstance(exc, DatabaseUnavailable):
            return json_reply(503, {"error": "database unavailable", "database": "unreachable", "detail": str(exc)})
        sqlstate = getattr(exc, "sqlstate", None)
        return json_reply(503, {"error": "database error", "sqlstate": sqlstate, "detail": first_line(exc)})

    # Route handlers: (path parameters, parsed JSON body or None) -> Reply.

    def do_health(self, _params: dict[str, str], _body: Any) -> Reply:
        state = self.store.snapshot()
        payload: dict[str, Any] = {"status": "ok", "version": state.version, "maintenance": state.maintenance}
        try:
            payload.update(model=self.db.run(detect_schema).model, database="ok")
        except (DatabaseUnavailable, psycopg.Error) as exc:
            payload.update(status="error", model=None, database="unreachable", detail=first_line(exc))
            return json_reply(503, payload)
        return json_reply(200, payload)

    def do_metrics(self, _params: dict[str, str], _body: Any) -> Reply:
        return Reply(200, self.metrics.render(self.store.snapshot()).encode(), "text/plain; version=0.0.4; charset=utf-8")

    def do_login(self, _params: dict[str, str], body: Any) -> Reply:
        success = False
        try:
            email = require_text(body if isinstance(body, dict) else {}, "email", 320)
            state = self.store.snapshot()
            if state.faults.get("fail_logins"):
                return json_reply(401, {"error": "sign-in refused (injected fault)"})
            found = self.db.run(lambda conn: sign_in(conn, email, state.record_sign_ins))
            if found is None:
                return json_reply(401, {"error": "invalid credentials"})
            success = True
            return json_reply(200, found)
        finally:
            self.metrics.login(success)

    def user_view(self, params: dict[str, str], view: Callable[[psycopg.Connection[Any], uuid.UUID], Any]) -> Reply:
        user_id = parse_uuid(params["id"])
        found = self.db.run(lambda conn: view(conn, user_id))
        return json_reply(404, {"error": "no such user"}) if found is None else json_reply(200, found)

    def do_dashboard_coach(self, params: dict[str, str], _body: Any) -> Reply:
        return self.user_view(params, coach_dashboard)

    def do_practitioner(self, params: dict[str, str], _body: Any) -> Reply:
        return self.user_view(params, practitioner_view)

    def do_admin_state(self, _params: dict[str, str], body: Any) -> Reply:
        if body is None:
            return json_reply(200, asdict(self.store.snapshot()))
        if not isinstance(body, dict) or set(body) != {"record_sign_ins"}:
            raise RequestError(400, "POST /admin/state takes {\"record_sign_ins\": true|false}")
        return json_reply(200, asdict(self.store.update(record_sign_ins=require_bool(body, "record_sign_ins"))))

    def do_admin_maintenance(self, _params: dict[str, str], body: Any) -> Reply:
        body = body if isinstance(body, dict) else {}
        enabled = require_bool(body, "enabled")
        message = require_text(body, "message", 2000) if "message" in body else DEFAULT_MESSAGE
        return json_reply(200, asdict(self.store.update(maintenance=enabled, message=message)))

    def do_admin_release(self, _params: dict[str, str], body: Any) -> Reply:
        version = require_text(body if isinstance(body, dict) else {}, "version", 100)
        return json_reply(200, asdict(self.store.update(version=version)))

    def do_admin_faults(self, _params: dict[str, str], body: Any) -> Reply:
        if not isinstance(body, dict):
            raise RequestError(400, "the body must be a JSON object, {} clears every fault")
        return json_reply(200, asdict(self.store.update(faults=parse_faults(body))))

    def maintenance_page(self, state: State) -> Reply:
        page = MAINTENANCE_PAGE.format(message=html.escape(state.message), version=html.escape(state.version))
        return Reply(503, page.encode(), "text/html; charset=utf-8", {"Retry-After": "30"})

    def handle(self, method: str, path: str, auth: str | None, read_body: Callable[[], Any]) -> tuple[str, Reply]:
        """(route template for the metrics, reply) of one request."""
        template, handler, params = self.route(method, path)
        state = self.store.snapshot()
        if template.startswith("/admin/") and not self.authorized(auth):
            denied = json_reply(401, {"error": "admin token required (Authorization: Bearer ...)"})
            return template, Reply(401, denied.body, headers={"WWW-Authenticate": 'Bearer realm="virtue-admin"'})
        if state.maintenance and template not in ALWAYS_SERVED and not template.startswith("/admin/"):
            return template, self.maintenance_page(state)
        if handler is None:
            status = 405 if template == "method_not_allowed" else 404
            return template, json_reply(status, {"error": f"{method} {path} is not served here"})
        fault = self.faulted(template, state)
        if fault is not None:
            return template, fault
        try:
            return template, handler(params, read_body() if method == "POST" else None)
        except RequestError as exc:
            return template, json_reply(exc.status, {"error": str(exc)})
        except (DatabaseUnavailable, psycopg.Error) as exc:
            return template, self.database_error(exc)

    def log(self, line: str) -> None:
        with self.log_lock:
            sys.stdout.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {line}\n")
            sys.stdout.flush()


class Handler(BaseHTTPRequestHandler):
    server_version = "virtue-app-standin/1"
    sys_version = ""
    protocol_version = "HTTP/1.1"
    timeout = 30
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall on keep-alive
    app: App  # set on the subclass built by serve()

    def read_json(self) -> Any:
        length = self.headers.get("Content-Length") or "0"
        if not length.isdigit() or int(length) > MAX_BODY:
            self.close_connection = True  # the body stays unread: it must not be taken for the next request
            raise RequestError(413 if length.isdigit() else 400, f"a JSON body of at most {MAX_BODY} bytes is expected")
        raw = self.rfile.read(int(length)) if int(length) else b""
        try:
            return json.loads(raw) if raw.strip() else {}
        except ValueError:
            raise RequestError(400, "the body must be JSON") from None

    def dispatch(self, method: str) -> None:
        started = time.monotonic()
        path = self.path.split("?", 1)[0]
        body_read: list[Any] = []

        def read_body() -> Any:
            body_read.append(True)
            return self.read_json()

        try:
            template, reply = self.app.handle(method, path, self.headers.get("Authorization"), read_body)
        except Exception as exc:  # noqa: BLE001 - one bad request must never take the service down
            template, reply = "error", json_reply(500, {"error": f"internal error: {type(exc).__name__}"})
        if method == "POST" and not body_read:
            self.close_connection = True  # the unread body would be taken for the next request
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(reply.body)
        elapsed = time.monotonic() - started
        self.app.metrics.observe(template if template.startswith("/") else "other", reply.status, elapsed)
        self.app.log(f'{self.client_address[0]} "{method} {path}" {reply.status} {elapsed:.3f}s')

    def do_GET(self) -> None:
        self.dispatch("GET")

    def do_POST(self) -> None:
        self.dispatch("POST")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """dispatch() logs every request itself, with its duration."""

    def log_message(self, format: str, *args: Any) -> None:
        self.app.log(f"{self.client_address[0]} {format % args}")


def serve(config: Config) -> None:
    app = App(config)
    handler = type("BoundHandler", (Handler,), {"app": app})
    try:
        server = ThreadingHTTPServer((config.listen_host, config.listen_port), handler)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {config.listen_host}:{config.listen_port}: {exc.strerror}") from None
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    state = app.store.snapshot()
    app.log(f"listening on http://{config.listen_host}:{config.listen_port}, version {state.version}, "
            f"database {config.db['host']}:{config.db['port']}/{config.db['dbname']}")
    try:
        server.serve_forever()
    finally:
        server.server_close()
        app.db.close()
        app.log("stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Stand-in for the virtue app (embedded sandbox).")
    parser.add_argument("--config", required=True, type=Path, help="JSON config (see the module docstring)")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
        serve(config)
    except ConfigError as exc:
        print(f"virtue_app: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
