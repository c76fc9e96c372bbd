#!/usr/bin/python
# The monitor gate: samples the configured metric sources (PostgreSQL, HTTP probes, Prometheus,
# CloudWatch) for a period, judges them against the seed's alert thresholds, records breaches in
# vdp_monitoring.alerts and passes, warns or fails. The sources and the statistics live in
# module_utils/vdp_metrics*.py; this file is arguments, documentation and the decision.
"""Ansible module: the post-migration monitor gate against the seed's alert thresholds."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_monitor
short_description: Watch the platform for a period against the seed's alert thresholds (the monitor gate)
description:
  - Samples every configured source at t = 0, I(interval_seconds), 2 x I(interval_seconds) ... up to I(period_seconds),
    all sources in parallel, and keeps every sample with its UTC timestamp.
  - "Sources, each optional: I(sql) (the production database: connections against max_connections, long-running
    queries, lock waits, deadlocks and rollbacks since the gate started, recent sign-ins where C(last_sign_in_at)
    lives, Supabase's audit-log logins, pg_stat_statements' top queries when installed); I(http) (probes of the app:
    response time p50/p95/max and error ratio); I(prometheus) (instant queries through C(/api/v1/query)); I(cloudwatch)
    (C(AWS/RDS CPUUtilization) through boto3 C(get_metric_data))."
  - "Thresholds default to the seed's: login failure ratio > 5 %, API response time > 2 s (p95 of each probe's
    samples), DB CPU > 80 %, error ratio > 1 % (each probe's failed requests; any Prometheus query may name a threshold)."
  - A source that does not answer is C(unreachable) (no answer at all) or C(partial) (some samples unanswered), with
    the reason - never counted as passing. An HTTP probe that never got one answer is unreachable; once it has
    answered, a failed connection counts as an error.
  - "The verdict: C(breach) when any metric crossed its threshold; else C(inconclusive) when a source was unreachable or
    partial, or a judged metric had no data (e.g. a Prometheus ratio that is NaN because nothing happened); else C(pass)."
  - On a breach (and for unreachable sources) it inserts one row per finding into C(vdp_monitoring.alerts) (migration
    C(20250104_monitoring)) when that table exists, and fails (I(on_breach=fail), so the runbook's rollback runs) or
    warns. I(on_unreachable) does the same for an inconclusive verdict.
  - Secrets (database password, probe bodies and headers, Prometheus credentials) are never returned; URLs are shown
    without user information and with secret-looking query values masked. AWS keys are read by boto3 from its usual
    chain (C(AWS_ACCESS_KEY_ID) / C(AWS_SECRET_ACCESS_KEY) or an instance role), never from options.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres]
options:
  period_seconds:
    description: How long to watch.
    type: float
    default: 300
  interval_seconds:
    description: Time between two samples of every source.
    type: float
    default: 15
  sql:
    description:
      - Sample the database named by the connection options (leave out to skip). The same connection writes the alerts.
    type: dict
    suboptions:
      long_query_seconds:
        description: A query (or a transaction left idle) older than this counts as long-running.
        type: float
        default: 60
      sign_in_window_minutes:
        description: Sign-ins counted over this many minutes (sampled at most once a minute).
        type: int
        default: 60
      statement_timeout:
        description: C(statement_timeout) of the gate's session, so a sample never hangs on a sick server.
        type: str
        default: 5s
  http:
    description: Probe the application over HTTP (leave out to skip).
    type: dict
    suboptions:
      probes:
        description: The requests made once per sample.
        type: list
        elements: dict
        required: true
        suboptions:
          name:
            description: Probe name (unique); metrics are C(http.<name>.response_seconds) and C(http.<name>.error).
            type: str
            required: true
          url:
            description: URL to request.
            type: str
            required: true
          method:
            description: HTTP method.
            type: str
            default: GET
          body:
            description: Request body; a dict or list is sent as JSON. Never returned (it may hold credentials).
            type: raw
          headers:
            description: Request headers (for example an API key). Never returned.
            type: dict
          expect_status:
            description: Status codes that count as a good answer; anything else, or no answer, is an error.
            type: list
            elements: int
            default: [200]
          timeout_seconds:
            description: An answer slower than this is an error (its response time counts as the timeout).
            type: float
            default: 10
          validate_certs: &validate_certs
            description: Verify TLS certificates.
            type: bool
            default: true
  prometheus:
    description: Instant queries against a Prometheus server's HTTP API (leave out to skip).
    type: dict
    suboptions:
      url:
        description: Base URL of the Prometheus server (C(/api/v1/query) is appended).
        type: str
        required: true
      queries:
        description:
          - "PromQL instant queries. Each sample takes the worst series of the result (max, or min for C(lt)/C(le)).
            Examples: DB host CPU from node_exporter C(1 - avg(rate(node_cpu_seconds_total{mode=\"idle\"}[5m]))) with
            threshold C(db_cpu_ratio); login failure ratio on hosted Supabase (its metrics endpoint scraped by your
            Prometheus) C(sum(rate(gotrue_compare_hash_and_password_completed_total{match=\"false\"}[5m])) /
            sum(rate(gotrue_compare_hash_and_password_completed_total[5m]))), in the sandbox
            C(sum(rate(virtue_login_attempts_total{result=\"failure\"}[5m])) / sum(rate(virtue_login_attempts_total[5m])))
            with threshold C(login_failure_ratio)."
          - A query Prometheus rejects as invalid fails the module before any sampling.
        type: list
        elements: dict
        required: true
        suboptions:
          name:
            description: Metric name (unique), C(prometheus.<name>).
            type: str
            required: true
          query:
            description: PromQL returning an instant vector or a scalar.
            type: str
            required: true
          threshold:
            description:
              - A number, or the name of one of I(thresholds) (C(login_failure_ratio), C(db_cpu_ratio), C(error_ratio) ...),
                which then takes that threshold's value. Leave out to report only.
            type: raw
          comparison:
            description: Breach when value C(gt) / C(ge) / C(lt) / C(le) the threshold.
            type: str
            choices: [gt, ge, lt, le]
            default: gt
          unit:
            description: C(ratio) (shown as %), C(s), or any word used when printing the value.
            type: str
            default: ""
      timeout_seconds:
        description: Timeout of each query.
        type: float
        default: 10
      validate_certs: *validate_certs
      headers:
        description: Extra request headers (for example C(Authorization)). Never returned.
        type: dict
      username:
        description: Basic-auth user.
        type: str
      password:
        description: Basic-auth password. Never returned.
        type: str
  cloudwatch:
    description: An RDS instance's CloudWatch metric (leave out to skip). Credentials from the AWS environment.
    type: dict
    suboptions:
      region:
        description: AWS region of the instance.
        type: str
        required: true
      db_instance_identifier:
        description: The C(DBInstanceIdentifier) dimension.
        type: str
        required: true
      endpoint_url:
        description: CloudWatch endpoint (default the region's); for VPC endpoints and tests.
        type: str
      metric_name:
        description: Metric of the C(AWS/RDS) namespace, in percent.
        type: str
        default: CPUUtilization
      statistic:
        description: Statistic of each period.
        type: str
        default: Average
        choices: [Average, Maximum, Minimum]
      period:
        description: Period of the datapoints in seconds (RDS publishes every 60 s).
        type: int
        default: 60
      lookback_seconds:
        description: Each sample takes the latest datapoint of this window.
        type: int
        default: 600
      timeout_seconds:
        description: Connect and read timeout of each call.
        type: float
        default: 10
  thresholds:
    description:
      - The limits. The seed's four have defaults here (the only place they are set); the others are report-only
        unless given. Ratios are fractions (0.05 = 5 %).
    type: dict
    suboptions:
      login_failure_ratio:
        description: Failed logins / all logins.
        type: float
        default: 0.05
      api_response_seconds:
        description: p95 response time of each HTTP probe.
        type: float
        default: 2.0
      db_cpu_ratio:
        description: Database CPU (CloudWatch, or a Prometheus query naming it).
        type: float
        default: 0.8
      error_ratio:
        description: Failed requests / all requests of each HTTP probe (or a Prometheus query naming it).
        type: float
        default: 0.01
      connection_usage_ratio:
        description: Client connections / max_connections.
        type: float
      long_running_queries:
        description: Number of long-running queries.
        type: float
      lock_waits:
        description: Number of sessions waiting for a lock.
        type: float
      deadlocks:
        description: Deadlocks since the gate started.
        type: float
  on_breach:
    description: C(fail) fails the task on a breach (the runbook's rollback runs); C(warn) only warns.
    type: str
    choices: [fail, warn]
    default: fail
  on_unreachable:
    description: What an inconclusive verdict (unreachable or partial source, judged metric without data) does.
    type: str
    choices: [fail, warn]
    default: warn
  stop_on_breach:
    description: With I(on_breach=fail), stop sampling at the first breach instead of watching the whole period.
    type: bool
    default: true
  record_alerts:
    description: Insert breaches and unreachable sources into C(vdp_monitoring.alerts) (never in check mode).
    type: bool
    default: true
  run_id:
    description: The runbook run id, stored with each alert row.
    type: str
notes:
  - The HTTP probes' p95 is interpolated between the samples; with fewer than 20 samples it is close to the slowest one.
  - Supabase's C(auth.audit_log_entries) records successful logins only; the login failure ratio needs the auth
    server's metrics (Prometheus).
attributes:
  check_mode:
    support: full
    description: Samples and judges as usual; writes no alert row.
  diff_mode:
    support: none
    description: Nothing is changed but alert rows.
"""

