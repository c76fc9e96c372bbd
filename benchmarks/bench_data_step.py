"""The data phase against the seed's raw SQL by psql, on the same data, with a lock sampler and a probe beside each run.

The fixture (fixtures/generate_legacy.py, shape "seed": the seed's UPDATE reads profiles.last_sign_in_at, messy cases
included) is loaded once per size into bench_fx_<users>; two templates are made from it, each with the schema phase
applied as the runbook applies it (roles/schema_migration's versions, through the ledger, baseline included):

  messy  the fixture as generated: orphan, self and duplicate relationships (the seed's INSERT fails on them)
  clean  the same without them: the only data the seed's SQL can migrate against the schema's foreign keys and
         unique key (benchmarks/seed_sql/*.seed.sql is the seed's SQL verbatim)

Every timed run starts on a fresh file copy of a template, after a CHECKPOINT, with the LockSampler and the Probe
(bench_watch.py) on it. The project's data phase is the role org_data_migration's modules, each a real module
process as Ansible runs it: vdp_organization, vdp_feature_flag, vdp_org_membership, vdp_coach_assignments, the
ledger record; the indexes step (CREATE INDEX CONCURRENTLY, VALIDATE CONSTRAINT) is timed apart, since the seed's
baseline has no index SQL to compare with. Then the same modules run again on the migrated copy (the no-op
re-run: a step that finds nothing to do), timed apart. work_mem: the same runs on a copy with ALTER DATABASE ... SET work_mem;
the seed's run there is stopped at a cap (statement_timeout) and reported as "more than".
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg
from bench_common import (
    PG_BIN,
    ROOT,
    Sandbox,
    checkpoint,
    database_tag,
    drop,
    first_error,
    recreate,
    role_default,
    run,
    set_database,
    set_tag,
    sources_digest,
    timed_module,
    vacuum_analyze,
)
from bench_watch import LockSampler, Probe

from fixtures.generate_legacy import load_legacy

SEED_SQL = ROOT / "benchmarks" / "seed_sql" / "20250103_organizational_model_data.seed.sql"
SHAPE = "seed"

CLEAN_SQL = """
DELETE FROM public.sponsor_practitioner_relationships r
WHERE r.sponsor_id = r.practitioner_id
   OR NOT EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.practitioner_id);
DELETE FROM public.sponsor_practitioner_relationships r
USING public.sponsor_practitioner_relationships k
WHERE r.active AND k.active AND r.sponsor_id = k.sponsor_id AND r.practitioner_id = k.practitioner_id
  AND (k.created_at, k.id) < (r.created_at, r.id);
"""


def fixture(sb: Sandbox, users: int, reuse: bool) -> tuple[str, dict[str, Any]]:
    """bench_fx_<users> on production: the legacy platform as generated, VACUUMed. Reused when built by the same code."""
    name = f"bench_fx_{users}"
    tag = f"vdp bench fixture users={users} shape={SHAPE} {sources_digest(ROOT / 'fixtures')}"
    keep = ("users", "relationships", "active_relationships", "self_relationships", "orphan_relationships",
            "duplicate_active_extra_rows")
    if reuse and database_tag(sb, sb.prod_port, name) == tag:
        print(f"  fixture {name}: reused", flush=True)
        counts = fixture_counts(sb, name)  # the generator's manifest: the messy cases the report names
        return name, dict(reused=True, **{k: counts[k] for k in keep if k in counts})
    recreate(sb, sb.prod_port, name)
    started = time.monotonic()
    counts = load_legacy(dict(host=sb.host, port=sb.prod_port, user=sb.user, dbname=name), shape=SHAPE, users=users)
    vacuum_analyze(sb, sb.prod_port, name)
    set_tag(sb, sb.prod_port, name, tag)
    seconds = round(time.monotonic() - started, 1)
    print(f"  fixture {name}: {users} users loaded in {seconds} s", flush=True)
    return name, dict(reused=False, seconds=seconds, **{k: counts[k] for k in keep})


def schema_versions() -> list[str]:
    return list(role_default("schema_migration", "schema_migration_versions"))


def template(sb: Sandbox, fx: str, users: int, clean: bool, reuse: bool) -> str:
    """A copy of the fixture (cleaned or not) with the schema phase applied, VACUUMed: what each timed run copies."""
    name = f"bench_tpl_{users}_{'clean' if clean else 'messy'}"
    tag = (f"{database_tag(sb, sb.prod_port, fx)} clean={clean} "
           f"{sources_digest(ROOT / 'migrations', ROOT / 'roles' / 'schema_migration' / 'defaults')}")
    if reuse and database_tag(sb, sb.prod_port, name) == tag:
        print(f"  template {name}: reused", flush=True)
        return name
    started = time.monotonic()
    recreate(sb, sb.prod_port, name, template=fx)
    if clean:
        with sb.connect(sb.prod_port, name) as conn:
            conn.execute(CLEAN_SQL)
    timed_module(
        "vdp_schema_migrations",
        dict(sb.login(sb.prod_port, name), path=str(ROOT / "migrations"), versions=schema_versions()),
        "the schema phase of the template",
    )
    vacuum_analyze(sb, sb.prod_port, name)
    set_tag(sb, sb.prod_port, name, tag)
    print(f"  template {name}: built in {time.monotonic() - started:.1f} s", flush=True)
    return name


def scratch(sb: Sandbox, tpl: str, settings: dict[str, str] | None = None) -> str:
    db = f"{tpl}_run"
    recreate(sb, sb.prod_port, db, template=tpl)
    for key, value in (settings or {}).items():
        set_database(sb, sb.prod_port, db, key, value)
    checkpoint(sb, sb.prod_port)
    return db


class Watched:
    """LockSampler + Probe on db for the duration of a with-block."""

    def __init__(self, sb: Sandbox, db: str, on: bool = True) -> None:
        self.locks = LockSampler(sb, db) if on else None
        self.probe = Probe(sb, db) if on else None

    def __enter__(self) -> Watched:
        for w in (self.locks, self.probe):
            if w is not None:
                w.start()
        return self

    def __exit__(self, *exc: object) -> None:
        for w in (self.probe, self.locks):
            if w is not None:
                w.stop()

    def summary(self, since: float = 0.0, until: float = float("inf")) -> dict[str, Any]:
        if self.locks is None or self.probe is None:
            return {}
        return dict(locks=self.locks.summary(since, until), probe=self.probe.summary(since, until))


def seed_run(sb: Sandbox, tpl: str, watch: bool = True, settings: dict[str, str] | None = None) -> dict[str, Any]:
    """The seed's SQL by psql -v ON_ERROR_STOP=1 on a fresh copy; its exit code and first error kept."""
    db = scratch(sb, tpl, settings)
    cmd = [f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(SEED_SQL)]
    with Watched(sb, db, watch) as w:
        seconds, proc = run(cmd, env=sb.env(sb.prod_port, db))
    drop(sb, sb.prod_port, db)
    out = dict(seconds=round(seconds, 3), exit_code=proc.returncode, error=first_error(proc) if proc.returncode else "")
    return dict(out, **w.summary())


