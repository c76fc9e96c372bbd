#!/usr/bin/python
# Phase 1 of the runbook (DESIGN §3): everything that must be true before a backup is taken or a
# lock is requested, checked read-only against production, staging and S3, and summed up as a
# go/no-go with reasons. Blocking problems make `go` false; anomalies are warnings. The module
# itself never fails on a no-go (the role writes the report first, then fails the play).
"""Ansible module: read-only preflight of the organizational-model migration (go/no-go)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_preflight
short_description: Read-only preflight of the organizational-model migration, with a go/no-go
description:
  - Connects to the production database (the C(login_*) options), the staging database (I(staging))
    and S3 (I(s3)), and checks, without writing anything anywhere
  - connectivity of all three (one line per failure naming host:port/database or the endpoint and
    bucket, never a password or key);
  - client/server version skew (C(pg_dump) and C(pg_restore) must be at least the server's major,
    C(pg_restore) also at least staging's);
  - every rule a later phase applies, so a misconfiguration is a no-go before anything is written - the
    production guard (staging compared with production by server identity - C(system_identifier), database
    OID and a live witness - never by address), the staging-database-name rule (never C(postgres) or a
    template), the capacity policy of the data step, and the run lease (another run holding it and alive);
  - the legacy shape (where C(last_sign_in_at) lives - C(profiles), C(auth.users) or nowhere), the
    seed's pre-migration counts, and the relationship anomalies (self-relationships, orphans,
    duplicate active pairs) and users beyond the default organization's C(max_users);
  - server settings (C(work_mem), C(maintenance_work_mem), ...), C(gen_random_uuid), the login's
    right to alter the legacy tables, long-running transactions, the migration's advisory lock,
    and whether the migration is already (partially) applied.
  - Returns C(go) with C(blocking) reasons and C(warnings); it does not fail on a no-go so the
    caller can record the report first. It fails only on invalid input.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_postgres.staging]
options:
  staging:
    description:
      - The staging (rehearsal) database. Omit to skip its checks (a warning says the rehearsal cannot be verified).
    type: dict  # its keys (suboptions) come from the doc fragment vdp_postgres.staging
  s3:
    description: The backup bucket. Omit to skip the S3 checks (a warning says so).
    type: dict
    suboptions:
      bucket: {description: Bucket name., type: str, required: true}
      endpoint_url: {description: S3 endpoint (AWS when omitted; AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL)., type: str}
      region: {description: Region (AWS_REGION / AWS_DEFAULT_REGION)., type: str}
      access_key: {description: Access key (AWS_ACCESS_KEY_ID). Never printed., type: str, no_log: true}
      secret_key: {description: Secret key (AWS_SECRET_ACCESS_KEY). Never printed., type: str, no_log: true}
      session_token: {description: Session token (AWS_SESSION_TOKEN). Never printed., type: str, no_log: true}
      create_bucket: {description: The backup may create a missing bucket (then it is a warning)., type: bool, default: false}
      prefix: {description: Key prefix of the backups (listed to prove read access)., type: str, default: ""}
      validate_certs: {description: Verify TLS certificates., type: bool, default: true}
      ca_bundle: {description: CA bundle for the endpoint., type: path}
      sse: {description: Server-side encryption the backup will use (accepted here so vdp_s3 passes whole)., type: str}
      kms_key_id: {description: KMS key of I(sse=aws:kms) (accepted here so vdp_s3 passes whole)., type: str}
  pg_bindir:
    description: Directory of C(pg_dump) / C(pg_restore) (vdp_pg_bindir); default the server major's usual directory, then PATH.
    type: path
  max_users:
    description: Capacity of the default organization when it does not exist yet (the seed's 1000).
    type: int
    default: 1000
  run_id:
    description: This run's id; the run lease held by another run (and alive) is blocking, held by this run is fine.
    type: str
  default_organization_slug:
    description: Slug of the default organization whose C(max_users) applies once it exists.
    type: str
    default: individual-users
  capacity_policy:
    description:
      - The data step's capacity policy (one source - the inventory's C(vdp_capacity_policy)). With C(fail), users
        beyond I(max_users) are blocking (the data step would stop); with C(raise) or C(report) they are a warning
        saying what the data step will do.
    type: str
    choices: [raise, fail, report]
    default: raise
  capacity_headroom_percent:
    description: With I(capacity_policy=raise), the headroom the data step adds (to say what max_users will become).
    type: int
    default: 10
  long_transaction_seconds:
    description: Transactions on the production database older than this are reported.
    type: int
    default: 300
  long_transaction_policy:
    description: C(report) makes long-running transactions a warning, C(fail) makes them blocking.
    type: str
    choices: [report, fail]
    default: report
  migrations_dir:
    description: The project's C(migrations/) folder; its versions are compared with the ledger (applied / partial / pending).
    type: path
  sample_limit:
    description: At most this many sample rows per anomaly kind.
    type: int
    default: 20
attributes:
  check_mode:
    support: full
    description: The module only reads; it runs the same checks in check mode.
  diff_mode:
    support: none
"""

EXAMPLES = r"""
- name: Check that the migration can start
  vdp_preflight:
    login_host: "{{ vdp_production_db.host }}"
    login_port: "{{ vdp_production_db.port }}"
    login_db: "{{ vdp_production_db.dbname }}"
    login_user: "{{ vdp_production_db.user }}"
    login_password: "{{ vdp_production_db.password | default(omit) }}"
    staging: "{{ vdp_staging_db }}"
    s3:
      endpoint_url: "{{ vdp_s3.endpoint_url }}"
      bucket: "{{ vdp_s3.bucket }}"
      access_key: "{{ vdp_s3.access_key | default(omit) }}"
      secret_key: "{{ vdp_s3.secret_key | default(omit) }}"
    pg_bindir: "{{ vdp_pg_bindir }}"
    capacity_policy: fail
  register: preflight

- name: Stop on a no-go
  ansible.builtin.fail:
    msg: "{{ preflight.blocking | join('; ') }}"
  when: not preflight.go
"""

