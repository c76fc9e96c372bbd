# The production guard: the ONE place that decides "is this database production?", used by every
# step that drops, recreates or restores a database (the staging restore, the rollback's restore)
# and by preflight, so they can never disagree.
#
# Addresses prove nothing: a TCP forwarder on another port, 0.0.0.0, ::ffff:127.0.0.1, another DNS
# name or a unix-socket path all reach production under a different "host:port". So the guard
# connects to the target and compares what the servers say about themselves:
#   - the cluster's system_identifier (pg_control_system(); unique per initdb), and the database's
#     OID on that cluster;
#   - a live witness: the guard takes an advisory lock with a random key on PRODUCTION and looks for
#     it in the TARGET server's pg_locks. pg_locks shows every session of a cluster, so the lock is
#     visible from the target exactly when the target IS production's server, and its `database`
#     column names production's database. This needs no privilege at all, so it also holds where
#     pg_control_system() is not readable (managed services).
# Same server and same database OID => production. A physical standby (same system_identifier,
# witness not visible) is treated as production too: nothing may be restored there anyway.
"""The production guard: server identity (system_identifier + database OID + a live witness), never addresses."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ansible.module_utils.vdp_errors import OperatorError, first_line
from ansible.module_utils.vdp_pg import ConnectionFailure, Target, connect, target_from_params

# The exact phrase that lets a restore overwrite production: only the rollback path passes it.
PRODUCTION_CONFIRMATION = "I understand this overwrites production"

# Databases a restore never drops and recreates, whatever else is true (the staging-database-name rule).
PROTECTED_DATABASES = frozenset({"template0", "template1", "postgres"})

_SYSID_SQL = "SELECT system_identifier::text FROM pg_control_system()"
_DATOID_SQL = "SELECT oid::bigint FROM pg_database WHERE datname = %s"
_WITNESS_SEEN_SQL = """
SELECT l.database::bigint FROM pg_locks l
WHERE l.locktype = 'advisory' AND l.granted AND l.classid::bigint = %s AND l.objid::bigint = %s AND l.objsubid = 2
LIMIT 1
"""


class GuardRefusal(OperatorError):
    """The guard refused a destructive step; the message says why and what to change."""


@dataclass(frozen=True)
class ServerIdentity:
    """What a server says about itself. system_identifier is None where pg_control_system() is not readable."""

    system_identifier: str | None
    database: str
    database_oid: int | None

    def as_dict(self) -> dict[str, Any]:
        return dict(system_identifier=self.system_identifier, database=self.database, database_oid=self.database_oid)


@dataclass
class GuardVerdict:
    """Whether the target is production, and the evidence (safe to print: no secret, no data)."""

    is_production: bool
    same_server: bool
    target: str
    production: str
    evidence: list[str] = field(default_factory=list)
    target_identity: dict[str, Any] = field(default_factory=dict)
    production_identity: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(
            is_production=self.is_production,
            same_server=self.same_server,
            target=self.target,
            production=self.production,
            evidence=list(self.evidence),
            target_identity=self.target_identity,
            production_identity=self.production_identity,
        )


def identify(conn: Any, dbname: str) -> ServerIdentity:
    """The identity of the server `conn` is on, and of database `dbname` there (OID None if absent)."""
    return ServerIdentity(system_identifier(conn), dbname, database_oid(conn, dbname))


def system_identifier(conn: Any) -> str | None:
    """pg_control_system()'s system_identifier, or None when this login may not read it."""
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_SYSID_SQL)
            row = cur.fetchone()
    except Exception:  # noqa: BLE001 - insufficient privilege (managed services): the witness decides
        return None
    return str(row[0]) if row and row[0] is not None else None


def database_oid(conn: Any, dbname: str) -> int | None:
    with conn.cursor() as cur:
        cur.execute(_DATOID_SQL, (dbname,))
        row = cur.fetchone()
    return int(row[0]) if row else None


class Witness:
    """A session advisory lock with a random two-int key, held on production while the target looks for it.

    pg_locks shows a two-int key as classid = first, objid = second, objsubid = 2.
    """

    def __init__(self, production_conn: Any) -> None:
        self.conn = production_conn
        self.classid = secrets.randbelow(2**31 - 1) + 1
        self.objid = secrets.randbelow(2**31 - 1) + 1

    def __enter__(self) -> Witness:
        with self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s::int, %s::int)", (self.classid, self.objid))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s::int, %s::int)", (self.classid, self.objid))
        except Exception:  # noqa: BLE001, S110 - closing the session releases it anyway
            pass

    def seen_from(self, conn: Any) -> int | None:
        """Production's database OID as the target server's pg_locks shows it, or None when not visible."""
        with conn.cursor() as cur:
            cur.execute(_WITNESS_SEEN_SQL, (self.classid, self.objid))
            row = cur.fetchone()
        return int(row[0]) if row else None


