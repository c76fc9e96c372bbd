"""vdp_restore on the real sandbox: guard, verified fetch, roles, parity, idempotence, faults. No mocks."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from tests.support.backups import (
    LEGACY,
    PG_BINDIR,
    backed_up_once,
    backup,
    exact_counts,
    flip_byte,
    has_sentinel,
    legacy_clone,
    no_secret,
    restore_args,
    s3_of,
    staging_with_sentinel,
)
from tests.support.code import module_utils
from tests.support.sandbox import Sandbox

PHRASE = "I understand this overwrites production"


source = legacy_clone("source", "rs")
staging = staging_with_sentinel()


@pytest.fixture(scope="module")
def backed_up(run_module: Any, sandbox: Sandbox, source: dict[str, Any]) -> dict[str, Any]:
    """One verified backup of the legacy database, shared by the module's restores."""
    return backed_up_once(run_module, sandbox, source, "test-restore", "rs-1")


def restore(run_module: Any, box: Sandbox, target: dict[str, Any], prefix: str, check: bool = False, **extra: Any) -> Any:
    if "allow_production" in extra:
        extra["production_confirmation"] = extra.pop("allow_production")
    return run_module("vdp_restore", restore_args(box, target, prefix, **extra), check=check, diff=True)


def test_restore_to_staging_creates_roles_has_parity_and_is_idempotent(
    run_module: Any, sandbox: Sandbox, backed_up: dict[str, Any], source: dict[str, Any], staging: dict[str, Any]
) -> None:
    planned = restore(run_module, sandbox, staging, backed_up["prefix"], check=True, run_id="rs-1")
    assert not planned.failed and planned.changed and not planned["restored"], planned.get("msg")
    assert has_sentinel(staging)  # check mode changed nothing

    done = restore(run_module, sandbox, staging, backed_up["prefix"], run_id="rs-1", jobs=2)
    assert not done.failed, done.get("msg")
    # vdp_backup streamed the dump: its TOC had no data offsets, the restore filled one per table with data.
    assert done["data_offsets"]["filled"] >= len(LEGACY), done["data_offsets"]
    assert done.changed and done["restored"] and done["parity_ok"] and done["mismatched_tables"] == []
    assert done["key"] == backed_up["key"] and set(done["parity"]) == set(LEGACY)
    no_secret(done, sandbox)
    assert not has_sentinel(staging)  # the database was recreated
    assert exact_counts(staging) == exact_counts(source)
    with psycopg.connect(**staging) as c:  # RLS, policies, triggers and grants survived
        assert c.execute("SELECT relrowsecurity FROM pg_class WHERE oid = 'public.profiles'::regclass").fetchone()[0]
        assert c.execute("SELECT count(*) FROM pg_policies WHERE tablename = 'profiles'").fetchone()[0] > 0
        assert c.execute("SELECT count(*) FROM pg_trigger WHERE tgname = 'profiles_set_updated_at'").fetchone()[0] == 1
        assert c.execute("SELECT has_table_privilege('authenticated', 'public.profiles', 'SELECT')").fetchone()[0]
        comment = c.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = current_database()")
        assert backed_up["key"] in comment.fetchone()[0]

    again = restore(run_module, sandbox, staging, backed_up["prefix"], run_id="rs-1")
    assert not again.failed and not again.changed and not again["restored"] and again["parity_ok"]
    forced = restore(run_module, sandbox, staging, backed_up["prefix"], run_id="rs-1", force=True, mode="stream")
    assert not forced.failed and forced.changed and forced["restored"] and forced["parity_ok"], forced.get("msg")