EXAMPLES = r"""
- name: Watch the platform for 10 minutes after the deploy
  vdp_monitor:
    period_seconds: 600
    interval_seconds: 15
    run_id: "{{ vdp_run_id }}"
    db: "{{ vdp_production_db }}"
    sql: {}
    http:
      probes:
        - {name: health, url: "https://app.example.org/health"}
    prometheus:
      url: http://prometheus.internal:9090
      queries:
        - name: db_cpu
          query: 1 - avg(rate(node_cpu_seconds_total{mode="idle", instance="db1:9100"}[5m]))
          threshold: db_cpu_ratio
          unit: ratio
    cloudwatch:
      region: eu-west-1
      db_instance_identifier: virtue-production
  register: gate

- name: Only warn, with a stricter response-time limit
  vdp_monitor:
    period_seconds: 60
    interval_seconds: 5
    on_breach: warn
    record_alerts: false
    thresholds:
      api_response_seconds: 0.5
    http:
      probes:
        - {name: login, url: "http://127.0.0.1:15444/login", method: POST, body: {email: someone@example.org}}
"""

RETURN = r"""
verdict:
  description: C(pass), C(breach) or C(inconclusive).
  returned: always
  type: str
  sample: pass
breaches:
  description:
    - Metrics over their threshold
      ([{source, metric, statistic, value, threshold, threshold_name, comparison, severity, message}]).
  returned: always
  type: list
  elements: dict
unreachable:
  description: Sources that did not answer every sample ([{source, status, reason, samples_failed, samples_ok}]).
  returned: always
  type: list
  elements: dict
no_data:
  description: Judged metrics without a single value (C(source.metric)).
  returned: always
  type: list
  elements: str
sources:
  description: Per source - status (ok, partial, unreachable), what was measured, samples answered and failed, reason, notes.
  returned: always
  type: dict
metrics:
  description: Per metric (C(source.metric)) - samples, min, max, mean, p50, p95, last, the judged value, threshold, breached.
  returned: always
  type: dict
samples:
  description: Every sample ([{time (UTC), source, metric, value, detail}]).
  returned: always
  type: list
  elements: dict
summary:
  description: One line per source for the operator.
  returned: always
  type: list
  elements: str
alerts:
  description: Alert rows written ({table, written, ids, alert_timestamps, not_written}).
  returned: always
  type: dict
thresholds:
  description: The thresholds in force.
  returned: always
  type: dict
top_queries:
  description: pg_stat_statements' top queries by total time (in I(sources.sql)) when the extension is installed.
  returned: when the sql source ran
  type: list
  elements: dict
started:
  description: UTC time of the first sample.
  returned: always
  type: str
finished:
  description: UTC time the gate ended.
  returned: always
  type: str
stopped_early:
  description: Why sampling stopped before the period ended (the first breach), or null.
  returned: always
  type: str
"""

