"""Issue 12 item 3, the chaos suite's tiers in pytest (the full suite is `make chaos`, scripts/chaos.py).

After each fault the operator's re-run (README: the stale lease taken over, or the run stopped with stop.yml and
resumed) must leave exactly the database of an uninterrupted run - every table's content, per-run columns aside
(tests/support/chaos_content.py) - with no row lost or duplicated, the app on the new release, and no secret in any
output.

- The CI tier (`make test`): the reference run, then migrate.yml SIGKILLed at one random point as a whole process tree
  and at another as ansible-playbook alone (its module runs on), the two worlds side by side; 600 users in batches of
  100, no notification channel (as inventories/prod ships), the rehearsal skipped (`--skip-tags rehearsal`).
- The short suite (`make test-extended`, tests/extended.txt): 2,000 users, two kill points and production's
  PostgreSQL restarted in the middle of the data batches.

The kill points come from a fixed seed, printed; VDP_CHAOS_SEED=<n> replays or varies them. The rehearsal is skipped
in every run here, the reference included (its own tests cover it; the full suite keeps it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support.chaos import SETTINGS, Chaos, Outcome, table
from tests.support.chaos_faults import plan
from tests.support.sandbox import Sandbox

pytestmark = pytest.mark.slow

SEED = int(os.environ.get("VDP_CHAOS_SEED", "1201"))
SKIP_REHEARSAL = ("--skip-tags", "rehearsal")
# The CI tier's per-run settings, all of them inventory keys an operator has: smaller batches over a smaller fixture
# (the data step still runs in several batches), and no notification channel (vdp_notify: {}, as inventories/prod).
CI_SETTINGS = dict(SETTINGS, vdp_batch_size=100, vdp_notify={})


def _run(chaos: Chaos, kills: int, others: list[str], tmp_path: Path) -> tuple[list[Outcome], str]:
    outcomes = [chaos.run_reference()]
    faults = plan(SEED, kills, chaos.reference_tasks, others)
    print("plan: " + "; ".join(f.label for f in faults), flush=True)
    outcomes += chaos.run_faults(faults, jobs=2)
    text = table(outcomes)
    (tmp_path / "chaos.md").write_text(text + "\n")
    print(text)
    return outcomes, text


def _assert_converged(outcomes: list[Outcome], text: str) -> None:
    for outcome in outcomes[1:]:
        assert outcome.struck, f"the fault never struck (seed {SEED}): {outcome.fault}\n{text}"
        assert (outcome.converged, outcome.lost, outcome.duplicated) == (True, 0, 0), f"seed {SEED}\n{text}"


def test_ci_chaos_tier_a_killed_tree_and_a_killed_ansible_playbook_converge(
    sandbox: Sandbox, legacy_template: Callable[..., str], tmp_path: Path
) -> None:
    print(f"chaos seed {SEED} (replay: VDP_CHAOS_SEED={SEED} pytest tests/integration/test_chaos.py)")
    started = time.monotonic()
    chaos = Chaos(sandbox, legacy_template(users=600), tmp_path, SKIP_REHEARSAL, settings=dict(CI_SETTINGS))
    outcomes, text = _run(chaos, 2, [], tmp_path)
    print(f"CI chaos tier: {time.monotonic() - started:.0f} s")
    assert sorted(o.fault.split(" @")[0] for o in outcomes[1:]) == [
        "SIGKILL ansible-playbook alone",
        "SIGKILL process tree",
    ], text
    _assert_converged(outcomes, text)


def test_short_chaos_suite_converges_to_the_uninterrupted_run(
    sandbox: Sandbox, legacy_template: Callable[..., str], tmp_path: Path
) -> None:
    print(f"chaos seed {SEED} (replay: VDP_CHAOS_SEED={SEED} pytest tests/integration/test_chaos.py)")
    chaos = Chaos(sandbox, legacy_template(), tmp_path, SKIP_REHEARSAL)
    outcomes, text = _run(chaos, 2, ["pg_restart"], tmp_path)
    assert [o.fault.split(" @")[0] for o in outcomes[1:]].count("PostgreSQL restart mid data batches") == 1, text
    _assert_converged(outcomes, text)
