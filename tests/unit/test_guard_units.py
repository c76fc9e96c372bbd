"""The production guard's decisions that need no server: the staging-database-name rule, the confirmation phrase,
and how a verdict becomes a refusal or a warning. (Against real servers - forwarders, aliases, 0.0.0.0, IPv4-mapped
addresses, socket paths - see tests/integration/test_production_guard.py.)"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.code import module_utils

guard: Any = module_utils("vdp_guard")
pg: Any = module_utils("vdp_pg")


def staging(dbname: str = "virtue_staging") -> dict[str, Any]:
    return dict(login_host="127.0.0.1", login_port=5433, login_db=dbname, login_user="postgres")


def unreachable(*_args: Any, **_kwargs: Any) -> Any:
    raise AssertionError("the guard must refuse before connecting anywhere")


@pytest.mark.parametrize("dbname", ["postgres", "template0", "template1", "maint"])
def test_system_and_maintenance_databases_are_never_restore_targets(dbname: str) -> None:
    with pytest.raises(guard.GuardRefusal, match="cannot be the staging target"):
        guard.check_target(staging(dbname), staging("virtue"), maintenance_db="maint", connector=unreachable)


@pytest.mark.parametrize("phrase", ["yes", "i understand this overwrites production", "I understand this overwrites production "])
def test_a_confirmation_that_is_not_the_exact_phrase_is_refused(phrase: str) -> None:
    with pytest.raises(guard.GuardRefusal, match="not the exact phrase"):
        guard.check_target(staging(), staging("virtue"), maintenance_db="postgres", confirmation=phrase, connector=unreachable)


def test_without_production_settings_nothing_is_compared_and_nothing_allowed() -> None:
    with pytest.raises(guard.GuardRefusal, match="needs the production database's connection"):
        guard.check_target(staging(), None, maintenance_db="postgres", connector=unreachable)


def test_unreachable_production_refuses_unless_the_operator_said_so() -> None:
    def down(params: dict[str, Any], autocommit: bool = False) -> Any:
        raise pg.ConnectionFailure("cannot connect to PostgreSQL at db:5432/virtue as postgres: refused -- check")

    prod = dict(staging("virtue"), login_port=5432)
    with pytest.raises(guard.GuardRefusal, match="production is unreachable"):
        guard.check_target(staging(), prod, maintenance_db="postgres", connector=down)
    outcome = guard.check_target(staging(), prod, maintenance_db="postgres", allow_unreachable_production=True, connector=down)
    assert outcome.verdict is None and "NOT checked" in outcome.warnings[0]


def verdict(is_production: bool, same_server: bool) -> Any:
    return guard.GuardVerdict(is_production, same_server, "virtue", "virtue", ["evidence"])


def test_production_is_refused_and_the_message_says_what_to_do() -> None:
    target, prod = pg.Target("10.0.0.9", 6543, "virtue", "u"), pg.Target("db", 5432, "virtue", "u")
    with pytest.raises(guard.GuardRefusal) as err:
        guard._decide(verdict(True, True), target, prod, "")
    assert (
        "PRODUCTION" in str(err.value) and "vdp_staging_db" in str(err.value) and guard.PRODUCTION_CONFIRMATION in str(err.value)
    )


def test_only_the_exact_phrase_lets_production_through() -> None:
    target = pg.Target("db", 5432, "virtue", "u")
    outcome = guard._decide(verdict(True, True), target, target, guard.PRODUCTION_CONFIRMATION)
    assert "IS production" in outcome.warnings[0]


def test_another_database_on_productions_server_is_allowed_with_a_warning() -> None:
    outcome = guard._decide(verdict(False, True), pg.Target("db", 5432, "stage", "u"), pg.Target("db", 5432, "virtue", "u"), "")
    assert "lives on production's server" in outcome.warnings[0]
    assert (
        guard._decide(verdict(False, False), pg.Target("s", 1, "stage", "u"), pg.Target("p", 1, "virtue", "u"), "").warnings == []
    )
