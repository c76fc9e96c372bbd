# What the data step's two writing modules (vdp_org_membership, vdp_coach_assignments) do alike around their
# batches: find the organization the legacy rows go to - or, in a --check of the whole runbook before the schema
# and the organization exist, go on as if they did - and refresh the planner's statistics after writing.
"""The data step's shared start (target organization, check-mode aware) and end (ANALYZE)."""

from __future__ import annotations

from typing import Any

from ansible.module_utils.vdp_legacy import table_ident
from ansible.module_utils.vdp_lockwait import LockWaitExhausted, with_lock_retry
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


def analyze(conn: Any, *tables: str, retries: int = 3) -> list[str]:
    """Fresh statistics for the tables the step wrote: until autovacuum gets to them the planner believes the old
    ones (a new table empty, new columns all NULL) and later queries - validation's, the application's - pick plans
    for that. ANALYZE runs outside a transaction, after committing what came before, one table at a time.

    Autovacuum often starts analyzing a table right after the step's writes, and two ANALYZEs of one table wait for
    each other: the step's short lock waits and retries apply, and a table still busy after them is left to the
    session analyzing it - a note returned, never a failure (the step's rows are committed; failing here would roll a
    healthy migration back for a statistics refresh)."""
    conn.commit()
    previous = conn.autocommit
    conn.autocommit = True
    skipped: list[str] = []
    try:
        for table in tables:
            statement = sql.SQL("ANALYZE {}").format(table_ident(table))
            try:
                with_lock_retry(lambda s=statement: conn.execute(s), lambda: None, retries=retries, what=f"ANALYZE {table}")
            except LockWaitExhausted as exc:  # its own advice (end the blocker, re-run) is for a failure: this is not
                skipped.append(
                    f"left the statistics of {table} to the session analyzing it (autovacuum, most likely): ANALYZE "
                    f"{table} timed out waiting for a lock {exc.details['attempts']} times; nothing to do"
                )
    finally:
        conn.autocommit = previous
    return skipped
