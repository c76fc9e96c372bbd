#!/usr/bin/python
# The data step's membership part: every profile not yet migrated joins the default organization
# with its roles, is_active and last_activity, in keyset batches by primary key, one short
# transaction per batch, so an interrupted run resumes where it stopped. The rules and their SQL
# are in module_utils/vdp_rules.py, the batching in module_utils/vdp_membership.py.
"""Ansible module: batched, resumable organization membership and roles of legacy profiles."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_org_membership
short_description: Put every legacy profile in an organization with its roles, batched and resumable
description:
  - For every profile whose C(organization_id) is still NULL, sets C(organization_id) (the organization
    I(organization_slug)), C(roles), C(is_active=true) and C(last_activity), in batches of I(batch_size)
    profiles at the most, taken in primary-key order, committing each batch. Killed at any point, a re-run continues
    with the profiles not yet migrated; a run with nothing left to do changes and writes nothing.
  - Roles rule. C(coach) for whoever is the sponsor of any relationship (active or not, as the seed's SQL
    counts them) with someone else; C(practitioner) for whoever is not a coach, or is the practitioner of an
    active relationship with someone else. A sponsor who is also sponsored keeps C(practitioner).
  - C(last_activity) is C(COALESCE(last sign-in, created_at)), the sign-in read from C(profiles.last_sign_in_at)
    or, on Supabase, C(auth.users.last_sign_in_at) (detected, or forced with I(sign_in_source)).
  - Legacy columns are never changed, C(updated_at) included; the profiles table's own UPDATE triggers
    (the C(updated_at) stamper) are held off inside each batch's transaction only (see I(trigger_suppression)).
  - Every batch is planned as index nested loops (hash and merge joins are switched off for its transaction), so a
    batch reads the profiles it changes, never the whole table, whatever the batch size.
  - Capacity. When the organization's C(max_users) is below the number of profiles it will hold,
    I(capacity_policy) decides; C(raise) sets C(max_users) to that number plus I(capacity_headroom_percent)
    (reported with the old value), C(fail) stops before any write, C(report) migrates and reports the overflow.
  - Stores the legacy baseline (per-row hashes, checksums, structure) before its first write when none exists yet.
  - Between batches, renews the run lease's heartbeat and stops cleanly when a stop was requested (playbooks/stop.yml).
    A failure half-way reports the profiles the committed batches migrated.
  - With I(progress_file), writes after each batch the profiles migrated (those of earlier runs included) of all the
    profiles, the rate and the ETA.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_run, vdp_migration_lock, vdp_progress]
options:
  organization_slug:
    description: Slug of the organization the profiles join (it must exist; see vdp_organization).
    type: str
    default: individual-users
  batch_size:
    description:
      - The largest batch of profiles (one transaction each). No statement locks more rows than this.
      - Each batch is sized from the last ones' time to take about 0.25 s (C(BATCH_TARGET_SECONDS) in
        module_utils/vdp_batching.py, as pt-online-schema-change's --chunk-time), at least 500 rows, so no batch holds
        row locks on profiles for long whatever the machine's load; with I(trigger_suppression=alter_table) writers
        of profiles wait up to one batch.
    type: int
    default: 20000
  pause_between_batches:
    description: Seconds to sleep between batches (throttling for replicas and busy primaries).
    type: float
    default: 0.0
  max_batches:
    description: Stop after this many batches (0 = until done); the rest is left for the next run.
    type: int
    default: 0
  sign_in_source:
    description: Where the last sign-in time lives; C(auto) detects it (profiles, else auth.users, else none).
    type: str
    choices: [auto, profiles, auth.users, none]
    default: auto
  trigger_suppression:
    description:
      - How each batch holds off the profiles' UPDATE triggers, inside its own transaction only.
      - C(session_replication_role) (SET LOCAL ... = replica) takes no table lock and skips the per-row check of
        the NOT VALID organization foreign key (the batch locks the organization row itself; the indexes step
        VALIDATEs every row). Needs superuser or C(GRANT SET ON PARAMETER session_replication_role); refused when an
        UPDATE trigger is ENABLE ALWAYS/REPLICA or profiles has an UPDATE rule (replica mode would differ).
      - C(alter_table) (ALTER TABLE ... DISABLE/ENABLE TRIGGER) needs only ownership but takes SHARE ROW EXCLUSIVE
        on profiles for each batch. C(auto) uses the first when it applies, else the second.
    type: str
    choices: [auto, session_replication_role, alter_table]
    default: auto
  capacity_policy:
    description: What to do when the organization's max_users is below the number of its members after the run.
    type: str
    choices: [raise, fail, report]
    default: raise
  capacity_headroom_percent:
    description:
      - With I(capacity_policy=raise), extra room added on top of the needed number of users, so the first sign-ups
        after the migration still fit.
    type: int
    default: 10
  feature_flags:
    description: The migration's own feature flags, left out of the legacy baseline (they are not legacy rows).
    type: list
    elements: str
    default: [organizational_model, multi_role_support]
  max_users_if_missing:
    description:
      - Check mode only, when the organization does not exist yet (a --check of the whole runbook); the max_users it
        will be created with, so the capacity decision can be reported.
    type: int
attributes:
  check_mode:
    support: full
    description: Counts the profiles that would be migrated and the roles they would get, read-only.
  diff_mode:
    support: full
    description: Counts of profiles without and with the organization, before and after.
"""

