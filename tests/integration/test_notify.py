"""The communication plan (role notify): real mail to a real SMTP server (aiosmtpd), real webhook POSTs to a real HTTP
server, through ansible-playbook. Secrets (the SMTP password, the webhook URL's token) go in an extra-vars file, never
on argv, and must never show in the output or the record.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from tests.support import sandbox as sb

SMTP_USER = "notify-bot"
SMTP_PASSWORD = "Pw-9f3c1e-not-for-output"
TOKEN = "T0KEN-7d1c2b9a-e5f4"
NOTICES = ["pre_migration", "maintenance_start", "completion", "failure"]

CONTEXTS: dict[str, dict[str, Any]] = {
    "pre_migration": {"window_start": "Sunday 1 June, 02:00 UTC", "contact": "support@example.org"},
    "maintenance_start": {
        "phase": "data",
        "progress": {"phases": [{"name": "backup", "status": "done"}, {"name": "schema", "status": "done"},
                                {"name": "data", "status": "running"}, {"name": "deploy"}],
                     "detail": "memberships, batch 3 of 12"},
    },
    "completion": {
        "metrics": {"users_migrated": 9876, "assignments_created": 543, "validation_checks": 41, "validation_failed": 0,
                    "backup_location": "s3://vdp-backups/virtue/production/run-1/dump.pgc",
                    "durations": [{"name": "Schema and data migration on production", "seconds": 754, "budget_minutes": 30}]},
    },
    "failure": {
        "phase": "validate", "error": "2 profiles without an organization (postgresql://app:Dsn-Pw-42@db.internal/virtue)",
        "rollback": {"strategy": "feature flags only", "outcome": "completed", "detail": "flags off in 3 s"},
        "state": "the previous app version serves users again",
    },
}
# What each notice must say, given CONTEXTS (subject pattern, phrases of the body, phrase of the chat text).
EXPECTED: dict[str, tuple[str, list[str], str]] = {
    "pre_migration": (r"Scheduled maintenance on Sunday 1 June, 02:00 UTC: about 1 h 45 min",
                      ["When:              Sunday 1 June, 02:00 UTC", "Expected duration: about 1 h 45 min",
                       "Schema migration (database changes, data migration): 30 min", "maintenance page",
                       "Questions: support@example.org"],
                      "Scheduled maintenance on Sunday 1 June"),
    "maintenance_start": (r"Maintenance in progress: data \(50 %\)",
                          ["Now:      data - memberships, batch 3 of 12", "Progress: 50 %", "[x] backup", "[>] data",
                           "[ ] deploy"],
                          "data, 50 % done"),
    "completion": (r"Maintenance complete: the platform is back",
                   ["Users migrated: 9876", "Coach assignments created: 543", "Validation checks passed: 41 of 41",
                    "Schema and data migration on production: 12 min 34 s of a 30 min budget (41.9 %)",
                    "s3://vdp-backups/virtue/production/run-1/dump.pgc"],
                   "9876 users migrated; 543 coach assignments created; 41/41 validation checks passed"),
    "failure": (r"Maintenance problem: validate failed; rollback completed",
                ["What failed:   validate - 2 profiles without an organization", "Rollback:      feature flags only",
                 "Its outcome:   completed - flags off in 3 s",
                 "Current state: the previous app version serves users again"],
                "validate failed"),
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MailServer:
    port: int
    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # aiosmtpd's hook name
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.messages.append((list(envelope.rcpt_tos), message))  # type: ignore[arg-type]
        return "250 OK"

    def authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER \
            and auth_data.password.decode() == SMTP_PASSWORD
        if ok:
            self.logins.append(auth_data.login.decode())
        return AuthResult(success=ok)


@dataclass
class Hooks:
    port: int
    posts: list[dict[str, Any]] = field(default_factory=list)


@pytest.fixture(scope="module")
def smtp_server() -> Iterator[MailServer]:
    box = MailServer(port=free_port())
    controller = Controller(box, hostname="127.0.0.1", port=box.port, authenticator=box.authenticate,
                            auth_require_tls=False)
    controller.start()
    yield box
    controller.stop()


@pytest.fixture(scope="module")
def hooks() -> Iterator[Hooks]:
    """Slack-like receiver: .../ok answers 200 "ok", .../fail answers 500 "no_service"."""
    box = Hooks(port=free_port())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            box.posts.append({"path": self.path, "content_type": self.headers.get("Content-Type"), "body": json.loads(raw)})
            code, text = (500, b"no_service") if self.path.endswith("/fail") else (200, b"ok")
            self.send_response(code)
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)

        def log_message(self, *args: Any) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", box.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield box
    server.shutdown()
    server.server_close()


def channels(smtp_port: int, hook_port: int, hook: str = "ok", **extra: Any) -> dict[str, Any]:
    return {
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "from": "Platform team <platform@example.org>",
                 "to": ["virtue-users@example.org", "Support <support@example.org>"],
                 "username": SMTP_USER, "password": SMTP_PASSWORD, "timeout": 5},
        "webhook": {"url": f"http://127.0.0.1:{hook_port}/services/{TOKEN}/{hook}", "timeout": 5},
        **extra,
    }


def run_notices(tmp_path: Path, notices: list[str], vdp_notify: dict[str, Any], *args: str,
                contexts: dict[str, dict[str, Any]] | None = None) -> tuple[Any, Path]:
    """Run the role once per notice in one play (include_role in a loop), as migrate.yml calls it between phases."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True, exist_ok=True)
    playbook = tmp_path / "notices.yml"
    playbook.write_text(
        "- name: Send notices\n  hosts: localhost\n  gather_facts: false\n  roles: [run_context]\n  tasks:\n"
        "    - name: Send each notice\n      ansible.builtin.include_role:\n        name: notify\n"
        "      vars:\n        notify_notice: '{{ item }}'\n        notify_context: '{{ test_contexts[item] | default({}) }}'\n"
        "      loop: '{{ test_notices }}'\n"
    )
    # No database here: the play takes no run lease, as playbooks/notify.yml does not.
    extra = {"vdp_notify": vdp_notify, "vdp_run_dir": str(run_dir), "vdp_run_id": "notify-test", "run_context_lease": False,
             "test_notices": notices, "test_contexts": CONTEXTS if contexts is None else contexts}
    (tmp_path / "vars.json").write_text(json.dumps(extra))
    env = sb.playbook_env(tmp_path / "no-sandbox", 29430)
    proc = sb.run_playbook(playbook, "-e", f"@{tmp_path / 'vars.json'}", *args, env=env, timeout=300)
    assert_no_secret(proc.stdout + proc.stderr, run_dir)
    return proc, run_dir