from dataclasses import asdict
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_metrics import (
    OPTIONAL_THRESHOLDS,
    SEED_THRESHOLDS,
    ConfigError,
    GateResult,
    Source,
    evaluate,
    first_breach,
    run_gate,
    samples_out,
    source_line,
)
from ansible.module_utils.vdp_metrics_cloudwatch import CloudWatchSource
from ansible.module_utils.vdp_metrics_http import HttpSource, PrometheusSource
from ansible.module_utils.vdp_metrics_sql import SqlSource, gate_application_name, write_alerts
from ansible.module_utils.vdp_pg import APPLICATION_NAME_PREFIX, apply_db, pg_connection_argument_spec

SOURCE_NAMES = ("sql", "http", "prometheus", "cloudwatch")


def _client_options() -> dict[str, Any]:
    """The HTTP client options of an HTTP probe and of the Prometheus source (documented once, &validate_certs)."""
    return dict(timeout_seconds=dict(type="float", default=10), validate_certs=dict(type="bool", default=True))


def _probe_options() -> dict[str, Any]:
    return dict(
        name=dict(type="str", required=True),
        url=dict(type="str", required=True),
        method=dict(type="str", default="GET"),
        body=dict(type="raw", no_log=True),
        headers=dict(type="dict", no_log=True),
        expect_status=dict(type="list", elements="int", default=[200]),
        **_client_options(),
    )