EXAMPLES = r"""
- name: Migrate the profiles into the default organization
  vdp_org_membership:
    db: "{{ vdp_production_db }}"
    run_id: "{{ vdp_run_id }}"
    capacity_policy: raise
    pause_between_batches: 0.2
"""

RETURN = r"""
migrated:
  description: Profiles migrated by this run (in check mode, that would be migrated).
  returned: always
  type: int
already_migrated:
  description: Profiles that already belonged to an organization before this run.
  returned: always
  type: int
remaining:
  description: Profiles still without an organization after this run (0 when done).
  returned: always
  type: int
profiles_total:
  description: All profiles.
  returned: always
  type: int
roles:
  description: Roles given by this run (would be given, in check mode), {coach_only, coach_and_practitioner, practitioner_only}.
  returned: always
  type: dict
batches:
  description: >-
    Batches committed by this run, the largest allowed (size), the slowest one (ms), lock-timeout retries, and the
    sizes the batches took (sizes: limit, target_ms, smallest, largest, slowest_ms).
  returned: always
  type: dict
trigger_suppression:
  description: >-
    How the batches held off the UPDATE triggers (session_replication_role, alter_table, none; in check mode, would hold
    them off); null when no profile was pending.
  returned: always
  type: str
sign_in_source:
  description: Where last_activity's sign-in time was read (profiles, auth.users or none).
  returned: always
  type: str
capacity:
  description: The organization's capacity check, {policy, max_users_before, max_users_after, members_after, action, over_by}.
  returned: always
  type: dict
organization_id:
  description: Id of the organization the profiles joined.
  returned: always
  type: str
baseline_captured:
  description: Whether this run stored the legacy baseline.
  returned: always
  type: bool
duration_ms:
  description: Wall time of the run.
  returned: always
  type: int
"""

import math
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_argspec import batch_size_problem, first_problem, range_problem, shared_options
from ansible.module_utils.vdp_baseline import ensure_baseline
from ansible.module_utils.vdp_data_step import analyze, target_organization
from ansible.module_utils.vdp_errors import EngineError
from ansible.module_utils.vdp_legacy import detect_sign_in_source
from ansible.module_utils.vdp_lifecycle import engine_argument_spec, lock_policy, run_module, run_options_problem
from ansible.module_utils.vdp_membership import (
    MembershipProgress,
    choose_trigger_suppression,
    membership_plan,
    migrate_membership,
    pending_profiles,
    profile_update_triggers,
    role_totals,
)
from ansible.module_utils.vdp_names import CAPACITY_HEADROOM_PERCENT, CAPACITY_POLICIES, CAPACITY_POLICY
from ansible.module_utils.vdp_progress import ProgressFile, progress_file
from ansible.module_utils.vdp_target import organization_capacity, set_capacity


def argument_spec() -> dict[str, Any]:
    return engine_argument_spec(
        **shared_options("organization_slug", "batch_size", "feature_flags", "progress_file"),
        pause_between_batches=dict(type="float", default=0.0),
        max_batches=dict(type="int", default=0),
        sign_in_source=dict(type="str", default="auto", choices=["auto", "profiles", "auth.users", "none"]),
        trigger_suppression=dict(type="str", default="auto", choices=["auto", "session_replication_role", "alter_table"]),
        capacity_policy=dict(type="str", default=CAPACITY_POLICY, choices=list(CAPACITY_POLICIES)),
        capacity_headroom_percent=dict(type="int", default=CAPACITY_HEADROOM_PERCENT),
        max_users_if_missing=dict(type="int"),
    )


def validate(params: dict[str, Any]) -> str | None:
    negative = params["pause_between_batches"] < 0 or params["max_batches"] < 0
    return first_problem(
        batch_size_problem(params),
        "pause_between_batches and max_batches must be >= 0" if negative else None,
        range_problem(params, "capacity_headroom_percent", 0, 1000),
        run_options_problem(params),
    )


def capacity_decision(params: dict[str, Any], max_users: int | None, members_after: int) -> dict[str, Any]:
    """What the capacity policy does for this organization (pure: no database access)."""
    decision: dict[str, Any] = dict(
        policy=params["capacity_policy"],
        max_users_before=max_users,
        max_users_after=max_users,
        members_after=members_after,
        over_by=0,
        action="none",
    )
    if max_users is None or members_after <= max_users:
        return decision
    decision["over_by"] = members_after - max_users
    if params["capacity_policy"] == "raise":
        decision["max_users_after"] = math.ceil(members_after * (100 + params["capacity_headroom_percent"]) / 100)
        decision["action"] = "raised"
    elif params["capacity_policy"] == "fail":
        decision["action"] = "failed"
    else:
        decision["action"] = "reported"
    return decision