def assert_no_secret(output: str, run_dir: Path) -> None:
    for secret in (SMTP_PASSWORD, TOKEN, "Dsn-Pw-42"):
        assert secret not in output, f"{secret} leaked in the output"
        for path in run_dir.rglob("*"):
            if path.is_file():
                assert secret not in path.read_text(), f"{secret} leaked in {path}"


def recap(output: str) -> dict[str, int]:
    match = re.search(r"localhost\s+:\s+ok=\d+\s+changed=(\d+)\s+unreachable=\d+\s+failed=(\d+).*rescued=(\d+)", output)
    assert match, output[-3000:]
    return dict(changed=int(match.group(1)), failed=int(match.group(2)), rescued=int(match.group(3)))


def record(run_dir: Path) -> list[dict[str, Any]]:
    return json.loads((run_dir / "notices.json").read_text())


def body_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


@pytest.mark.slow
def test_every_notice_arrives_by_mail_and_webhook(tmp_path: Path, smtp_server: MailServer, hooks: Hooks) -> None:
    smtp_server.messages.clear()
    smtp_server.logins.clear()
    hooks.posts.clear()
    proc, run_dir = run_notices(tmp_path, NOTICES, channels(smtp_server.port, hooks.port))
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout) == dict(changed=2 * len(NOTICES), failed=0, rescued=0), "each send is one change"
    assert len(smtp_server.messages) == len(NOTICES) and len(hooks.posts) == len(NOTICES)
    assert smtp_server.logins == [SMTP_USER] * len(NOTICES), "the mail module authenticated with the password"

    entries = record(run_dir)
    assert [e["notice"] for e in entries] == NOTICES
    for notice, (rcpts, message), post, entry in zip(NOTICES, smtp_server.messages, hooks.posts, entries, strict=True):
        subject_re, phrases, chat = EXPECTED[notice]
        assert re.search(subject_re, str(message["Subject"])), (notice, message["Subject"])
        assert str(message["Subject"]).startswith("[Virtue platform] ")
        assert sorted(rcpts) == ["support@example.org", "virtue-users@example.org"]
        assert "Support <support@example.org>" in str(message["To"])
        assert str(message["From"]) == "Platform team <platform@example.org>"
        assert message["X-VDP-Notice"] == notice and message["X-VDP-Run-Id"] == "notify-test"
        body = body_of(message)
        for phrase in phrases:
            assert phrase in body, (notice, phrase, body)
        assert post["path"] == f"/services/{TOKEN}/ok" and post["content_type"] == "application/json"
        assert set(post["body"]) == {"text"} and chat in post["body"]["text"], post
        assert entry["channels"] == [{"channel": "smtp", "status": "sent", "recipients": 2},
                                     {"channel": "webhook", "status": "sent"}]
        assert entry["subject"] == str(message["Subject"]) and entry["chat_text"] == post["body"]["text"]
        text = (run_dir / "notices" / f"{notice}.txt").read_text()
        assert text.startswith(f"Subject: {entry['subject']}\n\n") and phrases[0] in text
    # A DSN's password in the failure context is masked in what is sent and what is recorded.
    assert "postgresql://<redacted>@db.internal/virtue" in body_of(smtp_server.messages[3][1])


