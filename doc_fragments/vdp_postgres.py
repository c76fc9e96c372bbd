# Documentation of the connection options every vdp_* PostgreSQL module takes (module_utils/vdp_pg.py's
# pg_connection_argument_spec), written once: modules say `extends_documentation_fragment: [vdp_postgres]`.
"""Doc fragment: PostgreSQL connection options of the vdp_* modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  login_host:
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
    aliases: [db, dbname]
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
    description: PostgreSQL C(lock_timeout) of the session; every lock wait is bounded by it.
    type: str
    default: 5s
  statement_timeout:
    description: PostgreSQL C(statement_timeout) of the session (C(0) = none).
    type: str
    default: "0"
"""