def compare(target_conn: Any, target_db: str, production_conn: Any, production_db: str) -> GuardVerdict:
    """Decide whether database `target_db` on target_conn's server is the production database.

    Both connections must be in autocommit mode (the witness lock is a session lock).
    """
    target, production = identify(target_conn, target_db), identify(production_conn, production_db)
    evidence: list[str] = []
    with Witness(production_conn) as witness:
        seen = witness.seen_from(target_conn)
    if seen is not None:
        evidence.append("a lock taken on production is visible from the target: same server")
    by_sysid: bool | None = None
    if target.system_identifier and production.system_identifier:
        by_sysid = target.system_identifier == production.system_identifier
        evidence.append(
            f"system_identifier {'equal' if by_sysid else 'different'} ({target.system_identifier} vs "
            f"{production.system_identifier})"
        )
    else:
        evidence.append("system_identifier not readable by this login: the live witness decides")
    same_server = seen is not None or by_sysid is True
    if seen is None and by_sysid is True:
        evidence.append("same system_identifier but the witness is not visible: a physical standby of production")
    is_production = same_server and (
        seen is None  # a standby of production: never a restore target
        or (target.database_oid is not None and target.database_oid == production.database_oid)
    )
    if same_server and not is_production:
        evidence.append(
            f"database {target_db!r} (OID {target.database_oid}) is not production's "
            f"{production_db!r} (OID {production.database_oid})"
        )
    elif is_production:
        evidence.append(f"database {target_db!r} is production's database (OID {production.database_oid})")
    return GuardVerdict(is_production, same_server, target_db, production_db, evidence, target.as_dict(), production.as_dict())


def staging_name_problem(dbname: str, maintenance_db: str) -> str | None:
    """The staging-database-name rule: a restore never drops a system or maintenance database."""
    if dbname in PROTECTED_DATABASES or dbname == maintenance_db:
        return (
            f"database {dbname!r} cannot be the staging target: a restore drops and recreates it, and it is a system or "
            f"maintenance database. Give staging a dedicated database (vdp_staging_db.dbname, e.g. virtue_staging)"
        )
    return None


@dataclass
class GuardOutcome:
    """A destructive step the guard allowed, with the verdict and what the operator should know."""

    verdict: GuardVerdict | None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(verdict=self.verdict.as_dict() if self.verdict else None, warnings=list(self.warnings))


def check_target(
    target_params: dict[str, Any],
    production_params: dict[str, Any] | None,
    *,
    maintenance_db: str,
    confirmation: str = "",
    allow_unreachable_production: bool = False,
    connector: Callable[..., Any] = connect,
) -> GuardOutcome:
    """Refuse (GuardRefusal) a drop / recreate / restore of `target_params`' database when it is production.

    Connects to the target server through `maintenance_db` (the target database may not exist yet) and to
    production. Only the exact PRODUCTION_CONFIRMATION lets production through (the rollback path). An
    unreachable production refuses unless `allow_unreachable_production` (the operator said so explicitly).
    """
    target = target_from_params(target_params)
    problem = staging_name_problem(target.dbname, maintenance_db)
    if problem and confirmation != PRODUCTION_CONFIRMATION:
        raise GuardRefusal(problem)
    if confirmation and confirmation != PRODUCTION_CONFIRMATION:
        raise GuardRefusal(
            f"the production confirmation is not the exact phrase {PRODUCTION_CONFIRMATION!r}: only the rollback path "
            "may restore production, and it must say exactly that"
        )
    if not production_params or not production_params.get("login_host"):
        raise GuardRefusal(
            "the production guard needs the production database's connection (vdp_production_db) to prove the target "
            "is not production: set it"
        )
    production = target_from_params(production_params)
    try:
        production_conn = connector(dict(production_params, login_db=production.dbname), autocommit=True)
    except ConnectionFailure as exc:
        if not allow_unreachable_production:
            raise GuardRefusal(
                f"cannot prove {target} is not production: production is unreachable ({first_line(exc)}). Fix the "
                "production connection, or set vdp_guard_allow_unreachable_production: true if you are sure"
            ) from None
        return GuardOutcome(
            None,
            [
                f"production unreachable; restore into {target} allowed by "
                "vdp_guard_allow_unreachable_production: its identity was NOT checked"
            ],
        )
    try:
        verdict = _verdict(target_params, target, production_conn, production, maintenance_db, connector)
    finally:
        production_conn.close()
    return _decide(verdict, target, production, confirmation)


def _verdict(
    target_params: dict[str, Any],
    target: Target,
    production_conn: Any,
    production: Target,
    maintenance_db: str,
    connector: Callable[..., Any],
) -> GuardVerdict:
    try:
        target_conn = connector(dict(target_params, login_db=maintenance_db), autocommit=True)
    except ConnectionFailure as exc:
        if not exc.missing_database:
            raise
        target_conn = connector(dict(target_params), autocommit=True)  # no maintenance db: the target itself
    try:
        return compare(target_conn, target.dbname, production_conn, production.dbname)
    finally:
        target_conn.close()


def _decide(verdict: GuardVerdict, target: Target, production: Target, confirmation: str) -> GuardOutcome:
    outcome = GuardOutcome(verdict)
    if verdict.is_production:
        if confirmation == PRODUCTION_CONFIRMATION:
            outcome.warnings.append(f"{target} IS production: overwriting it, as the rollback confirmed")
            return outcome
        raise GuardRefusal(
            f"refusing to drop or restore {target}: it is the PRODUCTION database ({'; '.join(verdict.evidence)}), "
            f"reached under another address than vdp_production_db ({production}). Point vdp_staging_db at another "
            f"database; only the rollback path may restore production, with the exact phrase '{PRODUCTION_CONFIRMATION}'",
            guard=verdict.as_dict(),
        )
    if verdict.same_server:
        outcome.warnings.append(
            f"staging database {target.dbname!r} lives on production's server ({production.host}:{production.port}): the "
            "restore and the rehearsal load production's server; a separate server is safer"
        )
    return outcome
