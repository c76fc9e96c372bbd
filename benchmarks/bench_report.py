"""The benchmark's results as Markdown tables (measure | project | baseline | ratio | target | met?) and JSON."""

from __future__ import annotations

import math
from typing import Any

TEN_MILLION = 10_000_000
Row = tuple[str, str, str, str, str, str]


def sec(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f} s" if value < 100 else f"{value:.0f} s ({value / 60:.1f} min)"


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.0f} ms" if value < 10_000 else f"{value / 1000:.1f} s"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def rx(value: float | None, prefix: str = "") -> str:
    return "-" if value is None else f"{prefix}{value:.2f}x"


def met(ok: bool | None) -> str:
    return "-" if ok is None else ("yes" if ok else "**no**")


def data_rows(d: dict[str, Any]) -> list[Row]:
    users = d["users"]
    project, seed = d["project_clean"], d["seed_clean"]
    r = ratio(project["seconds"], seed["seconds"])
    rows: list[Row] = [
        (f"data phase, {users:,} users, clean copy (best of {len(project['all_seconds'])})", sec(project["seconds"]),
         f"seed's SQL by psql {sec(seed['seconds'])}", rx(r), "<= 1.5", met(r is not None and r <= 1.5)),
        *messy_rows(d),
        ("indexes step after it (CONCURRENTLY, VALIDATE; the seed's SQL has none)", sec(project.get("indexes_seconds")),
         "-", "-", "-", "-"),
        *noop_rows(project),
    ]
    return rows + lock_rows(project, seed) + probe_rows(project, seed)


def messy_rows(d: dict[str, Any]) -> list[Row]:
    """The messy copy's row (not measured by a --quick run)."""
    messy_seed = d.get("seed_messy")
    if messy_seed is None or "project_messy" not in d:
        return []
    seed_messy_text = sec(messy_seed["seconds"])
    if messy_seed["exit_code"]:
        error = messy_seed["error"].split("ERROR:", 1)[-1].strip()
        seed_messy_text = f"fails after {seed_messy_text} (psql exit {messy_seed['exit_code']}: {error[:90]})"
    return [("data phase on the messy data (orphans, self, duplicates)", sec(d["project_messy"]["seconds"]), seed_messy_text,
             "-", "-", "-")]


def noop_rows(project: dict[str, Any]) -> list[Row]:
    """The same modules again on the migrated copy (nothing to do) against the first run (data + indexes steps)."""
    noop = project.get("noop")
    if not noop:
        return []
    first = project["seconds"] + (project.get("indexes_seconds") or 0.0)
    slowest = max(noop["steps"].items(), key=lambda kv: kv[1])
    changed = f"; CHANGED: {', '.join(noop['changed'])}" if noop.get("changed") else ""
    return [(f"no-op re-run of the data phase (same modules, indexes step included; slowest: {slowest[0]} "
             f"{sec(slowest[1])}{changed}) / first run", sec(noop["seconds"]), sec(first), rx(ratio(noop["seconds"], first)),
             "a few s", "-")]


def _hold(locks: dict[str, Any]) -> tuple[float, str]:
    parts = [(locks[k]["seconds"], k) for k in ("write", "key_share") if locks.get(k)]
    seconds, kind = max(parts, default=(0.0, "none"))
    what = {"write": "rows updated", "key_share": "FOR KEY SHARE (FK checks)", "none": "none seen"}[kind]
    return seconds, what


def lock_rows(project: dict[str, Any], seed: dict[str, Any]) -> list[Row]:
    p_locks, s_locks = project["with_indexes"]["locks"], seed["locks"]
    p, p_kind = _hold(p_locks)
    s, s_kind = _hold(s_locks)
    rows: list[Row] = [
        ("longest row-lock hold on profiles by one transaction (pg_locks sampled every "
         f"{p_locks['interval_ms']} ms; data + indexes)", f"{ms(p * 1000)} ({p_kind})", f"{ms(s * 1000)} ({s_kind})",
         rx(ratio(p, s)), "<= 1 s", met(p <= 1.0)),
    ]
    for kind, label in (("write", "rows updated (blocks the app's writes to them)"), ("key_share", "FOR KEY SHARE only")):
        pv, sv = (p_locks.get(kind) or {}).get("seconds"), (s_locks.get(kind) or {}).get("seconds")
        rows.append((f"... of which {label}", ms(None if pv is None else pv * 1000), ms(None if sv is None else sv * 1000),
                     rx(ratio(pv, sv)), "-", "-"))
    return rows


