#!/usr/bin/python
# Ensure an organization (public.organizations) by slug: create it, bring its attributes to the
# wanted values (reporting a diff), or remove it when it has no members. Values are stored
# literally (parameterised SQL), whatever quotes, semicolons or unicode they hold.
"""Ansible module: ensure an organization by slug, attributes diffed."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_organization
short_description: Ensure an organization exists (or not) by slug, with its attributes
description:
  - Creates the organization with slug I(slug) when it is missing, or updates the attributes given
    (I(name), I(primary_color), I(secondary_color), I(subscription_tier), I(max_users)) that differ.
  - Attributes not given are left as they are; attributes listed in I(create_only) are set on creation
    and never changed afterwards (the data step raises the default organization's C(max_users) when
    more users must fit, and a re-run must not lower it again).
  - I(state=absent) deletes the organization, refusing while profiles or assignments still reference it.
  - Input is validated before connecting; values are stored literally (quotes, semicolons, unicode).
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_run, vdp_migration_lock]
options:
  slug:
    description:
      - Unique key of the organization (text of 1 to 100 characters, no control characters, no outer spaces).
      - Checked to be text before anything else (a number or a list is refused, not converted).
      - Default the migration's default organization (the slug the schema's sign-up trigger names).
    type: raw
    default: individual-users
  state:
    description: Whether the organization should exist.
    type: str
    choices: [present, absent]
    default: present
  name:
    description:
      - Display name (text of 1 to 200 characters). Required when the organization is created.
      - Checked to be text before anything else (a number or a list is refused, not converted).
    type: raw
  primary_color:
    description: Brand colour as C(#RRGGBB).
    type: str
  secondary_color:
    description: Second brand colour as C(#RRGGBB).
    type: str
  subscription_tier:
    description: Subscription tier.
    type: str
    choices: [free, starter, professional, enterprise, legacy]
  max_users:
    description: Capacity (a positive number of users).
    type: int
  create_only:
    description: Attributes applied only when the organization is created, never updated afterwards.
    type: list
    elements: str
    choices: [name, primary_color, secondary_color, subscription_tier, max_users]
    default: []
attributes:
  check_mode:
    support: full
    description: Reports what it would create, change or delete; writes nothing.
  diff_mode:
    support: full
    description: The organization's attributes before and after.
"""

EXAMPLES = r"""
- name: Ensure the default organization of the legacy users
  vdp_organization:
    slug: individual-users
    name: Individual Users
    primary_color: "#5F4339"
    secondary_color: "#A8A29E"
    subscription_tier: legacy
    max_users: 1000
    create_only: [max_users]
    db: "{{ vdp_production_db }}"

- name: Remove a test organization
  vdp_organization:
    slug: rehearsal-test
    state: absent
"""

RETURN = r"""
organization:
  description: The organization after the run (in check mode, as it would be); null when absent.
  returned: always
  type: dict
  sample: {id: 0b9c..., slug: individual-users, name: Individual Users, primary_color: "#5F4339",
           secondary_color: "#A8A29E", subscription_tier: legacy, max_users: 1000, created_at: "2025-01-03T09:00:00+00:00"}
created:
  description: Whether the organization was (or would be) created.
  returned: always
  type: bool
deleted:
  description: Whether the organization was (or would be) deleted.
  returned: always
  type: bool
changed_attributes:
  description: Names of the attributes that were (or would be) changed.
  returned: always
  type: list
  elements: str
"""

import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_errors import EngineError
from ansible.module_utils.vdp_lifecycle import engine_argument_spec, run_module, text_problem
from ansible.module_utils.vdp_names import DEFAULT_ORG_SLUG
from ansible.module_utils.vdp_pg import sql
from ansible.module_utils.vdp_target import require_target_schema, target_schema_missing

