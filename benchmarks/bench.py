#!/usr/bin/env python3
"""make bench: the project against the seed's own commands, measured in one run, on the same data.

  .venv/bin/python benchmarks/bench.py --users 1000000        (scripts/bench.sh, `make bench`, passes the sandbox)

At --users N (and N/10 for what is measured at two sizes) on the embedded sandbox:
  1. the legacy fixture of N and N/10 users, messy cases included (bench_fx_<users>, production cluster)
  2. the data phase vs the seed's SQL by psql (clean copy), with a row-lock sampler and a 50 ms update probe beside
     each; on the messy copy; with work_mem = 1MB               (bench_data_step.py, bench_watch.py)
  3. backup vs pg_dump -Fc > file; restore vs pg_restore -j2    (bench_backup.py)
  4. the whole runbook, migrate.yml on the sandbox inventory, at N/10 then N users, the latter followed by a no-op
     re-run; controller memory                                  (bench_runbook.py)
and writes benchmarks/results/<date>-<N>.md (the tables, printed at the end) and .json (every figure), after each
part: a run stopped half-way (Ctrl-C, SIGTERM, a failed step) leaves what it measured, marked partial.
  .venv/bin/python benchmarks/bench.py --render benchmarks/results/<date>-<N>.json    writes the .md again
  scripts/bench.sh 100000 --only data --quick --out DIR     the data phase at one size only: seed vs project with the
                                                            lock sampler and probe, and the project's no-op re-run

It replaces production's `virtue` database of the sandbox with the fixture (as `make fixture` does) and leaves it
migrated; bench_* databases are dropped at the end unless --keep. Needs PGPASSWORD, AWS_ACCESS_KEY_ID and
AWS_SECRET_ACCESS_KEY in the environment (scripts/bench.sh reads them from the sandbox's secrets).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench_backup import backup_restore
from bench_common import ROOT, Sandbox, drop, load_average
from bench_data_step import SHAPE, data_phase, drop_templates, fixture
from bench_report import markdown
from bench_runbook import own_peak_mb, rerun, runbook

PARTS = ("data", "backup", "runbook")


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=1_000_000, help="the size every measure runs at (default 1,000,000)")
    p.add_argument("--small", type=int, help="the second size of the runbook and memory measures (default users / 10)")
    p.add_argument("--port-base", type=int, default=int(os.environ.get("VDP_SANDBOX_PORT_BASE", "15430")))
    p.add_argument("--sandbox-dir", type=Path, default=Path(os.environ.get("VDP_SANDBOX_DIR", ROOT / ".sandbox")))
    p.add_argument("--repeat", type=int, default=2, help="timed runs per side of the data phase, backup and restore")
    p.add_argument("--cap-factor", type=float, default=10.0,
                   help="the seed's SQL at work_mem = 1MB is stopped after this many times its default-work_mem time")
    p.add_argument("--monitor-period", type=int, default=10, help="monitor_period_seconds of the runbook runs")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts to run ({', '.join(PARTS)})")
    p.add_argument("--quick", action="store_true",
                   help="the data part measures the clean copy only: seed vs project (locks, probe) and the project's "
                        "no-op re-run; no messy or work_mem runs. With --only data: one size, no small fixture")
    p.add_argument("--reuse", action="store_true", help="reuse kept fixtures / templates built by the same code (implies --keep)")
    p.add_argument("--keep", action="store_true", help="keep the bench_* fixture and template databases")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--render", type=Path, help="only write the .md of a results .json again (no measure)")
    p.add_argument("--resume", type=Path, help="a stopped run's .json: keep the parts it measured, measure the rest, into it")
    args = p.parse_args()
    args.small = args.small or max(1000, args.users // 10)
    args.keep = args.keep or args.reuse
    args.parts = {x.strip() for x in args.only.split(",") if x.strip()}
    if args.parts - {*PARTS, "rerun"}:
        p.error(f"--only takes {', '.join(PARTS)} (or rerun: the re-runs alone, on a resumed runbook's world)")
    for name in ("PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        if not args.render and not os.environ.get(name):
            p.error(f"set {name} in the environment (scripts/bench.sh reads it from the sandbox's secrets folder)")
    return args


def environment(sb: Sandbox, args: argparse.Namespace) -> dict[str, Any]:
    with sb.connect(sb.prod_port) as conn:
        settings = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in ("server_version", "shared_buffers", "work_mem", "fsync")}
    git = ["git", "-C", str(ROOT)]
    commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    dirty = bool(subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=False).stdout.strip())
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return dict(
        date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), commit=commit, dirty=dirty, cpus=os.cpu_count(),
        memory_gib=round(memory_kb / 2**20), server_version=settings["server_version"], shared_buffers=settings["shared_buffers"],
        work_mem_default=settings["work_mem"], fsync=settings["fsync"], load_start=load_average(),
        sizes=[args.small, args.users] if args.parts & {"runbook", "rerun"} else [args.users],
        shape=SHAPE, monitor_period_seconds=args.monitor_period, repeat=args.repeat, sandbox_port_base=sb.base,
        parts=sorted(args.parts), quick=args.quick,
    )


def measure(sb: Sandbox, args: argparse.Namespace, results: dict[str, Any], save: Any) -> None:
    """Every part asked for, the figures saved after each (a run stopped half-way still reports what it measured)."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    sizes = (args.small, args.users) if "runbook" in args.parts else (args.users,)  # the small size is the runbook's
    print(f"== fixtures ({' and '.join(f'{n:,}' for n in sizes)} users)", flush=True)
    fx_small = ""
    if "runbook" in args.parts:
        fx_small, results["fixture_small"] = fixture(sb, args.small, args.reuse)
    fx_big, results["fixture"] = fixture(sb, args.users, args.reuse)
    results["environment"]["fixture"] = {k: v for k, v in results["fixture"].items() if k not in ("reused", "seconds")}
    save()
    if "data" in args.parts and "data_phase" not in results:
        print(f"== data phase vs the seed's SQL ({args.users:,} users)", flush=True)
        results["data_phase"] = data_phase(sb, args.users, fx_big, args.reuse, args.repeat, args.cap_factor, args.quick)
        save()
    if "backup" in args.parts and "backup_restore" not in results:
        print(f"== backup and restore vs pg_dump / pg_restore ({args.users:,} users)", flush=True)
        results["backup_restore"] = backup_restore(sb, fx_big, args.users, args.repeat)
        save()
    if "runbook" in args.parts:
        extra = dict(monitor_period_seconds=args.monitor_period, monitor_interval_seconds=2)
        logs = args.out / "logs"
        done = {r["users"]: r for r in results.get("runbook", []) if r.get("first") and not r["first"]["exit_code"]}
        results["runbook"] = []
        for users, fx, again in ((args.small, fx_small, False), (args.users, fx_big, True)):
            if users in done and (done[users].get("again") or not again):
                print(f"  migrate.yml at {users} users: measured already ({done[users].get('source', 'resumed')})")
                results["runbook"].append(done[users])
                continue
            results["runbook"].append(dict(users=users))
            results["runbook"][-1] = runbook(sb, users, fx, stamp, extra, logs, again=again,
                                             partial=results["runbook"][-1], save=save)
            save()
    if "rerun" in args.parts:
        big = next((r for r in results.get("runbook", []) if r.get("users") == args.users and r.get("first")), None)
        if big is None:
            raise SystemExit(f"--only rerun needs migrate.yml measured at {args.users:,} users: --resume its .json")
        print(f"== the re-runs of migrate.yml on the world the first run at {args.users:,} users left", flush=True)
        rerun(sb, big, stamp, dict(monitor_period_seconds=args.monitor_period, monitor_interval_seconds=2),
              args.out / "logs", save)
        save()
    if not args.keep:
        for n in sizes:
            drop_templates(sb, n)
            drop(sb, sb.prod_port, f"bench_fx_{n}")


