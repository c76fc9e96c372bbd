"""vdp_backup + vdp_backup_verify on the real sandbox (PostgreSQL 15 + SeaweedFS S3): no mocks.

Each test writes under its own S3 prefix, so tests never see each other's backups.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.backups import (
    LEGACY,
    backup,
    exact_counts,
    flip_byte,
    keys_under,
    legacy_clone,
    login,
    no_secret,
    s3_args,
    s3_of,
    verify,
)
from tests.support.sandbox import Sandbox

_flip_byte = flip_byte  # test_rehearsal.py still imports it from here


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture
def prefix() -> str:
    return f"test-backup/{uuid.uuid4().hex[:10]}"


prod = legacy_clone("prod", "bk")  # one legacy database for the module's read-only backups


def fake_pg_dump(folder: Path, version: str, body: str) -> str:
    """A pg_dump stand-in: prints `version` for --version, else runs `body` (shell)."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "pg_dump"
    script.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then echo "pg_dump (PostgreSQL) {version}"; exit 0; fi\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(folder)


# --------------------------------------------------------------------------- backup


def test_stream_backup_is_published_with_sha256_sse_tags_and_exact_manifest(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str
) -> None:
    result = backup(run_module, sandbox, prod, prefix, "run-a", tags={"team": "platform"})
    assert not result.failed, result.get("msg")
    assert result.changed and not result["reused"]
    no_secret(result, sandbox)
    client = s3_of(sandbox)
    bucket = sandbox.bucket
    key = result["key"]
    assert key.startswith(f"{prefix}/run-a/") and key.endswith(".pgdump")
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    digest = hashlib.sha256(body).hexdigest()
    head = client.head_object(Bucket=bucket, Key=key)
    assert head["Metadata"]["sha256"] == digest == result["sha256"]
    assert head["ServerSideEncryption"] == "AES256"
    assert body[:5] == b"PGDMP"  # custom archive, not a plain script
    tags = {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}
    assert tags["vdp:run_id"] == "run-a" and tags["team"] == "platform" and tags["vdp:sha256"] == digest
    manifest = json.loads(client.get_object(Bucket=bucket, Key=f"{prefix}/run-a/manifest.json")["Body"].read())
    assert manifest["sha256"] == digest and manifest["size"] == len(body)
    assert manifest["tables"] == exact_counts(prod)
    assert manifest["source"] == {"host": prod["host"], "port": prod["port"], "dbname": prod["dbname"], "user": "postgres"}
    assert manifest["pg_dump_major"] == 15 and manifest["server_version_num"] >= 150000
    assert {"anon", "authenticated", "service_role"} <= set(manifest["roles"])
    assert manifest["run_id"] == "run-a" and manifest["started_at"] <= manifest["finished_at"]
    # nothing left behind but the dump and its manifest (the temporary upload is gone)
    assert sorted(keys_under(client, bucket, prefix)) == sorted([key, f"{prefix}/run-a/manifest.json"])
    assert not client.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads")

    # the same run again: nothing uploaded; check mode on a new run: nothing uploaded either
    again = backup(run_module, sandbox, prod, prefix, "run-a")
    assert not again.failed and not again.changed and again["reused"] and again["key"] == key
    planned = backup(run_module, sandbox, prod, prefix, "run-b", _check=True)
    assert not planned.failed and planned.changed and planned["key"].startswith(f"{prefix}/run-b/")
    assert not [k for k in keys_under(client, bucket, prefix) if "/run-b/" in k]

    ok = verify(run_module, sandbox, prefix, run_id="run-a")
    assert not ok.failed and ok["verified"] and ok["sha256"] == digest and ok["missing_tables"] == []
    assert ok["toc_entries"] > 20