def test_render_only_and_check_mode_send_nothing(tmp_path: Path, smtp_server: MailServer, hooks: Hooks) -> None:
    smtp_server.messages.clear()
    hooks.posts.clear()
    dry, run_dir = run_notices(tmp_path / "dry", ["pre_migration"], channels(smtp_server.port, hooks.port, render_only=True))
    checked, check_dir = run_notices(tmp_path / "check", ["completion"], channels(smtp_server.port, hooks.port), "--check")
    for proc, folder, notice, reason in ((dry, run_dir, "pre_migration", "render_only"),
                                         (checked, check_dir, "completion", "check mode")):
        assert proc.returncode == 0, proc.stdout[-4000:]
        assert recap(proc.stdout)["changed"] == 0, "rendering only is no change"
        (entry,) = record(folder)
        assert entry["channels"] == [{"channel": "smtp", "status": "rendered_only", "reason": reason},
                                     {"channel": "webhook", "status": "rendered_only", "reason": reason}]
        assert entry["check_mode"] is (reason == "check mode")
        assert (folder / "notices" / f"{notice}.txt").read_text().startswith("Subject: [Virtue platform] ")
    time.sleep(0.5)
    assert smtp_server.messages == [] and hooks.posts == [], "a dry run sent something"


def test_a_notice_that_cannot_be_sent_never_fails_the_play(tmp_path: Path, hooks: Hooks) -> None:
    hooks.posts.clear()
    closed = free_port()  # nothing listens there
    # SMTP down + webhook answering 500; then webhook unreachable (and still no mail server).
    failing, run_dir = run_notices(tmp_path, ["failure", "completion"], channels(closed, hooks.port, hook="fail"))
    assert failing.returncode == 0, failing.stdout[-4000:]
    assert recap(failing.stdout) == dict(changed=0, failed=0, rescued=4)
    assert len(hooks.posts) == 2, "the webhook was called (and answered 500)"
    warnings = re.findall(r"\[WARNING\]: Notice '(\w+)' was not sent by (\w+): ([^\n]+)", failing.stdout + failing.stderr)
    assert [(n, c) for n, c, _ in warnings] == [("failure", "smtp"), ("failure", "webhook"),
                                                ("completion", "smtp"), ("completion", "webhook")], failing.stdout[-4000:]
    assert f"mail server 127.0.0.1:{closed}: [Errno 111] Connection refused" in warnings[0][2]
    assert "the webhook answered HTTP 500: no_service" in warnings[1][2]
    for entry in record(run_dir):
        assert [(c["channel"], c["status"]) for c in entry["channels"]] == [("smtp", "failed"), ("webhook", "failed")]
        assert "Connection refused" in entry["channels"][0]["reason"]
        assert entry["channels"][1]["reason"] == "the webhook answered HTTP 500: no_service"

    proc, run_dir = run_notices(tmp_path / "unreachable", ["maintenance_start"], channels(closed, free_port()))
    assert proc.returncode == 0, proc.stdout[-4000:]
    (entry,) = record(run_dir)
    assert entry["channels"][1]["status"] == "failed"
    assert entry["channels"][1]["reason"].startswith("the webhook could not be reached: "), entry
    assert "Connection refused" in entry["channels"][1]["reason"]
    assert "[WARNING]: Notice 'maintenance_start' was not sent by webhook: the webhook could not be reached" in proc.stderr


def test_a_wrong_smtp_password_is_reported_without_the_password(tmp_path: Path, smtp_server: MailServer) -> None:
    settings = channels(smtp_server.port, free_port())
    settings["smtp"]["password"] = SMTP_PASSWORD + "-wrong"
    del settings["webhook"]
    proc, run_dir = run_notices(tmp_path, ["pre_migration"], settings)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert SMTP_PASSWORD + "-wrong" not in proc.stdout + (run_dir / "notices.json").read_text()
    (entry,) = record(run_dir)
    (outcome,) = entry["channels"]
    assert outcome["channel"] == "smtp" and outcome["status"] == "failed", outcome
    # community.general.mail's words for a refused login (which of its two messages depends on smtplib's fallbacks).
    assert "authentication" in outcome["reason"].lower() and f"127.0.0.1:{smtp_server.port}" in outcome["reason"], outcome


