# The target (organizational) schema as the engine finds it: what of it exists, and the default
# organization the legacy users join, with its capacity. Read by the data step, validation and
# preflight; the only write here is the capacity policy's raise of max_users.
"""The organizational model's objects as found in a database: schema presence, organization, capacity."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.vdp_errors import EngineError
from ansible.module_utils.vdp_legacy import table_columns, table_exists
from ansible.module_utils.vdp_names import ADDED_PROFILE_COLUMNS, SCHEMA_VERSION, TARGET_TABLES


def target_schema_missing(conn: Any) -> list[str]:
    """What of the target schema is missing (the data step needs the schema migration first)."""
    missing = [t for t in TARGET_TABLES if not table_exists(conn, t)]
    present = set(table_columns(conn, "public.profiles"))
    missing += [f"public.profiles.{c}" for c in ADDED_PROFILE_COLUMNS if c not in present]
    return missing


def require_target_schema(conn: Any) -> None:
    missing = target_schema_missing(conn)
    if missing:
        raise EngineError(
            f"the target schema is not there ({', '.join(missing)} missing): apply {SCHEMA_VERSION} first "
            "(role schema_migration / playbooks/schema.yml)",
            missing=missing,
        )


def organization_id(conn: Any, slug: str) -> Any:
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM public.organizations WHERE slug = %s", (slug,))
        row = cur.fetchone()
    return row[0] if row else None


def require_organization(conn: Any, slug: str) -> Any:
    org = organization_id(conn, slug)
    if org is None:
        raise EngineError(
            f"organization {slug!r} does not exist: create it first (module vdp_organization, role org_data_migration)",
            organization_slug=slug,
        )
    return org


def organization_capacity(conn: Any, org_id: Any) -> int | None:
    with conn.cursor() as cur:
        cur.execute("SELECT max_users FROM public.organizations WHERE id = %s", (org_id,))
        row = cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


def set_capacity(conn: Any, org_id: Any, max_users: int) -> None:
    with conn.cursor() as cur:
        cur.execute("UPDATE public.organizations SET max_users = %s WHERE id = %s", (max_users, org_id))
    conn.commit()
