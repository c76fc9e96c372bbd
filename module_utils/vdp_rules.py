# The data step's rules, as SQL: who gets which roles, where last_activity comes from, which
# relationships become coach assignments (one per distinct valid active pair, with the earliest
# created_at), and the exact statements the batches run. The membership and assignments modules
# run these in batches; validation re-derives the same rules with differently written SQL (see
# COACH_ROLES_SQL), so a mistake in either shows up as a failed invariant. data_step_checksum() is
# the fingerprint of these rules that the ledger records for the data version.
"""The data step's rules (roles, last_activity, coach assignments) as SQL, and their fingerprint."""

from __future__ import annotations

from ansible.module_utils.vdp_sqlfiles import sha256_hex

# --------------------------------------------------------------------------- roles rule
#
# DESIGN §4 roles rule. Seed meaning kept for "coach": anyone who is the sponsor of ANY
# relationship (active or not; the seed reads DISTINCT sponsor_id from all relationships),
# except a self-relationship (sponsoring oneself is not coaching anyone). "practitioner": anyone
# who is not a coach, or who is the practitioner of an ACTIVE relationship with someone else.
# A relationship whose practitioner has no profile still makes its sponsor a coach (the sponsor
# did coach someone; that person's account is gone).

ROLE_SOURCES_SQL = """
SELECT s.id, bool_or(s.coach) AS is_coach, bool_or(s.practitioner) AS is_active_practitioner
FROM (
  SELECT r.sponsor_id AS id, true AS coach, false AS practitioner
  FROM public.sponsor_practitioner_relationships r WHERE r.sponsor_id <> r.practitioner_id
  UNION ALL
  SELECT r.practitioner_id, false, true
  FROM public.sponsor_practitioner_relationships r WHERE r.active AND r.sponsor_id <> r.practitioner_id
) s GROUP BY s.id
"""

ROLES_EXPR = """CASE
  WHEN coalesce({s}.is_coach, false) AND coalesce({s}.is_active_practitioner, false) THEN ARRAY['coach', 'practitioner']::text[]
  WHEN coalesce({s}.is_coach, false) THEN ARRAY['coach']::text[]
  ELSE ARRAY['practitioner']::text[] END"""


def sign_in_expr(source: str | None, profile_alias: str = "p", key: str = "p.id") -> tuple[str, str]:
    """(join clause, COALESCE expression) for last_activity from wherever the sign-in lives."""
    if source == "profiles":
        return "", f"coalesce({profile_alias}.last_sign_in_at, {profile_alias}.created_at)"
    if source == "auth.users":
        return f"LEFT JOIN auth.users u ON u.id = {key}", f"coalesce(u.last_sign_in_at, {profile_alias}.created_at)"
    return "", f"{profile_alias}.created_at"


# The batches' role lookup. Only coaches need a row: whoever is not a coach gets {practitioner}
# whatever else is true (ROLES_EXPR), so the table holds the sponsors (about a sixth of the users
# in the fixture) with their final roles, not every user with two flags. Same rule as
# ROLE_SOURCES_SQL + ROLES_EXPR, written differently on purpose: validation recomputes the roles
# with those, so a mistake in either formulation shows up as a roles_rule failure.
COACH_ROLES_SQL = """
SELECT c.id,
       CASE WHEN EXISTS (SELECT 1 FROM public.sponsor_practitioner_relationships a
                         WHERE a.practitioner_id = c.id AND a.active AND a.sponsor_id <> a.practitioner_id)
            THEN ARRAY['coach', 'practitioner']::text[] ELSE ARRAY['coach']::text[] END AS roles
FROM (SELECT DISTINCT r.sponsor_id AS id FROM public.sponsor_practitioner_relationships r
      WHERE r.sponsor_id <> r.practitioner_id) c
"""
NON_COACH_ROLES = "ARRAY['practitioner']::text[]"


def membership_batch_sql(source: str | None, first: bool) -> str:
    join, activity = sign_in_expr(source, profile_alias="t", key="b.id")
    after = "" if first else "AND p.id > %(after)s"
    return f"""
    WITH batch AS (
      SELECT p.id FROM public.profiles p
      WHERE p.organization_id IS NULL {after}
      ORDER BY p.id LIMIT %(limit)s
    ), upd AS (
      UPDATE public.profiles t
      SET organization_id = %(org)s,
          roles = coalesce(s.roles, {NON_COACH_ROLES}),
          is_active = true,
          last_activity = {activity}
      FROM batch b
      LEFT JOIN pg_temp.vdp_coach_roles s ON s.id = b.id
      {join}
      WHERE t.id = b.id AND t.organization_id IS NULL
      RETURNING t.roles
    )
    SELECT (SELECT count(*) FROM upd),
           (SELECT count(*) FROM upd WHERE roles = ARRAY['coach']::text[]),
           (SELECT count(*) FROM upd WHERE roles = ARRAY['coach', 'practitioner']::text[]),
           (SELECT b.id FROM batch b ORDER BY b.id DESC LIMIT 1)
    """


