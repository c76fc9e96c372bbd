"""Backup and restore against plain pg_dump / pg_restore, on the benchmark's fixture, in the same run.

backup   plain   `pg_dump -Fc > FILE` (the seed's command, in the custom format pg_restore needs) to local disk
         ours    vdp_backup mode=stream: pg_dump -Fc piped into an S3 multipart upload with SSE, SHA-256 on the fly,
                 the manifest of exact row counts (and the legacy checksums) read in the dump's own snapshot; no
                 local disk. The two alternate, `repeat` times each; the best of each is compared (throughput ratio =
                 plain seconds / ours).
restore  plain   `pg_restore -j2 -d DB FILE` from the plain dump (written to a seekable file, so its table of
                 contents holds every data block's offset) into a new database on the staging cluster
         same    `pg_restore -j2` of the very bytes vdp_backup uploaded (downloaded first, not timed): a dump written
                 through a pipe has no data offsets, and parallel pg_restore must read through the archive to find
                 each table's data, which costs time by itself
         ours    vdp_restore mode=file jobs=2: the verified download (SHA-256 against metadata, tag and manifest; the
                 table of contents; a full decode), drop/create, roles, pg_restore -j2 --exit-on-error, row-count
                 parity with the manifest; ANALYZE off (the plain restore has none either)
         Each restore starts after a CHECKPOINT of the staging cluster, into a database that did not exist (the
         previous one is dropped untimed), in the order plain, same, ours, `repeat` times; the best of each counts.

The staging cluster is given the roles the dump's grants name before the plain restore, as a real staging server
has them (Supabase's anon / authenticated / service_role): on a fresh sandbox they exist only on production, and a
plain pg_restore then fails on its first GRANT. vdp_restore creates them itself (create_roles).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from bench_common import PG_BIN, Sandbox, checkpoint, drop, first_error, module, recreate, run
from botocore.config import Config
from psycopg import sql

BUCKET = "vdp-backups"


def s3_client(sb: Sandbox) -> Any:
    path_style = Config(s3={"addressing_style": "path"})
    return boto3.client("s3", endpoint_url=sb.s3_endpoint, region_name="us-east-1", config=path_style)


def s3_args(sb: Sandbox, prefix: str) -> dict[str, Any]:
    return dict(endpoint_url=sb.s3_endpoint, region="us-east-1", bucket=BUCKET, prefix=prefix)


def staging_roles(sb: Sandbox) -> list[str]:
    """Create on staging (NOLOGIN) every role production has and staging lacks; the names created."""
    with sb.connect(sb.prod_port) as conn:
        wanted = [r[0] for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1")]
    with sb.connect(sb.staging_port) as conn:
        present = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles")}
        missing = [r for r in wanted if r not in present]
        for role in missing:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    return missing


def plain_dump(sb: Sandbox, db: str, path: Path) -> float:
    with path.open("wb") as out:
        seconds, proc = run([f"{PG_BIN}/pg_dump", "-Fc", "--no-password"], env=sb.env(sb.prod_port, db), stdout=out)
    if proc.returncode:
        raise SystemExit(f"pg_dump failed: {first_error(proc)}")
    return seconds


def plain_restore(sb: Sandbox, db: str, path: Path) -> float:
    recreate(sb, sb.staging_port, db)
    checkpoint(sb, sb.staging_port)
    cmd = [f"{PG_BIN}/pg_restore", "-j", "2", "--exit-on-error", "--no-password", "-d", db, str(path)]
    seconds, proc = run(cmd, env=sb.env(sb.staging_port, db))
    if proc.returncode:
        raise SystemExit(f"pg_restore -j2 of {path.name} failed: {first_error(proc)}")
    return seconds


def ours_restore(sb: Sandbox, fx: str, db: str, prefix: str, run_id: str) -> tuple[float, dict[str, Any]]:
    drop(sb, sb.staging_port, db)
    checkpoint(sb, sb.staging_port)
    args = dict(
        sb.login(sb.staging_port, db), **s3_args(sb, prefix), run_id=run_id, mode="file", jobs=2, analyze=False,
        pg_bindir=PG_BIN, production=dict(host=sb.host, port=sb.prod_port, dbname=fx, user=sb.user),
    )
    started = time.monotonic()
    result = module("vdp_restore", args, "vdp_restore")
    return time.monotonic() - started, result


def backups(sb: Sandbox, fx: str, users: int, prefix: str, plain: Path, repeat: int) -> dict[str, Any]:
    login = sb.login(sb.prod_port, fx)
    plain_s, ours_s, dump_phase, size = [], [], [], 0
    key = ""
    for attempt in range(repeat):
        checkpoint(sb, sb.prod_port)
        plain_s.append(plain_dump(sb, fx, plain))
        checkpoint(sb, sb.prod_port)
        started = time.monotonic()
        result = module("vdp_backup", dict(login, **s3_args(sb, prefix), run_id=f"bench-{users}-{attempt}", pg_bindir=PG_BIN))
        ours_s.append(time.monotonic() - started)
        dump_phase.append(result.get("manifest", {}).get("dump_seconds"))
        key, size = key or result["key"], int(result["size"])
    return dict(
        plain_seconds=[round(x, 2) for x in plain_s], ours_seconds=[round(x, 2) for x in ours_s],
        ours_dump_phase_seconds=dump_phase,
        plain_bytes=plain.stat().st_size, ours_bytes=size, key=key,
        throughput_ratio=round(min(plain_s) / min(ours_s), 3),
    )


def restores(sb: Sandbox, fx: str, users: int, prefix: str, plain: Path, key: str, repeat: int, workdir: Path) -> dict[str, Any]:
    streamed = workdir / "streamed.pgdump"
    s3_client(sb).download_file(BUCKET, key, str(streamed))
    times: dict[str, list[float]] = dict(plain=[], same=[], ours=[])
    steps: dict[str, Any] = {}
    for _ in range(repeat):
        times["plain"].append(plain_restore(sb, f"bench_rs_plain_{users}", plain))
        times["same"].append(plain_restore(sb, f"bench_rs_same_{users}", streamed))
        seconds, result = ours_restore(sb, fx, f"bench_rs_ours_{users}", prefix, f"bench-{users}-0")
        times["ours"].append(seconds)
        if seconds == min(times["ours"]):
            steps = result.get("seconds", {})
    best = {k: min(v) for k, v in times.items()}
    return dict(
        plain_seconds=[round(x, 2) for x in times["plain"]], same_bytes_seconds=[round(x, 2) for x in times["same"]],
        ours_seconds=[round(x, 2) for x in times["ours"]], ours_steps=steps,
        time_ratio=round(best["ours"] / best["plain"], 3),
        time_ratio_same_bytes=round(best["ours"] / best["same"], 3),
        piped_dump_ratio=round(best["same"] / best["plain"], 3),
    )


def cleanup(sb: Sandbox, prefix: str, users: int) -> None:
    client = s3_client(sb)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    for kind in ("plain", "same", "ours"):
        drop(sb, sb.staging_port, f"bench_rs_{kind}_{users}")


def backup_restore(sb: Sandbox, fx: str, users: int, repeat: int) -> dict[str, Any]:
    """Every backup/restore figure at one size; S3 objects, files and restored databases removed afterwards."""
    prefix = f"bench/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    created = staging_roles(sb)
    with tempfile.TemporaryDirectory(prefix="vdp-bench-") as tmp:
        workdir = Path(tmp)
        plain = workdir / "plain.pgdump"
        try:
            print("  backup: pg_dump -Fc > file vs vdp_backup (stream to S3)", flush=True)
            backup = backups(sb, fx, users, prefix, plain, repeat)
            print("  restore: pg_restore -j2 (plain dump, streamed dump) vs vdp_restore", flush=True)
            restore = restores(sb, fx, users, prefix, plain, backup["key"], repeat, workdir)
        finally:
            cleanup(sb, prefix, users)
    return dict(roles_created_on_staging=created, backup=backup, restore=restore)
