# The life of every vdp_* module, written once: validate the inputs, connect, take the migration
# lock when the module writes, run the work, close, and turn ANY failure into one secret-free line
# that says what to do (fail_json), with what had been done so far. The diff is returned only with
# --diff. The modules hold only their own logic: argument spec, check-mode plan, results.
"""The module lifecycle: connect -> lock -> run -> exit / fail, and the options every module shares."""

from __future__ import annotations

import socket
import traceback
from collections.abc import Callable, Iterable
from typing import Any

from ansible.module_utils.vdp_errors import OperatorError, first_line, redact
from ansible.module_utils.vdp_lockwait import LOCK_RETRIES, LOCK_RETRY_BACKOFF
from ansible.module_utils.vdp_names import APPLICATION_NAME_PREFIX
from ansible.module_utils.vdp_pg import apply_db, connect, migration_lock, pg_connection_argument_spec
from ansible.module_utils.vdp_s3 import apply_s3

try:
    import psycopg

    HAS_PSYCOPG = True
except ImportError:  # pragma: no cover - vdp_pg.connect reports the missing package
    HAS_PSYCOPG = False

_SECRET_OPTIONS = ("login_password", "access_key", "secret_key", "session_token", "password")


def run_options_spec() -> dict[str, Any]:
    """Options every engine module takes besides the connection: the run id and the lock-wait policy."""
    return dict(
        run_id=dict(type="str"),
        lock_retries=dict(type="int", default=LOCK_RETRIES),
        lock_retry_backoff=dict(type="float", default=LOCK_RETRY_BACKOFF),
    )


def engine_argument_spec(**own: Any) -> dict[str, Any]:
    """The connection options + the run options + the module's own options."""
    spec = pg_connection_argument_spec()
    spec.update(run_options_spec())
    spec.update(own)
    return spec


def run_options_problem(params: dict[str, Any]) -> str | None:
    if not 0 <= int(params.get("lock_retries") or 0) <= 50:
        return f"lock_retries must be between 0 and 50, got {params.get('lock_retries')}"
    if float(params.get("lock_retry_backoff") or 0) < 0:
        return "lock_retry_backoff must be >= 0 seconds"
    return None


def application_name(params: dict[str, Any], component: str) -> str:
    """application_name naming the component and ENDING with ' run <run id>' (the lease finds a run's sessions by it)."""
    given = params.get("application_name") or APPLICATION_NAME_PREFIX
    run_id = params.get("run_id")
    suffix = f" run {run_id}" if run_id else ""
    head = given if given != APPLICATION_NAME_PREFIX else f"{APPLICATION_NAME_PREFIX}/{component}"
    if head.endswith(suffix):
        head = head[: len(head) - len(suffix)]
    return (head[: max(63 - len(suffix), 1)] + suffix)[-63:]  # PostgreSQL keeps 63 bytes


def applied_by(conn: Any, run_id: str | None) -> str:
    with conn.cursor() as cur:
        cur.execute("SELECT current_user")
        user = cur.fetchone()[0]
    who = f"{user} from {socket.gethostname()}"
    return f"{who} (run {run_id})" if run_id else who


def secrets_of(params: dict[str, Any]) -> list[str]:
    """Every secret value among the module's options (top level and one level of dicts)."""
    found: list[str] = []
    for name, value in params.items():
        if name in _SECRET_OPTIONS and isinstance(value, str) and value:
            found.append(value)
        elif isinstance(value, dict):
            found += [v for k, v in value.items() if k in _SECRET_OPTIONS and isinstance(v, str) and v]
    return found


def connection_lost(sqlstate: str) -> bool:
    """SQLSTATEs that mean the session is gone, not that the statement was wrong: class 08 (connection exception)
    and 57P01-57P05 (the server shut down, crashed, is starting up, or ended an idle session) - a restart sends
    57P01 before it closes the connection."""
    return sqlstate.startswith("08") or sqlstate.startswith("57P")