# Every batch is planned as index nested loops: a batch touches batch_size profiles, and a hash or
# merge join would read the whole table (1M rows) per batch, which the planner picks for batches of
# ~20000 and more (its random_page_cost assumes uncached index probes). Transaction-local.
PIN_BATCH_PLAN = "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off"


VALID_PAIRS_SQL = """
SELECT r.sponsor_id, r.practitioner_id, min(r.created_at) AS assigned_at, count(*) AS source_rows
FROM public.sponsor_practitioner_relationships r
WHERE r.active AND r.sponsor_id <> r.practitioner_id
  AND EXISTS (SELECT 1 FROM public.profiles ps WHERE ps.id = r.sponsor_id)
  AND EXISTS (SELECT 1 FROM public.profiles pp WHERE pp.id = r.practitioner_id)
GROUP BY r.sponsor_id, r.practitioner_id
"""

ASSIGNMENT_EXISTS = """EXISTS (SELECT 1 FROM public.practitioner_assignments a
  WHERE a.practitioner_id = {v}.practitioner_id AND a.supervisor_id = {v}.sponsor_id
    AND a.supervisor_role = 'coach' AND a.organization_id = %(org)s)"""


# Every non-self pair of the relationships, in one pass with two hash joins to profiles: whether a
# person of the pair has no profile (orphan), its active rows and their earliest created_at. The
# valid pairs are what assignments_plan's VALID_PAIRS_SQL selects (not orphan, an active row); the
# orphan pairs give the report's orphan relationships without a second pass over every row.
ALL_PAIRS_SQL = """
SELECT r.practitioner_id, r.sponsor_id,
       ps.id IS NULL OR pp.id IS NULL AS orphan,
       min(r.created_at) FILTER (WHERE r.active) AS assigned_at,
       count(*) FILTER (WHERE r.active) AS source_rows
FROM public.sponsor_practitioner_relationships r
LEFT JOIN public.profiles ps ON ps.id = r.sponsor_id
LEFT JOIN public.profiles pp ON pp.id = r.practitioner_id
WHERE r.sponsor_id <> r.practitioner_id
GROUP BY r.practitioner_id, r.sponsor_id, ps.id IS NULL OR pp.id IS NULL
"""
ORPHAN_PAIRS = "(SELECT sponsor_id, practitioner_id FROM pg_temp.vdp_pairs WHERE orphan)"


PAIR_BATCH_SQL = """
SELECT sponsor_id, practitioner_id, assigned_at FROM pg_temp.vdp_pairs
WHERE pending {cond} ORDER BY practitioner_id, sponsor_id LIMIT %(limit)s
"""

# One statement per batch, server side: the batch is read from the session's pair table and
# inserted without a round trip of its rows through the controller. The batch is a range of
# practitioners (keyset order); its rows are inserted in sponsor order, which is the order the
# foreign-key checks run in (after the statement, one per row and key): the sponsors' profiles are
# then looked up in one ascending sweep instead of at random (measured at 1M users: ~1 s less).
INSERT_BATCH_SQL = f"""
WITH batch AS ({PAIR_BATCH_SQL}),
ins AS (
  INSERT INTO public.practitioner_assignments
    (practitioner_id, supervisor_id, supervisor_role, organization_id, assigned_at, active)
  SELECT b.practitioner_id, b.sponsor_id, 'coach', %(org)s, b.assigned_at, true FROM batch b ORDER BY b.sponsor_id
  ON CONFLICT (practitioner_id, supervisor_id, supervisor_role, organization_id) DO NOTHING
  RETURNING 1
),
last AS (SELECT practitioner_id, sponsor_id FROM batch ORDER BY practitioner_id DESC, sponsor_id DESC LIMIT 1)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM batch), (SELECT practitioner_id FROM last), (SELECT sponsor_id FROM last)
"""

INSERT_ASSIGNMENTS_SQL = """
INSERT INTO public.practitioner_assignments
  (practitioner_id, supervisor_id, supervisor_role, organization_id, assigned_at, active)
SELECT x.practitioner_id, x.sponsor_id, 'coach', %(org)s, x.assigned_at, true
FROM unnest(%(sponsors)s::uuid[], %(practitioners)s::uuid[], %(assigned)s::timestamptz[])
     AS x(sponsor_id, practitioner_id, assigned_at)
ON CONFLICT (practitioner_id, supervisor_id, supervisor_role, organization_id) DO NOTHING
"""


def data_step_checksum() -> str:
    """sha256 of the data step's rules (its SQL): what the ledger records for the _data version."""
    text = "\n".join(
        (
            ROLE_SOURCES_SQL,
            ROLES_EXPR,
            COACH_ROLES_SQL,
            PIN_BATCH_PLAN,
            membership_batch_sql("profiles", False),
            membership_batch_sql("auth.users", False),
            VALID_PAIRS_SQL,
            ALL_PAIRS_SQL,
            INSERT_BATCH_SQL,
        )
    )
    return sha256_hex(text.encode("utf-8"))
