# Documentation of the connection options every vdp_* PostgreSQL module takes (module_utils/vdp_pg.py's
# pg_connection_argument_spec), written once: modules say `extends_documentation_fragment: [vdp_postgres]`.
# The keys of an inventory database dict (vdp_pg.DB_OPTIONS) are written once too, in DB_KEYS: `db` here, and the
# options that name a second database - vdp_postgres.staging (vdp_preflight) and vdp_postgres.production
# (vdp_restore) - take them from it; the module that extends those gives the option's description.
"""Doc fragment: PostgreSQL connection options of the vdp_* modules."""

from __future__ import annotations

DB_KEYS = r"""    type: dict
    suboptions:
      host: {description: Host., type: str, required: true}
      port: {description: Port., type: int, default: 5432}
      dbname: {description: Database., type: str, required: true}
      user: {description: Role., type: str}
      password: {description: Password (PGPASSWORD applies when omitted). Never printed., type: str, no_log: true}
      ssl_mode:
        description: libpq sslmode.
        type: str
        default: prefer
        choices: [disable, allow, prefer, require, verify-ca, verify-full]
      ca_cert: {description: CA certificate file., type: path}
"""


class ModuleDocFragment:
    DOCUMENTATION = (
        r"""
options:
  db:
    description:
      - The database as the inventory describes it (C(vdp_production_db), C(vdp_staging_db)) - host, port, dbname, user,
        password, ssl_mode, ca_cert. Its keys fill the C(login_*) options below; roles pass the whole dict.
"""
        + DB_KEYS
        + r"""  login_host:
    description: Database host (libpq C(PGHOST) when omitted).
    type: str
    aliases: [host]
  login_port:
    description: Database port (C(PGPORT) when omitted; 5432 by default).
    type: int
    aliases: [port]
  login_user:
    description: Database role (C(PGUSER) when omitted).
    type: str
    aliases: [user]
  login_password:
    description:
      - Password (C(PGPASSWORD) when omitted, so an AWX credential can inject it). Never printed, never put on a
        command line.
    type: str
    aliases: [password]
  login_db:
    description: Database name (C(PGDATABASE) when omitted).
    type: str
    aliases: [dbname]
  ssl_mode:
    description: libpq C(sslmode).
    type: str
    default: prefer
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: CA certificate file for I(ssl_mode=verify-ca) or C(verify-full).
    type: path
    aliases: [ssl_rootcert]
  connect_timeout:
    description: Seconds to wait for the connection.
    type: int
    default: 10
  application_name:
    description: C(application_name) of the session (what a lock-holder message names).
    type: str
    default: vdp-runbook
  lock_timeout:
    description:
      - PostgreSQL C(lock_timeout) of the session; every lock wait is bounded by it.
      - Short on purpose, as the online-migration tools keep it (0.5-1 s), because a statement that waits for a lock makes
        the application's queries on that table queue behind it. The engine modules retry with backoff instead.
    type: str
    default: 1s
  statement_timeout:
    description: PostgreSQL C(statement_timeout) of the session (C(0) = none).
    type: str
    default: "0"
  inventory_key:
    description:
      - The inventory variable these connection settings come from (e.g. C(vdp_production_db)); connection errors name
        its keys (C(vdp_production_db.host), ...) instead of the module options, so the operator knows what to fix.
    type: str
    default: ""
  connection_hint:
    description: A sentence added to connection errors (the sandbox inventory says to run C(make sandbox-up)).
    type: str
    default: ""
"""
    )

    STAGING = "options:\n  staging:\n" + DB_KEYS
    PRODUCTION = "options:\n  production:\n" + DB_KEYS