def test_notices_render_without_any_optional_context(tmp_path: Path) -> None:
    proc, run_dir = run_notices(tmp_path, NOTICES, {}, contexts={})
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)["changed"] == 0
    entries = record(run_dir)
    assert [e["notice"] for e in entries] == NOTICES
    for entry in entries:
        assert entry["channels"] == [] and entry["subject"].startswith("[Virtue platform] ")
        assert "None" not in entry["body"] + entry["subject"] + entry["chat_text"], entry
        assert entry["body"].rstrip().endswith("maintenance notice - sandbox, run notify-test")
    assert "in about 24 hours" in entries[0]["body"]
    assert "The figures are in the run record of run notify-test." in entries[2]["body"]
    assert "What failed:   a step of the maintenance" in entries[3]["body"]


def test_completion_reads_its_metrics_from_the_run_record(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    phases = {
        "data": {"phase": "data",
                 "membership": {"migrated": 1990, "already_migrated": 10, "profiles_total": 2000, "duration_ms": 900},
                 "assignments": {"inserted": 612, "already_present": 0, "duration_ms": 300,
                                 "not_converted": {"self_relationships": {"count": 3}, "orphan_relationships": {"count": 4}}}},
        "schema": {"phase": "schema",
                   "applied": [{"version": "001", "duration_ms": 500}, {"version": "002", "duration_ms": 300}]},
        "validate": {"phase": "validate", "valid": True, "checks": [{"name": f"c{i}", "ok": True} for i in range(23)],
                     "failed_checks": []},
        "backup": {"phase": "backup", "bucket": "vdp-backups", "key": "virtue/production/r1/virtue.pgc"},
        "rehearsal": {"phase": "rehearsal", "migration_seconds": 95.2, "window_budget_minutes": 30.0},
    }
    for name, content in phases.items():
        (run_dir / f"{name}.json").write_text(json.dumps(content))
    proc, _ = run_notices(tmp_path, ["completion"], {}, contexts={"completion": {"metrics": {"assignments_created": 611}}})
    assert proc.returncode == 0, proc.stdout[-4000:]
    body = record(run_dir)[0]["body"]
    for phrase in ("Users migrated: 1990 (plus 10 migrated before), 2000 users in all",
                   "Coach assignments created: 611",  # the context wins over the record
                   "Relationships not converted (self or orphan, listed in the run record): 7",
                   "Validation checks passed: 23 of 23",
                   "Schema and data migration on production: 2.0 s of a 30 min budget (0.1 %)",
                   "Rehearsal on staging (schema, data, validation): 1 min 35 s of a 30 min budget (5.3 %)",
                   "Verified backup taken before the change: s3://vdp-backups/virtue/production/r1/virtue.pgc"):
        assert phrase in body, (phrase, body)


def test_bad_channel_settings_are_refused_in_inventory_words(tmp_path: Path) -> None:
    no_recipients, run_dir = run_notices(tmp_path, ["pre_migration"],
                                         {"smtp": {"host": "127.0.0.1", "from": "a@example.org", "to": []}})
    assert no_recipients.returncode != 0
    assert "vdp_notify.smtp needs host, from and a non-empty to list" in no_recipients.stdout
    assert not (run_dir / "notices.json").exists()

    bad_url, run_dir = run_notices(tmp_path / "url", ["pre_migration"], {"webhook": {"url": f"ftp://example.org/{TOKEN}"}})
    assert bad_url.returncode != 0
    assert "vdp_notify.webhook.url must be an http:// or https:// URL" in bad_url.stdout
    assert not (run_dir / "notices.json").exists()


@pytest.mark.slow
def test_the_sandbox_notice_sink_receives_the_demo_notices(sandbox: sb.Sandbox, tmp_path: Path) -> None:
    mail_dir = sandbox.dir / "mail"
    before = set(mail_dir.iterdir())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    # The local inventory's vdp_notify: the sink on base+18 (SMTP) and base+19 (webhook).
    proc = sandbox.playbook("playbooks/notify.yml", "-e", "notify_notice=completion", "-e", f"vdp_run_dir={run_dir}",
                            "-e", "vdp_run_id=sink-test")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)["changed"] == 2
    new = sorted(set(mail_dir.iterdir()) - before)
    mails = [p for p in new if p.suffix == ".eml"]
    posts = [p for p in new if p.suffix == ".json"]
    assert len(mails) == 1 and len(posts) == 1, new
    message = email.message_from_bytes(mails[0].read_bytes(), policy=email.policy.default)
    assert message["X-VDP-Run-Id"] == "sink-test"
    assert "Maintenance complete" in str(message["Subject"])
    assert sorted(str(message["X-Sink-Rcpt-To"]).split(", ")) == ["stakeholders@example.org", "support@example.org",
                                                                   "virtue-users@example.org"]
    post = json.loads(posts[0].read_text())
    assert post["path"] == "/hooks/migration" and post["body"]["text"].startswith(":white_check_mark:")
    (entry,) = record(run_dir)
    assert [c["status"] for c in entry["channels"]] == ["sent", "sent"]
