#!/usr/bin/env python3
"""Benchmark: the engine's data step against the seed's raw SQL run by psql, on the same data.

For each --users N: load the legacy fixture (shape "seed": the seed's SQL reads profiles.last_sign_in_at)
into a template database, apply the schema file, VACUUM ANALYZE, then time on fresh clones:

  seed_sql_raw     benchmarks/seed_sql/*.seed.sql by `psql -v ON_ERROR_STOP=1` on the messy data (its INSERT
                   fails on the first orphan / self / duplicate row: the time until psql gave up, exit code kept)
  seed_sql_clean   the same on the same data without orphan, self and duplicate active relationships (the only
                   data the seed's SQL can migrate against our schema's foreign keys and unique key)
  engine           the data step as the role runs it (module defaults: batches of 20000, trigger_suppression auto) -
                   vdp_organization, vdp_feature_flag, vdp_org_membership, vdp_coach_assignments, ledger record -
                   each a real module process (as Ansible runs them), on the messy data and on the clean data; plus
                   in_module_ms: the membership and assignments modules' own duration_ms (database work, without
                   the ~0.2 s Python start-up of each of the five module processes)
  engine_alter     (--alter-variant) the clean run again with trigger_suppression=alter_table, the path of a
                   role that may not set session_replication_role

Prints a table with the ratios; --json writes the figures. Benchmarks are not tests: run by hand, e.g.
  .venv/bin/python benchmarks/bench_data_step.py --users 10000 1000000 --port 47310
Connection: --host/--port/--user (trust or PGPASSWORD). Databases bench_* are created and dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fixtures.generate_legacy import load_legacy  # noqa: E402
from tests.support.modrun import run_module  # noqa: E402

SEED_SQL = ROOT / "benchmarks" / "seed_sql" / "20250103_organizational_model_data.seed.sql"
PSQL = "/usr/lib/postgresql/15/bin/psql"

CLEAN_SQL = """
DELETE FROM public.sponsor_practitioner_relationships r
WHERE r.sponsor_id = r.practitioner_id
   OR NOT EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.practitioner_id);
DELETE FROM public.sponsor_practitioner_relationships r
USING public.sponsor_practitioner_relationships k
WHERE r.active AND k.active AND r.sponsor_id = k.sponsor_id AND r.practitioner_id = k.practitioner_id
  AND (k.created_at, k.id) < (r.created_at, r.id);