def describe_failure(exc: BaseException) -> tuple[str, dict[str, Any]]:
    """One line for fail_json, plus structured details (not yet redacted)."""
    if isinstance(exc, OperatorError):
        return str(exc), dict(exc.details)
    if HAS_PSYCOPG and isinstance(exc, psycopg.Error):
        state = getattr(exc, "sqlstate", None)
        if state is None or connection_lost(state):
            return (
                f"the connection to PostgreSQL broke ({first_line(exc)}): the server restarted or the network dropped; "
                "nothing of the interrupted step was committed - re-run to resume (completed batches are kept)",
                dict(sqlstate=state) if state else {},
            )
        return (
            f"PostgreSQL error {state}: {first_line(exc)} -- nothing of the failed step was committed; fix the cause "
            "and re-run (completed batches are kept)",
            dict(sqlstate=state),
        )
    if isinstance(exc, OSError):
        return (
            f"local I/O failed ({first_line(exc)}): check the work folder's free space and permissions",
            dict(exception=traceback.format_exc()),
        )
    return f"{type(exc).__name__}: {first_line(exc)}", dict(exception=traceback.format_exc())


def fail_cleanly(module: Any, exc: BaseException, result: dict[str, Any], extra_secrets: Iterable[str] = ()) -> None:
    """fail_json with one secret-free line, the details, and what the module had done so far."""
    secrets = [*secrets_of(module.params), *extra_secrets]
    msg, details = describe_failure(exc)
    merged = {k: v for k, v in dict(result, **details).items() if k not in ("msg", "failed", "diff")}
    if "exception" in merged:
        merged["exception"] = redact(str(merged["exception"]), *secrets)
    module.fail_json(msg=redact(msg, *secrets), **merged)


Work = Callable[[Any, Any, dict[str, Any]], None]


def run_module(
    module: Any,
    result: dict[str, Any],
    work: Work,
    *,
    component: str,
    database: bool = True,
    lock: bool = True,
    read_only: bool = False,
    problem: str | Callable[[dict[str, Any]], str | None] | None = None,
) -> None:
    """The life of a module: spread the inventory dicts (db, s3) onto the options; refuse bad input (`problem`, or
    problem(params) once the dicts are spread); connect (unless database=False); hold the migration lock while
    work(module, conn, result) runs (lock=True: the module writes); close; any failure -> fail_cleanly; the diff only
    with --diff; exit_json. read_only: one REPEATABLE READ, read-only snapshot."""
    if "db" in module.params:  # the inventory's db dict, spread onto login_* for every later reader
        module.params.update(apply_db(module.params))
    if isinstance(module.params.get("s3"), dict) and "bucket" in module.params:  # likewise vdp_s3
        module.params.update(apply_s3(module.params))
    if callable(problem):
        problem = problem(module.params)
    if problem:
        module.fail_json(msg=problem, **{k: v for k, v in result.items() if k != "diff"})
    params = dict(module.params, application_name=application_name(module.params, component))
    try:
        if not database:
            work(module, None, result)
        else:
            _with_connection(module, params, result, work, lock, read_only)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one clear, secret-free line
        fail_cleanly(module, exc, result)
    if not module._diff:
        result.pop("diff", None)
    module.exit_json(**result)


def _with_connection(
    module: Any, params: dict[str, Any], result: dict[str, Any], work: Work, lock: bool, read_only: bool
) -> None:
    conn = connect(params)
    try:
        if read_only:
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            conn.read_only = True
            work(module, conn, result)
            conn.rollback()
        elif lock:
            with migration_lock(conn):
                work(module, conn, result)
        else:
            work(module, conn, result)
    finally:
        conn.close()


# --------------------------------------------------------------------------- input types


def text_problem(name: str, value: Any, max_length: int = 200, allow_empty: bool = False) -> str | None:
    """Why `value` is not usable as a text option (type, NUL, length), in the operator's words; None when fine."""
    if not isinstance(value, str):
        return f"{name} must be text, got {type(value).__name__} {value!r}: quote it in the inventory"
    if "\x00" in value:
        return f"{name} contains a NUL character: PostgreSQL cannot store it; remove it"
    if not allow_empty and not value.strip():
        return f"{name} is empty"
    if len(value) > max_length:
        return f"{name} is {len(value)} characters long: at most {max_length}"
    return None


def lock_policy(module: Any, component: str) -> Any:
    """The module's lock-wait policy; its watcher opens a second connection to name blocking sessions."""
    from ansible.module_utils.vdp_lockwait import LockPolicy

    params = dict(module.params, application_name=application_name(module.params, f"{component}-watch"))
    return LockPolicy(
        retries=int(module.params.get("lock_retries") or 0),
        backoff=float(module.params.get("lock_retry_backoff") or 0),
        watcher=lambda: connect(params, autocommit=True),
    )
