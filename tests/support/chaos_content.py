"""What "the same database" means for the chaos suite: a content checksum of every table, with the per-run values
left out in ONE place (PER_RUN below) - computed here without any of the runbook's code.

Every row of every user table is read as JSON, its per-run columns dropped, the ids a run generates at random
replaced by the natural key of the row they name (an organization by its slug, an assignment by its practitioner,
supervisor and role), and hashed. A table's content is the multiset of its row hashes, so two databases are equal
when every table holds exactly the same rows, whatever their physical order. Comparing a database with the one of an
uninterrupted run gives the rows lost (in the reference, not here) and the rows duplicated (here more often than in
the reference, or not there at all - a changed row counts once in each).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

# --------------------------------------------------------------------------- the per-run values, the only place

# Tables whose whole content belongs to one run: who held the run lease and when, its log.
PER_RUN_TABLES: dict[str, str] = {
    "vdp_runbook.run_lease": "the run lease: which run holds it, its controller pid and heartbeat",
    "vdp_runbook.run_lease_log": "who took, resumed, took over and released the lease, and when",
    "vdp_runbook.baseline_history": "re-baselines, stamped with when and by which run",
}

# Columns a run stamps with its own time, id, duration or attempt count: the same migration run twice (or resumed
# after a crash) writes other values there, and nothing reads them as data.
PER_RUN_COLUMNS: dict[str, dict[str, str]] = {
    "public.organizations": {"id": "gen_random_uuid() (rows matched by slug)", "created_at": "now() of the run"},
    "public.practitioner_assignments": {"id": "gen_random_uuid() (rows matched by practitioner, supervisor, role)"},
    "public.feature_flags": {"created_at": "now() of the run", "updated_at": "now() of the run"},
    "vdp_runbook.schema_migrations": {
        "applied_at": "when the version was applied",
        "duration_ms": "how long it took",
        "applied_by": "operator@host of the run",
        "run_id": "the run that applied it",
        "attempts": "lock-wait attempts of that run",
        "details": "the run's timings and counters",
    },
    "vdp_runbook.baseline": {
        "captured_at": "when the baseline was taken",
        "run_id": "the run that took it",
        "attribution_since": "the baseline's reference time (now() of that run)",
        "migration_since": "when the migration started (now() of that run)",
    },
    "vdp_runbook.relationship_writes": {"at": "now() of the write", "application_name": "names the run id"},
    "vdp_monitoring.alerts": {"id": "identity", "alert_timestamp": "now() of the sample", "run_id": "the run"},
}

# Tables where those columns are per-run only in the rows the run creates (the rest are the platform's own data).
PER_RUN_ROWS: dict[str, tuple[str, frozenset[str]]] = {
    "public.feature_flags": ("flag_name", frozenset({"organizational_model", "multi_role_support"})),
}

# Ids generated at random by a run, and the natural key that names the same row in every run.
GENERATED_IDS: dict[str, tuple[str, str]] = {
    "public.organizations": ("id", "'organization:' || slug"),
    "public.practitioner_assignments": (
        "id",
        "'assignment:' || practitioner_id || '/' || supervisor_id || '/' || supervisor_role",
    ),
}

# The schema objects, by name: an index a killed CREATE INDEX CONCURRENTLY left INVALID, a constraint left NOT VALID or
# a trigger left disabled is a difference even when every row is right.
_STRUCTURE = """
SELECT 'relation ' || n.nspname || '.' || c.relname || ' ' || c.relkind::text
       || coalesce(' valid=' || i.indisvalid || ' ready=' || i.indisready || ' ' || pg_get_indexdef(c.oid), '')
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_index i ON i.indexrelid = c.oid
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname NOT LIKE 'pg_temp%'
  AND n.nspname NOT LIKE 'pg_toast_temp%' AND c.relkind IN ('r', 'p', 'i', 'I', 'v', 'm', 'S', 'f')
UNION ALL
SELECT 'constraint ' || conrelid::regclass::text || ' ' || conname || ' validated=' || convalidated || ' '
       || pg_get_constraintdef(oid)
FROM pg_constraint WHERE conrelid <> 0 AND connamespace NOT IN ('pg_catalog'::regnamespace, 'information_schema'::regnamespace)
UNION ALL
SELECT 'trigger ' || tgrelid::regclass::text || ' ' || tgname || ' enabled=' || tgenabled::text
FROM pg_trigger WHERE NOT tgisinternal
"""

_TABLES = """
SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_%'
ORDER BY 1
"""


@dataclass
class Content:
    """Each table's multiset of canonical row hashes, and one canonical row per hash (to explain a difference)."""

    tables: dict[str, Counter[str]] = field(default_factory=dict)
    structure: Counter[str] = field(default_factory=Counter)
    samples: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


