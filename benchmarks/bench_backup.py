#!/usr/bin/env python3
"""Benchmark: vdp_backup / vdp_restore against plain pg_dump / pg_restore on the same data, same run.

For each --users N: load the legacy fixture into a fresh database on the "production" cluster, then time

  backup   plain    `pg_dump -Fc -f FILE` to local disk (the seed's command, made restorable)
           stream   vdp_backup mode=stream: pg_dump -Fc piped into the S3 multipart upload, SHA-256 on the fly,
                    published with metadata + manifest of exact counts - no local disk
  restore  plain    `pg_restore -j2 -d DB FILE` from the local file into a fresh database on the "staging" cluster
           ours     vdp_restore mode=file jobs=2: verified download from S3 (SHA-256 + pg_restore --list), drop/create,
                    roles, pg_restore -j2, row-count parity (ANALYZE off for the ratio; timed separately)

and prints throughput ratios (targets: backup >= 0.8x plain, restore <= 1.2x plain) plus the modules' peak RSS.
Each vdp_* call is a real module process (as Ansible runs it), Python start-up included.
Benchmarks are not tests: run by hand, e.g.
  PGPASSWORD=... AWS_ACCESS_KEY_ID=... AWS_SECRET_ACCESS_KEY=... .venv/bin/python benchmarks/bench_backup.py \\
      --users 100000 1000000 --prod-port 15432 --staging-port 15433 --s3-endpoint http://127.0.0.1:15434
Databases bench_bk_* are created and dropped; backups go under the prefix bench/<timestamp>/ and are deleted.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import psycopg
from botocore.config import Config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate_legacy import load_legacy  # noqa: E402
from tests.support.modrun import run_module  # noqa: E402

BIN = "/usr/lib/postgresql/15/bin"


def admin(args: argparse.Namespace, port: int) -> psycopg.Connection[Any]:
    return psycopg.connect(host=args.host, port=port, user=args.user, dbname="postgres", autocommit=True)


def recreate(args: argparse.Namespace, port: int, db: str) -> None:
    with admin(args, port) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"')


def drop(args: argparse.Namespace, port: int, db: str) -> None:
    with admin(args, port) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def s3_args(args: argparse.Namespace, prefix: str) -> dict[str, Any]:
    return dict(endpoint_url=args.s3_endpoint, region="us-east-1", bucket=args.bucket, prefix=prefix)


def check(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result.get("failed"):
        raise SystemExit(f"{what} failed: {result.get('msg')}")
    return result


def timed(cmd: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    return time.monotonic() - started


def peak_rss_mib() -> float:
    """Peak RSS of any child waited for so far (module processes dominate it), in MiB."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def bench(args: argparse.Namespace, users: int, prefix: str, workdir: Path) -> dict[str, Any]:
    src, dst_plain, dst_ours = f"bench_bk_src_{users}", f"bench_bk_plain_{users}", f"bench_bk_ours_{users}"
    recreate(args, args.prod_port, src)
    started = time.monotonic()
    load_legacy(dict(host=args.host, port=args.prod_port, user=args.user, dbname=src), users=users)
    load_seconds = time.monotonic() - started
    with psycopg.connect(host=args.host, port=args.prod_port, user=args.user, dbname=src) as conn:
        db_bytes = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    file = workdir / f"{src}.pgdump"
    dump_cmd = [f"{BIN}/pg_dump", "-Fc", "-h", args.host, "-p", str(args.prod_port), "-U", args.user, "-f", str(file), src]
    login = dict(login_host=args.host, login_port=args.prod_port, login_user=args.user, login_db=src)
    plain, ours, ours_dump = [], [], []
    result: dict[str, Any] = {}
    for attempt in range(args.repeat):
        plain.append(timed(dump_cmd))
        run_id = f"u{users}-{attempt}"
        begin = time.monotonic()
        result = check(run_module("vdp_backup", dict(login, **s3_args(args, prefix), run_id=run_id, pg_bindir=BIN)), "vdp_backup")
        ours.append(time.monotonic() - begin)
        ours_dump.append(result["manifest"]["dump_seconds"])
    backup_rss = peak_rss_mib()
    size = file.stat().st_size

    # restore: plain pg_restore -j2 from the local file vs vdp_restore (verified download + pg_restore -j2 + parity)
    recreate(args, args.staging_port, dst_plain)
    restore_cmd = [
        f"{BIN}/pg_restore",
        "-j",
        "2",
        "-h",
        args.host,
        "-p",
        str(args.staging_port),
        "-U",
        args.user,
        "-d",
        dst_plain,
    ]
    plain_restore = timed([*restore_cmd, str(file)])
    target = dict(login_host=args.host, login_port=args.staging_port, login_user=args.user, login_db=dst_ours)
    guard = dict(production_host=args.host, production_port=args.prod_port, production_db=src)
    begin = time.monotonic()
    restored = check(
        run_module(
            "vdp_restore",
            dict(target, **guard, **s3_args(args, prefix), run_id=f"u{users}-0", jobs=2, analyze=False, pg_bindir=BIN),
        ),
        "vdp_restore",
    )
    ours_restore = time.monotonic() - begin
    restore_rss = peak_rss_mib()
    begin = time.monotonic()
    check(
        run_module(
            "vdp_restore",
            dict(
                target,
                **guard,
                **s3_args(args, prefix),
                run_id=f"u{users}-0",
                mode="stream",
                force=True,
                analyze=False,
                pg_bindir=BIN,
            ),
        ),
        "vdp_restore stream",
    )
    stream_restore = time.monotonic() - begin
    for db, port in ((src, args.prod_port), (dst_plain, args.staging_port), (dst_ours, args.staging_port)):
        drop(args, port, db)
    file.unlink()
    best_plain, best_ours = min(plain), min(ours)
    return {
        "users": users,
        "database_bytes": db_bytes,
        "dump_bytes": size,
        "load_seconds": round(load_seconds, 2),
        "backup": {
            "plain_pg_dump_file_seconds": [round(x, 2) for x in plain],
            "vdp_stream_seconds": [round(x, 2) for x in ours],
            "vdp_stream_dump_phase_seconds": ours_dump,
            "throughput_ratio": round(best_plain / best_ours, 3),
            "target": ">= 0.8",
            "module_peak_rss_mib": round(backup_rss, 1),
        },
        "restore": {
            "plain_pg_restore_j2_seconds": round(plain_restore, 2),
            "vdp_restore_file_j2_seconds": round(ours_restore, 2),
            "vdp_restore_steps": restored["seconds"],
            "vdp_restore_stream_seconds": round(stream_restore, 2),
            "time_ratio": round(ours_restore / plain_restore, 3),
            "target": "<= 1.2",
            "module_peak_rss_mib": round(restore_rss, 1),
        },
    }


