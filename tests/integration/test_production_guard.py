"""Issue 7 items 1 and 2, reproduced on the real sandbox: staging pointed at production in disguise.

Every attack reaches the production database under another address than vdp_production_db - a TCP
forwarder on another port, 0.0.0.0, ::ffff:127.0.0.1, the name localhost, a unix-socket path - and
must be refused by the production guard (module_utils/vdp_guard.py: server identity, never addresses)
in vdp_restore, in vdp_preflight and in the playbooks, with production's content untouched (same
database OID, same rows, and a sentinel table that a restore of the backup would have removed).

The old guard compared host, port and database name: every disguise but `localhost` went through it,
and the staging restore dropped and replaced production (issue 7, item 1). The sandbox's PostgreSQL has
no unix socket (roles/sandbox/templates/postgresql.sandbox.conf.j2: unix_socket_directories = ''), so the
socket attack goes through a unix-socket forwarder in front of production's TCP port - to libpq it is a
socket path like any other.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.backups import (
    LEGACY,
    PG_BINDIR,
    backed_up_once,
    backup,
    has_sentinel,
    keys_under,
    legacy_clone,
    login,
    no_secret,
    pg_server,
    restore_args,
    s3_of,
)
from tests.support.sandbox import Sandbox
from tests.support.world import play, record

PHRASE = "I understand this overwrites production"
REFUSED = "it is the PRODUCTION database"
DISGUISES = ["tcp-forwarder", "zero-address", "ipv4-mapped-ipv6", "localhost", "unix-socket"]


# --------------------------------------------------------------------------- a tiny threaded forwarder


class Forwarder:
    """Relays every connection made to its listening socket (TCP or unix) to 127.0.0.1:<to_port>, byte for byte."""

    def __init__(self, to_port: int, unix_path: str | None = None) -> None:
        self.to_port = to_port
        self.connections = 0
        self._sockets: list[socket.socket] = []
        if unix_path:
            self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.server.bind(unix_path)
        else:
            self.server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.server.bind(("127.0.0.1", 0))
        self.server.listen(32)
        self.port = 0 if unix_path else self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.to_port), timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            self.connections += 1
            self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the relay thread
        except OSError:
            pass
        self.server.close()
        for s in self._sockets:
            s.close()


def ipv4_mapped_reaches(port: int) -> bool:
    probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    probe.settimeout(2)
    try:
        probe.connect(("::ffff:127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


# --------------------------------------------------------------------------- fixtures


production = legacy_clone("production", "pg")  # for the module tests: the sandbox's own 'virtue' is never touched


@pytest.fixture(scope="module")
def backed_up(run_module: Any, sandbox: Sandbox, production: dict[str, Any]) -> dict[str, Any]:
    """A verified backup of production, then a sentinel table created AFTER it: restoring the backup onto
    production would make the sentinel disappear (and change the database's OID)."""
    done = backed_up_once(run_module, sandbox, production, "test-guard", "guard-1")
    with psycopg.connect(**production, autocommit=True) as c:
        c.execute("CREATE TABLE public.guard_sentinel (x int)")
    return done


@pytest.fixture(params=DISGUISES)
def disguise(request: pytest.FixtureRequest, sandbox: Sandbox) -> Iterator[Callable[[dict[str, Any]], dict[str, Any]]]:
    """(production conn) -> a connection dict that reaches production's database under another address."""
    prod_port = sandbox.port_base + 2
    opened: list[Forwarder] = []
    folders: list[str] = []
    kind = request.param
    if kind == "ipv4-mapped-ipv6" and not ipv4_mapped_reaches(prod_port):
        pytest.skip("IPv6 is not usable on this machine's loopback: ::ffff:127.0.0.1 cannot reach 127.0.0.1")

    def reach(prod: dict[str, Any]) -> dict[str, Any]:
        if kind == "tcp-forwarder":
            forwarder = Forwarder(prod_port)
            opened.append(forwarder)
            return dict(prod, host="127.0.0.1", port=forwarder.port)
        if kind == "unix-socket":
            folder = tempfile.mkdtemp(prefix="vdp-sock-", dir="/tmp")  # short: socket paths are limited to 107 bytes
            folders.append(folder)
            opened.append(Forwarder(prod_port, unix_path=os.path.join(folder, f".s.PGSQL.{prod_port}")))
            return dict(prod, host=folder, port=prod_port)
        host = {"zero-address": "0.0.0.0", "ipv4-mapped-ipv6": "::ffff:127.0.0.1", "localhost": "localhost"}[kind]  # noqa: S104
        return dict(prod, host=host)

    yield reach
    for forwarder in opened:
        forwarder.close()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


# --------------------------------------------------------------------------- helpers


def fingerprint(conn: dict[str, Any]) -> dict[str, Any]:
    """What a restore onto this database would change: its OID, every legacy table's rows, its public tables."""
    with psycopg.connect(**conn) as c:
        oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        rows = {
            t: c.execute(f"SELECT count(*), md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x").fetchone()
            for t in LEGACY
        }
        tables = [r[0] for r in c.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]
    return dict(oid=oid, rows=rows, tables=tables)


def restore(run_module: Any, box: Sandbox, target: dict[str, Any], production: dict[str, Any], prefix: str, **extra: Any) -> Any:
    result = run_module("vdp_restore", restore_args(box, target, prefix, production, **extra), diff=True)
    no_secret(result, box)
    return result


def preflight(run_module: Any, box: Sandbox, production: dict[str, Any], staging: dict[str, Any]) -> Any:
    args = dict(login(production), staging=pg_server(staging), pg_bindir=PG_BINDIR)
    result = run_module("vdp_preflight", args)
    no_secret(result, box)
    return result


def checks(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in result["checks"]}


# --------------------------------------------------------------------------- item 1: vdp_restore and vdp_preflight


def test_restore_refuses_production_in_disguise(
    run_module: Any, sandbox: Sandbox, production: dict[str, Any], backed_up: dict[str, Any], disguise: Callable[..., Any]
) -> None:
    before = fingerprint(production)
    target = disguise(production)
    for mode in ("file", "stream"):
        refused = restore(run_module, sandbox, target, production, backed_up["prefix"], run_id=backed_up["run_id"], mode=mode)
        assert refused.failed and not refused.changed and not refused["restored"]
        assert f"refusing to drop or restore {target['user']}@{target['host']}" in refused["msg"]
        assert REFUSED in refused["msg"] and "Point vdp_staging_db at another database" in refused["msg"]
        assert "same server" in refused["msg"] or "system_identifier equal" in refused["msg"], refused["msg"]
    assert fingerprint(production) == before and has_sentinel(production, "guard_sentinel")


def test_preflight_blocks_production_in_disguise(
    run_module: Any, sandbox: Sandbox, production: dict[str, Any], disguise: Callable[..., Any]
) -> None:
    result = preflight(run_module, sandbox, production, disguise(production))
    assert result["go"] is False
    check = checks(result)["staging is not production"]
    assert check["status"] == "blocking" and REFUSED in check["detail"], check
    assert any(b.startswith("staging is not production: refusing") for b in result["blocking"])


def test_the_forwarder_really_carries_the_guard_to_production(
    run_module: Any, sandbox: Sandbox, production: dict[str, Any], backed_up: dict[str, Any]
) -> None:
    """The refusal above is the guard's, not a broken relay: the same forwarder, aimed at another database of
    production's server, lets a restore through - with the warning that staging shares production's server."""
    before = fingerprint(production)
    name = f"pg_other_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    forwarder = Forwarder(sandbox.port_base + 2)
    try:
        other = dict(production, dbname=name, host="127.0.0.1", port=forwarder.port)
        done = restore(run_module, sandbox, other, production, backed_up["prefix"], run_id=backed_up["run_id"])
        assert not done.failed and done["restored"] and done["parity_ok"], done.get("msg")
        assert forwarder.connections > 0
        assert done["guard"]["verdict"]["same_server"] and not done["guard"]["verdict"]["is_production"]
        assert "lives on production's server" in json.dumps(done.get("warnings", [])), done.get("warnings")

        planned = preflight(run_module, sandbox, production, other)
        named = checks(planned)
        assert named["staging is not production"]["status"] == "ok", named["staging is not production"]
        assert named["staging shares production's server"]["status"] == "warning"
        assert "lives on production's server" in named["staging shares production's server"]["detail"]
    finally:
        forwarder.close()
        with psycopg.connect(**sandbox.pg("production", "postgres"), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert fingerprint(production) == before


def test_unreachable_production_refuses_unless_the_operator_says_so(
    run_module: Any, sandbox: Sandbox, production: dict[str, Any], backed_up: dict[str, Any]
) -> None:
    name = f"stg_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(**sandbox.pg("staging", "postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    staging = sandbox.pg("staging", name)
    with psycopg.connect(**staging, autocommit=True) as c:
        c.execute("CREATE TABLE sentinel (x int)")
    with socket.socket() as closed:  # a port nobody listens on: production is down
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    gone = dict(production, port=dead_port)
    try:
        refused = restore(run_module, sandbox, staging, gone, backed_up["prefix"], run_id=backed_up["run_id"])
        assert refused.failed and not refused.changed
        assert "production is unreachable" in refused["msg"]
        assert "vdp_guard_allow_unreachable_production: true" in refused["msg"]
        assert has_sentinel(staging)

        allowed = restore(
            run_module, sandbox, staging, gone, backed_up["prefix"], run_id=backed_up["run_id"], allow_unreachable_production=True
        )
        assert not allowed.failed and allowed["restored"], allowed.get("msg")
        assert "identity was NOT checked" in json.dumps(allowed.get("warnings", [])), allowed.get("warnings")
        assert not has_sentinel(staging)
    finally:
        with psycopg.connect(**sandbox.pg("staging", "postgres"), autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("dbname", ["postgres", "template0", "template1"])
def test_system_databases_are_refused_as_staging_by_preflight_and_restore(
    run_module: Any, sandbox: Sandbox, production: dict[str, Any], backed_up: dict[str, Any], dbname: str
) -> None:
    staging = sandbox.pg("staging", dbname)
    result = preflight(run_module, sandbox, production, staging)
    assert result["go"] is False
    check = checks(result)["staging database name"]
    assert check["status"] == "blocking" and f"database '{dbname}' cannot be the staging target" in check["detail"]
    assert "vdp_staging_db.dbname" in check["detail"]
    refused = restore(run_module, sandbox, staging, production, backed_up["prefix"], run_id=backed_up["run_id"])
    assert refused.failed and not refused.changed and f"database '{dbname}' cannot be the staging target" in refused["msg"]
    with psycopg.connect(**sandbox.pg("staging", "postgres")) as c:  # still there
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (dbname,)).fetchone()[0] == 1


# --------------------------------------------------------------------------- item 1 and 2: the playbooks


@pytest.fixture
def armed(run_module: Any, sandbox: Sandbox, world: dict[str, Any], tmp_path: Path) -> Callable[[dict[str, Any]], str]:
    """The world's production backed up under its run id (so a restore WOULD find a backup to put on production);
    returns a function writing an extra-vars file that points vdp_staging_db at a given connection."""
    result = backup(run_module, sandbox, world["vdp_production_db"], world["vdp_s3"]["prefix"], world["vdp_run_id"])
    assert not result.failed, result.get("msg")
    with psycopg.connect(**world["vdp_production_db"], autocommit=True) as c:
        c.execute("CREATE TABLE public.guard_sentinel (x int)")

    def point_staging_at(conn: dict[str, Any]) -> str:
        path = tmp_path / f"staging-{uuid.uuid4().hex[:6]}.json"
        path.write_text(json.dumps({"vdp_staging_db": conn}))  # a file: the password never on a command line
        return f"@{path}"

    return point_staging_at


@pytest.mark.slow
def test_playbooks_stop_before_dropping_production_in_disguise(
    sandbox: Sandbox, world: dict[str, Any], armed: Callable[..., str], disguise: Callable[..., Any]
) -> None:
    prod = world["vdp_production_db"]
    before = fingerprint(prod)
    staging_vars = armed(disguise(prod))

    restored = play(sandbox, world, "playbooks/restore_staging.yml", "-e", staging_vars)
    assert restored.returncode != 0
    assert "Staging restore FAILED" in restored.stdout and REFUSED in restored.stdout, restored.stdout[-3000:]
    assert record(world, "restore_staging")["status"] == "failed"

    rehearsed = play(sandbox, world, "playbooks/rehearse.yml", "-e", staging_vars)
    assert rehearsed.returncode != 0 and "Rehearsal NO-GO, production is untouched" in rehearsed.stdout, rehearsed.stdout[-3000:]
    reasons = record(world, "rehearsal")["reasons"]
    assert any(r.startswith("staging restore failed") and REFUSED in r for r in reasons), reasons
    assert not (world["run_dir"] / "rehearsal_schema.json").exists()  # the engine never ran on "staging"
    assert fingerprint(prod) == before and has_sentinel(prod, "guard_sentinel")


def test_migrate_stops_at_preflight_when_staging_is_production_behind_a_forwarder(
    sandbox: Sandbox, world: dict[str, Any], armed: Callable[..., str]
) -> None:
    prod = world["vdp_production_db"]
    before = fingerprint(prod)
    forwarder = Forwarder(sandbox.port_base + 2)
    try:
        run = play(sandbox, world, "migrate.yml", "-e", armed(dict(prod, host="127.0.0.1", port=forwarder.port)))
    finally:
        forwarder.close()
    assert run.returncode != 0
    assert "Preflight NO-GO" in run.stdout and "staging is not production: refusing" in run.stdout, run.stdout[-3000:]
    assert forwarder.connections > 0
    assert not (world["run_dir"] / "backup.json").exists() and not (world["run_dir"] / "rehearsal.json").exists()
    assert fingerprint(prod) == before and has_sentinel(prod, "guard_sentinel")
    with psycopg.connect(**prod) as c:
        assert c.execute("SELECT to_regclass('public.organizations') IS NULL").fetchone()[0]


@pytest.mark.parametrize(
    "extra",
    [
        {"staging_restore_allow_production": PHRASE},
        {"staging_restore_production_confirmation": PHRASE},
        {"rollback_confirm": PHRASE},
    ],
    ids=["staging_restore_allow_production", "staging_restore_production_confirmation", "rollback_confirm"],
)
def test_rehearsal_refuses_any_production_confirmation(
    sandbox: Sandbox, world: dict[str, Any], armed: Callable[..., str], extra: dict[str, str]
) -> None:
    """Item 2: extra vars beat include_role vars, so a confirmation passed on the command line reached the rehearsal's
    restore; with staging pointed at production through a forwarder, the rehearsal restored production."""
    prod = world["vdp_production_db"]
    before = fingerprint(prod)
    forwarder = Forwarder(sandbox.port_base + 2)
    try:
        staging_vars = armed(dict(prod, host="127.0.0.1", port=forwarder.port))
        rehearsed = play(sandbox, world, "playbooks/rehearse.yml", "-e", staging_vars, "-e", json.dumps(extra))
        assert rehearsed.returncode != 0
        if "rollback_confirm" in extra:  # the rollback's own switch: refused up front, or by the guard (literal "")
            assert "never restores production, whatever is passed" in rehearsed.stdout or (
                "Rehearsal NO-GO, production is untouched" in rehearsed.stdout and REFUSED in rehearsed.stdout
            ), rehearsed.stdout[-3000:]
        else:
            assert "The rehearsal never restores production, whatever is passed" in rehearsed.stdout, rehearsed.stdout[-3000:]
            assert not (world["run_dir"] / "rehearsal_restore.json").exists()
        if "rollback_confirm" not in extra:
            restored = play(sandbox, world, "playbooks/restore_staging.yml", "-e", staging_vars, "-e", json.dumps(extra))
            assert restored.returncode != 0
            assert "never restores production, whatever is passed" in restored.stdout, restored.stdout[-3000:]
    finally:
        forwarder.close()
    assert fingerprint(prod) == before and has_sentinel(prod, "guard_sentinel")
    assert keys_under(s3_of(sandbox), sandbox.bucket, world["vdp_s3"]["prefix"])  # the backup was there to restore


def test_playbook_refuses_when_production_is_unreachable_unless_the_inventory_says_so(
    sandbox: Sandbox, world: dict[str, Any], armed: Callable[..., str], tmp_path: Path
) -> None:
    """The operator's switch is the inventory key vdp_guard_allow_unreachable_production (the lease, which needs
    production too, is left out of this run so that the guard is what meets the unreachable production)."""
    staging = world["vdp_staging_db"]
    with psycopg.connect(**sandbox.pg("staging", "postgres"), autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{staging["dbname"]}"')
    with psycopg.connect(**staging, autocommit=True) as c:
        c.execute("CREATE TABLE sentinel (x int)")
    with socket.socket() as closed:  # armed: the backup a restore would find is in place
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    down = tmp_path / "production-down.json"
    down.write_text(json.dumps({"vdp_production_db": dict(world["vdp_production_db"], port=dead_port)}))
    no_lease = ("-e", "run_context_lease=false", "-e", "run_report_release_lease=false")

    refused = play(sandbox, world, "playbooks/restore_staging.yml", "-e", f"@{down}", *no_lease)
    assert refused.returncode != 0 and "Staging restore FAILED" in refused.stdout, refused.stdout[-3000:]
    assert "production is unreachable" in refused.stdout and "vdp_guard_allow_unreachable_production: true" in refused.stdout
    assert has_sentinel(staging)

    allowed = play(
        sandbox, world, "playbooks/restore_staging.yml", "-e", f"@{down}", *no_lease,
        "-e", "vdp_guard_allow_unreachable_production=true",
    )
    assert allowed.returncode == 0, allowed.stdout[-3000:]
    assert "its identity was NOT checked" in allowed.stdout + allowed.stderr
    assert record(world, "restore_staging")["parity_ok"] and not has_sentinel(staging)


@pytest.mark.parametrize(
    ("playbook", "override"),
    [
        ("restore_staging.yml", "staging_restore_production_db"),
        ("rehearse.yml", "staging_restore_production_db"),
        ("rehearse.yml", "rehearsal_production_db"),
    ],
)
def test_the_guards_production_reference_cannot_be_redirected_with_extra_vars(
    sandbox: Sandbox, world: dict[str, Any], armed: Callable[..., str], tmp_path: Path, playbook: str, override: str
) -> None:
    """Extra vars beat role vars: with staging behind a forwarder AND the guard's production reference pointed at a
    decoy, the guard compared staging with the decoy, found another server, and restored over production."""
    prod = world["vdp_production_db"]
    before = fingerprint(prod)
    forwarder = Forwarder(sandbox.port_base + 2)
    try:
        armed(prod)  # the backup a restore would find
        attack = tmp_path / "attack.json"
        decoy = sandbox.pg("staging", "postgres")
        attack.write_text(json.dumps({"vdp_staging_db": dict(prod, port=forwarder.port), override: decoy}))
        run = play(sandbox, world, f"playbooks/{playbook}", "-e", f"@{attack}")
    finally:
        forwarder.close()
    assert run.returncode != 0
    assert "is not this run's vdp_production_db" in run.stdout and "nothing was changed" in run.stdout, run.stdout[-3000:]
    assert fingerprint(prod) == before and has_sentinel(prod, "guard_sentinel")