@dataclass
class Difference:
    lost: int = 0
    duplicated: int = 0
    tables: dict[str, str] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not (self.lost or self.duplicated or self.tables)


def content(info: dict[str, Any]) -> Content:
    """The canonical content of every user table of the database `info` (psycopg.connect kwargs)."""
    result = Content()
    with psycopg.connect(**info, autocommit=False) as conn:
        conn.execute("SET TimeZone = 'UTC'")
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        names = [r[0] for r in conn.execute(_TABLES).fetchall()]
        ids = _generated_ids(conn, set(names))
        result.structure = Counter(r[0] for r in conn.execute(_STRUCTURE).fetchall())
        for table in names:
            if table in PER_RUN_TABLES:
                continue
            _read_table(conn, table, ids, result)
        conn.rollback()
    return result


def _generated_ids(conn: psycopg.Connection[Any], present: set[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    for table, (column, natural) in GENERATED_IDS.items():
        if table in present:
            schema, name = table.split(".")
            query = sql.SQL("SELECT {}::text, " + natural + " FROM {}").format(
                sql.Identifier(column), sql.Identifier(schema, name)
            )
            found.update(dict(conn.execute(query).fetchall()))
    return found


def _read_table(conn: psycopg.Connection[Any], table: str, ids: dict[str, str], out: Content) -> None:
    schema, name = table.split(".")
    columns = PER_RUN_COLUMNS.get(table, {})
    key, values = PER_RUN_ROWS.get(table, ("", frozenset()))
    counts: Counter[str] = Counter()
    samples: dict[str, dict[str, Any]] = {}
    query = sql.SQL("SELECT to_jsonb(t) FROM {} t").format(sql.Identifier(schema, name))
    for (row,) in conn.execute(query):
        skip = columns if not key or row.get(key) in values else {}
        canonical = {k: _swap(v, ids) for k, v in row.items() if k not in skip}
        digest = hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()
        counts[digest] += 1
        samples.setdefault(digest, canonical)
    out.tables[table], out.samples[table] = counts, samples


def _swap(value: Any, ids: dict[str, str]) -> Any:
    """A generated id, wherever it appears (a foreign key, inside JSON), replaced by its natural key."""
    if isinstance(value, str):
        return ids.get(value, value)
    if isinstance(value, list):
        return [_swap(v, ids) for v in value]
    if isinstance(value, dict):
        return {k: _swap(v, ids) for k, v in value.items()}
    return value


def compare(reference: Content, found: Content) -> Difference:
    """Rows lost and duplicated against the reference, and a one-line explanation per table that differs."""
    diff = Difference()
    if reference.structure != found.structure:
        missing, extra = reference.structure - found.structure, found.structure - reference.structure
        diff.tables["(schema objects)"] = f"missing {sorted(missing)[:3]!s:.300}, extra {sorted(extra)[:3]!s:.300}"
    for table in sorted(set(reference.tables) | set(found.tables)):
        ref, got = reference.tables.get(table), found.tables.get(table)
        if ref is None or got is None:
            diff.tables[table] = "only in the reference" if got is None else "not in the reference"
            diff.lost += sum((ref or Counter()).values())
            diff.duplicated += sum((got or Counter()).values())
            continue
        lost, extra = ref - got, got - ref
        if lost or extra:
            diff.lost += sum(lost.values())
            diff.duplicated += sum(extra.values())
            diff.tables[table] = _explain(table, reference, found, lost, extra)
    return diff


def _explain(table: str, reference: Content, found: Content, lost: Counter[str], extra: Counter[str]) -> str:
    """Which columns differ between a lost row and an extra one (the first of each), for the report."""
    text = f"{sum(lost.values())} lost, {sum(extra.values())} extra"
    if lost and extra:
        a = reference.samples[table][next(iter(lost))]
        b = found.samples[table][next(iter(extra))]
        columns = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        was, now = [a.get(c) for c in columns], [b.get(c) for c in columns]
        text += f"; e.g. columns {', '.join(columns)} differ: {was!s:.160} vs {now!s:.160}"
    elif lost:
        text += f"; e.g. lost {json.dumps(reference.samples[table][next(iter(lost))], default=str):.200}"
    else:
        text += f"; e.g. extra {json.dumps(found.samples[table][next(iter(extra))], default=str):.200}"
    return text