def test_missing_roles_are_created_nologin(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any]
) -> None:
    role = f"owner_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(**sandbox.pg("production", source["dbname"]), autocommit=True) as c:
        c.execute(f'CREATE ROLE "{role}" NOLOGIN')
        c.execute(f"CREATE TABLE public.owned_{role} (x int)")
        c.execute(f'ALTER TABLE public.owned_{role} OWNER TO "{role}"')
    prefix = f"test-restore/{uuid.uuid4().hex[:10]}"
    try:
        assert not backup(run_module, sandbox, source, prefix, "roles-1").failed
        with psycopg.connect(**sandbox.pg("staging", "postgres"), autocommit=True) as c:
            assert not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
        strict = restore(run_module, sandbox, staging, prefix, run_id="roles-1", create_roles=False)
        assert strict.failed and "pg_restore failed" in strict["msg"] and role in strict["msg"] and strict.changed
        assert "the database is incomplete" in strict["msg"]
        lenient = restore(run_module, sandbox, staging, prefix, run_id="roles-1", create_roles=False, exit_on_error=False)
        assert not lenient.failed and lenient["parity_ok"], lenient.get("msg")
        assert "errors ignored on restore" in json.dumps(lenient.get("warnings", []))
        done = restore(run_module, sandbox, staging, prefix, run_id="roles-1", force=True)
        assert not done.failed, done.get("msg")
        assert role in done["roles_created"]
        with psycopg.connect(**staging) as c:
            owner = c.execute(f"SELECT tableowner FROM pg_tables WHERE tablename = 'owned_{role}'").fetchone()[0]
            assert owner == role
            assert not c.execute("SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)).fetchone()[0]
    finally:
        for conn in (sandbox.pg("production", source["dbname"]), staging):
            with psycopg.connect(**conn, autocommit=True) as c:
                c.execute(f"DROP TABLE IF EXISTS public.owned_{role}")
        for which in ("production", "staging"):
            with psycopg.connect(**sandbox.pg(which, "postgres"), autocommit=True) as c:
                c.execute(f'DROP ROLE IF EXISTS "{role}"')


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost"],
    ids=["same-address", "localhost-is-127.0.0.1"],
)
def test_restore_onto_production_is_refused(run_module: Any, sandbox: Sandbox, backed_up: dict[str, Any], host: str) -> None:
    prod = sandbox.pg("production", "virtue")
    target = dict(prod, host=host)
    with psycopg.connect(**prod) as c:
        before = c.execute("SELECT count(*) FROM pg_class").fetchone()[0]
    for phrase in ("", "yes", PHRASE.lower()):
        refused = restore(run_module, sandbox, target, backed_up["prefix"], run_id="rs-1", allow_production=phrase)
        assert refused.failed and "PRODUCTION" in refused["msg"] and PHRASE in refused["msg"]
        assert not refused.changed
    with psycopg.connect(**prod) as c:
        assert c.execute("SELECT count(*) FROM pg_class").fetchone()[0] == before


def test_rollback_path_may_restore_production_with_the_exact_phrase(
    run_module: Any, sandbox: Sandbox, backed_up: dict[str, Any], empty_db: Callable[..., dict[str, Any]]
) -> None:
    """The guarded path, on a scratch database that plays 'production' (the real sandbox production is never touched)."""
    scratch = empty_db("production")
    production = dict({k: scratch[k] for k in ("port", "dbname", "user", "password")}, host="localhost")
    common = dict(run_id="rs-1", production=production)
    refused = restore(run_module, sandbox, scratch, backed_up["prefix"], **common)
    assert refused.failed and "PRODUCTION" in refused["msg"]
    allowed = restore(run_module, sandbox, scratch, backed_up["prefix"], allow_production=PHRASE, **common)
    assert not allowed.failed and allowed["restored"] and allowed["parity_ok"], allowed.get("msg")


def test_corrupted_backup_is_never_restored(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any]
) -> None:
    prefix = f"test-restore/{uuid.uuid4().hex[:10]}"
    result = backup(run_module, sandbox, source, prefix, "bad-1")
    assert not result.failed
    flip_byte(s3_of(sandbox), sandbox.bucket, result["key"])
    for mode in ("file", "stream"):
        refused = restore(run_module, sandbox, staging, prefix, run_id="bad-1", mode=mode)
        assert refused.failed and "FAILED verification" in refused["msg"] and "nothing was changed" in refused["msg"]
        assert not refused.changed
        assert has_sentinel(staging)


def test_manifest_lacking_a_table_is_reported(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any]
) -> None:
    prefix = f"test-restore/{uuid.uuid4().hex[:10]}"
    assert not backup(run_module, sandbox, source, prefix, "gap-1").failed
    client = s3_of(sandbox)
    manifest_key = f"{prefix}/gap-1/manifest.json"
    manifest = json.loads(client.get_object(Bucket=sandbox.bucket, Key=manifest_key)["Body"].read())
    del manifest["tables"]["public.user_sessions"]
    client.put_object(Bucket=sandbox.bucket, Key=manifest_key, Body=json.dumps(manifest).encode())
    done = restore(run_module, sandbox, staging, prefix, run_id="gap-1")
    assert not done.failed, done.get("msg")
    assert done["manifest_missing_tables"] == ["public.user_sessions"]
    assert "public.user_sessions" not in done["parity"]
    assert "public.user_sessions" in json.dumps(done.get("warnings", []))  # Ansible shows it as a warning