def run(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    started = time.monotonic()
    schema_ready, org_id = target_organization(conn, p["organization_slug"], module.check_mode)
    # In check mode before the schema/organization exist (a --check of the whole runbook), count
    # against what the earlier phases would create: every profile pending, max_users_if_missing.
    result["organization_id"] = None if org_id is None else str(org_id)
    source = (
        detect_sign_in_source(conn)
        if p["sign_in_source"] == "auto"
        else {"none": None}.get(p["sign_in_source"], p["sign_in_source"])
    )
    result["sign_in_source"] = source or "none"
    # A real run counts the roles in the database at the end: only check mode pays for the role aggregation here.
    plan = membership_plan(conn, org_id, schema_ready, with_roles=module.check_mode)
    result.update(profiles_total=plan["total"], already_migrated=plan["total"] - plan["pending"], remaining=plan["pending"])
    max_users = organization_capacity(conn, org_id) if org_id is not None else p.get("max_users_if_missing")
    capacity = capacity_decision(p, max_users, plan["members"] + plan["pending"])
    conn.commit()
    result["capacity"] = capacity
    result["diff"] = dict(
        before=dict(without_organization=plan["pending"], in_organization=plan["members"]),
        after=dict(without_organization=0, in_organization=plan["members"] + plan["pending"]),
    )
    if capacity["action"] == "failed":
        raise EngineError(
            f"organization {p['organization_slug']!r} allows {capacity['max_users_before']} users but would hold "
            f"{capacity['members_after']} after the migration (over by {capacity['over_by']}): raise its max_users "
            "or set org_data_migration_capacity_policy to raise or report; nothing was changed",
            capacity=capacity,
        )
    if plan["pending"]:
        # Decided before any write (and reported in check mode): a trigger_suppression that cannot be
        # honoured here fails now, having changed nothing.
        result["trigger_suppression"] = choose_trigger_suppression(conn, p["trigger_suppression"], profile_update_triggers(conn))
    if module.check_mode:
        result.update(
            migrated=plan["pending"],
            remaining=0,
            changed=bool(plan["pending"]) or capacity["action"] == "raised",
            roles={k: plan[k] for k in ("coach_only", "coach_and_practitioner", "practitioner_only")},
        )
        return
    with progress_file(p.get("progress_file"), "membership", "profiles") as pfile:
        pfile.start(plan["total"], plan["total"] - plan["pending"], "baseline, role table" if plan["pending"] else "")
        if plan["pending"] or capacity["action"] == "raised":
            migrate(module, conn, result, org_id, source, capacity, plan["pending"], pfile)
    if org_id is not None:
        totals = role_totals(conn, org_id)
        conn.commit()
        result["roles"] = {k: totals[k] for k in ("coach_only", "coach_and_practitioner", "practitioner_only")}
    result["duration_ms"] = int((time.monotonic() - started) * 1000)


def migrate(
    module: AnsibleModule,
    conn: Any,
    result: dict[str, Any],
    org_id: Any,
    source: str | None,
    capacity: dict[str, Any],
    pending: int,
    pfile: ProgressFile,
) -> None:
    """The writes: baseline, capacity, the batches. `result` follows the committed batches even when one fails."""
    p = module.params
    result["baseline_captured"] = ensure_baseline(conn, p.get("run_id"), flags=p["feature_flags"])
    if capacity["action"] == "raised":
        set_capacity(conn, org_id, capacity["max_users_after"])
        result["changed"] = True
    if not pending:
        return
    done_before = pfile.done
    progress = MembershipProgress()
    try:
        migrate_membership(
            conn,
            org_id,
            source,
            p["batch_size"],
            progress,
            lock_policy(module, "membership"),
            pause=p["pause_between_batches"],
            max_batches=p["max_batches"],
            trigger_suppression=p["trigger_suppression"],
            run_id=p.get("run_id"),
            report=lambda migrated: pfile.update(done_before + migrated, note=""),
        )
    finally:
        result.update(
            migrated=progress.migrated,
            trigger_suppression=progress.trigger_suppression,
            changed=result["changed"] or progress.migrated > 0,
            batches=dict(
                count=progress.batches, size=p["batch_size"], slowest_ms=progress.max_batch_ms,
                lock_retries=progress.lock_retries, sizes=progress.sizes,
            ),
        )
    pfile.update(done_before + progress.migrated, note="ANALYZE profiles")
    result["remaining"] = pending_profiles(conn)
    for note in analyze(conn, "public.profiles"):  # the new columns: the planner would otherwise believe them all NULL
        module.warn(note)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(
        changed=False,
        migrated=0,
        already_migrated=0,
        remaining=0,
        profiles_total=0,
        roles=dict(coach_only=0, coach_and_practitioner=0, practitioner_only=0),
        batches=dict(count=0, size=module.params["batch_size"], slowest_ms=0, lock_retries=0),
        sign_in_source=None,
        trigger_suppression=None,
        capacity={},
        organization_id=None,
        baseline_captured=False,
        duration_ms=0,
    )
    run_module(module, result, run, component="membership", problem=validate(module.params))


if __name__ == "__main__":
    main()
