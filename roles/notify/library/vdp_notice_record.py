#!/usr/bin/python
# The notify role's record: append one notice and its per-channel outcome to <run dir>/notices.json, write the
# rendered text to <run dir>/notices/<notice>.txt, and warn about every channel that could not send it.
"""Ansible module: record a rendered notice and the outcome of each channel in the run record."""
# ruff: noqa: E402 - Ansible modules put DOCUMENTATION before the imports (as ruff.toml allows for library/)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_notice_record
short_description: Record a notice of the communication plan and what each channel did with it
description:
  - Appends one entry (the notice's name, subject, body, chat text and each channel's outcome) to
    C(notices.json) in the run record folder, a JSON list kept in sending order, and writes the rendered
    text to C(notices/<notice>.txt) (the latest notice of that name).
  - Emits one warning per channel that failed, naming the channel and the reason, so a notice that could
    not be sent is visible in the job output without failing the run.
  - Masks every value of I(secrets) and the credentials of any C(scheme://user:password@) URL wherever they would
    appear (text, reasons, context), as a last line of defence.
  - A C(notices.json) that is not a JSON list is kept aside as C(notices.json.unreadable-<time>) and a new
    list is started, with a warning - the record of notices never stops a migration.
version_added: "1.0.0"
options:
  run_dir:
    description: The run record folder.
    type: path
    required: true
  notice:
    description: The notice's name (C(pre_migration), C(maintenance_start), C(completion), C(failure)).
    type: str
    required: true
  subject:
    description: Subject line as rendered.
    type: str
    required: true
  body:
    description: Plain-text body as rendered.
    type: str
    required: true
  chat_text:
    description: The short Slack-compatible text as rendered.
    type: str
    default: ""
  outcomes:
    description: One item per configured channel.
    type: list
    elements: dict
    default: []
    suboptions:
      channel:
        description: C(smtp) or C(webhook).
        type: str
        required: true
      status:
        description: What happened to the notice on that channel.
        type: str
        required: true
        choices: [sent, failed, rendered_only]
      reason:
        description: Why it failed, or why it was only rendered (C(check mode), C(render_only)).
        type: str
      recipients:
        description: How many recipients a mail went to.
        type: int
  run_id:
    description: The run id.
    type: str
  environment:
    description: The environment name.
    type: str
  dry_run:
    description:
      - Why nothing was sent, when nothing was - C(check mode) (the play runs with --check; this task itself runs
        with C(check_mode=false) to keep the record) or C(render_only). Empty when the notice was sent.
    type: str
    choices: ["", "check mode", "render_only"]
    default: ""
  context:
    description: The context the notice was rendered from (kept in the record for the audit trail).
    type: dict
    default: {}
  secrets:
    description: Values to mask as C(<redacted>) anywhere in the record and the warnings.
    type: list
    elements: str
    default: []
    no_log: true
attributes:
  check_mode:
    support: full
    description: Writes nothing and reports what it would record.
  diff_mode:
    support: none
    description: The record is append-only; nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Any POSIX controller.
author:
  - Virtue platform team
"""

EXAMPLES = r"""
- name: Record the notice
  vdp_notice_record:
    run_dir: "{{ vdp_run_dir }}"
    notice: completion
    subject: "[Virtue platform] Maintenance complete"
    body: "Hello, ..."
    chat_text: ":white_check_mark: Maintenance complete"
    outcomes:
      - {channel: smtp, status: sent, recipients: 2}
      - {channel: webhook, status: failed, reason: the webhook answered HTTP 500}
    secrets: ["{{ notify_smtp.password }}"]
  check_mode: false
  changed_when: false
"""

RETURN = r"""
entry:
  description: The entry appended to notices.json.
  returned: always
  type: dict
record:
  description: Path of notices.json.
  returned: always
  type: str
  sample: artifacts/runs/20250601T020000Z-ab12/notices.json
text_file:
  description: Path of the rendered notice.
  returned: always
  type: str
  sample: artifacts/runs/20250601T020000Z-ab12/notices/completion.txt
summary:
  description: One line, the notice and each channel's outcome.
  returned: always
  type: str
  sample: "completion: smtp sent (2 recipients), webhook failed (the webhook answered HTTP 500)"
failed_channels:
  description: Channels that could not send the notice.
  returned: always
  type: list
  elements: str
"""

import fcntl
import json
import os
import re
import tempfile
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

NOTICES = "notices.json"
NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# user:password@ in any URL (a DSN in an error message, for example).
URL_CREDENTIALS_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")


def mask(value: Any, secrets: list[str]) -> Any:
    """The value with every secret replaced, recursively through lists and dicts."""
    if isinstance(value, str):
        for secret in secrets:
            value = value.replace(secret, "<redacted>")
        return URL_CREDENTIALS_RE.sub(r"\1<redacted>@", value)
    if isinstance(value, list):
        return [mask(item, secrets) for item in value]
    if isinstance(value, dict):
        return {key: mask(item, secrets) for key, item in value.items()}
    return value


def outcome_text(outcome: dict[str, Any]) -> str:
    status = outcome["status"].replace("_", " ")
    if outcome["status"] == "sent" and outcome.get("recipients"):
        return f"{outcome['channel']} sent ({outcome['recipients']} recipients)"
    if outcome.get("reason"):
        return f"{outcome['channel']} {status} ({outcome['reason']})"
    return f"{outcome['channel']} {status}"


def build_entry(params: dict[str, Any]) -> dict[str, Any]:
    outcomes = [{key: value for key, value in item.items() if value is not None} for item in params["outcomes"]]
    entry = {
        "notice": params["notice"],
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_id": params["run_id"],
        "environment": params["environment"],
        "check_mode": params["dry_run"] == "check mode",
        "render_only": params["dry_run"] == "render_only",
        "subject": params["subject"],
        "body": params["body"],
        "chat_text": params["chat_text"],
        "channels": outcomes,
        "context": params["context"],
    }
    return mask(entry, [s for s in params["secrets"] if s])


def write_atomic(path: str, text: str) -> None:
    folder = os.path.dirname(path)
    handle, temp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(temp, 0o640)
    os.replace(temp, path)


def read_list(path: str, warnings: list[str]) -> list[Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError):
        data = None
    if isinstance(data, list):
        return data
    aside = f"{path}.unreadable-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    os.replace(path, aside)
    warnings.append(f"{path} was not a JSON list: kept aside as {aside}, a new list was started")
    return []


def append_entry(run_dir: str, entry: dict[str, Any], warnings: list[str]) -> str:
    path = os.path.join(run_dir, NOTICES)
    with open(os.path.join(run_dir, "." + NOTICES + ".lock"), "w", encoding="ascii") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = read_list(path, warnings)
        entries.append(entry)
        write_atomic(path, json.dumps(entries, indent=2, ensure_ascii=False) + "\n")
    return path


def notice_text(entry: dict[str, Any]) -> str:
    text = f"Subject: {entry['subject']}\n\n{entry['body'].rstrip()}\n"
    if entry["chat_text"]:
        text += f"\n--- chat / webhook text ---\n{entry['chat_text'].rstrip()}\n"
    return text


def main() -> None:
    module = AnsibleModule(
        argument_spec=dict(
            run_dir=dict(type="path", required=True),
            notice=dict(type="str", required=True),
            subject=dict(type="str", required=True),
            body=dict(type="str", required=True),
            chat_text=dict(type="str", default=""),
            outcomes=dict(
                type="list",
                elements="dict",
                default=[],
                options=dict(
                    channel=dict(type="str", required=True),
                    status=dict(type="str", required=True, choices=["sent", "failed", "rendered_only"]),
                    reason=dict(type="str"),
                    recipients=dict(type="int"),
                ),
            ),
            run_id=dict(type="str"),
            environment=dict(type="str"),
            dry_run=dict(type="str", choices=["", "check mode", "render_only"], default=""),
            context=dict(type="dict", default={}),
            secrets=dict(type="list", elements="str", default=[], no_log=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if not NAME_RE.match(params["notice"]):
        module.fail_json(msg=f"notice name {params['notice']!r} is not a plain name (a-z, 0-9, _)")
    if not os.path.isdir(params["run_dir"]):
        module.fail_json(msg=f"run record folder {params['run_dir']} does not exist: run the run_context role first")
    entry = build_entry(params)
    failed = [item for item in entry["channels"] if item["status"] == "failed"]
    for item in failed:
        module.warn(f"Notice '{entry['notice']}' was not sent by {item['channel']}: {item.get('reason') or 'unknown error'}"
                    " (the run goes on; recorded in notices.json)")
    outcomes = ", ".join(outcome_text(item) for item in entry["channels"]) or "no channel configured, rendered only"
    result: dict[str, Any] = dict(
        changed=not module.check_mode,
        entry=entry,
        record=os.path.join(params["run_dir"], NOTICES),
        text_file=os.path.join(params["run_dir"], "notices", params["notice"] + ".txt"),
        summary=f"{entry['notice']}: {outcomes}",
        failed_channels=[item["channel"] for item in failed],
    )
    if not module.check_mode:
        warnings: list[str] = []
        os.makedirs(os.path.join(params["run_dir"], "notices"), mode=0o750, exist_ok=True)
        write_atomic(result["text_file"], notice_text(entry))
        append_entry(params["run_dir"], entry, warnings)
        for warning in warnings:
            module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
