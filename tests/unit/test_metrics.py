"""The monitor gate's engine without servers: statistics, thresholds, verdicts, the sampling schedule,
Prometheus answers as the HTTP API documents them, URL redaction, and vdp_monitor's input checks."""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ansible.module_utils as mu
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT / "module_utils") not in mu.__path__:
    mu.__path__.append(str(ROOT / "module_utils"))

m = importlib.import_module("ansible.module_utils.vdp_metrics")
mh = importlib.import_module("ansible.module_utils.vdp_metrics_http")


def sample(metric: str, value: float | None, source: str = "prometheus") -> Any:
    return m.Sample("2025-01-04T00:00:00.000Z", source, metric, value)


# --------------------------------------------------------------------------- statistics


def test_percentile_interpolates_like_numpy() -> None:
    values = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 3.0]
    assert m.percentile(values, 50) == pytest.approx(0.55)
    assert m.percentile(values, 95) == pytest.approx(0.9 + (3.0 - 0.9) * 0.55)
    assert m.percentile([1.5], 95) == 1.5


def test_summary_judges_the_statistic_the_spec_names() -> None:
    samples = [sample("x", v) for v in (0.2, 0.9, 0.4)]
    worst = m.summarize(m.MetricSpec("prometheus", "x", threshold=0.8), samples)
    assert worst["value"] == 0.9 and worst["breached"] is True
    mean = m.summarize(m.MetricSpec("prometheus", "x", statistic="mean", threshold=0.8), samples)
    assert mean["value"] == pytest.approx(0.5) and mean["breached"] is False
    low = m.summarize(m.MetricSpec("prometheus", "x", threshold=0.3, comparison="lt"), samples)
    assert low["value"] == 0.2 and low["breached"] is True


def test_no_data_is_never_a_pass_or_a_breach() -> None:
    spec = m.MetricSpec("prometheus", "ratio", threshold=0.05)
    summary = m.summarize(spec, [sample("ratio", None), sample("ratio", None)])
    assert summary["value"] is None and summary["breached"] is None and summary["no_data_samples"] == 2


def test_report_only_metric_never_breaches() -> None:
    summary = m.summarize(m.MetricSpec("sql", "connections"), [sample("connections", 99.0, "sql")])
    assert summary["breached"] is None


# --------------------------------------------------------------------------- thresholds


def test_a_query_may_name_one_of_the_gate_thresholds() -> None:
    thresholds = dict(m.SEED_THRESHOLDS, lock_waits=None)
    assert m.resolve_threshold("db_cpu_ratio", thresholds, "q") == (0.8, "db_cpu_ratio")
    assert m.resolve_threshold(0.3, thresholds, "q") == (0.3, None)
    assert m.resolve_threshold("0.25", thresholds, "q") == (0.25, None)
    assert m.resolve_threshold(None, thresholds, "q") == (None, None)
    assert m.resolve_threshold("lock_waits", thresholds, "q") == (None, "lock_waits")


def test_an_unknown_threshold_name_is_refused_with_the_known_ones() -> None:
    with pytest.raises(m.ConfigError, match=r"db_cpu_ratio.*error_ratio"):
        m.resolve_threshold("cpu_percent", m.SEED_THRESHOLDS, "prometheus.queries[0] (cpu)")
    with pytest.raises(m.ConfigError):
        m.resolve_threshold(True, m.SEED_THRESHOLDS, "q")


def test_the_seed_thresholds() -> None:
    assert m.SEED_THRESHOLDS == dict(login_failure_ratio=0.05, api_response_seconds=2.0, db_cpu_ratio=0.8, error_ratio=0.01)


