# The monitor gate's engine: timestamped samples from metric sources, per-metric summaries,
# thresholds (the seed's four by default), breaches and the verdict. The sources themselves live in
# vdp_metrics_sql.py (PostgreSQL), vdp_metrics_http.py (HTTP probes, Prometheus) and
# vdp_metrics_cloudwatch.py (AWS/RDS); library/vdp_monitor.py wires them together.
"""Samples, summaries, thresholds and the verdict of the vdp_monitor gate."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

# The seed's alert thresholds ("Monitoring and Alerting"). The module's argument spec is the one
# place their defaults live; these names are what a Prometheus query's `threshold` may refer to.
SEED_THRESHOLDS: dict[str, float] = {
    "login_failure_ratio": 0.05,  # login failure rate > 5 %
    "api_response_seconds": 2.0,  # API response time > 2 seconds
    "db_cpu_ratio": 0.80,  # database CPU usage > 80 %
    "error_ratio": 0.01,  # application error rate > 1 %
}
# Report-only unless the inventory sets them (the seed names the metrics, not a limit).
OPTIONAL_THRESHOLDS = ("connection_usage_ratio", "long_running_queries", "lock_waits", "deadlocks")
COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda v, t: v > t,
    "ge": lambda v, t: v >= t,
    "lt": lambda v, t: v < t,
    "le": lambda v, t: v <= t,
}
COMPARISON_SIGNS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class SourceUnreachable(Exception):
    """A source gave no answer for this sample; the message says why (no secret)."""


class ConfigError(Exception):
    """Bad gate configuration; the message names the inventory key to fix."""


@dataclass
class Sample:
    """One observation of one metric at one time; value None = the source answered 'no data'."""

    time: str
    source: str
    metric: str
    value: float | None
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.source}.{self.metric}"


@dataclass
class MetricSpec:
    """How a metric is judged: which statistic of its samples against which threshold."""

    source: str
    metric: str
    statistic: str = "worst"  # worst (max for gt/ge, min for lt/le) | mean | p95
    threshold: float | None = None
    threshold_name: str | None = None
    comparison: str = "gt"
    unit: str = ""
    label: str = ""

    @property
    def key(self) -> str:
        return f"{self.source}.{self.metric}"


class Source(Protocol):
    name: str

    def specs(self) -> list[MetricSpec]: ...

    def sample(self) -> list[Sample]: ...

    def describe(self) -> str: ...

    def notes(self) -> list[str]: ...

    def finish(self) -> dict[str, Any]: ...

    def status_override(self) -> tuple[str, str] | None: ...

    def close(self) -> None: ...


class SourceDefaults:
    """What a source without extras answers, written once: no notes, nothing to add to its report at the end, its
    status from its samples alone, nothing to close. Each source class inherits it and overrides what it has."""

    def notes(self) -> list[str]:
        return []

    def finish(self) -> dict[str, Any]:
        return {}

    def status_override(self) -> tuple[str, str] | None:
        return None

    def close(self) -> None:
        return None


@dataclass
class SourceState:
    """What happened to one source over the gate: answered samples and failures."""

    name: str
    measured: str = ""
    ok: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    override: tuple[str, str] | None = None  # (status, reason) a source decides only at the end

    @property
    def status(self) -> str:
        if self.override is not None:
            return self.override[0]
        if self.failed == 0:
            return "ok"
        return "unreachable" if self.ok == 0 else "partial"

    def report(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(status=self.status, measured=self.measured, samples_ok=self.ok, samples_failed=self.failed)
        if self.override is not None:
            out["reason"] = self.override[1]
        elif self.failures:
            out["reason"] = self.failures[-1]["reason"]
            out["first_failure"] = self.failures[0]["time"]
            out["failures"] = self.failures[-10:]
        out["notes"] = self.notes
        out.update(self.extra)
        return out


# --------------------------------------------------------------------------- statistics


def percentile(values: list[float], pct: float) -> float:
    """Linear-interpolated percentile (numpy's default); with few samples p95 is close to the max."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * pct / 100.0
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def summarize(spec: MetricSpec, samples: list[Sample]) -> dict[str, Any]:
    """Count, min, max, mean, p50, p95, last of the metric's samples (None values = no data)."""
    values = [s.value for s in samples if s.value is not None]
    out: dict[str, Any] = dict(
        source=spec.source,
        metric=spec.metric,
        label=spec.label or spec.metric,
        unit=spec.unit,
        samples=len(samples),
        no_data_samples=len(samples) - len(values),
        statistic=spec.statistic,
        threshold=spec.threshold,
        threshold_name=spec.threshold_name,
        comparison=spec.comparison,
    )
    if values:
        out.update(
            min=min(values),
            max=max(values),
            mean=sum(values) / len(values),
            p50=percentile(values, 50),
            p95=percentile(values, 95),
            last=values[-1],
        )
        out["value"] = judged_value(spec, out)
    else:
        out["value"] = None
    out["breached"] = breached(spec, out["value"])
    return out


def judged_value(spec: MetricSpec, summary: dict[str, Any]) -> float:
    if spec.statistic == "mean":
        return summary["mean"]
    if spec.statistic == "p95":
        return summary["p95"]
    return summary["min"] if spec.comparison in ("lt", "le") else summary["max"]


def breached(spec: MetricSpec, value: float | None) -> bool | None:
    """True/False against the threshold; None when there is no threshold or no data."""
    if spec.threshold is None or value is None:
        return None
    return COMPARISONS[spec.comparison](value, spec.threshold)


# --------------------------------------------------------------------------- thresholds


def resolve_threshold(raw: Any, thresholds: dict[str, Any], where: str) -> tuple[float | None, str | None]:
    """A query's threshold: a number, or the name of one of the gate's thresholds (-> its value)."""
    if raw is None or raw == "":
        return None, None
    if isinstance(raw, bool):
        raise ConfigError(f"{where}: threshold must be a number or a threshold name, not {raw!r}")
    if isinstance(raw, (int, float)):
        return float(raw), None
    text = str(raw).strip()
    if text in thresholds:
        value = thresholds[text]
        return (None if value is None else float(value)), text
    try:
        return float(text), None
    except ValueError:
        names = ", ".join(sorted(thresholds))
        raise ConfigError(f"{where}: threshold {text!r} is neither a number nor one of the gate's thresholds ({names})") from None


def describe_breach(spec: MetricSpec, summary: dict[str, Any]) -> str:
    sign = COMPARISON_SIGNS[spec.comparison]
    what = {"worst": "worst sample", "mean": "mean", "p95": "p95"}[spec.statistic]
    name = f" ({spec.threshold_name})" if spec.threshold_name else ""
    return (
        f"{spec.key}: {what} {fmt(summary['value'], spec.unit)} {sign} threshold {fmt(spec.threshold, spec.unit)}{name} "
        f"over {summary['samples']} sample{'' if summary['samples'] == 1 else 's'}"
    )


def fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit == "ratio":
        return f"{value * 100:.2f} %"
    if unit == "s":
        return f"{value:.3f} s"
    if float(value).is_integer():
        return f"{int(value)}{' ' + unit if unit else ''}"
    return f"{value:.4g}{' ' + unit if unit else ''}"


# --------------------------------------------------------------------------- the gate


@dataclass
class GateResult:
    samples: list[Sample] = field(default_factory=list)
    states: dict[str, SourceState] = field(default_factory=dict)
    specs: dict[str, MetricSpec] = field(default_factory=dict)
    started: str = ""
    finished: str = ""
    stopped_early: str | None = None
    by_key: dict[str, list[Sample]] = field(default_factory=dict)
    touched: set[str] = field(default_factory=set)  # metrics sampled in the last tick

    def add(self, samples: list[Sample]) -> None:
        for s in samples:
            self.specs.setdefault(s.key, _spec_from_key(s.key))
            self.by_key.setdefault(s.key, []).append(s)
            self.touched.add(s.key)
        self.samples.extend(samples)

    def metrics(self, keys: set[str] | None = None) -> dict[str, dict[str, Any]]:
        """Summaries of every sampled or judged metric (or only of `keys`)."""
        judged = {key for key, spec in self.specs.items() if spec.threshold is not None}
        wanted = (set(self.by_key) | judged) if keys is None else keys
        return {key: summarize(self.specs.get(key) or _spec_from_key(key), self.by_key.get(key, [])) for key in sorted(wanted)}


def _spec_from_key(key: str) -> MetricSpec:
    source, _, metric = key.partition(".")
    return MetricSpec(source=source, metric=metric)


def sample_once(sources: list[Source], result: GateResult, pool: ThreadPoolExecutor) -> None:
    """One tick: every source sampled in parallel (a slow source does not delay the others)."""
    futures = {src.name: pool.submit(src.sample) for src in sources}
    result.touched = set()
    for name, future in futures.items():
        state = result.states[name]
        try:
            samples = future.result()
        except SourceUnreachable as exc:
            state.failed += 1
            state.failures.append(dict(time=utc_now(), reason=str(exc)))
            continue
        state.ok += 1
        result.add(samples)


def run_gate(
    sources: list[Source],
    period_seconds: float,
    interval_seconds: float,
    stop_when: Callable[[GateResult], str | None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> GateResult:
    """Sample every source at t = 0, interval, 2*interval ... <= period; stop early when stop_when says why."""
    result = GateResult(started=utc_now())
    for src in sources:
        result.states[src.name] = SourceState(name=src.name, measured=src.describe())
        for spec in src.specs():
            result.specs[spec.key] = spec
    start = clock()
    tick = 0
    with ThreadPoolExecutor(max_workers=max(1, len(sources))) as pool:
        while True:
            sample_once(sources, result, pool)
            if stop_when is not None:
                reason = stop_when(result)
                if reason:
                    result.stopped_early = reason
                    break
            tick += 1
            due = start + tick * interval_seconds
            if due - start > period_seconds + 1e-6:
                break
            now = clock()
            if now < due:
                sleep(due - now)
            else:  # a slow tick: skip the slots it overran, never sample in a burst
                tick = math.ceil((now - start) / interval_seconds)
                if tick * interval_seconds > period_seconds + 1e-6:
                    break
    for src in sources:
        state = result.states[src.name]
        state.extra.update(src.finish())
        state.notes.extend(src.notes())
        state.override = src.status_override()
    result.finished = utc_now()
    return result


# --------------------------------------------------------------------------- verdict


@dataclass
class Verdict:
    verdict: str
    breaches: list[dict[str, Any]]
    unreachable: list[dict[str, Any]]
    no_data: list[str]


def evaluate(result: GateResult, metrics: dict[str, dict[str, Any]], severity: str) -> Verdict:
    """pass only when every source answered every sample, every judged metric had data, and nothing breached."""
    breaches = [
        dict(
            source=m["source"],
            metric=m["metric"],
            statistic=m["statistic"],
            value=m["value"],
            threshold=m["threshold"],
            threshold_name=m["threshold_name"],
            comparison=m["comparison"],
            severity=severity,
            message=describe_breach(result.specs[key], m),
        )
        for key, m in metrics.items()
        if m["breached"]
    ]
    unreachable = [
        dict(source=name, status=st.status, reason=st.report()["reason"], samples_failed=st.failed, samples_ok=st.ok)
        for name, st in result.states.items()
        if st.status != "ok"
    ]
    # A judged metric without a value; metrics never sampled because their source was unreachable are that source's finding.
    blind = {name for name, st in result.states.items() if st.status != "ok"}
    no_data = [
        key
        for key, m in metrics.items()
        if m["threshold"] is not None and m["value"] is None and not (m["samples"] == 0 and m["source"] in blind)
    ]
    if breaches:
        verdict = "breach"
    elif unreachable or no_data:
        verdict = "inconclusive"
    else:
        verdict = "pass"
    return Verdict(verdict=verdict, breaches=breaches, unreachable=unreachable, no_data=no_data)


def first_breach(result: GateResult) -> str | None:
    """stop_when for on_breach=fail: the first breach among the metrics the last tick sampled.

    A 'worst sample' metric breaches when its newest sample does (no rescan of its history); a mean or p95 is
    summarised again.
    """
    for key in sorted(result.touched):
        spec = result.specs[key]
        if spec.threshold is None:
            continue
        if spec.statistic == "worst" and not breached(spec, result.by_key[key][-1].value):
            continue
        m = summarize(spec, result.by_key[key])
        if m["breached"]:
            return describe_breach(spec, m)
    return None


def samples_out(result: GateResult) -> list[dict[str, Any]]:
    out = []
    for s in result.samples:
        row = asdict(s)
        if not row["detail"]:
            row.pop("detail")
        out.append(row)
    return out


def source_line(name: str, state: SourceState, metrics: dict[str, dict[str, Any]]) -> str:
    """One line per source for the operator: what was measured and how it came out."""
    if state.status == "unreachable":
        return f"{name}: UNREACHABLE - {state.report()['reason']}"
    parts = []
    for m in metrics.values():
        if m["source"] != name:
            continue
        value = fmt(m["value"], m["unit"]) if m["value"] is not None else "no data"
        mark = ""
        if m["breached"]:
            mark = f" BREACH ({COMPARISON_SIGNS[m['comparison']]} {fmt(m['threshold'], m['unit'])})"
        elif m["threshold"] is not None and m["value"] is not None:
            mark = f" (limit {fmt(m['threshold'], m['unit'])})"
        parts.append(f"{m['label']} {value}{mark}")
    head = f"{name}: {state.ok} samples"
    if state.status == "partial" and state.failures:
        head += f", {state.failed} FAILED (from {state.failures[0]['time']}: {state.failures[-1]['reason']})"
    elif state.status == "partial":
        head += f", PARTLY UNREACHABLE ({state.report()['reason']})"
    return f"{head} - " + ("; ".join(parts) if parts else "no metric") + "".join(f" [{n}]" for n in state.notes)
