# What the data step's two writing modules (vdp_org_membership, vdp_coach_assignments) do alike around their
# batches: find the organization the legacy rows go to - or, in a --check of the whole runbook before the schema
# and the organization exist, go on as if they did - and refresh the planner's statistics after writing.
"""The data step's shared start (target organization, check-mode aware) and end (ANALYZE)."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.vdp_legacy import table_ident
from ansible.module_utils.vdp_pg import sql
from ansible.module_utils.vdp_target import organization_id, require_organization, require_target_schema, target_schema_missing


def target_organization(conn: Any, slug: str, check_mode: bool) -> tuple[bool, Any]:
    """(schema ready, organization id). A real run needs both and fails naming what is missing; check mode before
    the schema phase ran gets (False, None) and counts as if they existed, with nothing present yet."""
    schema_ready = not target_schema_missing(conn)
    org_id = organization_id(conn, slug) if schema_ready else None
    if not check_mode or schema_ready:
        require_target_schema(conn)
        org_id = require_organization(conn, slug)
    return schema_ready, org_id


def analyze(conn: Any, *tables: str) -> None:
    """Fresh statistics for the tables the step wrote: until autovacuum gets to them the planner believes the old
    ones (a new table empty, new columns all NULL) and later queries - validation's, the application's - pick plans
    for that. ANALYZE runs outside a transaction, after committing what came before."""
    conn.commit()
    previous = conn.autocommit
    conn.autocommit = True
    try:
        conn.execute(sql.SQL("ANALYZE {}").format(sql.SQL(", ").join(table_ident(t) for t in tables)))
    finally:
        conn.autocommit = previous