def test_file_mode_directory_format_with_jobs_verifies(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str
) -> None:
    result = backup(run_module, sandbox, prod, prefix, "dir-1", mode="file", format="directory", jobs=2, part_size_mb=5)
    assert not result.failed, result.get("msg")
    assert result["key"].endswith(".pgdir.tar") and result["manifest"]["jobs"] == 2
    ok = verify(run_module, sandbox, prefix, source="latest")
    assert not ok.failed and ok["verified"], ok.get("msg")
    assert ok["key"] == result["key"]


def test_directory_format_cannot_stream(run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str) -> None:
    result = backup(run_module, sandbox, prod, prefix, "x", mode="stream", format="directory")
    assert result.failed and "mode=file" in result["msg"]
    assert keys_under(s3_of(sandbox), sandbox.bucket, prefix) == []


def test_failed_pg_dump_aborts_the_upload_and_leaves_no_object(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    # 6 MiB of output (one 5 MiB part already uploaded), then a non-zero exit: checked after the stream ends.
    bindir = fake_pg_dump(tmp_path / "bin", "15.18", "head -c 6291456 /dev/urandom; echo 'pg_dump: error: boom' >&2; exit 1")
    result = backup(run_module, sandbox, prod, prefix, "fail-1", pg_bindir=bindir, part_size_mb=5)
    assert result.failed and "pg_dump failed (exit 1)" in result["msg"] and "boom" in result["msg"]
    no_secret(result, sandbox)
    client = s3_of(sandbox)
    assert keys_under(client, sandbox.bucket, prefix) == []
    assert not client.list_multipart_uploads(Bucket=sandbox.bucket, Prefix=prefix).get("Uploads")


def test_pg_dump_older_than_the_server_is_refused_with_the_fix(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    bindir = fake_pg_dump(tmp_path / "old", "13.16", "exit 0")
    result = backup(run_module, sandbox, prod, prefix, "old-1", pg_bindir=bindir)
    assert result.failed and "pg_dump 13 is older than the server" in result["msg"]
    assert "postgresql-client-15" in result["msg"]
    assert keys_under(s3_of(sandbox), sandbox.bucket, prefix) == []


def test_wrong_s3_keys_fail_clearly_without_printing_them(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str
) -> None:
    result = backup(run_module, sandbox, prod, prefix, "k-1", secret_key="WRONG-secret-value-123", s3_max_attempts=1)
    assert result.failed and "credentials were refused" in result["msg"]
    assert "WRONG-secret-value-123" not in json.dumps(result)
    no_secret(result, sandbox)


def test_unreachable_s3_fails_clearly(run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str) -> None:
    result = backup(
        run_module, sandbox, prod, prefix, "u-1", endpoint_url="http://127.0.0.1:9", s3_max_attempts=1, s3_connect_timeout=2
    )
    assert result.failed and "unreachable" in result["msg"] and "127.0.0.1:9" in result["msg"]
    no_secret(result, sandbox)


def test_missing_bucket_is_created_only_when_configured(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str
) -> None:
    bucket = f"vdp-missing-{uuid.uuid4().hex[:8]}"
    refused = backup(run_module, sandbox, prod, prefix, "b-1", bucket=bucket)
    assert refused.failed and f"bucket '{bucket}' does not exist" in refused["msg"] and "create_bucket" in refused["msg"]
    client = s3_of(sandbox)
    assert bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]
    created = backup(run_module, sandbox, prod, prefix, "b-1", bucket=bucket, create_bucket=True)
    assert not created.failed and created["bucket_created"] and created.changed
    assert keys_under(client, bucket, prefix)


def test_retention_keeps_newest_and_current_run_and_check_mode_deletes_nothing(
    run_module: Any, sandbox: Sandbox, empty_db: Callable[..., dict[str, Any]], prefix: str
) -> None:
    small = empty_db()
    for run in ("r1", "r2", "r3"):
        assert not backup(run_module, sandbox, small, prefix, run, tables=[]).failed
    client = s3_of(sandbox)
    before = keys_under(client, sandbox.bucket, prefix)
    args = dict(s3_args(sandbox, prefix), state="pruned", run_id="r1", keep_last=1)
    planned = run_module("vdp_backup", args, check=True)
    assert planned.changed and planned["pruned"] == ["r2"]
    assert keys_under(client, sandbox.bucket, prefix) == before
    done = run_module("vdp_backup", args)
    assert done.changed and done["pruned"] == ["r2"] and sorted(done["kept"]) == ["r1", "r3"]
    assert done["deleted_objects"] == 2
    after = keys_under(client, sandbox.bucket, prefix)
    assert not [k for k in after if "/r2/" in k] and [k for k in after if "/r1/" in k] and [k for k in after if "/r3/" in k]
    again = run_module("vdp_backup", args)
    assert not again.changed and again["pruned"] == []
    bad = run_module("vdp_backup", dict(args, keep_last=0))
    assert bad.failed and "keep_last" in bad["msg"]


# --------------------------------------------------------------------------- verification faults


@pytest.mark.parametrize("truncate", [False, True], ids=["bytes-flipped", "truncated"])
def test_corrupted_object_fails_verification(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str, truncate: bool
) -> None:
    result = backup(run_module, sandbox, prod, prefix, "c-1")
    assert not result.failed
    flip_byte(s3_of(sandbox), sandbox.bucket, result["key"], truncate)
    bad = verify(run_module, sandbox, prefix, run_id="c-1")
    assert bad.failed and not bad["verified"] and "FAILED verification" in bad["msg"]
    assert any("differs from the object metadata" in p for p in bad["problems"])
    assert any("differs from the manifest" in p for p in bad["problems"])
    if truncate:
        assert any("size read back" in p for p in bad["problems"])
        # a size that no longer matches the manifest: re-running the backup refuses to reuse it silently
        rerun = backup(run_module, sandbox, prod, prefix, "c-1")
        assert rerun.failed and "inconsistent" in rerun["msg"] and "force" in rerun["msg"]
        replaced = backup(run_module, sandbox, prod, prefix, "c-1", force=True)
        assert not replaced.failed and replaced.changed
        assert not verify(run_module, sandbox, prefix, run_id="c-1").failed


def test_expected_table_missing_from_archive_is_reported(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str
) -> None:
    assert not backup(run_module, sandbox, prod, prefix, "t-1").failed
    bad = verify(run_module, sandbox, prefix, run_id="t-1", tables=[*LEGACY, "public.no_such_table"])
    assert bad.failed and bad["missing_tables"] == ["public.no_such_table"]
    assert "public.no_such_table" in bad["msg"]


def test_verify_of_a_missing_run_says_so(run_module: Any, sandbox: Sandbox, prefix: str) -> None:
    bad = verify(run_module, sandbox, prefix, run_id="never-ran")
    assert bad.failed and "no backup manifest for run never-ran" in bad["msg"]


def test_bad_run_id_is_refused_before_anything(run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str) -> None:
    bad = backup(run_module, sandbox, prod, prefix, "../escape")
    assert bad.failed and "run_id" in bad["msg"]


def test_password_reaches_pg_dump_only_through_its_environment(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    """The fake pg_dump records its argv and whether PGPASSWORD is set; argv must never hold the password."""
    log = tmp_path / "argv.txt"
    body = f'echo "$@" > {log}; [ -n "$PGPASSWORD" ] && echo has-password >> {log}; exit 3'
    bindir = fake_pg_dump(tmp_path / "spy", "15.18", body)
    result = backup(run_module, sandbox, prod, prefix, "pw-1", pg_bindir=bindir)
    assert result.failed and "exit 3" in result["msg"]
    recorded = log.read_text()
    assert sandbox.password not in recorded.splitlines()[0]
    assert "has-password" in recorded and "-Fc" in recorded and "--snapshot" in recorded
    assert os.environ.get("PGPASSWORD") != sandbox.password


def test_kms_settings_are_checked_and_an_unsupported_kms_fails_cleanly(
    run_module: Any, sandbox: Sandbox, prod: dict[str, Any], prefix: str
) -> None:
    stray = backup(run_module, sandbox, prod, prefix, "kms-0", kms_key_id="alias/backups")
    assert stray.failed and "kms_key_id is only used with sse=aws:kms" in stray["msg"]
    # SeaweedFS has no KMS: the request is refused, the module says so in one line and leaves nothing behind
    refused = backup(run_module, sandbox, prod, prefix, "kms-1", sse="aws:kms", kms_key_id="alias/backups", s3_max_attempts=1)
    assert refused.failed and refused["msg"].startswith("cannot ") and "upload" in refused["msg"] and "\n" not in refused["msg"]
    client = s3_of(sandbox)
    assert keys_under(client, sandbox.bucket, prefix) == []
    assert not client.list_multipart_uploads(Bucket=sandbox.bucket, Prefix=prefix).get("Uploads")


def test_credentials_from_the_libpq_and_aws_environment(
    run_module: Any, sandbox: Sandbox, empty_db: Callable[..., dict[str, Any]], prefix: str
) -> None:
    """As AWX credentials inject them: PGPASSWORD and AWS_* in the environment, nothing secret in the task args."""
    small = empty_db()
    env = dict(
        os.environ,
        PGPASSWORD=sandbox.password,
        AWS_ACCESS_KEY_ID=sandbox.s3_access_key,
        AWS_SECRET_ACCESS_KEY=sandbox.s3_secret_key,
    )
    args = {
        k: v
        for k, v in dict(login(small), **s3_args(sandbox, prefix)).items()
        if k not in ("login_password", "access_key", "secret_key")
    }
    made = run_module("vdp_backup", dict(args, run_id="env-1", tables=[]), env=env)
    assert not made.failed and made.changed, made.get("msg")
    no_secret(made, sandbox)
    checked = run_module(
        "vdp_backup_verify", dict(s3_args(sandbox, prefix), access_key=None, secret_key=None, run_id="env-1", tables=[]), env=env
    )
    assert not checked.failed and checked["verified"], checked.get("msg")


def test_multipart_writer_and_multipart_publish_copy_on_real_s3(sandbox: Sandbox, prefix: str) -> None:
    """The >5 GiB paths, scaled down: several parts uploaded in parallel, then a multipart (UploadPartCopy) publish."""
    from tests.support.code import module_utils

    vb: Any = module_utils("vdp_dump")
    client, bucket = s3_of(sandbox), sandbox.bucket
    data = os.urandom(13 * 1024 * 1024 + 123)
    writer = vb.HashingMultipartWriter(
        client, bucket, f"{prefix}/.incoming/x", 5 * 1024 * 1024, {"ServerSideEncryption": "AES256"}
    )
    for start in range(0, len(data), 1_000_003):  # odd-sized writes, as pg_dump's pipe delivers them
        writer.write(data[start : start + 1_000_003])
    done = writer.complete()
    assert done.parts == 3 and done.size == len(data) and done.sha256 == hashlib.sha256(data).hexdigest()
    vb.publish_copy(
        client, bucket, f"{prefix}/.incoming/x", f"{prefix}/final", done.size, {"sha256": done.sha256}, {"vdp:kind": "test"},
        {"ServerSideEncryption": "AES256"}, single_copy_limit=1, copy_part_size=5 * 1024 * 1024,
    )  # fmt: skip
    head = client.head_object(Bucket=bucket, Key=f"{prefix}/final")
    assert head["Metadata"]["sha256"] == done.sha256 and head["ContentLength"] == len(data)
    assert client.get_object(Bucket=bucket, Key=f"{prefix}/final")["Body"].read() == data
    tags = client.get_object_tagging(Bucket=bucket, Key=f"{prefix}/final")["TagSet"]
    assert {"Key": "vdp:kind", "Value": "test"} in tags
