# What the runbook knows about the LEGACY (sponsor-practitioner) schema: where the sign-in time
# lives, the seed's pre-migration counts, the relationship anomalies the migration must skip and
# report, and which tables must stay intact.
# Read-only: nothing here writes. Used by preflight, backup, the engine modules and validation;
# the content checksums that prove the legacy tables intact are vdp_baseline's.
"""Legacy-schema knowledge shared by preflight, the migration engine and validation (read-only)."""

from __future__ import annotations

from typing import Any

try:
    from psycopg import sql

    HAS_PSYCOPG = True
except ImportError:  # pragma: no cover - the calling module reports the missing package
    HAS_PSYCOPG = False

# The legacy tables the migration reads or must keep intact ("zero data loss" is checked on
# these). Schema-qualified. auth.users is Supabase's; it exists in both fixture shapes.
LEGACY_TABLES: tuple[str, ...] = (
    "auth.users",
    "public.profiles",
    "public.sponsor_practitioner_relationships",
    "public.virtues",
    "public.user_virtue_progress",
    "public.feature_flags",
    "public.user_sessions",
)

SIGN_IN_COLUMN = "last_sign_in_at"


def split_name(qualified_name: str) -> tuple[str, str]:
    """'schema.table' -> ('schema', 'table'); a bare name is taken to be in public."""
    if "." in qualified_name:
        schema, _, name = qualified_name.partition(".")
        return schema, name
    return "public", qualified_name


def table_ident(qualified_name: str) -> sql.Identifier:
    return sql.Identifier(*split_name(qualified_name))


# --------------------------------------------------------------------------- schema detection

_COLUMN_EXISTS_SQL = """
SELECT EXISTS (
  SELECT 1 FROM pg_attribute
  WHERE attrelid = to_regclass(%s) AND attname = %s AND attnum > 0 AND NOT attisdropped)
"""


def column_exists(conn: Any, qualified_table: str, column: str) -> bool:
    schema, name = split_name(qualified_table)
    regclass = sql.Identifier(schema, name).as_string(conn)
    with conn.cursor() as cur:
        cur.execute(_COLUMN_EXISTS_SQL, (regclass, column))
        row = cur.fetchone()
    return bool(row and row[0])


def table_exists(conn: Any, qualified_table: str) -> bool:
    regclass = table_ident(qualified_table).as_string(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (regclass,))
        row = cur.fetchone()
    return bool(row and row[0])


def detect_sign_in_source(conn: Any) -> str | None:
    """Where the last sign-in time lives: 'profiles' (seed shape), 'auth.users' (Supabase), or None."""
    if column_exists(conn, "public.profiles", SIGN_IN_COLUMN):
        return "profiles"
    if column_exists(conn, "auth.users", SIGN_IN_COLUMN):
        return "auth.users"
    return None


# --------------------------------------------------------------------------- seed's counts

# The seed's "Pre-Migration Validation" query, verbatim in meaning and metric names.
SEED_PRE_MIGRATION_SQL = """
SELECT 'Total Users' AS metric, COUNT(*) AS count FROM public.profiles
UNION ALL
SELECT 'Active Sponsor Relationships', COUNT(*) FROM public.sponsor_practitioner_relationships WHERE active = true
UNION ALL
SELECT 'Total Virtue Progress Records', COUNT(*) FROM public.user_virtue_progress
"""


def seed_pre_migration_counts(conn: Any) -> dict[str, int]:
    """The seed's pre-migration metrics: {'Total Users', 'Active Sponsor Relationships', 'Total Virtue Progress Records'}."""
    with conn.cursor() as cur:
        cur.execute(SEED_PRE_MIGRATION_SQL)
        return {str(metric): int(count) for metric, count in cur.fetchall()}


# --------------------------------------------------------------------------- anomalies