# --------------------------------------------------------------------------- the gate loop and the verdict


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class ScriptedSource:
    """Answers the values in order; a string is 'unreachable' with that reason."""

    def __init__(self, name: str, answers: list[Any], spec: Any = None, cost: float = 0.0,
                 clock: FakeClock | None = None) -> None:
        self.name = name
        self.answers = list(answers)
        self.spec = spec
        self.cost = cost
        self.clock = clock
        self.calls = 0

    def specs(self) -> list[Any]:
        return [self.spec] if self.spec else []

    def describe(self) -> str:
        return f"scripted {self.name}"

    def sample(self) -> list[Any]:
        self.calls += 1
        if self.clock is not None:
            self.clock.now += self.cost
        answer = self.answers.pop(0) if self.answers else 0.0
        if isinstance(answer, str):
            raise m.SourceUnreachable(answer)
        return [m.Sample(m.utc_now(), self.name, "v", answer)]

    def notes(self) -> list[str]:
        return []

    def finish(self) -> dict[str, Any]:
        return {}

    def status_override(self) -> None:
        return None

    def close(self) -> None:
        return None


def gate(sources: list[Any], period: float = 4, interval: float = 1, clock: FakeClock | None = None, stop: Any = None) -> Any:
    clock = clock or FakeClock()
    return m.run_gate(sources, period, interval, stop, clock=clock, sleep=clock.sleep)


def test_samples_at_every_interval_up_to_the_period() -> None:
    src = ScriptedSource("a", [0.1] * 10, m.MetricSpec("a", "v", threshold=0.5))
    result = gate([src], period=4, interval=1)
    assert src.calls == 5  # t = 0, 1, 2, 3, 4
    verdict = m.evaluate(result, result.metrics(), "critical")
    assert verdict.verdict == "pass" and verdict.breaches == [] and verdict.unreachable == []


def test_a_slow_source_skips_slots_instead_of_bursting() -> None:
    clock = FakeClock()
    src = ScriptedSource("a", [0.1] * 10, clock=clock, cost=2.5)
    gate([src], period=6, interval=1, clock=clock)
    assert src.calls == 3  # 0 -> 2.5 (slot 3), 3 -> 5.5 (slot 6), 6 -> 8.5: past the period
    assert all(s >= 0 for s in clock.slept)


def test_a_breach_stops_the_gate_early_when_asked() -> None:
    src = ScriptedSource("a", [0.1, 0.9, 0.1, 0.1], m.MetricSpec("a", "v", threshold=0.5))
    result = gate([src], period=10, interval=1, stop=m.first_breach)
    assert src.calls == 2 and "a.v" in (result.stopped_early or "")
    verdict = m.evaluate(result, result.metrics(), "critical")
    assert verdict.verdict == "breach" and verdict.breaches[0]["value"] == 0.9 and verdict.breaches[0]["severity"] == "critical"


def test_an_unreachable_source_makes_the_verdict_inconclusive_never_pass() -> None:
    ok = ScriptedSource("a", [0.1] * 5, m.MetricSpec("a", "v", threshold=0.5))
    down = ScriptedSource("b", ["connection refused"] * 5, m.MetricSpec("b", "v", threshold=0.5))
    result = gate([ok, down], period=2)
    verdict = m.evaluate(result, result.metrics(), "critical")
    assert verdict.verdict == "inconclusive"
    assert verdict.unreachable == [dict(source="b", status="unreachable", reason="connection refused", samples_failed=3,
                                        samples_ok=0)]
    assert verdict.no_data == []  # b's metric is b's finding, not a separate one


def test_a_source_lost_mid_gate_is_partial() -> None:
    src = ScriptedSource("a", [0.1, 0.1, "connection refused", "connection refused"], m.MetricSpec("a", "v", threshold=0.5))
    result = gate([src], period=3)
    assert result.states["a"].status == "partial"
    assert m.evaluate(result, result.metrics(), "critical").verdict == "inconclusive"
    assert "FAILED" in m.source_line("a", result.states["a"], result.metrics())


def test_a_judged_metric_without_data_is_inconclusive() -> None:
    src = ScriptedSource("a", [None, None, None], m.MetricSpec("a", "v", threshold=0.05))
    result = gate([src], period=2)
    verdict = m.evaluate(result, result.metrics(), "warning")
    assert verdict.verdict == "inconclusive" and verdict.no_data == ["a.v"]


