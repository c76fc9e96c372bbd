#!/usr/bin/python
# Feature flags of the application (public.feature_flags(flag_name, enabled, ...)), set
# idempotently: the data step creates organizational_model / multi_role_support disabled, the
# deploy phase turns them on, the flag rollback turns them off.
"""Ansible module: set application feature flags idempotently."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_feature_flag
short_description: Create, enable, disable or remove application feature flags
description:
  - Ensures each flag of I(names) exists in the feature flag table with C(enabled) = I(enabled)
    (I(state=present)), or does not exist (I(state=absent)).
  - With I(create_only=true) a flag that already exists keeps its value; only missing flags are created.
    The data step uses this so that a re-run after the deploy phase never switches flags off again.
  - Changes only the flags whose value differs (a second run changes nothing). Only C(flag_name) and
    C(enabled) are written (C(description) too when given); the table's other columns keep their defaults.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_run, vdp_migration_lock]
options:
  names:
    description:
      - Flag names (text of 1 to 100 characters each, no NUL); one name alone counts as a list of one.
      - A number, or a list or number as a name, is refused, not converted to text.
    type: raw
    default: [organizational_model, multi_role_support]
    aliases: [name]
  enabled:
    description: The value the flags should have.
    type: bool
    default: false
  state:
    description: Whether the flags should exist.
    type: str
    choices: [present, absent]
    default: present
  create_only:
    description: Only create missing flags; leave the value of existing ones alone.
    type: bool
    default: false
  missing:
    description:
      - What to do with a flag that does not exist - C(create) it, or C(skip) it (turning flags off in a rollback must not
        create flags the migration never got to create, least of all in a database restored from before it).
    type: str
    choices: [create, skip]
    default: create
  description:
    description: Description stored with flags this module creates.
    type: str
  table:
    description: The feature flag table, schema-qualified.
    type: str
    default: public.feature_flags
attributes:
  check_mode:
    support: full
    description: Reports which flags would be created, changed or removed; writes nothing.
  diff_mode:
    support: full
    description: The flags' values before and after.
"""

EXAMPLES = r"""
- name: Create the organizational flags, disabled (the data step)
  vdp_feature_flag:
    names: [organizational_model, multi_role_support]
    enabled: false
    create_only: true

- name: Turn the organizational features on (deploy)
  vdp_feature_flag:
    names: [organizational_model, multi_role_support]
    enabled: true

- name: Feature-flag rollback
  vdp_feature_flag:
    names: [organizational_model, multi_role_support]
    enabled: false
"""

RETURN = r"""
flags:
  description: Each flag's value after the run (in check mode, as it would be); null when absent.
  returned: always
  type: dict
  sample: {organizational_model: false, multi_role_support: false}
created:
  description: Flags created (or that would be).
  returned: always
  type: list
  elements: str
updated:
  description: Flags whose value changed (or would).
  returned: always
  type: list
  elements: str
removed:
  description: Flags removed (or that would be).
  returned: always
  type: list
  elements: str
"""

import re
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_errors import EngineError
from ansible.module_utils.vdp_legacy import table_exists, table_ident
from ansible.module_utils.vdp_lifecycle import engine_argument_spec, run_module, text_problem
from ansible.module_utils.vdp_names import FEATURE_FLAGS
from ansible.module_utils.vdp_pg import sql

_TABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")


def argument_spec() -> dict[str, Any]:
    # names is raw: a number given by mistake is refused, not turned into ['5'] (Ansible's list conversion).
    return engine_argument_spec(
        names=dict(type="raw", default=list(FEATURE_FLAGS), aliases=["name"]),
        enabled=dict(type="bool", default=False),
        state=dict(type="str", default="present", choices=["present", "absent"]),
        create_only=dict(type="bool", default=False),
        missing=dict(type="str", default="create", choices=["create", "skip"]),
        description=dict(type="str"),
        table=dict(type="str", default="public.feature_flags"),
    )


def validate(params: dict[str, Any]) -> str | None:
    names = params["names"]
    if isinstance(names, str):
        names = params["names"] = [names]
    if not isinstance(names, list):
        return f"names must be a list of flag names, got {type(names).__name__} {names!r}: e.g. [organizational_model]"
    if not names:
        return "names is empty: give at least one flag name"
    typed = [p for p in (text_problem(f"flag name {n!r}", n, 100) for n in names) if p]
    if typed:
        return "; ".join(typed)
    bad = [n for n in names if n != n.strip()]
    if bad:
        return f"flag name(s) {bad!r} not valid: use 1 to 100 characters without outer spaces"
    if not _TABLE.match(params["table"]):
        return f"table {params['table']!r} must be schema.table (letters, digits, underscores)"
    return None


def current_flags(conn: Any, table: str, names: list[str]) -> dict[str, bool]:
    query = sql.SQL("SELECT flag_name, enabled FROM {} WHERE flag_name = ANY(%s)").format(table_ident(table))
    with conn.cursor() as cur:
        cur.execute(query, (names,))
        return {r[0]: bool(r[1]) for r in cur.fetchall()}


def plan(params: dict[str, Any], current: dict[str, bool]) -> tuple[list[str], list[str], list[str]]:
    """(to create, to update, to remove) - pure."""
    names = list(dict.fromkeys(params["names"]))
    if params["state"] == "absent":
        return [], [], [n for n in names if n in current]
    create = [n for n in names if n not in current] if params.get("missing", "create") == "create" else []
    update = [] if params["create_only"] else [n for n in names if n in current and current[n] != params["enabled"]]
    return create, update, []


def apply(conn: Any, params: dict[str, Any], create: list[str], update: list[str], remove: list[str]) -> None:
    table = table_ident(params["table"])
    with conn.cursor() as cur:
        for name in create:
            if params.get("description") is not None:
                cur.execute(
                    sql.SQL("INSERT INTO {} (flag_name, enabled, description) VALUES (%s, %s, %s)").format(table),
                    (name, params["enabled"], params["description"]),
                )
            else:
                cur.execute(
                    sql.SQL("INSERT INTO {} (flag_name, enabled) VALUES (%s, %s)").format(table), (name, params["enabled"])
                )
        if update:
            cur.execute(
                sql.SQL("UPDATE {} SET enabled = %s WHERE flag_name = ANY(%s)").format(table), (params["enabled"], update)
            )
        if remove:
            cur.execute(sql.SQL("DELETE FROM {} WHERE flag_name = ANY(%s)").format(table), (remove,))
    conn.commit()


def run(module: AnsibleModule, conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    if not table_exists(conn, p["table"]):
        raise EngineError(f"feature flag table {p['table']} does not exist: check the table option")
    current = current_flags(conn, p["table"], p["names"])
    conn.commit()
    create, update, remove = plan(p, current)
    after = dict(current)
    for name in create + update:
        after[name] = p["enabled"]
    for name in remove:
        after.pop(name)
    result.update(
        created=create,
        updated=update,
        removed=remove,
        changed=bool(create or update or remove),
        flags={n: after.get(n) for n in p["names"]},
        diff=dict(before={n: current.get(n) for n in p["names"]}, after={n: after.get(n) for n in p["names"]}),
    )
    if result["changed"] and not module.check_mode:
        apply(conn, p, create, update, remove)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, flags={}, created=[], updated=[], removed=[])
    run_module(module, result, run, component="feature-flag", problem=validate(module.params))


if __name__ == "__main__":
    main()
