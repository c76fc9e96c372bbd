"""The monitor gate (vdp_monitor) against real servers: PostgreSQL of the test sandbox, its Prometheus 2.42 and
node_exporter (base+15/+16), an HTTP server the test makes slow or failing, a Prometheus the test stops mid-gate, and
a closed port. CloudWatch cannot run here: its test drives the real boto3 client against a small local DOUBLE of the
GetMetricData API (tests/support/monitor_servers.py) and checks the request boto3 really sent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.monitor_servers import CloudWatchDouble, ControllableApp, PrivatePrometheus, closed_port

ROOT = Path(__file__).resolve().parents[2]
MIGRATION = ROOT / "migrations" / "20250104_monitoring.sql"


def login_of(conn: dict[str, Any]) -> dict[str, Any]:
    return dict(login_host=conn["host"], login_port=conn["port"], login_db=conn["dbname"], login_user=conn["user"],
                login_password=conn["password"])


def alerts(conn: dict[str, Any], run_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(**conn) as c:
        return c.execute("SELECT source, metric, value, threshold, severity, message, alert_timestamp FROM vdp_monitoring.alerts "
                         "WHERE run_id = %s ORDER BY id", (run_id,)).fetchall()


@pytest.fixture
def monitored_db(legacy_db: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    """A legacy platform database with the monitoring schema applied (its SQL file, as psql -f would)."""
    conn = legacy_db()
    with psycopg.connect(**conn, autocommit=True) as c:
        c.execute(MIGRATION.read_text())
    return conn


def no_secret(result: dict[str, Any], *secrets: str) -> None:
    text = json.dumps(result)
    for secret in secrets:
        assert secret not in text, "a secret leaked into the module's result"


# --------------------------------------------------------------------------- the migration


def test_monitoring_migration_applies_is_idempotent_and_reverts(empty_db: Callable[..., dict[str, Any]],
                                                                  run_module: Callable[..., Any]) -> None:
    conn = empty_db()
    args = dict(login_of(conn), path=str(ROOT / "migrations"), versions=["20250104_monitoring"], capture_baseline=False)
    first = run_module("vdp_schema_migrations", args)
    assert not first.failed, first.get("msg")
    assert first.changed and [a["version"] for a in first["applied"]] == ["20250104_monitoring"]
    again = run_module("vdp_schema_migrations", args)
    assert not again.failed and not again.changed and again["pending"] == []
    with psycopg.connect(**conn, autocommit=True) as c:
        c.execute(MIGRATION.read_text())  # by hand a second time: idempotent too
        cols = dict(c.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                              "'vdp_monitoring' AND table_name = 'alerts'").fetchall())
        assert cols["alert_timestamp"] == "timestamp with time zone" and "timestamp" not in cols
        views = {r[0] for r in c.execute("SELECT viewname FROM pg_views WHERE schemaname = 'vdp_monitoring'")}
        # plain PostgreSQL: no auth schema, no pg_stat_statements -> only the views that make sense here
        assert views == {"connections", "long_running_queries", "lock_waits"}
        assert not c.execute("SELECT has_schema_privilege('public', 'vdp_monitoring', 'USAGE')").fetchone()[0]
        c.execute("INSERT INTO vdp_monitoring.alerts (run_id, source, metric, severity, message) "
                  "VALUES ('r', 'http', 'x', 'critical', 'kept')")
    reverted = run_module("vdp_schema_migrations", dict(args, state="reverted"))
    assert not reverted.failed and reverted["reverted"] == ["20250104_monitoring"]
    with psycopg.connect(**conn) as c:
        assert c.execute("SELECT to_regnamespace('vdp_monitoring')").fetchone()[0] is None
        kept = c.execute("SELECT message FROM vdp_runbook.reverted_monitoring_alerts").fetchall()
        assert kept == [("kept",)]


def test_views_adapt_to_a_supabase_shaped_platform(monitored_db: dict[str, Any]) -> None:
    with psycopg.connect(**monitored_db) as c:
        views = {r[0] for r in c.execute("SELECT viewname FROM pg_views WHERE schemaname = 'vdp_monitoring'")}
        assert "recent_sign_ins" in views and "top_queries" not in views
        source = c.execute("SELECT DISTINCT source FROM vdp_monitoring.recent_sign_ins").fetchall()
        assert source == [("auth.users.last_sign_in_at",)]
        for role in ("anon", "authenticated"):
            assert not c.execute("SELECT has_table_privilege(%s, 'vdp_monitoring.alerts', 'SELECT')", (role,)).fetchone()[0]


# --------------------------------------------------------------------------- SQL source


def test_sql_source_sees_long_queries_and_lock_waits_as_the_views_do(monitored_db: dict[str, Any],
                                                                      run_module: Callable[..., Any]) -> None:
    holder = psycopg.connect(**monitored_db, application_name="test-holder")
    holder.execute("LOCK TABLE public.profiles IN ACCESS EXCLUSIVE MODE")  # transaction left open
    holder_pid = holder.info.backend_pid
    waiter_pid: list[int] = []

    def wait() -> None:
        with psycopg.connect(**monitored_db, autocommit=True, application_name="test-waiter") as w:
            waiter_pid.append(w.info.backend_pid)
            w.execute("SELECT count(*) FROM public.profiles")

    thread = threading.Thread(target=wait)
    thread.start()
    try:
        time.sleep(1.5)
        result = run_module("vdp_monitor", dict(login_of(monitored_db), period_seconds=1, interval_seconds=1, run_id="t-sql",
                                                sql=dict(long_query_seconds=1), thresholds=dict(lock_waits=0), on_breach="warn"))
        with psycopg.connect(**monitored_db) as c:
            c.execute("SET vdp_monitoring.long_query_seconds = 1")
            long_pids = {r[0] for r in c.execute("SELECT pid FROM vdp_monitoring.long_running_queries")}
            view_waits = c.execute("SELECT waiting_pid, blocking_pids FROM vdp_monitoring.lock_waits").fetchall()
            recent = "SELECT count(*) FROM auth.users WHERE last_sign_in_at > now() - interval '60 minutes'"
            (signed_in,) = c.execute(recent).fetchone()
    finally:
        holder.rollback()
        holder.close()
        thread.join(timeout=30)
    assert not result.failed, result.get("msg")
    assert {holder_pid, waiter_pid[0]} <= long_pids
    assert (waiter_pid[0], [holder_pid]) in view_waits
    waits = [s for s in result["samples"] if s["metric"] == "lock_waits"]
    assert waits and waits[0]["value"] >= 1
    assert dict(pid=waiter_pid[0], blocked_by=[holder_pid]).items() <= waits[0]["detail"]["waits"][0].items()
    assert result["metrics"]["sql.long_running_queries"]["max"] >= 2
    assert result["verdict"] == "breach" and result["breaches"][0]["metric"] == "lock_waits"
    signs = [s for s in result["samples"] if s["metric"] == "recent_sign_ins"]
    assert signs[0]["value"] == signed_in and signs[0]["detail"]["source"] == "auth.users.last_sign_in_at"
    assert "pg_stat_statements not installed: top queries not sampled" in result["sources"]["sql"]["notes"]
    assert [(a[1], a[4]) for a in alerts(monitored_db, "t-sql")] == [("lock_waits", "warning")]
    no_secret(result, monitored_db["password"])


def test_a_stopped_database_is_unreachable_not_passing(run_module: Callable[..., Any]) -> None:
    port = closed_port()
    result = run_module("vdp_monitor", dict(login_host="127.0.0.1", login_port=port, login_db="virtue", login_user="postgres",
                                            login_password="not-the-password", period_seconds=1, interval_seconds=1, sql={},
                                            connect_timeout=2))
    assert not result.failed and result["verdict"] == "inconclusive"
    sql = result["sources"]["sql"]
    assert sql["status"] == "unreachable" and "connection refused" in sql["reason"].lower()
    assert result["alerts"]["written"] == 0 and "not recorded" in result["alerts"]["not_written"]
    no_secret(result, "not-the-password")


# --------------------------------------------------------------------------- HTTP source


def test_seed_response_time_breach_writes_an_alert_and_fails(monitored_db: dict[str, Any],
                                                             run_module: Callable[..., Any]) -> None:
    with ControllableApp(delay=2.2) as app:  # the seed's "API response time > 2 seconds", default threshold
        probe = dict(name="login", url=f"{app.url}/login", method="POST", body=dict(email="a@example.org", token="s3cr3t-body"))
        result = run_module("vdp_monitor", dict(login_of(monitored_db), period_seconds=0, interval_seconds=1, run_id="t-slow",
                                                http=dict(probes=[probe])))
        assert app.requests[0]["method"] == "POST" and json.loads(app.requests[0]["body"])["token"] == "s3cr3t-body"
    assert result.failed and "BREACH" in result["msg"] and "api_response_seconds" in result["msg"]
    assert result["verdict"] == "breach" and result["metrics"]["http.login.response_seconds"]["value"] > 2.0
    rows = alerts(monitored_db, "t-slow")
    assert [(r[0], r[1], r[3], r[4]) for r in rows] == [("http", "login.response_seconds", 2.0, "critical")]
    assert rows[0][6] is not None and rows[0][2] > 2.0
    assert result["alerts"]["written"] == 1 and result["alerts"]["ids"]
    no_secret(result, monitored_db["password"], "s3cr3t-body")


def test_a_failing_app_breaches_the_error_ratio_and_only_warns_with_warn(monitored_db: dict[str, Any],
                                                                         run_module: Callable[..., Any]) -> None:
    with ControllableApp(status=500) as app:
        probes = [dict(name="health", url=f"{app.url}/health")]
        result = run_module("vdp_monitor", dict(login_of(monitored_db), period_seconds=2, interval_seconds=1, run_id="t-500",
                                                on_breach="warn", http=dict(probes=probes)))
    assert not result.failed
    assert result["verdict"] == "breach" and result["metrics"]["http.health.error"]["value"] == 1.0
    assert "BREACH" in json.dumps(result.get("warnings", []))
    assert [(r[1], r[4]) for r in alerts(monitored_db, "t-500")] == [("health.error", "warning")]


def test_check_mode_samples_but_writes_no_alert_row(monitored_db: dict[str, Any], run_module: Callable[..., Any]) -> None:
    with ControllableApp(status=503) as app:
        result = run_module("vdp_monitor", dict(login_of(monitored_db), period_seconds=1, interval_seconds=1, run_id="t-check",
                                                on_breach="warn", http=dict(probes=[dict(name="health", url=app.url)])),
                            check=True)
        assert len(app.requests) == 2  # it did sample
    assert result["verdict"] == "breach" and not result.changed
    assert result["alerts"]["written"] == 0 and "check mode" in result["alerts"]["not_written"]
    assert alerts(monitored_db, "t-check") == []


def test_a_closed_port_is_unreachable_never_a_pass(run_module: Callable[..., Any]) -> None:
    port = closed_port()
    args = dict(period_seconds=1, interval_seconds=1, record_alerts=False,
                http=dict(probes=[dict(name="app", url=f"http://127.0.0.1:{port}/health")]),
                prometheus=dict(url=f"http://127.0.0.1:{port}", queries=[dict(name="cpu", query="up", threshold="db_cpu_ratio")]))
    warned = run_module("vdp_monitor", args)
    assert not warned.failed and warned["verdict"] == "inconclusive"
    assert {u["source"]: u["status"] for u in warned["unreachable"]} == {"http": "unreachable", "prometheus": "unreachable"}
    assert "refused" in warned["sources"]["http"]["reason"].lower()
    assert warned["breaches"] == []  # a dead URL is not counted as a 100 % error rate either
    failed = run_module("vdp_monitor", dict(args, on_unreachable="fail"))
    assert failed.failed and "never a pass" in failed["msg"] and "on_unreachable=fail" in failed["msg"]


def when(condition: Callable[[], bool], then: Callable[[], Any], timeout: float = 60) -> threading.Thread:
    """Run `then` in a thread as soon as `condition` holds (so a busy machine cannot reorder the test's events)."""

    def watch() -> None:
        deadline = time.monotonic() + timeout
        while not condition() and time.monotonic() < deadline:
            time.sleep(0.05)
        then()

    thread = threading.Thread(target=watch)
    thread.start()
    return thread


def test_an_app_that_dies_mid_gate_counts_as_errors(run_module: Callable[..., Any]) -> None:
    app = ControllableApp()
    app.__enter__()
    url = f"{app.url}/health"
    watcher = when(lambda: len(app.requests) >= 2, app.__exit__)
    try:
        result = run_module("vdp_monitor", dict(period_seconds=4, interval_seconds=1, record_alerts=False, on_breach="warn",
                                                stop_on_breach=False, http=dict(probes=[dict(name="health", url=url)])))
    finally:
        watcher.join()
    assert result["sources"]["http"]["status"] == "ok"  # it answered: later refusals are the app's errors
    assert result["verdict"] == "breach" and 0 < result["metrics"]["http.health.error"]["value"] < 1


# --------------------------------------------------------------------------- Prometheus source


def prometheus_query(url: str, query: str) -> list[Any]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': query})}", timeout=5) as resp:  # noqa: S310
        return json.loads(resp.read())["data"]["result"]


@pytest.fixture
def sandbox_prometheus(sandbox: Any) -> str:
    """The test sandbox's Prometheus, once it has scraped node_exporter twice (irate needs two points)."""
    url = f"http://127.0.0.1:{sandbox.port_base + 15}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if prometheus_query(url, 'irate(node_cpu_seconds_total{mode="idle"}[30s])'):
                return url
        except OSError:
            pass
        time.sleep(1)
    pytest.fail(f"the sandbox's Prometheus at {url} has no node_exporter CPU data after 60 s")


@pytest.fixture
def cpu_burners() -> Iterator[None]:
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for proc in burners:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


CPU_QUERY = '1 - avg(irate(node_cpu_seconds_total{mode="idle"}[30s]))'


def test_prometheus_returns_the_hosts_real_cpu(sandbox_prometheus: str, run_module: Callable[..., Any]) -> None:
    result = run_module("vdp_monitor", dict(period_seconds=1, interval_seconds=1, record_alerts=False, on_breach="warn",
                                            prometheus=dict(url=sandbox_prometheus, queries=[
                                                dict(name="db_cpu", query=CPU_QUERY, threshold="db_cpu_ratio", unit="ratio"),
                                                dict(name="node_up", query='up{job="node"}', threshold=1, comparison="lt"),
                                            ])))
    assert result["sources"]["prometheus"]["status"] == "ok"
    cpu = result["metrics"]["prometheus.db_cpu"]
    assert cpu["samples"] == 2 and 0.0 <= cpu["min"] <= cpu["max"] <= 1.0 and cpu["threshold"] == 0.8
    assert result["metrics"]["prometheus.node_up"]["value"] == 1.0 and not result["metrics"]["prometheus.node_up"]["breached"]


def test_a_busy_database_host_breaches_db_cpu_and_stops_the_gate(sandbox_prometheus: str, cpu_burners: None,
                                                                 run_module: Callable[..., Any]) -> None:
    started = time.monotonic()
    result = run_module("vdp_monitor", dict(period_seconds=40, interval_seconds=1, record_alerts=False,
                                            prometheus=dict(url=sandbox_prometheus, queries=[
                                                dict(name="db_cpu", query=CPU_QUERY, threshold="db_cpu_ratio", unit="ratio")])))
    assert result.failed and result["verdict"] == "breach"
    assert result["breaches"][0]["metric"] == "db_cpu" and result["breaches"][0]["value"] > 0.8
    assert result["stopped_early"] and time.monotonic() - started < 35  # on_breach=fail: no need to watch on


def test_invalid_promql_is_refused_before_sampling(sandbox_prometheus: str, run_module: Callable[..., Any]) -> None:
    result = run_module("vdp_monitor", dict(period_seconds=30, prometheus=dict(url=sandbox_prometheus, queries=[
        dict(name="broken", query="sum(rate(node_cpu_seconds_total[5m])")])))
    assert result.failed and "not valid PromQL" in result["msg"] and "broken" in result["msg"]


def test_prometheus_stopped_mid_gate_is_reported(tmp_path: Path, run_module: Callable[..., Any]) -> None:
    prometheus = PrivatePrometheus(tmp_path / "prom").start()
    # Stopped once it has answered the module's check and two samples (its own request counter says so).
    watcher = when(lambda: prometheus.queries_answered() >= 3, prometheus.stop)
    try:
        result = run_module("vdp_monitor", dict(period_seconds=5, interval_seconds=1, record_alerts=False,
                                                prometheus=dict(url=prometheus.url, timeout_seconds=2, queries=[
                                                    dict(name="liveness", query="vector(1)", threshold=2)])))
    finally:
        watcher.join()
        prometheus.stop()
    state = result["sources"]["prometheus"]
    assert state["status"] == "partial" and state["samples_ok"] >= 2 and state["samples_failed"] >= 2
    assert "refused" in state["reason"].lower() and state["first_failure"]
    assert result["verdict"] == "inconclusive" and not result.failed
    assert "never a pass" in json.dumps(result.get("warnings", []))


# --------------------------------------------------------------------------- CloudWatch (a double: none can run here)


def aws_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_CONFIG_FILE="/nonexistent", AWS_SHARED_CREDENTIALS_FILE="/nonexistent", AWS_EC2_METADATA_DISABLED="true")
    env.update(extra)
    return env


