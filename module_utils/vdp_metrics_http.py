# The monitor gate's HTTP sources: synthetic probes of the app (response times and error rate, the
# seed's "API response time > 2 s" and "error rate > 1 %") and instant queries against a Prometheus
# server's HTTP API (/api/v1/query), e.g. node_exporter CPU or the auth server's login failures.
"""HTTP probe and Prometheus metric sources of the vdp_monitor gate."""

from __future__ import annotations

import json
import math
import time
import urllib.error
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ansible.module_utils.urls import open_url
from ansible.module_utils.vdp_metrics import (
    ConfigError,
    MetricSpec,
    Sample,
    SourceDefaults,
    SourceUnreachable,
    resolve_threshold,
    utc_now,
)

MAX_BODY = 1024 * 1024
# Each probe's two metrics: (metric, statistic judged, unit, threshold, label) - the seed's "API response time > 2 s"
# on the p95 of its response times, and "error rate > 1 %" on the share of its requests that failed.
PROBE_METRICS: tuple[tuple[str, str, str, str, str], ...] = (
    ("response_seconds", "p95", "s", "api_response_seconds", "p95"),
    ("error", "mean", "ratio", "error_ratio", "errors"),
)
_SECRET_WORDS = ("key", "token", "secret", "password", "passwd", "auth", "signature", "credential")