# A relationship is classified once, in this order: self (sponsor = practitioner), then orphan
# (sponsor or practitioner has no profile). Duplicates are active (sponsor, practitioner) pairs
# with more than one active row among the valid ones (neither self nor orphan).
_VALID_WHERE = (
    "r.sponsor_id <> r.practitioner_id AND "
    "EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.sponsor_id) AND "
    "EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.practitioner_id)"
)

_DUPLICATE_COUNT_SQL = """
SELECT count(*), coalesce(sum(n - 1), 0) FROM (
  SELECT count(*) AS n FROM public.sponsor_practitioner_relationships r
  WHERE r.active AND {valid} GROUP BY r.sponsor_id, r.practitioner_id HAVING count(*) > 1) d
"""
_DUPLICATE_SAMPLE_SQL = """
SELECT r.sponsor_id::text, r.practitioner_id::text, count(*), min(r.created_at), max(r.created_at)
FROM public.sponsor_practitioner_relationships r
WHERE r.active AND {valid}
GROUP BY r.sponsor_id, r.practitioner_id HAVING count(*) > 1
ORDER BY count(*) DESC, r.sponsor_id, r.practitioner_id LIMIT %s
"""


def _iso(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


# One pass over the relationships classifies every row (hash joins to profiles); the samples are
# the first rows of each class in (active first, created_at, id) order, sliced from the aggregate.
_ISO_UTC = """to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')"""
_CLASSIFY_SQL = """
WITH c AS (
  SELECT r.id, r.sponsor_id, r.practitioner_id, r.active, r.created_at,
         r.sponsor_id = r.practitioner_id AS is_self,
         r.sponsor_id <> r.practitioner_id AND (ps.id IS NULL OR pp.id IS NULL) AS is_orphan
  FROM public.sponsor_practitioner_relationships r
  LEFT JOIN public.profiles ps ON ps.id = r.sponsor_id
  LEFT JOIN public.profiles pp ON pp.id = r.practitioner_id
)
SELECT count(*) FILTER (WHERE is_self), count(*) FILTER (WHERE is_self AND active),
       (array_agg(ARRAY[id::text, sponsor_id::text, practitioner_id::text, active::text, {ts}]
                  ORDER BY active DESC, created_at, id) FILTER (WHERE is_self))[1:%(limit)s],
       count(*) FILTER (WHERE is_orphan), count(*) FILTER (WHERE is_orphan AND active),
       (array_agg(ARRAY[id::text, sponsor_id::text, practitioner_id::text, active::text, {ts}]
                  ORDER BY active DESC, created_at, id) FILTER (WHERE is_orphan))[1:%(limit)s]
FROM c
""".replace("{ts}", _ISO_UTC)


def _sample_rows(rows: list[list[str]] | None) -> list[dict[str, Any]]:
    return [dict(id=r[0], sponsor_id=r[1], practitioner_id=r[2], active=r[3] == "true", created_at=r[4]) for r in (rows or [])]


def relationship_classes(conn: Any, sample_limit: int = 20) -> dict[str, dict[str, Any]]:
    """Self and orphan relationships in one pass: {self_relationships, orphan_relationships}."""
    with conn.cursor() as cur:
        cur.execute(_CLASSIFY_SQL, dict(limit=max(int(sample_limit), 0)))
        self_n, self_active, self_sample, orphan_n, orphan_active, orphan_sample = cur.fetchone()
    return {
        "self_relationships": dict(count=int(self_n), active=int(self_active), sample=_sample_rows(self_sample)),
        "orphan_relationships": dict(count=int(orphan_n), active=int(orphan_active), sample=_sample_rows(orphan_sample)),
    }


# The same classes when the orphan pairs are already known (the coach-assignments step finds them
# while it builds its pair table, in the pass that joins every relationship to profiles): self
# rows need no join at all, and orphan rows are those of the given pairs.
_SELF_CLASS_SQL = """
SELECT count(*), count(*) FILTER (WHERE active),
       (array_agg(ARRAY[id::text, sponsor_id::text, practitioner_id::text, active::text, {ts}]
                  ORDER BY active DESC, created_at, id))[1:%(limit)s]
FROM public.sponsor_practitioner_relationships WHERE sponsor_id = practitioner_id
""".replace("{ts}", _ISO_UTC)
_ORPHAN_CLASS_SQL = """
SELECT count(*), count(*) FILTER (WHERE active),
       (array_agg(ARRAY[id::text, sponsor_id::text, practitioner_id::text, active::text, {ts}]
                  ORDER BY active DESC, created_at, id))[1:%(limit)s]
FROM (SELECT r.* FROM public.sponsor_practitioner_relationships r
      JOIN {pairs} o ON o.sponsor_id = r.sponsor_id AND o.practitioner_id = r.practitioner_id
      WHERE r.sponsor_id <> r.practitioner_id) c
""".replace("{ts}", _ISO_UTC)


def relationship_classes_given_orphans(conn: Any, orphan_pairs: str, sample_limit: int = 20) -> dict[str, dict[str, Any]]:
    """relationship_classes' result, the orphan (sponsor_id, practitioner_id) pairs given.

    `orphan_pairs` is a trusted SQL relation (the engine's own session table, never user input) of the
    distinct non-self pairs whose sponsor or practitioner has no profile.
    """
    limit = dict(limit=max(int(sample_limit), 0))
    with conn.cursor() as cur:
        cur.execute(_SELF_CLASS_SQL, limit)
        self_n, self_active, self_sample = cur.fetchone()
        cur.execute(_ORPHAN_CLASS_SQL.replace("{pairs}", orphan_pairs), limit)
        orphan_n, orphan_active, orphan_sample = cur.fetchone()
    return {
        "self_relationships": dict(count=int(self_n), active=int(self_active), sample=_sample_rows(self_sample)),
        "orphan_relationships": dict(count=int(orphan_n), active=int(orphan_active), sample=_sample_rows(orphan_sample)),
    }


def relationship_anomalies(conn: Any, sample_limit: int = 20) -> dict[str, dict[str, Any]]:
    """Self, orphan and duplicate-active relationships: each {count, active, sample: [...]}.

    - self_relationships: sponsor_id = practitioner_id (count = rows; active = active rows).
    - orphan_relationships: sponsor or practitioner has no profile (not counting self rows).
    - duplicate_active_pairs: valid active pairs with more than one active row
      (count = pairs; extra_rows = rows beyond the first per pair).
    The migration converts none of the self/orphan rows and one assignment per duplicate pair.
    """
    result = relationship_classes(conn, sample_limit)
    with conn.cursor() as cur:
        cur.execute(_DUPLICATE_COUNT_SQL.format(valid=_VALID_WHERE))
        pairs, extra = cur.fetchone()
        cur.execute(_DUPLICATE_SAMPLE_SQL.format(valid=_VALID_WHERE), (sample_limit,))
        sample = [
            dict(sponsor_id=r[0], practitioner_id=r[1], rows=int(r[2]), first_created_at=_iso(r[3]), last_created_at=_iso(r[4]))
            for r in cur.fetchall()
        ]
    result["duplicate_active_pairs"] = dict(count=int(pairs), active=int(pairs), extra_rows=int(extra), sample=sample)
    return result


# --------------------------------------------------------------------------- columns and text settings

_COLUMNS_SQL = """
SELECT attname FROM pg_attribute
WHERE attrelid = to_regclass(%s) AND attnum > 0 AND NOT attisdropped
ORDER BY attnum
"""

# Text renderings that depend on session settings, pinned for a content hash's transaction, so two
# runs from different clients/timezones hash the same content to the same value (vdp_baseline).
PINNED_SETTINGS: tuple[tuple[str, str], ...] = (
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "postgres"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
)


def table_columns(conn: Any, qualified_table: str) -> list[str]:
    """The table's current columns in attnum order ([] when the table does not exist)."""
    regclass = table_ident(qualified_table).as_string(conn)
    with conn.cursor() as cur:
        cur.execute(_COLUMNS_SQL, (regclass,))
        return [str(r[0]) for r in cur.fetchall()]