def test_breach_wins_over_unreachable() -> None:
    hot = ScriptedSource("a", [0.95] * 3, m.MetricSpec("a", "v", threshold=0.8))
    down = ScriptedSource("b", ["refused"] * 3)
    result = gate([hot, down], period=2)
    verdict = m.evaluate(result, result.metrics(), "warning")
    assert verdict.verdict == "breach" and verdict.unreachable and verdict.breaches[0]["severity"] == "warning"


# --------------------------------------------------------------------------- Prometheus answers


def prometheus_source(comparison: str = "gt") -> Any:
    options = dict(url="http://127.0.0.1:1/", queries=[dict(name="q", query="up", threshold="db_cpu_ratio",
                                                             comparison=comparison, unit="ratio")],
                   timeout_seconds=1, validate_certs=True)
    return mh.PrometheusSource(options, dict(m.SEED_THRESHOLDS))


def parse(src: Any, payload: dict[str, Any]) -> Any:
    return src._parse(src.queries[0], payload, "t")


def test_prometheus_vector_takes_the_worst_series() -> None:
    payload = {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": {"instance": "a"}, "value": [1435781451.781, "0.4"]},
        {"metric": {"instance": "b"}, "value": [1435781451.781, "0.7"]},
    ]}}
    assert parse(prometheus_source(), payload).value == 0.7
    assert parse(prometheus_source("lt"), payload).value == 0.4
    assert parse(prometheus_source(), payload).detail["series"] == 2


def test_prometheus_nan_and_empty_results_are_no_data() -> None:
    nan = {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [1, "NaN"]}]}}
    empty = {"status": "success", "data": {"resultType": "vector", "result": []}}
    assert parse(prometheus_source(), nan).value is None
    answered = parse(prometheus_source(), empty)
    assert answered.value is None and answered.detail["no_data"] == "empty result"


def test_prometheus_scalar_and_refused_result_types() -> None:
    scalar = {"status": "success", "data": {"resultType": "scalar", "result": [1, "0.25"]}}
    assert parse(prometheus_source(), scalar).value == 0.25
    with pytest.raises(m.ConfigError, match="matrix"):
        parse(prometheus_source(), {"status": "success", "data": {"resultType": "matrix", "result": []}})
    with pytest.raises(m.SourceUnreachable):
        parse(prometheus_source(), {"status": "error", "errorType": "timeout", "error": "query timed out"})


def test_prometheus_query_names_must_be_unique_and_thresholds_known() -> None:
    options = dict(url="http://x", queries=[dict(name="a", query="up", threshold=None, comparison="gt"),
                                            dict(name="a", query="up", threshold=None, comparison="gt")],
                   timeout_seconds=1, validate_certs=True)
    with pytest.raises(m.ConfigError, match="unique"):
        mh.PrometheusSource(options, dict(m.SEED_THRESHOLDS))
    options["queries"] = [dict(name="a", query="up", threshold="cpu", comparison="gt")]
    with pytest.raises(m.ConfigError, match=r"prometheus.queries\[0\] \(a\)"):
        mh.PrometheusSource(options, dict(m.SEED_THRESHOLDS))


def test_urls_are_printed_without_credentials() -> None:
    url = "https://monitor:s3cr3t@metrics.example.org:9443/api/v1/query?apikey=abc123&query=up"
    shown = mh.redact_url(url)
    assert "s3cr3t" not in shown and "abc123" not in shown and "monitor" not in shown
    assert shown.startswith("https://metrics.example.org:9443/api/v1/query?") and "query=up" in shown


# --------------------------------------------------------------------------- the module's input checks