def redact_url(url: str) -> str:
    """The URL without user:password@ and with secret-looking query values masked (safe to print)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = urlencode(
        [(k, "********" if any(w in k.lower() for w in _SECRET_WORDS) else v) for k, v in parse_qsl(parts.query, True)]
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _reason(exc: BaseException) -> str:
    reason = getattr(exc, "reason", None) or exc
    text = str(reason).strip() or type(reason).__name__
    return text.splitlines()[0]


# --------------------------------------------------------------------------- HTTP probes


class HttpSource(SourceDefaults):
    """Each probe is requested once per sample; its response time and whether it answered as expected."""

    name = "http"

    def __init__(self, options: dict[str, Any], thresholds: dict[str, Any]) -> None:
        self.probes = options["probes"]
        self.thresholds = thresholds
        self.responses: dict[str, int] = {p["name"]: 0 for p in self.probes}
        self.connect_failures: dict[str, str] = {}
        # Connection failures of a probe that has not answered yet: errors once it answers, 'unreachable' if it never does.
        self.pending: dict[str, list[Sample]] = {p["name"]: [] for p in self.probes}
        names = [p["name"] for p in self.probes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"http.probes: probe names must be unique ({', '.join(duplicates)} repeated)")
        if not self.probes:
            raise ConfigError("http.probes is empty: list at least one probe {name, url}, or leave the http source out")

    def specs(self) -> list[MetricSpec]:
        return [
            MetricSpec(
                "http",
                f"{p['name']}.{metric}",
                statistic=statistic,
                unit=unit,
                threshold=self.thresholds.get(threshold),
                threshold_name=threshold,
                label=f"{p['name']} {label}",
            )
            for p in self.probes
            for metric, statistic, unit, threshold, label in PROBE_METRICS
        ]

    def describe(self) -> str:
        probes = ", ".join(f"{p['name']} ({p['method']} {redact_url(p['url'])})" for p in self.probes)
        return f"HTTP probes, one request each per sample: response time p50/p95/max and error ratio of {probes}"

    def sample(self) -> list[Sample]:
        out: list[Sample] = []
        for probe in self.probes:
            out.extend(self._probe(probe))
        return out

    def _probe(self, probe: dict[str, Any]) -> list[Sample]:
        now = utc_now()
        data, headers = _body(probe)
        start = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            resp = open_url(
                probe["url"],
                data=data,
                headers=headers,
                method=probe["method"],
                timeout=probe["timeout_seconds"],
                validate_certs=probe["validate_certs"],
                use_netrc=False,
                follow_redirects="safe",
            )
            resp.read(MAX_BODY)
            status = resp.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        except urllib.error.URLError as exc:  # no connection: DNS, refused, connect timeout, TLS
            where = redact_url(probe["url"])
            self.connect_failures[probe["name"]] = f"{probe['name']}: cannot connect to {where}: {_reason(exc)}"
            failed = Sample(now, "http", f"{probe['name']}.error", 1.0, dict(error=_reason(exc), connected=False))
            if self.responses[probe["name"]] == 0:
                self.pending[probe["name"]].append(failed)
                return []
            return [failed]
        except (TimeoutError, OSError) as exc:  # connected, but no (complete) answer in time
            error = f"no answer within {probe['timeout_seconds']:g} s" if isinstance(exc, TimeoutError) else _reason(exc)
        elapsed = time.monotonic() - start
        self.responses[probe["name"]] += 1
        earlier, self.pending[probe["name"]] = self.pending[probe["name"]], []
        ok = status is not None and status in probe["expect_status"]
        detail: dict[str, Any] = dict(status=status)
        if error:
            detail["error"] = error
        elif not ok:
            detail["error"] = f"HTTP {status}, expected {', '.join(str(s) for s in probe['expect_status'])}"
        return [
            *earlier,
            Sample(now, "http", f"{probe['name']}.response_seconds", round(elapsed, 4), dict(status=status)),
            Sample(now, "http", f"{probe['name']}.error", 0.0 if ok else 1.0, detail),
        ]

    def finish(self) -> dict[str, Any]:
        return dict(responses=dict(self.responses))

    def status_override(self) -> tuple[str, str] | None:
        """A probe that never got one HTTP answer is unreachable (not a 100 % error rate): its URL may be wrong."""
        silent = [name for name, n in self.responses.items() if n == 0]
        if not silent:
            return None
        reason = "; ".join(self.connect_failures.get(n, f"{n}: no answer") for n in silent)
        return ("unreachable" if len(silent) == len(self.responses) else "partial"), reason


def _body(probe: dict[str, Any]) -> tuple[bytes | None, dict[str, str]]:
    headers = dict(probe.get("headers") or {})
    body = probe.get("body")
    if body is None:
        return None, headers
    if isinstance(body, (dict, list)):
        headers.setdefault("Content-Type", "application/json")
        return json.dumps(body).encode(), headers
    return str(body).encode(), headers


# --------------------------------------------------------------------------- Prometheus


class PrometheusSource(SourceDefaults):
    """Instant queries (GET /api/v1/query); the worst series of a vector is the sample's value."""

    name = "prometheus"

    def __init__(self, options: dict[str, Any], thresholds: dict[str, Any]) -> None:
        self.url = options["url"].rstrip("/")
        self.options = options
        self.queries = []
        names = [q["name"] for q in options["queries"]]
        if not names:
            raise ConfigError("prometheus.queries is empty: list at least one {name, query}, or leave the prometheus source out")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"prometheus.queries: names must be unique ({', '.join(duplicates)} repeated)")
        for i, q in enumerate(options["queries"]):
            where = f"prometheus.queries[{i}] ({q['name']})"
            value, name = resolve_threshold(q.get("threshold"), thresholds, where)
            self.queries.append(dict(q, threshold_value=value, threshold_name=name))

    def specs(self) -> list[MetricSpec]:
        return [
            MetricSpec(
                "prometheus",
                q["name"],
                threshold=q["threshold_value"],
                threshold_name=q["threshold_name"],
                comparison=q["comparison"],
                unit=q.get("unit") or "",
                label=q["name"],
            )
            for q in self.queries
        ]

    def describe(self) -> str:
        queries = "; ".join(f"{q['name']} = {q['query']}" for q in self.queries)
        return f"Prometheus {redact_url(self.url)} instant queries: {queries}"

    def check(self) -> None:
        """Refuse queries Prometheus rejects as invalid, before any sampling (an unreachable server is no error here)."""
        for q in self.queries:
            try:
                self._query(q)
            except ConfigError:
                raise
            except SourceUnreachable:
                return

    def sample(self) -> list[Sample]:
        return [self._query(q) for q in self.queries]

    def _query(self, q: dict[str, Any]) -> Sample:
        now = utc_now()
        url = f"{self.url}/api/v1/query?{urlencode({'query': q['query']})}"
        try:
            resp = open_url(
                url,
                headers=self.options.get("headers") or {},
                timeout=self.options["timeout_seconds"],
                validate_certs=self.options["validate_certs"],
                url_username=self.options.get("username"),
                url_password=self.options.get("password"),
                force_basic_auth=bool(self.options.get("username")),
                use_netrc=False,
            )
            payload = json.loads(resp.read(MAX_BODY * 8))
        except urllib.error.HTTPError as exc:
            self._http_error(q, exc)
        except (urllib.error.URLError, OSError) as exc:
            raise SourceUnreachable(f"Prometheus at {redact_url(self.url)}: {_reason(exc)}") from None
        except ValueError:
            raise SourceUnreachable(f"Prometheus at {redact_url(self.url)} answered something that is not JSON") from None
        return self._parse(q, payload, now)

    def _http_error(self, q: dict[str, Any], exc: urllib.error.HTTPError) -> None:
        try:
            body = json.loads(exc.read(MAX_BODY))
        except ValueError:
            body = {}
        detail = body.get("error") or exc.reason
        if exc.code == 400 and body.get("errorType") == "bad_data":
            raise ConfigError(f"prometheus query {q['name']!r} is not valid PromQL: {detail} (query: {q['query']})")
        raise SourceUnreachable(f"Prometheus at {redact_url(self.url)}: HTTP {exc.code} for query {q['name']}: {detail}")

    def _parse(self, q: dict[str, Any], payload: dict[str, Any], now: str) -> Sample:
        if payload.get("status") != "success":
            raise SourceUnreachable(f"Prometheus query {q['name']} failed: {payload.get('error') or payload}")
        data = payload.get("data") or {}
        kind = data.get("resultType")
        if kind == "scalar":
            return Sample(now, "prometheus", q["name"], _number(data["result"][1]), dict(series=1))
        if kind != "vector":
            raise ConfigError(f"prometheus query {q['name']!r} returns a {kind}, not an instant vector or scalar: {q['query']}")
        series = [(s.get("metric") or {}, _number(s["value"][1])) for s in data.get("result") or []]
        values = [v for _, v in series if v is not None]
        detail: dict[str, Any] = dict(series=len(series))
        if len(series) > 1:
            detail["values"] = [dict(labels=labels, value=v) for labels, v in series[:5]]
        if not values:
            detail["no_data"] = "empty result" if not series else "NaN"
            return Sample(now, "prometheus", q["name"], None, detail)
        worst = min(values) if q["comparison"] in ("lt", "le") else max(values)
        return Sample(now, "prometheus", q["name"], worst, detail)


def _number(text: Any) -> float | None:
    """Prometheus sends sample values as strings; NaN (e.g. 0/0 with no traffic) is 'no data'."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