def probe_rows(project: dict[str, Any], seed: dict[str, Any]) -> list[Row]:
    p, s = project["with_indexes"]["probe"], seed["probe"]
    label = f"probe (1 profile UPDATE due every 50 ms; {p.get('updates', 0)} vs {s.get('updates', 0)} updates)"
    return [
        (f"{label}: {name} latency", ms(p.get(key)), ms(s.get(key)), rx(ratio(p.get(key), s.get(key))), "-", "-")
        for name, key in (("max", "max_ms"), ("p99", "p99_ms"))
    ]


def work_mem_rows(d: dict[str, Any], default: str) -> list[Row]:
    # Older results have no back-to-back default run: their clean run (watched, earlier) is the baseline.
    adjacent = "project_work_mem_default" in d
    small, normal = d["project_work_mem_1mb"]["seconds"], d.get("project_work_mem_default", d["project_clean"])["seconds"]
    r = ratio(small, normal)
    seed_small, seed_normal = d["seed_work_mem_1mb"], d["seed_clean"]["seconds"]
    stopped = seed_small["stopped_at_cap"]
    seed_ratio = ratio(seed_small["seconds"], seed_normal)
    how = " (both unwatched, back to back)" if adjacent else ""
    return [
        (f"data phase with work_mem = 1MB / with the default ({default}){how}", sec(small), sec(normal), rx(r),
         "~ 1 (0.8-1.25)", met(r is not None and 0.8 <= r <= 1.25)),
        ("the seed's SQL with work_mem = 1MB / with the default", "-",
         f"{'more than ' if stopped else ''}{sec(seed_small['seconds'])}{' (stopped at the cap)' if stopped else ''}"
         f" vs {sec(seed_normal)}", rx(seed_ratio, "> " if stopped else ""), "-", "-"),
    ]


def backup_rows(b: dict[str, Any]) -> list[Row]:
    bk, rs = b["backup"], b["restore"]
    ours_b, plain_b = min(bk["ours_seconds"]), min(bk["plain_seconds"])
    ours_r, plain_r, same_r = min(rs["ours_seconds"]), min(rs["plain_seconds"]), min(rs["same_bytes_seconds"])
    return [
        ("backup throughput: vdp_backup (stream to S3, no local disk) vs pg_dump -Fc > file", sec(ours_b), sec(plain_b),
         rx(bk["throughput_ratio"]), ">= 0.8", met(bk["throughput_ratio"] >= 0.8)),
        ("restore: vdp_restore (verified download, -j2, parity) vs pg_restore -j2 from the local file", sec(ours_r),
         sec(plain_r), rx(rs["time_ratio"]), "<= 1.2", met(rs["time_ratio"] <= 1.2)),
        ("... vs pg_restore -j2 of the same bytes (the dump vdp_backup streamed)", sec(ours_r), sec(same_r),
         rx(rs["time_ratio_same_bytes"]), "-", "-"),
        ("pg_restore -j2: the streamed dump / the file dump (no data offsets in a dump written to a pipe)", sec(same_r),
         sec(plain_r), rx(rs["piped_dump_ratio"]), "-", "-"),
    ]