def test_restore_of_a_missing_backup_or_bucket_changes_nothing(
    run_module: Any, sandbox: Sandbox, staging: dict[str, Any]
) -> None:
    missing = restore(run_module, sandbox, staging, "test-restore/none", run_id="nope")
    assert missing.failed and "no backup manifest for run nope" in missing["msg"]
    no_bucket = restore(run_module, sandbox, staging, "x", run_id="nope", bucket=f"vdp-none-{uuid.uuid4().hex[:6]}")
    assert no_bucket.failed and "does not exist" in no_bucket["msg"]
    wrong_keys = restore(run_module, sandbox, staging, "x", run_id="nope", secret_key="nope-nope-nope", s3_max_attempts=1)
    assert (
        wrong_keys.failed and "credentials were refused" in wrong_keys["msg"] and "nope-nope-nope" not in json.dumps(wrong_keys)
    )
    template = restore(run_module, sandbox, dict(staging, dbname="template1"), "x", run_id="nope")
    assert template.failed and "template1" in template["msg"]
    assert has_sentinel(staging)


def test_directory_format_backup_restores_with_parallel_jobs(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any]
) -> None:
    prefix = f"test-restore/{uuid.uuid4().hex[:10]}"
    made = backup(run_module, sandbox, source, prefix, "dir-1", mode="file", format="directory", jobs=2)
    assert not made.failed, made.get("msg")
    streamed = restore(run_module, sandbox, staging, prefix, run_id="dir-1", mode="stream")
    assert streamed.failed and "mode=file" in streamed["msg"] and has_sentinel(staging)
    done = restore(run_module, sandbox, staging, prefix, run_id="dir-1", mode="file", jobs=2)
    assert not done.failed and done["restored"] and done["parity_ok"], done.get("msg")
    assert exact_counts(staging) == exact_counts(source)


def test_a_streamed_dump_gets_the_data_offsets_pg_dump_writes_into_a_file(
    sandbox: Sandbox, source: dict[str, Any], tmp_path: Any
) -> None:
    """The same database dumped to a pipe and to a file: once filled in, the pipe's dump is the file's dump, byte for
    byte, but for the creation time in the header. A damaged or foreign file is left exactly as it was."""
    offsets = module_utils("vdp_dump_offsets")
    conn = sandbox.pg("production", source["dbname"])
    argv = [f"{PG_BINDIR}/pg_dump", "-Fc", "-h", conn["host"], "-p", str(conn["port"]), "-U", conn["user"], conn["dbname"]]
    env = dict(os.environ, PGPASSWORD=conn["password"])
    piped, written = tmp_path / "piped.pgdump", tmp_path / "written.pgdump"
    with piped.open("wb") as out:  # through a pipe, as vdp_backup streams it: pg_dump cannot seek back
        dump = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
        out.write(dump.communicate()[0])
    assert dump.returncode == 0
    subprocess.run([*argv, "-f", str(written)], env=env, check=True)
    assert offsets.fill_data_offsets(str(written)) == dict(filled=0, note="offsets already set (the dump was written to a file)")
    unfilled = piped.read_bytes()

    done = offsets.fill_data_offsets(str(piped))
    assert done["filled"] >= len(LEGACY), done
    a, b = piped.read_bytes(), written.read_bytes()
    assert len(a) == len(b) == len(unfilled) and a != unfilled
    differing = [i for i in range(len(a)) if a[i] != b[i]]
    header_end = 11 + 5 + 7 * 5  # magic, version, sizes, format, compression level (an int), 7 ints of creation time
    assert all(i < header_end for i in differing), differing[:10]

    damaged = {"cut short": unfilled[:-7], "not a dump": b"PGDMQ" + unfilled[5:], "a block overruns": unfilled + b"\x01"}
    for name, data in damaged.items():
        broken = tmp_path / "broken.pgdump"
        broken.write_bytes(data)
        left = offsets.fill_data_offsets(str(broken))
        assert left["filled"] == 0 and left["note"].startswith("left as it is"), (name, left)
        assert broken.read_bytes() == data, name