def cleanup(args: argparse.Namespace, prefix: str) -> None:
    client = boto3.client(
        "s3", endpoint_url=args.s3_endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=args.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=args.bucket, Key=obj["Key"])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--users", type=int, nargs="+", default=[100_000])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--prod-port", type=int, default=15432)
    p.add_argument("--staging-port", type=int, default=15433)
    p.add_argument("--user", default="postgres")
    p.add_argument("--s3-endpoint", default="http://127.0.0.1:15434")
    p.add_argument("--bucket", default="vdp-backups")
    p.add_argument("--repeat", type=int, default=2, help="backup timings per size (best is compared)")
    p.add_argument("--workdir", default=tempfile.gettempdir())
    p.add_argument("--json", help="write the figures to this file")
    args = p.parse_args()
    if not os.environ.get("AWS_ACCESS_KEY_ID") or not os.environ.get("AWS_SECRET_ACCESS_KEY"):
        p.error("set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and PGPASSWORD) in the environment")
    prefix = f"bench/{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    figures = []
    try:
        for users in args.users:
            figures.append(bench(args, users, prefix, Path(args.workdir)))
            print(json.dumps(figures[-1], indent=2), flush=True)
    finally:
        cleanup(args, prefix)
    header = ("users", "dump MB", "pg_dump s", "vdp s", "backup x", "pg_restore s", "vdp s", "restore x")
    widths = (9, 8, 9, 7, 8, 12, 7, 9)
    print("\n" + " ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for f in figures:
        b, r = f["backup"], f["restore"]
        print(
            f"{f['users']:>9} {f['dump_bytes'] / 2**20:>8.1f} {min(b['plain_pg_dump_file_seconds']):>9.2f} "
            f"{min(b['vdp_stream_seconds']):>7.2f} {b['throughput_ratio']:>8.3f} {r['plain_pg_restore_j2_seconds']:>12.2f} "
            f"{r['vdp_restore_file_j2_seconds']:>7.2f} {r['time_ratio']:>9.3f}"
        )
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