def data_steps(sb: Sandbox, db: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The role org_data_migration's module calls, with the role's arguments (roles/org_data_migration)."""
    org = role_default("org_data_migration", "org_data_migration_organization")
    login = sb.login(sb.prod_port, db)
    return [
        ("organization", "vdp_organization", dict(login, **org, create_only=["max_users"])),
        ("feature flags", "vdp_feature_flag", dict(login, enabled=False, create_only=True)),
        ("membership", "vdp_org_membership", dict(login, max_users_if_missing=org["max_users"])),
        ("assignments", "vdp_coach_assignments", dict(login)),
        ("ledger", "vdp_schema_migrations", dict(
            login, state="recorded", record_version=role_default("org_data_migration", "org_data_migration_data_version"))),
    ]


def indexes_step(sb: Sandbox, db: str) -> tuple[str, str, dict[str, Any]]:
    version = role_default("org_data_migration", "org_data_migration_indexes_version")
    return "indexes", "vdp_schema_migrations", dict(sb.login(sb.prod_port, db), path=str(ROOT / "migrations"), versions=[version])


def project_run(
    sb: Sandbox, tpl: str, watch: bool = True, settings: dict[str, str] | None = None, indexes: bool = True
) -> dict[str, Any]:
    """The data phase as the role runs it, on a fresh copy: per step seconds, module facts, watchers per window."""
    db = scratch(sb, tpl, settings)
    steps: dict[str, float] = {}
    facts: dict[str, Any] = {}
    with Watched(sb, db, watch) as w:
        started = time.monotonic()
        for label, name, args in data_steps(sb, db):
            steps[label], result = timed_module(name, args, f"{label} ({name})")
            facts[label] = {k: result.get(k) for k in ("batches", "duration_ms", "trigger_suppression", "inserted", "migrated")
                            if k in result}
        data_end = time.monotonic()
        if indexes:
            label, name, args = indexes_step(sb, db)
            steps[label], _ = timed_module(name, args, "the indexes step")
        ended = time.monotonic()
    out: dict[str, Any] = dict(
        seconds=round(data_end - started, 3), steps={k: round(v, 3) for k, v in steps.items()}, facts=facts,
        data=w.summary(started, data_end),
    )
    if indexes:
        out["indexes_seconds"] = round(steps["indexes"], 3)
        out["with_indexes"] = w.summary(started, ended)
        out["noop"] = noop_run(sb, db)
    drop(sb, sb.prod_port, db)
    return out


def noop_run(sb: Sandbox, db: str) -> dict[str, Any]:
    """The same data steps and indexes step again on the migrated copy, as a re-run finds it: nothing to do.
    Each module's seconds (its process start-up included) and what it reports."""
    steps: dict[str, float] = {}
    facts: dict[str, Any] = {}
    checkpoint(sb, sb.prod_port)
    started = time.monotonic()
    for label, name, args in [*data_steps(sb, db), indexes_step(sb, db)]:
        steps[label], result = timed_module(name, args, f"{label} ({name}), again")
        facts[label] = {k: result.get(k) for k in ("changed", "duration_ms", "inserted", "migrated") if k in result}
    changed = [label for label, f in facts.items() if f.get("changed")]  # a re-run that changes something: shown
    return dict(seconds=round(time.monotonic() - started, 3), steps={k: round(v, 3) for k, v in steps.items()}, facts=facts,
                changed=changed)


def best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The fastest run; its watchers' worst figures over all runs (a hold or a stall seen once counts)."""
    top = dict(min(runs, key=lambda r: r["seconds"]))
    top["all_seconds"] = [r["seconds"] for r in runs]
    for window in ("data", "with_indexes", ""):
        parts = [r.get(window, {}) if window else r for r in runs]
        parts = [p for p in parts if p.get("locks")]
        if not parts:
            continue
        merged = dict(locks=max((p["locks"] for p in parts), key=lambda x: x["longest_seconds"]),
                      probe=max((p["probe"] for p in parts), key=lambda x: x.get("max_ms", 0)))
        if window:
            top[window] = merged
        else:
            top.update(merged)
    return top


def data_phase(
    sb: Sandbox, users: int, fx: str, reuse: bool, repeat: int, cap_factor: float, quick: bool = False
) -> dict[str, Any]:
    """Every data-phase figure at one size: seed vs project (clean) with the project's no-op re-run, messy, work_mem =
    1MB. quick: only the clean copy's runs (seed vs project, locks, probe, the no-op re-run)."""
    clean = template(sb, fx, users, True, reuse)
    out: dict[str, Any] = dict(users=users, quick=quick)
    if not quick:
        print("  the seed's SQL on the messy copy (expected to fail)", flush=True)
        out["seed_messy"] = seed_run(sb, template(sb, fx, users, False, reuse), watch=False)
    seeds, projects = [], []
    for attempt in range(repeat):
        print(f"  clean copy, run {attempt + 1} of {repeat}: the seed's SQL, then the project's data phase", flush=True)
        seeds.append(seed_run(sb, clean))
        projects.append(project_run(sb, clean))
    out["seed_clean"], out["project_clean"] = best(seeds), best(projects)
    out["project_clean"]["noop"] = min((p["noop"] for p in projects), key=lambda n: n["seconds"])
    out["project_clean"]["noop"]["all_seconds"] = [p["noop"]["seconds"] for p in projects]
    if quick:
        return out
    print("  the project's data phase on the messy copy", flush=True)
    out["project_messy"] = project_run(sb, template(sb, fx, users, False, reuse))
    out.update(work_mem_runs(sb, clean, out["seed_clean"]["seconds"], cap_factor))
    return out


def work_mem_runs(sb: Sandbox, clean: str, seed_seconds: float, cap_factor: float) -> dict[str, Any]:
    """Both sides with work_mem = 1MB (a small-instance default); the seed's run stopped at cap_factor x its time.
    The project's 1MB run is set against a default run just before it, both unwatched (the clean runs above have the
    lock sampler and the probe beside them, and ran earlier, under another load)."""
    cap = max(30.0, cap_factor * seed_seconds)
    small = {"work_mem": "1MB"}
    print("  work_mem default, then 1MB: the project's data phase (unwatched, back to back)", flush=True)
    default = project_run(sb, clean, watch=False, indexes=False)
    project = project_run(sb, clean, watch=False, settings=small, indexes=False)
    print(f"  work_mem = 1MB: the seed's SQL (stopped after {cap:.0f} s)", flush=True)
    seed = seed_run(sb, clean, watch=False, settings=dict(small, statement_timeout=f"{int(cap * 1000)}ms"))
    seed["cap_seconds"] = round(cap, 1)
    seed["stopped_at_cap"] = seed["exit_code"] != 0 and "statement timeout" in seed["error"]
    return dict(project_work_mem_default=default, project_work_mem_1mb=project, seed_work_mem_1mb=seed)


def default_work_mem(sb: Sandbox) -> str:
    with sb.connect(sb.prod_port) as conn:
        return str(conn.execute("SHOW work_mem").fetchone()[0])


def drop_templates(sb: Sandbox, users: int) -> None:
    for kind in ("messy", "clean"):
        drop(sb, sb.prod_port, f"bench_tpl_{users}_{kind}")


def fixture_counts(sb: Sandbox, db: str) -> dict[str, Any]:
    with sb.connect(sb.prod_port, db) as conn:
        try:
            row = conn.execute("SELECT counts FROM vdp_fixture.manifest WHERE id = 1").fetchone()
        except psycopg.Error:
            return {}
    return dict(row[0]) if row else {}


def seed_sql_path() -> Path:
    return SEED_SQL