def memory_rows(small: dict[str, Any], big: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, label in (("peak_single_process_mb", "largest process"), ("peak_tree_mb", "whole process tree")):
        a, b = small["first"]["memory"][key], big["first"]["memory"][key]
        r = ratio(b, a)
        rows.append((f"peak controller memory ({label}), {small['users']:,} -> {big['users']:,} users",
                     f"{b:.0f} MB", f"{a:.0f} MB", rx(r), "flat (<= 1.25x)", met(r is not None and r <= 1.25)))
    return rows


def rerun_rows(big: dict[str, Any]) -> list[Row]:
    first, again = big["first"]["seconds"], big["again"]["seconds"]
    r = ratio(again, first)
    rows: list[Row] = [(f"no-op re-run of migrate.yml / first run, {big['users']:,} users", sec(again), sec(first), rx(r),
                        "<= 0.10", met(r is not None and r <= 0.10))]
    if big.get("recheck"):
        recheck = big["recheck"]["seconds"]
        rows.append(("... re-run with -e vdp_recheck=true (deploy, validation, monitor gate again) / first run",
                     sec(recheck), sec(first), rx(ratio(recheck, first)), "-", "-"))
    return rows


def exponent(a: float | None, b: float | None, n_a: int, n_b: int) -> float | None:
    if not a or not b or a <= 0 or b <= 0:
        return None
    return round(math.log(b / a) / math.log(n_b / n_a), 2)


def projections(a: float | None, b: float | None, n_a: int, n_b: int) -> tuple[str, str, str]:
    """(exponent, power-law projection to 10M, linear projection to 10M) from two sizes' seconds.

    Power law: b * (10M / n_b) ** k, a negative k (fixed costs, noise) taken as 0. Linear: the fixed part and the
    per-user part of a + (b - a) / (n_b - n_a) * users, a shrinking time taken as flat; the cautious one when fixed
    costs (module start-up, Ansible) hide how the per-user part grows.
    """
    k = exponent(a, b, n_a, n_b)
    if k is None or a is None or b is None:
        return "-", "-", "-"
    power = b * (TEN_MILLION / n_b) ** max(k, 0.0)
    per_user = max(0.0, (b - a) / (n_b - n_a))
    linear = b + per_user * (TEN_MILLION - n_b)
    return f"{k:.2f}", sec(power), sec(linear)


def runbook_table(small: dict[str, Any], big: dict[str, Any]) -> list[str]:
    """phase | budget | both sizes | exponent | projections to 10M | budget met | the no-op re-run's time."""
    n_a, n_b = small["users"], big["users"]
    lines = [
        f"| phase | budget | {n_a:,} users | {n_b:,} users | growth exponent | at 10M (power law) | at 10M (linear) | "
        f"budget met at {n_b:,} / at 10M (linear) | no-op re-run, {n_b:,} |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    sa, sb, again = small["first"], big["first"], big.get("again", {})
    budgets = {b["id"]: b for b in sb.get("budgets", [])}
    owner = {p: bid for bid, b in budgets.items() for p in (b.get("phases") or [])}
    for phase in sb.get("phases", {}):
        a, b = sa["phases"].get(phase), sb["phases"].get(phase)
        k, power, linear = projections(a, b, n_a, n_b)
        lines.append(f"| {phase} | {'in ' + owner[phase] if phase in owner else '-'} | {sec(a)} | {sec(b)} | {k} | {power} | "
                     f"{linear} | - | {sec(again.get('phases', {}).get(phase))} |")
    small_budgets = {b["id"]: b for b in sa.get("budgets", [])}
    rerun = {b["id"]: b for b in again.get("budgets", [])}
    for bid, bud in budgets.items():
        a, b = small_budgets.get(bid, {}).get("seconds"), bud.get("seconds")
        k, power, linear = projections(a, b, n_a, n_b)
        limit = bud["minutes"] * 60
        slope = 0.0 if a is None or b is None else max(0.0, (b - a) / (n_b - n_a))
        at_10m = None if b is None else b + slope * (TEN_MILLION - n_b)
        verdict = f"{met(b is not None and b <= limit)} / {met(None if at_10m is None else at_10m <= limit)}"
        lines.append(f"| **{bid}** ({' + '.join(bud.get('phases') or [])}) | {bud['minutes']} min | {sec(a)} | {sec(b)} | {k} | "
                     f"{power} | {linear} | {verdict} | {sec(rerun.get(bid, {}).get('seconds'))} |")
    k, power, linear = projections(sa["seconds"], sb["seconds"], n_a, n_b)
    lines.append(f"| whole run (wall clock, Ansible included) | - | {sec(sa['seconds'])} | {sec(sb['seconds'])} | {k} | "
                 f"{power} | {linear} | - | {sec(again.get('seconds'))} |")
    return lines


def table(rows: list[Row]) -> list[str]:
    lines = ["| measure | project | baseline | ratio | target | met? |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The tables of what was measured; a part missing (not run, or the run stopped before it) is named as missing."""
    env, data, backup = results["environment"], results.get("data_phase"), results.get("backup_restore")
    runs = [r for r in results.get("runbook", []) if r.get("first")]
    small, big = [*runs, {}, {}][:2]
    rows: list[Row] = data_rows(data) if data else []
    rows += rerun_rows(big) if big.get("again") else []
    rows += backup_rows(backup) if backup else []
    rows += work_mem_rows(data, env["work_mem_default"]) if data and "project_work_mem_1mb" in data else []
    rows += memory_rows(small, big) if small and big else []
    users = env["sizes"][-1]
    period = env["monitor_period_seconds"]
    out = [f"# Benchmark, {users:,} users, {env['date']}", "", *environment_lines(env), "", *missing(results, runs), *table(rows),
           "", f"## The whole runbook (migrate.yml on the sandbox inventory, monitor_period_seconds={period})",
           "", *(runbook_table(small, big) if small and big else ["(not measured at both sizes in this run)"]), "",
           *notes(results)]
    return "\n".join(out) + "\n"


def missing(results: dict[str, Any], runs: list[dict[str, Any]]) -> list[str]:
    """A line naming the parts this run did not measure (an interrupted or partial run), or nothing."""
    asked = set(results["environment"].get("parts") or ("data", "backup", "runbook"))  # --only: the rest is not missing
    parts = (("data_phase", "data", "data phase"), ("backup_restore", "backup", "backup and restore"))
    absent = [name for key, part, name in parts if key not in results and part in asked]
    sizes = results["environment"]["sizes"]
    if "runbook" in asked and (len(runs) < 2 or not runs[-1].get("again")):
        absent.append(f"the runbook at {', '.join(f'{n:,}' for n in sizes)} users (measured: "
                      f"{', '.join(format(r['users'], ',') for r in runs) or 'none'})")
    if not absent:
        return []
    return [f"**Partial run: not measured: {'; '.join(absent)}.** {results.get('stopped', '')}".rstrip(), ""]


def environment_lines(env: dict[str, Any]) -> list[str]:
    resumed = [f"- resumed {r['date']} (commit {r['commit']}, load {r['load_start']}): "
               + (f"measured then: {', '.join(r['parts'])}; " if r.get("parts") else "")
               + "the parts measured before were kept" for r in env.get("resumed", [])]
    asked = env.get("parts")
    quick = " (--quick: the clean copy only)" if env.get("quick") else ""
    only = [f"- parts measured: {', '.join(asked)}{quick}"] if asked and len(asked) < 3 else []
    return [*resumed, *only,
        f"- commit {env['commit']}{' (working tree with uncommitted changes)' if env['dirty'] else ''}; "
        f"{env['cpus']} CPUs, {env['memory_gib']} GiB; PostgreSQL {env['server_version']} "
        f"(shared_buffers {env['shared_buffers']}, work_mem {env['work_mem_default']}, fsync {env['fsync']})",
        f"- machine load (1/5/15 min) at the start: {env['load_start']}; at the end: {env['load_end']} - the machine is "
        "shared; each ratio compares two sides measured in the same run, on the same data, under the same load, but "
        "contention still adds noise to both",
        f"- benchmark took {env['seconds'] / 60:.0f} min; sizes {', '.join(f'{n:,}' for n in env['sizes'])} users "
        f"(fixture shape '{env['shape']}', messy cases included: {env.get('fixture', '-')})",
    ]


def notes(results: dict[str, Any]) -> list[str]:
    facts = results.get("data_phase", {}).get("project_clean", {}).get("facts", {})
    borrowed = [f"- the runbook at {r['users']:,} users comes from {r['source']}" for r in results.get("runbook", [])
                if r.get("source")]
    return [
        "Notes:",
        *borrowed,
        "- data phase (project): vdp_organization, vdp_feature_flag, vdp_org_membership "
        f"(trigger suppression: {facts.get('membership', {}).get('trigger_suppression')}), vdp_coach_assignments and the "
        "ledger record, each a module process as Ansible runs it (Python start-up included); the seed's SQL: "
        "`psql -v ON_ERROR_STOP=1 -f benchmarks/seed_sql/*.seed.sql` on a copy of the same data without the orphan, self "
        "and duplicate relationships it cannot migrate.",
        "- row-lock holds: each transaction of another session seen holding RowExclusiveLock (it updated profiles) or "
        "RowShareLock (FOR KEY SHARE: foreign-key checks of rows referencing profiles) on profiles, from the first to "
        "the last sample that saw it, by the server's clock (plus up to one interval before the first, never before "
        "its transaction began); off by up to one interval.",
        "- runbook projections: the power law uses the growth exponent (negative ones, fixed costs and noise, taken as "
        "0); the linear one keeps the fixed part fixed and grows the per-user part linearly, the cautious reading "
        "when fixed costs (Ansible, module start-up, the monitor's fixed watch) hide how the rest grows.",
        "- probe: latency counted from when each update was due (a blocked probe delays the next ones, and their wait "
        "counts), over the data phase and the indexes step; the seed's side over its whole run.",
        "- no-op re-run: the second migrate.yml at the largest size. The first run completed the migration (every phase, "
        "the contract too) and the run lease's log shows no run since, so preflight finds nothing to do and the run "
        "stops there. The recheck (-e vdp_recheck=true) skips the backup, rehearsal and window too, but its deploy finds "
        "the release live, and validation and the monitor gate run again.",
        "- controller memory: vdp_backup keeps up to (upload_threads + 1) x part_size_mb (32 MB parts by default) of the "
        "dump in memory while it uploads; until the dump is larger than that its peak grows with the data, beyond it "
        "stays flat. The peaks of the other processes (ansible-playbook, the other modules): top_processes_mb in the .json.",
        "- restore: every restore starts after a CHECKPOINT, into a database that did not exist. A dump written to a pipe "
        "has no data offsets in its table of contents (pg_restore -j's workers scan for their tables); vdp_restore fills "
        "them in on its proven local copy (since 568dce8; data_offsets in its result). The third and fourth backup rows "
        "restore the dump as it was streamed, without them.",
    ]