RETURN = r"""
go:
  description: True when nothing blocks the migration.
  returned: always
  type: bool
blocking:
  description: One line per blocking problem, each saying what to do.
  returned: always
  type: list
  elements: str
warning_messages:
  description: One line per anomaly or risk that does not block.
  returned: always
  type: list
  elements: str
checks:
  description: Every check with its status (ok, warning, blocking, skipped) and a one-line detail.
  returned: always
  type: list
  elements: dict
  sample: [{name: production connection, status: ok, detail: "postgres@db:5432/virtue, PostgreSQL 15.8"}]
production:
  description: Target (no password), server version and major, database size, settings (work_mem, maintenance_work_mem, ...).
  returned: always
  type: dict
staging:
  description: Target, server version and major of the staging database (empty when not given).
  returned: always
  type: dict
s3:
  description: Endpoint, bucket, whether it exists and whether the prefix could be listed.
  returned: always
  type: dict
tools:
  description: pg_dump / pg_restore path, version and major.
  returned: always
  type: dict
legacy:
  description: C(sign_in_source) (profiles, auth.users or null) and C(shape) (seed, supabase or none).
  returned: when production is reachable
  type: dict
  sample: {sign_in_source: auth.users, shape: supabase}
counts:
  description: The seed's pre-migration counts.
  returned: when production is reachable
  type: dict
  sample: {Total Users: 2000, Active Sponsor Relationships: 1420, Total Virtue Progress Records: 9934}
anomalies:
  description:
    - C(self_relationships), C(orphan_relationships), C(duplicate_active_pairs) (count, active, sample rows) and
      C(over_capacity) (users, max_users, over_by, policy).
  returned: when production is reachable
  type: dict
long_transactions:
  description: Transactions older than I(long_transaction_seconds) on the production database (no query text).
  returned: when production is reachable
  type: list
  elements: dict
migration:
  description:
    - C(state) (not_applied, partial, applied), ledger versions, pending versions and missing target objects.
    - C(complete) and C(completed_by) (run_id, at) - a run completed the migration (deployed, validated, watched,
      contracted) and the run lease's log shows no run since it; migrate.yml then has nothing to do.
  returned: when production is reachable
  type: dict
"""

from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_lifecycle import run_module
from ansible.module_utils.vdp_names import (
    CAPACITY_HEADROOM_PERCENT,
    CAPACITY_POLICIES,
    CAPACITY_POLICY,
    DEFAULT_ORG_MAX_USERS,
    DEFAULT_ORG_SLUG,
)
from ansible.module_utils.vdp_pg import DB_OPTIONS, pg_connection_argument_spec
from ansible.module_utils.vdp_readiness import run


def argument_spec() -> dict[str, Any]:
    spec = pg_connection_argument_spec()
    spec.update(
        staging=dict(type="dict", options=DB_OPTIONS),
        s3=dict(
            type="dict",
            options=dict(
                bucket=dict(type="str", required=True),
                endpoint_url=dict(type="str"),
                region=dict(type="str"),
                access_key=dict(type="str", no_log=True),
                secret_key=dict(type="str", no_log=True),
                session_token=dict(type="str", no_log=True),
                create_bucket=dict(type="bool", default=False),
                prefix=dict(type="str", default=""),
                validate_certs=dict(type="bool", default=True),
                ca_bundle=dict(type="path"),
                sse=dict(type="str"),
                kms_key_id=dict(type="str"),
            ),
        ),
        pg_bindir=dict(type="path"),
        run_id=dict(type="str"),
        max_users=dict(type="int", default=DEFAULT_ORG_MAX_USERS),
        default_organization_slug=dict(type="str", default=DEFAULT_ORG_SLUG),
        capacity_policy=dict(type="str", choices=list(CAPACITY_POLICIES), default=CAPACITY_POLICY),
        capacity_headroom_percent=dict(type="int", default=CAPACITY_HEADROOM_PERCENT),
        long_transaction_seconds=dict(type="int", default=300),
        long_transaction_policy=dict(type="str", choices=["report", "fail"], default="report"),
        migrations_dir=dict(type="path"),
        sample_limit=dict(type="int", default=20),
    )
    return spec


def validate(params: dict[str, Any]) -> list[str]:
    """Input problems, each saying what to fix (checked before connecting anywhere)."""
    problems = []
    if params["max_users"] < 1:
        problems.append(f"max_users must be a positive number of users, got {params['max_users']}")
    if params["long_transaction_seconds"] < 1:
        problems.append(f"long_transaction_seconds must be >= 1, got {params['long_transaction_seconds']}")
    if not 0 <= params["sample_limit"] <= 1000:
        problems.append(f"sample_limit must be between 0 and 1000, got {params['sample_limit']}")
    s3 = params.get("s3")
    if s3 is not None and len(s3["bucket"] or "") < 3:
        problems.append(f"s3.bucket {s3['bucket']!r} is not a bucket name (3 to 63 characters)")
    return problems


def work(module: AnsibleModule, _conn: Any, result: dict[str, Any]) -> None:
    result.update(run(module.params))


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    # The module itself never fails on a no-go: the role writes the report first, then stops the play.
    run_module(
        module,
        {"changed": False},
        work,
        component="preflight",
        database=False,
        problem="; ".join(validate(module.params)) or None,
    )


if __name__ == "__main__":
    main()
