"""migrate.yml, the product's entry point, end to end on the sandbox: --check, a real run, a second run."""

from __future__ import annotations

from typing import Any

import psycopg

from tests.support.engine import fingerprint
from tests.support.sandbox import Sandbox
from tests.support.world import play, recap, record

PHASES = ["preflight", "backup", "rehearsal", "schema", "data", "validate"]


def test_check_mode_then_real_run_then_no_op(sandbox: Sandbox, world: dict[str, Any]) -> None:
    prod, stg = world["vdp_production_db"], world["vdp_staging_db"]
    before = fingerprint(prod, physical=True)

    # --check: every phase runs what it can read-only; production is not touched, not even rewritten in place.
    checked = play(sandbox, world, "migrate.yml", "--check")
    assert checked.returncode == 0, checked.stdout[-4000:]
    assert fingerprint(prod, physical=True) == before, "--check wrote to production"
    with psycopg.connect(**sandbox.pg("staging", "postgres")) as c:
        assert c.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (stg["dbname"],)).fetchone()[0] == 0

    # The real run migrates and validates, and says so in the run record.
    first = play(sandbox, world, "migrate.yml")
    assert first.returncode == 0, first.stdout[-4000:]
    run = record(world, "run")
    assert all(phase in run["phases"] for phase in PHASES), sorted(run["phases"])
    assert run["phases"]["rehearsal"]["status"] == "go" and record(world, "rehearsal")["go"] is True
    validate = record(world, "validate")
    assert run["phases"]["validate"]["status"] == "passed" and validate["valid"] is True and validate["failed_checks"] == []
    assert (world["run_dir"] / "run.md").read_text().count("| validate | passed |") == 1
    assert "validate           passed" in first.stdout  # the summary the operator reads
    with psycopg.connect(**prod) as c:
        assert c.execute("SELECT count(*) FROM public.profiles WHERE organization_id IS NULL").fetchone()[0] == 0

    # A second run is a no-op: nothing reported changed, no row written, backup and rehearsal skipped.
    after_first = fingerprint(prod, physical=True)
    second = play(sandbox, world, "migrate.yml")
    assert second.returncode == 0, second.stdout[-4000:]
    assert recap(second.stdout)["changed"] == 0, second.stdout[-4000:]
    assert fingerprint(prod, physical=True) == after_first, "the second run wrote rows"
    assert record(world, "preflight")["migration"]["state"] == "applied"