def _source_options() -> dict[str, Any]:
    return dict(
        sql=dict(type="dict", options=dict(
            long_query_seconds=dict(type="float", default=60),
            sign_in_window_minutes=dict(type="int", default=60),
            statement_timeout=dict(type="str", default="5s"),
        )),
        http=dict(type="dict", options=dict(probes=dict(type="list", elements="dict", required=True, options=_probe_options()))),
        prometheus=dict(type="dict", options=dict(
            url=dict(type="str", required=True),
            queries=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                query=dict(type="str", required=True),
                threshold=dict(type="raw"),
                comparison=dict(type="str", choices=["gt", "ge", "lt", "le"], default="gt"),
                unit=dict(type="str", default=""),
            )),
            **_client_options(),
            headers=dict(type="dict", no_log=True),
            username=dict(type="str"),
            password=dict(type="str", no_log=True),
        )),
        cloudwatch=dict(type="dict", options=dict(
            region=dict(type="str", required=True),
            db_instance_identifier=dict(type="str", required=True),
            endpoint_url=dict(type="str"),
            metric_name=dict(type="str", default="CPUUtilization"),
            statistic=dict(type="str", default="Average", choices=["Average", "Maximum", "Minimum"]),
            period=dict(type="int", default=60),
            lookback_seconds=dict(type="int", default=600),
            timeout_seconds=dict(type="float", default=10),
        )),
    )


def argument_spec() -> dict[str, Any]:
    spec = pg_connection_argument_spec()
    thresholds: dict[str, Any] = {name: dict(type="float", default=value) for name, value in SEED_THRESHOLDS.items()}
    thresholds.update({name: dict(type="float") for name in OPTIONAL_THRESHOLDS})
    spec.update(_source_options())
    spec.update(
        period_seconds=dict(type="float", default=300),
        interval_seconds=dict(type="float", default=15),
        thresholds=dict(type="dict", options=thresholds, apply_defaults=True),
        on_breach=dict(type="str", choices=["fail", "warn"], default="fail"),
        on_unreachable=dict(type="str", choices=["fail", "warn"], default="warn"),
        stop_on_breach=dict(type="bool", default=True),
        record_alerts=dict(type="bool", default=True),
        run_id=dict(type="str"),
    )
    return spec


def validate(params: dict[str, Any]) -> str | None:
    if not any(params.get(name) is not None for name in SOURCE_NAMES):
        return "no metric source configured: give at least one of sql, http, prometheus, cloudwatch (inventory: vdp_monitor)"
    if params["interval_seconds"] <= 0 or params["period_seconds"] < 0:
        return "interval_seconds must be > 0 and period_seconds >= 0"
    if params["period_seconds"] > 86400:
        return "period_seconds must be at most 86400 (one day): the gate holds the play while it watches"
    for name in ("login_failure_ratio", "db_cpu_ratio", "error_ratio", "connection_usage_ratio"):
        value = params["thresholds"].get(name)
        if value is not None and not 0 <= value <= 1:
            return f"thresholds.{name} is a ratio between 0 and 1 (0.05 = 5 %), got {value:g}"
    return None


def build_sources(params: dict[str, Any]) -> list[Source]:
    thresholds = params["thresholds"]
    sources: list[Source] = []
    if params.get("sql") is not None:
        sources.append(SqlSource(params, params["sql"], thresholds))
    if params.get("http") is not None:
        sources.append(HttpSource(params["http"], thresholds))
    if params.get("prometheus") is not None:
        prometheus = PrometheusSource(params["prometheus"], thresholds)
        prometheus.check()
        sources.append(prometheus)
    if params.get("cloudwatch") is not None:
        sources.append(CloudWatchSource(params["cloudwatch"], thresholds))
    return sources


