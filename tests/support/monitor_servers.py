"""Servers the monitor gate's tests start themselves.

- `ControllableApp`: a real HTTP server on 127.0.0.1 whose answers can be made slow or failing while a test runs.
- `CloudWatchDouble`: a small local DOUBLE of CloudWatch's GetMetricData API (no CloudWatch can run here). It speaks
  the wire protocol the pinned boto3/botocore (1.44) really uses for CloudWatch - awsJson1_0: POST / with
  `X-Amz-Target: GraniteServiceVersion20100801.GetMetricData`, `Content-Type: application/x-amz-json-1.0`, JSON bodies
  with epoch-second timestamps, errors as `{"__type", "message"}` plus `x-amzn-query-error` - and records each request,
  so a test checks what the real client sent (older botocore used the query protocol, Action=GetMetricData; newer
  models also list smithy-rpc-v2-cbor, which botocore ranks below JSON).
- `PrivatePrometheus`: Debian's prometheus on a free port with its own data folder, for tests that stop it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PROMETHEUS_BIN = "/usr/bin/prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A port nothing listens on (bound, then released): connections to it are refused."""
    return free_port()


class _Server:
    """A ThreadingHTTPServer on 127.0.0.1:<free port> in a daemon thread."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        owner = self

        class Handler(self.handler):  # type: ignore[name-defined, misc]
            server_owner = owner

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = int(self.httpd.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> _Server:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _AppHandler(BaseHTTPRequestHandler):
    server_owner: ControllableApp

    def log_message(self, *_args: object) -> None:
        return

    def _answer(self) -> None:
        app = self.server_owner
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        app.requests.append(dict(method=self.command, path=self.path, body=body.decode(errors="replace"),
                                 headers=dict(self.headers)))
        time.sleep(app.delay)
        payload = b'{"status": "ok"}' if app.status < 400 else b'{"error": "injected"}'
        self.send_response(app.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = _answer
    do_POST = _answer


class ControllableApp(_Server):
    """Answers every request with `status` after `delay` seconds; both can change while a test runs."""

    handler = _AppHandler

    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.requests: list[dict[str, Any]] = []
        super().__init__()


class _CloudWatchHandler(BaseHTTPRequestHandler):
    server_owner: CloudWatchDouble
    TARGET_PREFIX = "GraniteServiceVersion20100801."

    def log_message(self, *_args: object) -> None:
        return

    def _reply(self, status: int, payload: dict[str, Any], query_error: str | None = None) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.0")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "double-0001")
        if query_error:  # CloudWatch is awsQueryCompatible: the query-protocol error code rides in this header
            self.send_header("x-amzn-query-error", query_error)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        double = self.server_owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        target = self.headers.get("X-Amz-Target") or ""
        if self.path != "/" or not target.startswith(self.TARGET_PREFIX) or "x-amz-json-1.0" not in (
            self.headers.get("Content-Type") or ""
        ):
            self._reply(400, {"__type": "UnknownProtocol", "message": f"the double speaks awsJson1_0; got {self.path} {target}"})
            return
        body = json.loads(raw or b"{}")
        operation = target[len(self.TARGET_PREFIX):]
        double.requests.append(dict(operation=operation, headers=dict(self.headers), body=body))
        if double.error is not None:
            status, code, message = double.error
            self._reply(status, {"__type": f"com.amazonaws.cloudwatch#{code}", "message": message}, f"{code};Sender")
            return
        if operation != "GetMetricData":
            self._reply(400, {"__type": "InvalidAction", "message": f"the double implements GetMetricData only, not {operation}"})
            return
        self._reply(200, double.answer(body))


class CloudWatchDouble(_Server):
    """GetMetricData over awsJson1_0, answering `values` (percent, newest first) for every query."""

    handler = _CloudWatchHandler

    def __init__(self, values: list[float] | None = None, error: tuple[int, str, str] | None = None) -> None:
        self.values = [] if values is None else values
        self.error = error
        self.requests: list[dict[str, Any]] = []
        super().__init__()

    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        now = int(time.time()) // 60 * 60
        results = []
        for q in body.get("MetricDataQueries") or []:
            stamps = [now - 60 * i for i in range(len(self.values))]  # epoch seconds, as the JSON protocol sends them
            results.append(dict(Id=q["Id"], Label=q["MetricStat"]["Metric"]["MetricName"], Timestamps=stamps,
                                Values=list(self.values), StatusCode="Complete"))
        return dict(MetricDataResults=results, Messages=[])


class PrivatePrometheus:
    """Debian's prometheus on a free loopback port with a throwaway data folder; `stop()` kills exactly it."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> PrivatePrometheus:
        (self.folder / "data").mkdir(parents=True, exist_ok=True)
        config = self.folder / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s}\n"
            f"scrape_configs: [{{job_name: prometheus, static_configs: [{{targets: ['127.0.0.1:{self.port}']}}]}}]\n"
        )
        with open(self.folder / "prometheus.log", "ab") as log:
            self.proc = subprocess.Popen(
                [PROMETHEUS_BIN, f"--config.file={config}", f"--web.listen-address=127.0.0.1:{self.port}",
                 f"--storage.tsdb.path={self.folder / 'data'}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as resp:  # noqa: S310 - loopback
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"private prometheus did not become ready: see {self.folder / 'prometheus.log'}")

    def queries_answered(self) -> int:
        """Instant queries answered so far, from Prometheus' own request counter (0 once it is gone)."""
        try:
            with urllib.request.urlopen(f"{self.url}/metrics", timeout=1) as resp:  # noqa: S310 - loopback
                text = resp.read().decode()
        except OSError:
            return 0
        pattern = r'^prometheus_http_requests_total\{code="200",handler="/api/v1/query"\} (\d+)'
        found = re.search(pattern, text, re.MULTILINE)
        return int(found.group(1)) if found else 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