"""


def admin(args: argparse.Namespace) -> psycopg.Connection[Any]:
    return psycopg.connect(host=args.host, port=args.port, user=args.user, dbname="postgres", autocommit=True)


def conninfo(args: argparse.Namespace, db: str) -> dict[str, Any]:
    return dict(host=args.host, port=args.port, user=args.user, dbname=db)


def login(args: argparse.Namespace, db: str) -> dict[str, Any]:
    return dict(login_host=args.host, login_port=args.port, login_user=args.user, login_db=db)


def recreate(args: argparse.Namespace, db: str, template: str | None = None) -> None:
    with admin(args) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{db}"' + (f' TEMPLATE "{template}"' if template else ""))


def drop(args: argparse.Namespace, db: str) -> None:
    with admin(args) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


def check(result: dict[str, Any], what: str) -> dict[str, Any]:
    if result.get("failed"):
        raise SystemExit(f"{what} failed: {result.get('msg')}")
    return result


def template_tag(users: int, clean: bool) -> str:
    """What a kept template was built from: reused (--reuse) only while the loader and schema are unchanged."""
    digest = hashlib.sha256()
    sources = [ROOT / "fixtures" / "generate_legacy.py", *sorted((ROOT / "fixtures" / "sql").glob("*.sql"))]
    for path in [*sources, ROOT / "migrations" / "20250103_organizational_model_schema.sql"]:
        digest.update(path.read_bytes())
    return f"vdp bench template users={users} clean={clean} {digest.hexdigest()[:16]}"


def reusable(args: argparse.Namespace, name: str, tag: str) -> bool:
    with admin(args) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s", (name,)).fetchone()
    return bool(row and row[0] == tag)


def prepare_template(args: argparse.Namespace, users: int, clean: bool) -> str:
    name = f"bench_tpl_{users}_{'clean' if clean else 'messy'}"
    tag = template_tag(users, clean)
    if args.reuse and reusable(args, name, tag):
        print(f"  template {name}: reused", flush=True)
        return name
    recreate(args, name)
    started = time.monotonic()
    load_legacy(conninfo(args, name), shape="seed", users=users)
    if clean:
        with psycopg.connect(**conninfo(args, name)) as conn:
            conn.execute(CLEAN_SQL)
    # The schema phase (not timed): schema file through the ledger, which also stores the baseline.
    check(
        run_module(
            "vdp_schema_migrations",
            dict(login(args, name), path=str(ROOT / "migrations"), versions=["20250103_organizational_model_schema"]),
        ),
        "schema",
    )
    with psycopg.connect(**conninfo(args, name), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    with admin(args) as conn:
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(tag)))
    print(f"  template {name}: loaded in {time.monotonic() - started:.1f}s", flush=True)
    return name


def time_seed_sql(args: argparse.Namespace, template: str) -> dict[str, Any]:
    db = f"{template}_seed"
    recreate(args, db, template)
    with admin(args) as conn:
        conn.execute("CHECKPOINT")
    env = dict(os.environ, PGHOST=args.host, PGPORT=str(args.port), PGUSER=args.user, PGDATABASE=db)
    started = time.monotonic()
    proc = subprocess.run(
        [PSQL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(SEED_SQL)], env=env, capture_output=True, text=True, check=False
    )
    seconds = time.monotonic() - started
    drop(args, db)
    error = proc.stderr.strip().splitlines()[0] if proc.returncode else ""
    return dict(seconds=round(seconds, 3), exit_code=proc.returncode, error=error)


DATA_STEP = (
    (
        "vdp_organization",
        dict(
            slug="individual-users",
            name="Individual Users",
            primary_color="#5F4339",
            secondary_color="#A8A29E",
            subscription_tier="legacy",
            max_users=1000,
            create_only=["max_users"],
        ),
    ),
    ("vdp_feature_flag", dict(names=["organizational_model", "multi_role_support"], enabled=False, create_only=True)),
    ("vdp_org_membership", dict()),
    ("vdp_coach_assignments", dict()),
    ("vdp_schema_migrations", dict(state="recorded", record_version="20250103_organizational_model_data")),
)


def time_engine(args: argparse.Namespace, template: str, **membership_args: Any) -> dict[str, Any]:
    db = f"{template}_engine"
    recreate(args, db, template)
    steps: dict[str, float] = {}
    results: dict[str, dict[str, Any]] = {}
    with admin(args) as conn:
        conn.execute("CHECKPOINT")  # same start as time_seed_sql's clone: no dirty pages of the clone pending
    started = time.monotonic()
    for name, extra in DATA_STEP:
        extra = dict(extra, **membership_args) if name == "vdp_org_membership" else extra
        t = time.monotonic()
        results[name] = check(run_module(name, dict(login(args, db), **extra)), name)
        steps[name] = round(time.monotonic() - t, 3)
    seconds = time.monotonic() - started
    membership, assignments = results["vdp_org_membership"], results["vdp_coach_assignments"]
    again = time.monotonic()
    changed = [name for name, extra in DATA_STEP if run_module(name, dict(login(args, db), **extra)).get("changed")]
    rerun = time.monotonic() - again
    drop(args, db)
    return dict(
        seconds=round(seconds, 3),
        steps=steps,
        in_module_ms=int(membership.get("duration_ms") or 0) + int(assignments.get("duration_ms") or 0),
        membership_batches=membership.get("batches"),
        membership_in_module_ms=membership.get("duration_ms"),
        trigger_suppression=membership.get("trigger_suppression"),
        assignments_batches=assignments.get("batches"),
        assignments_in_module_ms=assignments.get("duration_ms"),
        rerun_seconds=round(rerun, 3),
        rerun_changed=changed,
    )


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def bench(args: argparse.Namespace, users: int) -> dict[str, Any]:
    print(f"== {users} users", flush=True)
    messy = prepare_template(args, users, clean=False)
    clean = prepare_template(args, users, clean=True)
    row = dict(
        users=users,
        seed_sql_messy=time_seed_sql(args, messy),
        seed_sql_clean=time_seed_sql(args, clean),
        engine_messy=time_engine(args, messy),
        engine_clean=time_engine(args, clean),
    )
    seed_clean = max(row["seed_sql_clean"]["seconds"], 1e-6)
    if args.alter_variant:
        row["engine_alter_clean"] = time_engine(args, clean, trigger_suppression="alter_table")
        row["ratio_alter_clean"] = round(row["engine_alter_clean"]["seconds"] / seed_clean, 2)
    row["ratio_clean"] = round(row["engine_clean"]["seconds"] / seed_clean, 2)
    row["ratio_in_module_clean"] = round(row["engine_clean"]["in_module_ms"] / 1000 / seed_clean, 2)
    row["ratio_messy_vs_seed_clean"] = round(row["engine_messy"]["seconds"] / seed_clean, 2)
    row["module_peak_rss_mb"] = round(peak_rss_mb(), 1)
    if not args.keep:
        drop(args, messy)
        drop(args, clean)
    print(json.dumps(row, indent=1), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, nargs="+", default=[10_000])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PGPORT", "5432")))
    parser.add_argument("--user", default=os.environ.get("PGUSER", "postgres"))
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the template databases")
    parser.add_argument(
        "--alter-variant", action="store_true", help="also time the clean run with trigger_suppression=alter_table"
    )
    parser.add_argument(
        "--reuse", action="store_true", help="reuse kept templates built from the same loader and schema file (implies --keep)"
    )
    args = parser.parse_args()
    args.keep = args.keep or args.reuse
    rows = [bench(args, n) for n in args.users]
    header = (
        f"{'users':>9} | {'seed SQL messy':>22} | {'seed SQL clean':>14} | {'engine messy':>12} | {'engine clean':>12} | "
        f"{'in-module':>9} | ratio clean | in-module ratio"
    )
    print(f"\n{header}")
    for r in rows:
        seed_messy = f"{r['seed_sql_messy']['seconds']:.2f}s (exit {r['seed_sql_messy']['exit_code']})"
        alter = (
            f" | alter_table: {r['engine_alter_clean']['seconds']:.2f}s ({r['ratio_alter_clean']:.2f}x)"
            if "engine_alter_clean" in r
            else ""
        )
        print(
            f"{r['users']:>9} | {seed_messy:>22} | {r['seed_sql_clean']['seconds']:>13.2f}s | "
            f"{r['engine_messy']['seconds']:>11.2f}s | {r['engine_clean']['seconds']:>11.2f}s | "
            f"{r['engine_clean']['in_module_ms'] / 1000:>8.2f}s | {r['ratio_clean']:>10.2f}x | "
            f"{r['ratio_in_module_clean']:>14.2f}x{alter}"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