def test_cloudwatch_contract_with_the_real_boto3_client(run_module: Callable[..., Any]) -> None:
    secret = "wJalrXUtnFEMI-test-secret-key"
    with CloudWatchDouble(values=[85.0, 40.0]) as double:
        result = run_module("vdp_monitor", dict(period_seconds=0, record_alerts=False, on_breach="warn",
                                                cloudwatch=dict(region="eu-west-1", db_instance_identifier="virtue-production",
                                                                endpoint_url=double.url)),
                            env=aws_env(AWS_ACCESS_KEY_ID="AKIDMONITORTEST", AWS_SECRET_ACCESS_KEY=secret))
    request = double.requests[0]
    assert request["operation"] == "GetMetricData"
    assert request["headers"]["X-Amz-Target"] == "GraniteServiceVersion20100801.GetMetricData"
    (query,) = request["body"]["MetricDataQueries"]
    assert query["MetricStat"]["Metric"] == dict(Namespace="AWS/RDS", MetricName="CPUUtilization",
                                                 Dimensions=[dict(Name="DBInstanceIdentifier", Value="virtue-production")])
    assert query["MetricStat"]["Period"] == 60 and query["MetricStat"]["Stat"] == "Average"
    assert request["body"]["EndTime"] - request["body"]["StartTime"] == pytest.approx(600, abs=1)
    assert "Credential=AKIDMONITORTEST/" in request["headers"]["Authorization"]
    assert "/eu-west-1/monitoring/aws4_request" in request["headers"]["Authorization"]
    sample = next(s for s in result["samples"] if s["metric"] == "cpu_ratio")
    assert sample["value"] == 0.85 and sample["detail"]["percent"] == 85.0
    assert result["verdict"] == "breach" and result["breaches"][0]["threshold_name"] == "db_cpu_ratio"
    no_secret(result, secret)


def test_cloudwatch_refusals_and_missing_credentials_are_unreachable(run_module: Callable[..., Any]) -> None:
    args = dict(period_seconds=0, record_alerts=False, cloudwatch=dict(region="eu-west-1", db_instance_identifier="db"))
    with CloudWatchDouble(error=(400, "AccessDenied", "User is not authorized to perform cloudwatch:GetMetricData")) as d:
        denied = run_module("vdp_monitor", dict(args, cloudwatch=dict(args["cloudwatch"], endpoint_url=d.url)),
                            env=aws_env(AWS_ACCESS_KEY_ID="AKIDX", AWS_SECRET_ACCESS_KEY="y"))
    cloudwatch = denied["sources"]["cloudwatch"]
    assert cloudwatch["status"] == "unreachable" and "AccessDenied" in cloudwatch["reason"]
    assert denied["verdict"] == "inconclusive"
    with CloudWatchDouble(values=[10.0]) as d:
        anonymous = run_module("vdp_monitor", dict(args, cloudwatch=dict(args["cloudwatch"], endpoint_url=d.url)), env=aws_env())
        assert d.requests == []
    assert "no AWS credentials" in anonymous["sources"]["cloudwatch"]["reason"]