def writer(args: argparse.Namespace, results: dict[str, Any], started: float) -> Any:
    """save(): write <date>-<users>.json and .md as they stand (called after each part, and on a stop)."""
    args.out.mkdir(parents=True, exist_ok=True)
    name = args.resume.with_suffix("") if args.resume else args.out / f"{dt.date.today().isoformat()}-{args.users}"

    def save() -> Path:
        results["environment"].update(load_end=load_average(), seconds=round(time.monotonic() - started),
                                      benchmark_process_peak_mb=own_peak_mb())
        name.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        name.with_suffix(".md").write_text(markdown(results))
        return name

    return save


def resumed(args: argparse.Namespace, now: dict[str, Any]) -> dict[str, Any]:
    """The figures of a stopped run (--resume): its parts are kept, the rest measured now, the resumption noted."""
    results = json.loads(args.resume.read_text())
    if not set(now["sizes"]) <= set(results["environment"]["sizes"]):  # --only data resumes a run of both sizes
        raise SystemExit(f"{args.resume} measured {results['environment']['sizes']} users, not {now['sizes']}")
    results.pop("stopped", None)
    resumed = {k: now[k] for k in ("date", "commit", "dirty", "load_start")}
    results["environment"].setdefault("resumed", []).append(dict(resumed, parts=sorted(args.parts)))
    return results


def on_stop(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    args = parse()
    if args.render:
        results = json.loads(args.render.read_text())
        args.render.with_suffix(".md").write_text(text := markdown(results))
        print(text)
        return 0
    sb = Sandbox(base=args.port_base, box=args.sandbox_dir.resolve())
    started = time.monotonic()
    results: dict[str, Any] = dict(environment=environment(sb, args))
    if args.resume:
        results = resumed(args, results["environment"])
        started -= results["environment"]["seconds"]
    save = writer(args, results, started)
    signal.signal(signal.SIGTERM, on_stop)
    try:
        measure(sb, args, results, save)
    except (KeyboardInterrupt, SystemExit, Exception) as stop:
        minutes = (time.monotonic() - started) / 60
        why = "was interrupted" if isinstance(stop, KeyboardInterrupt) else "failed"
        results["stopped"] = f"The benchmark {why} after {minutes:.0f} min: {type(stop).__name__} {stop}."
        print(f"\n{results['stopped']}\n{save()}.md holds what was measured", flush=True)
        if isinstance(stop, Exception):
            raise
        return 130 if isinstance(stop, KeyboardInterrupt) else 1
    name = save()
    print("\n" + name.with_suffix(".md").read_text())
    print(f"figures: {name}.json, tables: {name}.md", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
