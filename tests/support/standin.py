"""The sandbox's real stand-in virtue app (roles/sandbox/files/virtue_app.py) started by a test on its own port and
database (a world's clone), and the extra vars that make a playbook deploy to it, watch it and read it."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "roles" / "sandbox" / "files" / "virtue_app.py"
TOKEN = "deploy-test-admin-token-0123456789"


class StandIn:
    def __init__(self, folder: Path, db: dict[str, Any]) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        folder.mkdir(parents=True, exist_ok=True)
        secret = folder / "pg_password"
        secret.write_text(db["password"] + "\n")
        token = folder / "token"
        token.write_text(TOKEN + "\n")
        for path in (secret, token):
            path.chmod(0o600)
        config = dict(listen_host="127.0.0.1", listen_port=self.port, state_file=str(folder / "state.json"),
                      database=dict(host=db["host"], port=db["port"], dbname=db["dbname"], user=db["user"],
                                    password_file=str(secret)),
                      admin_token_file=str(token), initial_version="legacy-1")
        (folder / "config.json").write_text(json.dumps(config))
        self.log = folder / "app.log"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(APP), "--config", str(folder / "config.json")],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 20
        while True:
            try:
                self.call("GET", "/health")
                return
            except OSError:
                assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, method: str, path: str, body: Any = None, admin: bool = False) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {TOKEN}"} if admin else {})}
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            resp = conn.getresponse()
            text = resp.read().decode()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)


def app_vars(world: dict[str, Any], app: StandIn, folder: Path, name: str = "app-vars", release: str = "org-2.0",
             **extra: Any) -> str:
    """An extra-vars file: the world's settings, the stand-in as the deploy target (vdp_app), a short monitor gate on
    it (SQL on the world's database, HTTP probes of the app) and `extra`. Returns its path."""
    settings = dict(json.loads(Path(world["vars_file"]).read_text()))
    settings.update(
        vdp_app=dict(platform="none", maintenance="maintenance_mode", base_url=app.url, admin_token=TOKEN, release=release),
        vdp_monitor=dict(sql=dict(long_query_seconds=30),
                         http=dict(probes=[dict(name="health", url=f"{app.url}/health")])),
        monitor_period_seconds=4,
        monitor_interval_seconds=2,
    )
    settings.update(extra)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(settings))
    return str(path)
