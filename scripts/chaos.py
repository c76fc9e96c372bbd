#!/usr/bin/env python3
"""The chaos suite (`make chaos`): migrate.yml under faults, re-run as an operator would, and the database compared
with an uninterrupted run's (content checksums of every table, per-run columns left out as documented in
tests/support/chaos_content.py). Prints the table and writes it to benchmarks/results/chaos-<UTC time>.md.

Faults (the full suite): SIGKILL at --kills random task boundaries of migrate.yml, alternately of the whole process
tree and of ansible-playbook alone (its modules keep running); a PostgreSQL restart in the middle of the data batches;
S3 killed during the backup upload; the staging server stopped during the restore; a session holding a lock on
profiles during the schema phase. `--seed` makes the kill points reproducible (printed at the start).

Runs on a sandbox of its own (ports from VDP_CHAOS_PORT_BASE, default 33430; folder --sandbox-dir, default a new
temp folder, stopped at the end unless --keep-sandbox). The faults of one world (the kills, the lock) run --jobs at a
time (default 2), each in its own world; those that stop a server every world shares run alone, after them. The table
is rewritten after every fault (a stopped suite keeps what it found). Exit status 1 when any fault did not converge.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support import sandbox as sandbox_support  # noqa: E402
from tests.support.chaos import Chaos, Outcome, table  # noqa: E402
from tests.support.chaos_faults import plan  # noqa: E402

OTHERS = ["pg_restart", "s3_stop", "staging_stop", "lock_profiles"]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill points (default: random, printed)")
    parser.add_argument("--kills", type=int, default=10, help="random kill points (default 10)")
    parser.add_argument("--faults", default=",".join(OTHERS), help=f"the other faults, comma-separated ({','.join(OTHERS)})")
    parser.add_argument("--users", type=int, default=2000, help="legacy fixture size (default 2000)")
    parser.add_argument("--jobs", type=int, default=2, help="faults of one world run side by side (default 2)")
    parser.add_argument("--control", action="store_true", help="also a second uninterrupted run, as a control row")
    parser.add_argument("--sandbox-dir", type=Path, default=None, help="sandbox folder (default: a new temp folder)")
    parser.add_argument("--keep-sandbox", action="store_true", help="leave the sandbox running at the end")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="folder of the table file")
    parser.add_argument("--ansible-args", default="", help="extra ansible-playbook arguments of every run")
    return parser.parse_args()


def template(box: sandbox_support.Sandbox, users: int) -> str:
    import psycopg

    from fixtures.generate_legacy import load_legacy

    name = f"tpl_chaos_{users}"
    with psycopg.connect(**box.pg("production", "postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    load_legacy(box.pg("production", name), users=users, seed=42)
    return name


def main() -> int:
    args = parse()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    port_base = int(os.environ.get("VDP_CHAOS_PORT_BASE", "33430"))
    folder = args.sandbox_dir or Path(tempfile.mkdtemp(prefix="vdp-chaos-sandbox-"))
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)  # noqa: S103 - the postgres system user must traverse it
    print(
        f"chaos: seed {seed} (reproduce with: make chaos CHAOS_ARGS='--seed {seed}'), sandbox {folder} on {port_base}+",
        flush=True,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"chaos-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%SZ}.md"
    box = sandbox_support.start(folder, port_base)
    worlds = Path(tempfile.mkdtemp(prefix="vdp-chaos-worlds-"))
    try:
        chaos = Chaos(
            box, template(box, args.users), worlds, tuple(args.ansible_args.split()), log=lambda line: print(line, flush=True)
        )
        outcomes = run_all(chaos, args, seed, path)
    finally:
        if not args.keep_sandbox:
            sandbox_support.stop(box)
    print(f"\n{path.read_text()}\nwritten to {path} (run logs in {worlds})", flush=True)
    return 0 if outcomes and all(o.converged for o in outcomes) else 1


def run_all(chaos: Chaos, args: argparse.Namespace, seed: int, path: Path) -> list[Outcome]:
    print("reference: an uninterrupted run", flush=True)
    outcomes = [chaos.run_reference()]
    others = [f for f in args.faults.split(",") if f] + (["none"] if args.control else [])
    faults = plan(seed, args.kills, chaos.reference_tasks, others)
    print("plan: " + "; ".join(f"{i}. {f.label}" for i, f in enumerate(faults, 1)), flush=True)
    path.write_text(report(chaos, outcomes, len(faults), seed, args) + "\n")

    def done(o: Outcome) -> None:
        outcomes.append(o)
        print(
            f"  -> {o.fault}: runs {o.runs}, converged {o.converged}, lost {o.lost}, duplicated {o.duplicated}, "
            f"{o.seconds:.0f} s: {'; '.join(o.notes)[:400]}",
            flush=True,
        )
        path.write_text(report(chaos, outcomes, len(faults), seed, args) + "\n")

    ordered = chaos.run_faults(faults, args.jobs, done)
    outcomes = [outcomes[0], *ordered]
    path.write_text(report(chaos, outcomes, len(faults), seed, args) + "\n")
    return outcomes


def report(chaos: Chaos, outcomes: list[Outcome], planned: int, seed: int, args: argparse.Namespace) -> str:
    faults = outcomes[1:]
    partial = "" if len(faults) == planned else f" (so far: {len(faults)} of {planned} faults ran)"
    settings = ", ".join(f"{k}={v}" for k, v in chaos.settings.items())
    head = (
        f"# Chaos suite, {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"seed {seed}, {args.kills} kill points, {args.users} users, {settings}, {args.jobs} worlds at a time"
        f"{', ansible-playbook ' + args.ansible_args if args.ansible_args else ''}; "
        f"{sum(o.converged for o in faults)} of {len(faults)} faults converged{partial}; "
        f"rows lost {sum(o.lost for o in faults)}, rows duplicated {sum(o.duplicated for o in faults)}\n"
    )
    return head + "\n" + table(outcomes)


if __name__ == "__main__":
    sys.exit(main())