def alert_rows(verdict: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [dict(b) for b in verdict.breaches]
    severity = "critical" if params["on_unreachable"] == "fail" else "warning"
    for u in verdict.unreachable:
        rows.append(dict(source=u["source"], metric="reachability", value=None, threshold=None, severity=severity,
                         message=f"source {u['source']} {u['status']}: {u['reason']}"))
    for key in verdict.no_data:
        source, _, metric = key.partition(".")
        message = f"{key}: no data in {params['period_seconds']:g} s - cannot tell whether it is within its threshold"
        rows.append(dict(source=source, metric=metric, value=None, threshold=None, severity=severity, message=message))
    return rows


def build_result(gate: GateResult, params: dict[str, Any], check_mode: bool) -> dict[str, Any]:
    metrics = gate.metrics()
    verdict = evaluate(gate, metrics, "critical" if params["on_breach"] == "fail" else "warning")
    rows = alert_rows(verdict, params)
    if check_mode:
        alerts: dict[str, Any] = dict(table="vdp_monitoring.alerts", written=0, ids=[],
                                      not_written=f"check mode: {len(rows)} alert row(s) not written")
    elif params["record_alerts"]:
        alerts = write_alerts(params, rows, params.get("run_id"))
    else:
        alerts = dict(table="vdp_monitoring.alerts", written=0, ids=[], not_written="record_alerts is false")
    sources = {name: state.report() for name, state in gate.states.items()}
    result: dict[str, Any] = dict(
        changed=alerts["written"] > 0,
        **asdict(verdict),  # verdict, breaches, unreachable, no_data: the result keys are the Verdict's fields
        sources=sources,
        metrics=metrics,
        samples=samples_out(gate),
        summary=[source_line(name, state, metrics) for name, state in gate.states.items()],
        alerts=alerts,
        thresholds=dict(params["thresholds"]),
        period_seconds=params["period_seconds"],
        interval_seconds=params["interval_seconds"],
        started=gate.started,
        finished=gate.finished,
        stopped_early=gate.stopped_early,
    )
    if "top_queries" in sources.get("sql", {}):
        result["top_queries"] = sources["sql"]["top_queries"]
    return result


def decide(module: AnsibleModule, result: dict[str, Any]) -> None:
    """Fail or warn as on_breach / on_unreachable say; exit otherwise."""
    p = module.params
    findings = [u["source"] + " " + u["status"] + ": " + u["reason"] for u in result["unreachable"]]
    findings += [f"{key}: no data" for key in result["no_data"]]
    if result["verdict"] == "breach":
        msg = "monitor gate BREACH: " + " | ".join(b["message"] for b in result["breaches"])
        if findings:
            msg += " (also: " + "; ".join(findings) + ")"
        if p["on_breach"] == "fail":
            module.fail_json(msg=msg + " -- on_breach=fail: roll back", **result)
        module.warn(msg)
    if findings:
        msg = "monitor gate cannot vouch for the platform (never a pass): " + "; ".join(findings)
        if p["on_unreachable"] == "fail" and result["verdict"] == "inconclusive":
            module.fail_json(msg=msg + " -- on_unreachable=fail", **result)
        module.warn(msg)
    module.exit_json(**result)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    params = apply_db(module.params)  # the inventory's db dict onto login_* (the engine modules do it in run_module)
    problem = validate(params)
    if problem:
        module.fail_json(msg=problem)
    if params.get("application_name") in (None, APPLICATION_NAME_PREFIX):
        params["application_name"] = gate_application_name(params.get("run_id"))
    try:
        sources = build_sources(params)
    except ConfigError as exc:
        module.fail_json(msg=f"monitor gate configuration: {exc} (inventory: vdp_monitor / monitor_sources)")
    stop_when = first_breach if params["on_breach"] == "fail" and params["stop_on_breach"] else None
    try:
        gate = run_gate(sources, params["period_seconds"], params["interval_seconds"], stop_when)
    except ConfigError as exc:  # e.g. a query that only turned out invalid once Prometheus answered
        module.fail_json(msg=f"monitor gate configuration: {exc} (inventory: vdp_monitor / monitor_sources)")
    finally:
        for src in sources:
            src.close()
    decide(module, build_result(gate, params, module.check_mode))


if __name__ == "__main__":
    main()
