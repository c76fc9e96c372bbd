"""The sandbox's notice sink: a real SMTP server (aiosmtpd) and a webhook receiver that keep every message as a file.

    python notice_sink.py --dir SANDBOX/mail --smtp-port 15448 --http-port 15449

- SMTP on 127.0.0.1:<smtp-port>: every accepted mail becomes one ``.eml`` file, its envelope sender and recipients
  added on top as ``X-Sink-Mail-From`` / ``X-Sink-Rcpt-To`` headers (Bcc recipients are only in the envelope).
- HTTP on 127.0.0.1:<http-port>: every POST becomes one ``.json`` file ``{received_at, path, content_type, body}``
  (``body`` is the parsed JSON, or the text when it is not JSON), answered ``200 ok`` as Slack's incoming webhooks do;
  ``GET /healthz`` answers ``200 ok``. The query string and the request headers are not kept.

Files are written under a temporary name and renamed, so a reader never sees half a message. The sandbox role starts
this with vdp_sandbox_process (PID file) and stops it with SIGTERM. Sandbox only: it accepts mail for anyone.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

MAX_BODY = 1024 * 1024


class Store:
    """Writes each message as one file; names sort in arrival order."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._seq = itertools.count(1)
        self._lock = threading.Lock()

    def _name(self, suffix: str) -> Path:
        with self._lock:
            seq = next(self._seq)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
        return self.folder / f"{stamp}-{os.getpid()}-{seq:06d}{suffix}"

    def write(self, suffix: str, data: bytes) -> Path:
        target = self._name(suffix)
        temp = target.with_name("." + target.name + ".tmp")
        temp.write_bytes(data)
        os.chmod(temp, 0o640)
        os.replace(temp, target)
        return target

    def save_mail(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> Path:
        envelope = f"X-Sink-Mail-From: {mail_from}\r\nX-Sink-Rcpt-To: {', '.join(rcpt_tos)}\r\n".encode()
        return self.write(".eml", envelope + content)

    def save_post(self, path: str, content_type: str, raw: bytes) -> Path:
        text = raw.decode("utf-8", errors="replace")
        body: Any
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        record = {
            "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "path": path.split("?", 1)[0],
            "content_type": content_type,
            "body": body,
        }
        return self.write(".json", (json.dumps(record, indent=2, ensure_ascii=False) + "\n").encode())


class MailHandler:
    """aiosmtpd handler: accept every message and store it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        content = envelope.original_content or envelope.content or b""
        if isinstance(content, str):
            content = content.encode("utf-8")
        path = self.store.save_mail(envelope.mail_from or "", list(envelope.rcpt_tos), content)
        log(f"mail stored as {path.name} for {len(envelope.rcpt_tos)} recipient(s)")
        return "250 Message accepted for delivery"


def make_http_handler(store: Store) -> type[BaseHTTPRequestHandler]:
    class WebhookHandler(BaseHTTPRequestHandler):
        server_version = "vdp-notice-sink"

        def _reply(self, code: int, text: str) -> None:
            payload = text.encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] == "/healthz":
                self._reply(200, "ok")
            else:
                self._reply(404, "not found")

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._reply(413, "too large")
                return
            raw = self.rfile.read(length) if length else b""
            path = store.save_post(self.path, self.headers.get("Content-Type", ""), raw)
            log(f"webhook POST stored as {path.name}")
            self._reply(200, "ok")

        def log_message(self, format: str, *args: Any) -> None:
            # The request line may carry a webhook token: the access log is not kept.
            return

    return WebhookHandler


def log(line: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}", flush=True)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="SMTP + webhook sink of the embedded sandbox")
    parser.add_argument("--dir", required=True, type=Path, help="folder for the .eml and .json files")
    parser.add_argument("--smtp-port", required=True, type=int)
    parser.add_argument("--http-port", required=True, type=int)
    parser.add_argument("--host", default="127.0.0.1")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        from aiosmtpd.controller import Controller
    except ImportError:
        log("aiosmtpd is not installed in this Python: run 'make bootstrap' (requirements-dev.txt)")
        return 2
    args.dir.mkdir(parents=True, exist_ok=True)
    store = Store(args.dir)
    # The HTTP socket is bound first: once the SMTP port answers (what the sandbox role waits for), both do.
    httpd = ThreadingHTTPServer((args.host, args.http_port), make_http_handler(store))
    smtpd = Controller(MailHandler(store), hostname=args.host, port=args.smtp_port, ready_timeout=30)
    smtpd.start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=httpd.shutdown, daemon=True).start())
    log(f"notice sink: SMTP {args.host}:{args.smtp_port}, webhook http://{args.host}:{args.http_port}/, files in {args.dir}")
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        smtpd.stop()
        httpd.server_close()
        log("notice sink stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
