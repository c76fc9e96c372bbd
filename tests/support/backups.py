"""Helpers of the backup and restore tests (no tests here): the sandbox's S3, the databases they back up and
restore onto, and the vdp_backup / vdp_backup_verify / vdp_restore calls.

Imported by tests/integration/test_backup.py, test_backup_attacks.py, test_restore.py and
test_production_guard.py: the four had grown their own copies of each of these, which had started to drift.
Uses the session fixtures (`sandbox`, `legacy_template`, `run_module`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config

from tests.support.code import module_utils
from tests.support.databases import scratch_database
from tests.support.engine import login
from tests.support.sandbox import Sandbox

LEGACY = list(module_utils("vdp_legacy").LEGACY_TABLES)  # the tables the backup's manifest counts
PG_BINDIR = "/usr/lib/postgresql/15/bin"


# --------------------------------------------------------------------------- S3


def s3_of(box: Sandbox) -> Any:
    """A boto3 client of the sandbox's SeaweedFS S3 (path-style addressing, as SeaweedFS wants)."""
    s3 = box.s3
    return boto3.client(
        "s3",
        endpoint_url=s3["endpoint_url"],
        region_name=s3["region"],
        aws_access_key_id=s3["access_key"],
        aws_secret_access_key=s3["secret_key"],
        config=Config(s3={"addressing_style": "path"}),
    )


def s3_args(box: Sandbox, prefix: str) -> dict[str, Any]:
    """The S3 options of vdp_backup, vdp_backup_verify and vdp_restore: the sandbox's S3 facts share their names."""
    return dict(box.s3, prefix=prefix)


def keys_under(client: Any, bucket: str, prefix: str) -> list[str]:
    out: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def flip_byte(client: Any, bucket: str, key: str, truncate: bool = False) -> None:
    """Rewrite the object in place with one byte flipped (or cut short), keeping its metadata: silent corruption."""
    head = client.head_object(Bucket=bucket, Key=key)
    body = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    if truncate:
        body = body[: len(body) // 2]
    else:
        body[len(body) // 2] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body), Metadata=head["Metadata"])


def no_secret(result: Any, box: Sandbox) -> None:
    text = json.dumps(result, default=str)
    for secret in (box.password, box.s3_secret_key, box.s3_access_key):
        assert secret not in text


# --------------------------------------------------------------------------- databases


def legacy_clone(name: str, stem: str) -> Any:
    """A module-scoped fixture called `name`: a clone of the legacy fixture (2000 users) on the production
    cluster, playing production for the module's backups (the sandbox's own 'virtue' is never touched)."""

    def clone(sandbox: Sandbox, legacy_template: Callable[..., str]) -> Iterator[dict[str, Any]]:
        with scratch_database(sandbox, "production", stem, template=legacy_template()) as conn:
            yield conn

    return pytest.fixture(scope="module", name=name)(clone)


def staging_with_sentinel(name: str = "staging") -> Any:
    """A fixture called `name`: a database on the staging cluster holding a sentinel table; a restore that got
    as far as dropping the database removes it."""

    def staging(sandbox: Sandbox) -> Iterator[dict[str, Any]]:
        with scratch_database(sandbox, "staging", "stg") as conn:
            with psycopg.connect(**conn, autocommit=True) as c:
                c.execute("CREATE TABLE sentinel (x int)")
            yield conn

    return pytest.fixture(name=name)(staging)


def has_sentinel(conn: dict[str, Any], table: str = "sentinel") -> bool:
    with psycopg.connect(**conn) as c:
        return bool(c.execute("SELECT to_regclass(%s) IS NOT NULL", (f"public.{table}",)).fetchone()[0])


def exact_counts(conn: dict[str, Any]) -> dict[str, int]:
    with psycopg.connect(**conn) as c:
        return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in LEGACY}


def pg_server(conn: dict[str, Any]) -> dict[str, Any]:
    """A connection as the modules' `production` / `staging` dict options take it."""
    return {k: conn[k] for k in ("host", "port", "dbname", "user", "password")}


# --------------------------------------------------------------------------- the modules


def backup(run_module: Any, box: Sandbox, conn: dict[str, Any], prefix: str, run_id: str, **extra: Any) -> Any:
    args = dict(login(conn), **s3_args(box, prefix), run_id=run_id, pg_bindir=PG_BINDIR)
    check = extra.pop("_check", False)
    args.update(extra)
    return run_module("vdp_backup", args, check=check, diff=True)


def backed_up_once(run_module: Any, box: Sandbox, conn: dict[str, Any], folder: str, run_id: str) -> dict[str, Any]:
    """A verified backup of `conn` under a fresh prefix below `folder`: its prefix, run id, key and manifest."""
    prefix = f"{folder}/{uuid.uuid4().hex[:10]}"
    result = backup(run_module, box, conn, prefix, run_id)
    assert not result.failed, result.get("msg")
    return dict(prefix=prefix, run_id=run_id, key=result["key"], manifest=result["manifest"])


def verify(run_module: Any, box: Sandbox, prefix: str, **extra: Any) -> Any:
    return run_module("vdp_backup_verify", dict(s3_args(box, prefix), **extra))


def restore_args(
    box: Sandbox, target: dict[str, Any], prefix: str, production: dict[str, Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """vdp_restore's options for restoring `prefix` onto `target`; production is the sandbox's 'virtue' unless given."""
    prod = production if production is not None else box.pg("production", "virtue")
    args = dict(login(target), **s3_args(box, prefix), production=pg_server(prod), pg_bindir=PG_BINDIR)
    args.update(extra)
    return args
