"""playbooks/monitor.yml (role monitor) on the test sandbox: the monitoring schema applied through the ledger, the gate
run against the production clone, the sandbox's Prometheus and an HTTP server the test controls, monitor.json in the
run record (also in --check and when the gate fails), idempotence, and bad inventory input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg

from tests.support.monitor_servers import ControllableApp
from tests.support.world import play, recap, record


def gate_vars(sandbox: Any, app_url: str, folder: Path, **extra: Any) -> str:
    """The inventory's vdp_monitor for this test, as an extra-vars file."""
    settings = dict(
        vdp_monitor=dict(
            sql={},
            http=dict(probes=[dict(name="health", url=f"{app_url}/health")]),
            prometheus=dict(url=f"http://127.0.0.1:{sandbox.port_base + 15}", queries=[
                dict(name="prometheus_up", query='up{job="prometheus"}', threshold=1, comparison="lt"),
            ]),
        ),
        monitor_period_seconds=2,
        monitor_interval_seconds=1,
    )
    settings.update(extra)
    path = folder / "monitor_vars.json"
    path.write_text(json.dumps(settings))
    return f"@{path}"


def alert_rows(world: dict[str, Any]) -> list[tuple[Any, ...]]:
    with psycopg.connect(**world["vdp_production_db"]) as c:
        return c.execute("SELECT source, metric, severity, alert_timestamp FROM vdp_monitoring.alerts WHERE run_id = %s",
                         (world["vdp_run_id"],)).fetchall()


def test_monitor_playbook_passes_records_and_is_idempotent(sandbox: Any, world: dict[str, Any], tmp_path: Path) -> None:
    with ControllableApp() as app:
        extra = gate_vars(sandbox, app.url, tmp_path)
        first = play(sandbox, world, "playbooks/monitor.yml", "-e", extra)
        assert recap(first.stdout)["failed"] == 0, first.stdout[-4000:]
        second = play(sandbox, world, "playbooks/monitor.yml", "-e", extra)
        assert recap(second.stdout) == dict(recap(second.stdout), failed=0, changed=0), second.stdout[-4000:]
    result = record(world, "monitor")
    assert result["verdict"] == "pass" and result["phase"] == "monitor" and result["run_id"] == world["vdp_run_id"]
    assert set(result["sources"]) == {"sql", "http", "prometheus"}
    assert all(s["status"] == "ok" for s in result["sources"].values())
    assert result["samples"] and all(s["time"].endswith("Z") for s in result["samples"])
    for line in ("verdict PASS", "sql: 3 samples", "http: 3 samples", "prometheus: 3 samples"):
        assert line in first.stdout
    with psycopg.connect(**world["vdp_production_db"]) as c:
        versions = [r[0] for r in c.execute("SELECT version FROM vdp_runbook.schema_migrations")]
    assert versions == ["20250104_monitoring"]
    assert alert_rows(world) == []


def test_a_breach_fails_the_play_and_is_recorded_and_shown_in_check_mode(sandbox: Any, world: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    with ControllableApp(status=500) as app:
        extra = gate_vars(sandbox, app.url, tmp_path)
        dry = play(sandbox, world, "playbooks/monitor.yml", "-e", extra, "--check")
        dry_record = record(world, "monitor")
        real = play(sandbox, world, "playbooks/monitor.yml", "-e", extra)
    # A dry run samples once and says what it saw, but never fails (the platform it reads is not migrated yet).
    assert recap(dry.stdout)["failed"] == 0 and "verdict BREACH" in dry.stdout, dry.stdout[-3000:]
    assert dry_record["verdict"] == "breach" and dry_record["check_mode"] is True
    assert dry_record["migration_pending"] == ["20250104_monitoring"]  # --check applied nothing
    assert recap(real.stdout)["failed"] == 1 and "on_breach=fail: roll back" in real.stdout
    result = record(world, "monitor")
    assert result["verdict"] == "breach" and result["check_mode"] is False and result["stopped_early"]
    assert result["alerts"]["written"] == 1
    rows = alert_rows(world)
    assert [(r[0], r[1], r[2]) for r in rows] == [("http", "health.error", "critical")] and rows[0][3] is not None


def test_bad_gate_settings_are_named_in_the_operators_words(sandbox: Any, world: dict[str, Any], tmp_path: Path) -> None:
    extra = gate_vars(sandbox, "http://127.0.0.1:9", tmp_path, vdp_monitor=dict(http=dict(probes=[dict(url="http://x")])))
    missing = play(sandbox, world, "playbooks/monitor.yml", "-e", extra)
    assert recap(missing.stdout)["failed"] == 1
    assert "monitor_sources" in missing.stdout and "name" in missing.stdout
    empty = play(sandbox, world, "playbooks/monitor.yml", "-e", gate_vars(sandbox, "", tmp_path, vdp_monitor={}))
    assert recap(empty.stdout)["failed"] == 1 and "configures no source" in empty.stdout
    with psycopg.connect(**world["vdp_production_db"]) as c:
        assert c.execute("SELECT to_regnamespace('vdp_monitoring')").fetchone()[0] is None  # changed nothing
