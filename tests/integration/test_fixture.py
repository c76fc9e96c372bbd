"""The legacy platform fixture on real PostgreSQL: schema objects, exact counts, determinism, and the role.

Every count the generator prints is recomputed here with SQL written from the count definitions
(fixtures/generate_legacy.py docstring), not with the generator's own code.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fixtures import generate_legacy as gl
from tests.support.sandbox import Sandbox

SHAPES = ("supabase", "seed")
USERS = 2000

# One query per count definition. %(ref)s is the generator's reference time (its "now").
COUNT_SQL: dict[str, str] = {
    "users": "SELECT count(*) FROM auth.users",
    "relationships": "SELECT count(*) FROM public.sponsor_practitioner_relationships",
    "active_relationships": "SELECT count(*) FROM public.sponsor_practitioner_relationships WHERE active",
    "progress_rows": "SELECT count(*) FROM public.user_virtue_progress",
    "sessions": "SELECT count(*) FROM public.user_sessions",
    "recent_sessions": "SELECT count(*) FROM public.user_sessions WHERE created_at > %(ref)s - interval '1 hour'",
    "recent_session_users": "SELECT count(DISTINCT user_id) FROM public.user_sessions "
    "WHERE created_at > %(ref)s - interval '1 hour'",
    "null_sign_ins": "SELECT count(*) FROM auth.users WHERE last_sign_in_at IS NULL",
    "sponsors": "SELECT count(DISTINCT sponsor_id) FROM public.sponsor_practitioner_relationships",
    "sponsors_also_practitioners": """
        SELECT count(*) FROM (SELECT DISTINCT sponsor_id AS u FROM public.sponsor_practitioner_relationships) s
        WHERE EXISTS (SELECT 1 FROM public.sponsor_practitioner_relationships r
                      WHERE r.practitioner_id = s.u AND r.active AND r.sponsor_id <> s.u)""",
    "sponsors_all_inactive": """
        SELECT count(*) FROM (SELECT sponsor_id FROM public.sponsor_practitioner_relationships
                              GROUP BY sponsor_id HAVING NOT bool_or(active)) s""",
    "duplicate_active_pairs": """
        SELECT count(*) FROM (SELECT 1 FROM public.sponsor_practitioner_relationships WHERE active
                              GROUP BY sponsor_id, practitioner_id HAVING count(*) > 1) d""",
    "duplicate_active_extra_rows": """
        SELECT coalesce(sum(n - 1), 0) FROM (SELECT count(*) AS n FROM public.sponsor_practitioner_relationships
                                             WHERE active GROUP BY sponsor_id, practitioner_id HAVING count(*) > 1) d""",
    "self_relationships": "SELECT count(*) FROM public.sponsor_practitioner_relationships WHERE sponsor_id = practitioner_id",
    "orphan_relationships": """
        SELECT count(*) FROM public.sponsor_practitioner_relationships r
        WHERE NOT EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.practitioner_id)""",
    "users_without_relationships": """
        SELECT count(*) FROM public.profiles p
        WHERE NOT EXISTS (SELECT 1 FROM public.sponsor_practitioner_relationships r
                          WHERE r.sponsor_id = p.id OR r.practitioner_id = p.id)""",
    "expected_assignments": """
        SELECT count(*) FROM (SELECT DISTINCT sponsor_id, practitioner_id FROM public.sponsor_practitioner_relationships r
                              WHERE active AND sponsor_id <> practitioner_id
                                AND EXISTS (SELECT 1 FROM public.profiles p WHERE p.id = r.practitioner_id)) a""",
    "virtues": "SELECT count(*) FROM public.virtues",
    "feature_flags": "SELECT count(*) FROM public.feature_flags",
}


def orphans(child: str, column: str, parent: str) -> str:
    """Rows of `child` whose `column` matches no parent.id: a foreign key the generator must keep by itself."""
    return f"SELECT count(*) FROM {child} c WHERE NOT EXISTS (SELECT 1 FROM {parent} p WHERE p.id = c.{column})"


# Referential consistency the generator guarantees although it loads with FK triggers off.
CONSISTENCY_SQL: dict[str, str] = {
    "auth users without profile": orphans("auth.users", "id", "public.profiles"),
    "profiles without auth user": orphans("public.profiles", "id", "auth.users"),
    "relationships without sponsor": orphans("public.sponsor_practitioner_relationships", "sponsor_id", "public.profiles"),
    "progress without profile": orphans("public.user_virtue_progress", "user_id", "public.profiles"),
    "sessions without profile": orphans("public.user_sessions", "user_id", "public.profiles"),
    "progress with unknown virtue": orphans("public.user_virtue_progress", "virtue_id", "public.virtues"),
    "profiles differing from auth user": """SELECT count(*) FROM public.profiles p JOIN auth.users u USING (id)
                                            WHERE p.email IS DISTINCT FROM u.email OR p.created_at IS DISTINCT FROM u.created_at
                                               OR p.full_name IS DISTINCT FROM u.raw_user_meta_data ->> 'full_name'""",
    "timestamps in the future": """
        SELECT (SELECT count(*) FROM auth.users WHERE created_at > now() OR last_sign_in_at > now())
             + (SELECT count(*) FROM public.sponsor_practitioner_relationships WHERE created_at > now())
             + (SELECT count(*) FROM public.user_sessions WHERE created_at > now())""",
}


def scalar(conn: psycopg.Connection[Any], query: str, params: dict[str, Any] | None = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(query, params)
        row = cur.fetchone()
        assert row is not None
        return row[0]


def manifest(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    row = conn.execute("SELECT counts, reference_time FROM vdp_fixture.manifest").fetchone()
    assert row is not None
    return dict(row[0], reference_time=row[1])


def sql_counts(conn: psycopg.Connection[Any], reference: dt.datetime) -> dict[str, int]:
    return {name: int(scalar(conn, query, {"ref": reference})) for name, query in COUNT_SQL.items()}


# --------------------------------------------------------------------------- schema objects


@pytest.mark.parametrize("shape", SHAPES)
def test_both_shapes_load_with_triggers_rls_view_and_grants(shape: str, empty_db: Callable[..., dict[str, Any]]) -> None:
    target = empty_db()
    counts = gl.load_legacy(target, shape=shape, users=60, seed=5)
    assert counts["users"] == 60
    with psycopg.connect(**target, autocommit=True) as conn:
        has_profile_sign_in = scalar(
            conn,
            """SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public'
                                             AND table_name = 'profiles' AND column_name = 'last_sign_in_at'""",
        )
        assert has_profile_sign_in == (1 if shape == "seed" else 0)
        assert (
            scalar(
                conn,
                """SELECT count(*) FROM information_schema.columns WHERE table_schema = 'auth'
                               AND table_name = 'users' AND column_name = 'last_sign_in_at'""",
            )
            == 1
        )
        triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal AND tgenabled = 'O'")}
        assert {"profiles_set_updated_at", "on_auth_user_created"} <= triggers
        rls = dict(
            conn.execute("""SELECT c.relname, c.relrowsecurity FROM pg_class c
                                   JOIN pg_namespace n ON n.oid = c.relnamespace
                                   WHERE n.nspname = 'public' AND c.relkind = 'r'""").fetchall()
        )
        for table in ("profiles", "sponsor_practitioner_relationships", "user_virtue_progress", "feature_flags", "user_sessions"):
            assert rls[table], f"RLS is off on {table}"
        assert scalar(conn, "SELECT count(*) FROM pg_policies WHERE schemaname = 'public' AND tablename = 'profiles'") >= 2
        assert scalar(conn, "SELECT count(*) FROM public.sponsor_practitioner_overview") == counts["relationships"]
        for role in ("anon", "authenticated", "service_role"):
            assert scalar(conn, "SELECT NOT rolcanlogin FROM pg_roles WHERE rolname = %(r)s", {"r": role})
            privileges = "SELECT has_table_privilege(%(r)s, 'public.profiles', 'SELECT,INSERT,UPDATE,DELETE')"
            assert scalar(conn, privileges, {"r": role})
        # Supabase-like default privileges: a table created later in public is open to anon.
        conn.execute("CREATE TABLE public.created_later (id int)")
        assert scalar(conn, "SELECT has_table_privilege('anon', 'public.created_later', 'INSERT')")
        flags = {r[0] for r in conn.execute("SELECT flag_name FROM public.feature_flags")}
        assert flags and not flags & {"organizational_model", "multi_role_support"}
        assert scalar(conn, "SELECT count(*) FROM pg_proc WHERE proname = 'uid' AND pronamespace = 'auth'::regnamespace") == 1


@pytest.mark.parametrize("shape", SHAPES)
def test_sign_up_and_updated_at_triggers_work_after_loading(shape: str, empty_db: Callable[..., dict[str, Any]]) -> None:
    target = empty_db()
    gl.load_legacy(target, shape=shape, users=30, seed=5)
    with psycopg.connect(**target, autocommit=True) as conn:
        new_id = scalar(
            conn,
            """INSERT INTO auth.users (id, email, raw_user_meta_data)
                                 VALUES (gen_random_uuid(), 'new@example.org', '{"full_name": "New Person"}') RETURNING id""",
        )
        assert scalar(conn, "SELECT full_name FROM public.profiles WHERE id = %(i)s", {"i": new_id}) == "New Person"
        some = scalar(conn, "SELECT id FROM public.profiles WHERE email <> 'new@example.org' ORDER BY id LIMIT 1")
        before = scalar(conn, "SELECT updated_at FROM public.profiles WHERE id = %(i)s", {"i": some})
        conn.execute("UPDATE public.profiles SET full_name = full_name WHERE id = %(i)s", {"i": some})
        assert scalar(conn, "SELECT updated_at FROM public.profiles WHERE id = %(i)s", {"i": some}) > before


def test_schema_files_load_twice_and_into_a_schema_only_database(empty_db: Callable[..., dict[str, Any]]) -> None:
    target = empty_db()
    counts = gl.load_legacy(target, shape="seed", users=0, schema_only=True)
    assert counts["users"] == 0 and counts["relationships"] == 0
    with psycopg.connect(**target, autocommit=True) as conn:
        conn.execute(gl.schema_sql("seed"))  # the whole file again: no error, nothing duplicated
        assert scalar(conn, "SELECT count(*) FROM public.virtues") == 12
        assert scalar(conn, "SELECT count(*) FROM public.profiles") == 0


def test_a_database_that_holds_data_is_refused_and_left_alone(legacy_db: Callable[..., dict[str, Any]]) -> None:
    target = legacy_db("supabase", USERS)
    with psycopg.connect(**target) as conn:
        before = gl.content_checksum(conn)
    with pytest.raises(gl.FixtureError, match=r"already holds the legacy fixture.*--reset"):
        gl.load_legacy(target, users=10)
    with psycopg.connect(**target) as conn:
        assert gl.content_checksum(conn) == before


# --------------------------------------------------------------------------- counts


@pytest.mark.parametrize("shape", SHAPES)
def test_printed_counts_equal_what_sql_finds(shape: str, legacy_db: Callable[..., dict[str, Any]]) -> None:
    target = legacy_db(shape, USERS)
    with psycopg.connect(**target) as conn:
        printed = manifest(conn)
        found = sql_counts(conn, printed["reference_time"])
        for name, query in CONSISTENCY_SQL.items():
            assert scalar(conn, query) == 0, name
        if shape == "seed":
            assert (
                scalar(
                    conn,
                    """SELECT count(*) FROM public.profiles p JOIN auth.users u USING (id)
                                   WHERE p.last_sign_in_at IS DISTINCT FROM u.last_sign_in_at""",
                )
                == 0
            )
        per_user = conn.execute(
            "SELECT min(n), max(n), avg(n) FROM (SELECT count(*) AS n FROM public.user_virtue_progress GROUP BY user_id) x"
        ).fetchone()
    assert {k: printed[k] for k in found} == found
    assert found["users"] == USERS
    assert per_user is not None and per_user[0] >= 3 and per_user[1] <= 7 and 4.7 < float(per_user[2]) < 5.3
    for name in ("null_sign_ins", *gl.MESSY_RELATIONSHIP_CASES, "recent_sessions"):
        assert 0 < found[name] < USERS * 0.10, f"{name}={found[name]} is not a few % of {USERS}"


def test_fresh_load_recent_sessions_are_within_the_last_hour_of_wall_clock(empty_db: Callable[..., dict[str, Any]]) -> None:
    target = empty_db()
    counts = gl.load_legacy(target, users=500, seed=9)
    with psycopg.connect(**target) as conn:
        recent = scalar(conn, "SELECT count(*) FROM public.user_sessions WHERE created_at > now() - interval '1 hour'")
    assert recent == counts["recent_sessions"] > 0


def test_same_seed_gives_identical_content_and_another_seed_does_not(empty_db: Callable[..., dict[str, Any]]) -> None:
    now = dt.datetime(2026, 3, 1, 8, 30, tzinfo=dt.UTC)
    results = []
    for seed in (11, 11, 12):
        target = empty_db()
        counts = gl.load_legacy(target, shape="supabase", users=700, seed=seed, now=now)
        with psycopg.connect(**target) as conn:
            results.append((gl.content_checksum(conn), {k: v for k, v in counts.items() if k != "seconds"}))
    assert results[0] == results[1]
    assert results[0][0]["public.profiles"] != results[2][0]["public.profiles"]


def test_cli_prints_json_counts_and_status(empty_db: Callable[..., dict[str, Any]], project_root: Any) -> None:
    import subprocess
    import sys

    target = empty_db()
    dsn = f"host={target['host']} port={target['port']} user={target['user']} dbname={target['dbname']}"
    env = {"PGPASSWORD": target["password"], "PATH": "/usr/bin:/bin"}
    script = str(project_root / "fixtures" / "generate_legacy.py")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, script, "--dsn", dsn, *args], capture_output=True, text=True, env=env, check=False)

    assert json.loads(run("--status", "--json").stdout)["state"] == "empty"
    loaded = run("--users", "120", "--shape", "seed", "--json")
    assert loaded.returncode == 0, loaded.stderr
    counts = json.loads(loaded.stdout)
    assert counts["users"] == 120 and counts["shape"] == "seed"
    status = json.loads(run("--status", "--json").stdout)
    assert status["state"] == "fixture" and status["manifest"]["counts"]["relationships"] == counts["relationships"]
    again = run("--users", "120")
    assert again.returncode == 2 and "already holds the legacy fixture" in again.stderr
    reset = run("--users", "80", "--reset", "--json")
    assert reset.returncode == 0, reset.stderr
    assert json.loads(run("--status", "--json").stdout)["manifest"]["users"] == 80
    assert target["password"] not in loaded.stdout + loaded.stderr + reset.stdout + reset.stderr


# --------------------------------------------------------------------------- the role / playbook


def _changed(output: str) -> int:
    match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", output)
    assert match, output[-3000:]
    return int(match.group(1))


def run_fixture(box: Sandbox, tmp_path: Path, variables: dict[str, Any], *args: str) -> tuple[int, str]:
    vars_file = tmp_path / "fixture-vars.json"
    vars_file.write_text(json.dumps(variables))
    vars_file.chmod(0o600)
    proc = box.playbook("playbooks/fixture.yml", "-e", f"@{vars_file}", *args, timeout=300)
    return proc.returncode, proc.stdout + proc.stderr


def test_fixture_playbook_loads_once_then_changes_nothing(
    sandbox: Sandbox, empty_db: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    target = empty_db()
    variables = {"legacy_fixture_db": target, "legacy_fixture_users": 150, "legacy_fixture_shape": "seed"}
    rc, out = run_fixture(sandbox, tmp_path, variables, "--check")
    assert rc == 0 and _changed(out) == 0 and "would load" in out, out[-3000:]
    with psycopg.connect(**target) as conn:
        assert gl.database_status(conn)["state"] == "empty", "check mode must not load anything"
    rc, out = run_fixture(sandbox, tmp_path, variables)
    assert rc == 0 and _changed(out) == 1, out[-3000:]
    assert "users: 150" in out and "orphan_relationships:" in out
    with psycopg.connect(**target) as conn:
        assert scalar(conn, "SELECT count(*) FROM public.profiles") == 150
        before = gl.content_checksum(conn)
    for extra in ((), ("--check",)):
        rc, again = run_fixture(sandbox, tmp_path, variables, *extra)
        assert rc == 0 and _changed(again) == 0 and "already loaded: kept" in again, again[-3000:]
    rc, other = run_fixture(sandbox, tmp_path, dict(variables, legacy_fixture_users=99))
    assert rc == 0 and _changed(other) == 0 and "Set legacy_fixture_reset=true to reload" in other
    with psycopg.connect(**target) as conn:
        assert gl.content_checksum(conn) == before
    rc, reset = run_fixture(sandbox, tmp_path, dict(variables, legacy_fixture_users=99, legacy_fixture_reset=True))
    assert rc == 0 and _changed(reset) == 1, reset[-3000:]
    with psycopg.connect(**target) as conn:
        assert scalar(conn, "SELECT count(*) FROM public.profiles") == 99
    for output in (out, again, other, reset):
        assert sandbox.password not in output


def test_fixture_playbook_refuses_foreign_data_and_non_sandbox_targets(
    sandbox: Sandbox, empty_db: Callable[..., dict[str, Any]], tmp_path: Path
) -> None:
    target = empty_db()
    with psycopg.connect(**target) as conn:
        conn.execute("CREATE TABLE public.precious (id int)")
    rc, out = run_fixture(sandbox, tmp_path, {"legacy_fixture_db": target, "legacy_fixture_users": 10})
    assert rc != 0 and "holds 1 tables/views that the fixture did not load" in out, out[-3000:]
    rc, out = run_fixture(sandbox, tmp_path, {"legacy_fixture_db": target, "vdp_environment": "production"})
    assert rc != 0 and "legacy_fixture_allow_non_sandbox" in out
    with psycopg.connect(**target) as conn:
        assert scalar(conn, "SELECT to_regclass('public.precious') IS NOT NULL")
    wrong = dict(target, password="Wr0ng-Fixture-Secret-9")
    rc, out = run_fixture(sandbox, tmp_path, {"legacy_fixture_db": wrong})
    assert rc != 0 and f"Cannot inspect {target['host']}:{target['port']}/{target['dbname']}" in out
    assert "Wr0ng-Fixture-Secret-9" not in out and sandbox.password not in out