ATTRIBUTES = ("name", "primary_color", "secondary_color", "subscription_tier", "max_users")
_COLOR = re.compile(r"^#[0-9A-Fa-f]{6}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_USERS_LIMIT = 2_147_483_647


def argument_spec() -> dict[str, Any]:
    # slug and name are raw: a number or a list given by mistake must be refused, not stored as '5' or "['a', 'b']".
    return engine_argument_spec(
        slug=dict(type="raw", default=DEFAULT_ORG_SLUG),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        name=dict(type="raw"),
        primary_color=dict(type="str"),
        secondary_color=dict(type="str"),
        subscription_tier=dict(type="str", choices=["free", "starter", "professional", "enterprise", "legacy"]),
        max_users=dict(type="int"),
        create_only=dict(type="list", elements="str", default=[], choices=list(ATTRIBUTES)),
    )


def validate(params: dict[str, Any]) -> list[str]:
    """Every problem with the input, each saying what to fix (checked before connecting)."""
    # Types first (the rules below read text); emptiness and length are the rules' to word.
    typed = [text_problem("slug", params["slug"], 10_000, allow_empty=True)]
    if params.get("name") is not None:
        typed.append(text_problem("organization name", params["name"], 10_000, allow_empty=True))
    problems: list[str] = [p for p in typed if p]
    if problems:
        return problems
    slug = params["slug"]
    if not slug or slug != slug.strip() or len(slug) > 100 or _CONTROL.search(slug):
        problems.append(f"slug {slug!r} is not valid: use 1 to 100 characters without control characters or outer spaces")
    name = params.get("name")
    if name is not None and (not name.strip() or len(name) > 200 or _CONTROL.search(name)):
        problems.append(f"name {name!r} is not valid: use 1 to 200 characters without control characters")
    for key in ("primary_color", "secondary_color"):
        value = params.get(key)
        if value is not None and not _COLOR.match(value):
            problems.append(f"{key} {value!r} is not a colour: use #RRGGBB, e.g. #5F4339")
    max_users = params.get("max_users")
    if max_users is not None and not 0 < max_users <= MAX_USERS_LIMIT:
        problems.append(f"max_users {max_users} is not valid: use a positive number of users (1 .. {MAX_USERS_LIMIT})")
    return problems


_SELECT_SQL = """
SELECT id::text, slug, name, primary_color, secondary_color, subscription_tier, max_users, created_at
FROM public.organizations WHERE slug = %s
"""


def fetch(conn: Any, slug: str) -> dict[str, Any] | None:
    row = conn.execute(_SELECT_SQL, (slug,)).fetchone()
    if row is None:
        return None
    keys = ("id", "slug", "name", "primary_color", "secondary_color", "subscription_tier", "max_users", "created_at")
    org = dict(zip(keys, row, strict=True))
    org["created_at"] = org["created_at"].isoformat()
    return org


def wanted_changes(current: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    create_only = set(params.get("create_only") or [])
    return {
        key: params[key]
        for key in ATTRIBUTES
        if params.get(key) is not None and key not in create_only and current.get(key) != params[key]
    }


def insert(conn: Any, params: dict[str, Any]) -> None:
    given = {k: params[k] for k in ATTRIBUTES if params.get(k) is not None}
    columns = ["slug", *given]
    query = sql.SQL("INSERT INTO public.organizations ({}) VALUES ({})").format(
        sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.SQL(", ").join(sql.Placeholder() for _ in columns)
    )
    with conn.cursor() as cur:
        cur.execute(query, [params["slug"], *given.values()])


def update(conn: Any, slug: str, changes: dict[str, Any]) -> None:
    query = sql.SQL("UPDATE public.organizations SET {} WHERE slug = %s").format(
        sql.SQL(", ").join(sql.SQL("{} = %s").format(sql.Identifier(k)) for k in changes)
    )
    with conn.cursor() as cur:
        cur.execute(query, [*changes.values(), slug])


_REFERENCES_SQL = """
SELECT (SELECT count(*) FROM public.profiles WHERE organization_id = %(id)s),
       (SELECT count(*) FROM public.practitioner_assignments WHERE organization_id = %(id)s)
"""


def references(conn: Any, org_id: str) -> dict[str, int]:
    members, assignments = conn.execute(_REFERENCES_SQL, dict(id=org_id)).fetchone()
    return dict(members=int(members), assignments=int(assignments))


def ensure(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    if module.check_mode and target_schema_missing(conn):
        current = None  # check mode before the schema phase ran: the table will exist, the organization not
    else:
        require_target_schema(conn)
        current = fetch(conn, p["slug"])
    result["diff"] = dict(before=current or {}, after={})
    if p["state"] == "absent":
        if current is None:
            return
        refs = references(conn, current["id"])
        if refs["members"] or refs["assignments"]:
            raise EngineError(
                f"organization {p['slug']!r} still has {refs['members']} member profiles and {refs['assignments']} assignments: "
                "move them to another organization (or revert the migration) before removing it",
                references=refs,
            )
        result.update(changed=True, deleted=True, organization=None)
        if not module.check_mode:
            with conn.cursor() as cur:
                cur.execute("DELETE FROM public.organizations WHERE slug = %s", (p["slug"],))
            conn.commit()
        return
    if current is None:
        if not p.get("name"):
            raise EngineError(f"organization {p['slug']!r} does not exist and no name was given: set name to create it")
        result.update(changed=True, created=True, changed_attributes=[k for k in ATTRIBUTES if p.get(k) is not None])
        preview = dict(slug=p["slug"], **{k: p.get(k) for k in ATTRIBUTES if p.get(k) is not None})
        if module.check_mode:
            result["organization"] = preview
        else:
            insert(conn, p)
            conn.commit()
            result["organization"] = fetch(conn, p["slug"])
        result["diff"]["after"] = result["organization"]
        return
    changes = wanted_changes(current, p)
    result["changed_attributes"] = sorted(changes)
    result["organization"] = dict(current, **changes)
    result["diff"]["after"] = result["organization"]
    if changes:
        result["changed"] = True
        if not module.check_mode:
            update(conn, p["slug"], changes)
            conn.commit()
            result["organization"] = fetch(conn, p["slug"])


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, created=False, deleted=False, changed_attributes=[], organization=None)
    problem = "; ".join(validate(module.params)) or None
    run_module(module, result, ensure, component="organization", problem=problem)


if __name__ == "__main__":
    main()