def run(args: dict[str, Any]) -> dict[str, Any]:
    code = (
        "import runpy, sys; import ansible.module_utils as mu; mu.__path__.append(sys.argv[1]); "
        "sys.argv = [sys.argv[2]]; runpy.run_path(sys.argv[0], run_name='__main__')"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "module_utils"), str(ROOT / "library" / "vdp_monitor.py")],
                          input=json.dumps({"ANSIBLE_MODULE_ARGS": args}), capture_output=True, text=True, timeout=60,
                          check=False)
    return json.loads(proc.stdout[proc.stdout.index("{"):])


def test_no_source_is_refused_in_the_operators_words() -> None:
    out = run(dict(period_seconds=1))
    assert out["failed"] and "vdp_monitor" in out["msg"] and "sql, http, prometheus, cloudwatch" in out["msg"]


def test_a_ratio_threshold_given_in_percent_is_refused() -> None:
    out = run(dict(period_seconds=1, thresholds=dict(login_failure_ratio=5), http=dict(probes=[dict(name="a", url="http://x")])))
    assert out["failed"] and "login_failure_ratio" in out["msg"] and "0.05 = 5 %" in out["msg"]


def test_duplicate_probe_names_are_refused_before_any_request() -> None:
    probes = [dict(name="a", url="http://127.0.0.1:1/"), dict(name="a", url="http://127.0.0.1:1/")]
    out = run(dict(period_seconds=1, http=dict(probes=probes)))
    assert out["failed"] and "unique" in out["msg"] and "monitor_sources" in out["msg"]


def test_a_day_long_gate_judges_each_tick_in_bounded_time() -> None:
    """24 h at 15 s = 5760 ticks: checking for a breach at each tick must not rescan every sample every time."""
    import time

    spec = m.MetricSpec("a", "v", statistic="worst", threshold=0.9)
    src = ScriptedSource("a", [0.1] * 5760, spec)
    started = time.monotonic()
    result = gate([src], period=86385, interval=15, stop=m.first_breach)
    assert src.calls == 5760 and result.stopped_early is None
    assert time.monotonic() - started < 5


def test_the_thresholds_are_stated_once() -> None:
    """The module's documentation shows the argument spec's defaults; the role passes overrides only."""
    import yaml

    spec = importlib.util.spec_from_file_location("vdp_monitor_doc", ROOT / "library" / "vdp_monitor.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    documented = yaml.safe_load(module.DOCUMENTATION)["options"]["thresholds"]["suboptions"]
    coded = module.argument_spec()["thresholds"]["options"]
    assert {k: v.get("default") for k, v in documented.items()} == {k: v.get("default") for k, v in coded.items()}
    assert {k: v["default"] for k, v in coded.items() if "default" in v} == m.SEED_THRESHOLDS
    role = yaml.safe_load((ROOT / "roles" / "monitor" / "meta" / "argument_specs.yml").read_text())
    role_thresholds = role["argument_specs"]["main"]["options"]["monitor_thresholds"]["options"]
    assert set(role_thresholds) == set(coded) and all("default" not in v for v in role_thresholds.values())
    assert yaml.safe_load((ROOT / "roles" / "monitor" / "defaults" / "main.yml").read_text())["monitor_thresholds"] == {}


def test_the_role_checks_the_same_source_keys_the_module_takes() -> None:
    import yaml

    spec = importlib.util.spec_from_file_location("vdp_monitor_keys", ROOT / "library" / "vdp_monitor.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    coded = module.argument_spec()
    role = yaml.safe_load((ROOT / "roles" / "monitor" / "meta" / "argument_specs.yml").read_text())
    sources = role["argument_specs"]["main"]["options"]["monitor_sources"]["options"]

    def shape(options: dict[str, Any]) -> dict[str, Any]:
        return {k: (v.get("type"), shape(v["options"]) if "options" in v else None) for k, v in options.items()}

    assert set(sources) == {"sql", "http", "prometheus", "cloudwatch"}
    for name, role_spec in sources.items():
        assert shape(role_spec["options"]) == shape(coded[name]["options"]), name
