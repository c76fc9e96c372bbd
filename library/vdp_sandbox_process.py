#!/usr/bin/python
# Start or stop one background server of the embedded sandbox (SeaweedFS today) by PID file.
# PostgreSQL needs no help (pg_ctl keeps postmaster.pid); `weed mini` has no daemon mode, so
# this module detaches it, records its PID, and on stop kills exactly that process - never
# "whatever listens on the port" or "every weed on the machine".
"""Ansible module: a PID-file managed background process for the local sandbox."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_sandbox_process
short_description: Start or stop a background process of the local sandbox, tracked by a PID file
description:
  - Starts a long-running program (for example SeaweedFS C(weed mini)) detached from Ansible, with its
    output in a log file and its PID in a PID file, and waits until it listens on a TCP port.
  - Stops exactly the process named in the PID file, after checking that the PID still runs the same
    program, so a recycled PID is never killed.
  - Only for the embedded sandbox; real targets are never started by this runbook.
version_added: "1.0.0"
options:
  state:
    description:
      - C(started) starts the process unless the PID file names a live one; C(stopped) stops it;
        C(status) only reports whether it runs.
    type: str
    choices: [started, stopped, status]
    default: started
  argv:
    description: The program and its arguments (no shell). Required when I(state=started).
    type: list
    elements: str
  pidfile:
    description: Where the PID is recorded.
    type: path
    required: true
  logfile:
    description: Where the program's stdout and stderr go.
    type: path
  chdir:
    description: Working directory of the program.
    type: path
  wait_port:
    description: TCP port on 127.0.0.1 that must accept connections before the start counts as done.
    type: int
  timeout:
    description: Seconds to wait for the port on start, or for the exit on stop.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    description: Reports whether it would start or stop the process; starts and stops nothing.
  diff_mode:
    support: none
    description: Nothing to diff.
  platform:
    support: full
    platforms: posix
    description: Linux and other POSIX systems with /proc.
author:
  - Virtue platform team
"""

EXAMPLES = r"""
- name: Start SeaweedFS for the sandbox
  vdp_sandbox_process:
    argv: ["{{ weed_bin }}", mini, "-dir={{ sandbox_dir }}/s3", "-s3.port=15434"]
    pidfile: "{{ sandbox_dir }}/s3/weed.pid"
    logfile: "{{ sandbox_dir }}/s3/weed.log"
    wait_port: 15434

- name: Stop it
  vdp_sandbox_process:
    state: stopped
    pidfile: "{{ sandbox_dir }}/s3/weed.pid"
"""

RETURN = r"""
pid:
  description: PID of the running process (started), or of the process that was stopped.
  returned: when a process runs or ran
  type: int
  sample: 4242
running:
  description: Whether the process runs when the module returns.
  returned: always
  type: bool
"""

import os
import signal
import socket
import subprocess
import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile, encoding="ascii") as handle:
            return int(handle.read().strip())
    except (OSError, ValueError):
        return None


def process_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode(errors="replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


def live_pid(pidfile: str) -> int | None:
    """The PID in the file if that process still runs the program recorded beside it."""
    pid = read_pid(pidfile)
    if pid is None:
        return None
    cmdline = process_cmdline(pid)
    if not cmdline:
        return None
    try:
        with open(pidfile + ".cmd", encoding="utf-8") as handle:
            recorded = handle.read().strip()
    except OSError:
        recorded = ""
    # A recycled PID runs something else: it is not ours.
    if recorded and os.path.basename(cmdline[0]) != recorded:
        return None
    return pid


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start(module: AnsibleModule) -> dict[str, Any]:
    params = module.params
    pid = live_pid(params["pidfile"])
    if pid is not None:
        return dict(changed=False, pid=pid, running=True)
    if not params["argv"]:
        module.fail_json(msg="argv is required to start the process")
    if params["wait_port"] and port_open(params["wait_port"]):
        module.fail_json(
            msg=f"port {params['wait_port']} on 127.0.0.1 is already taken by a process this sandbox did not start: "
            "stop it, or move the sandbox with VDP_SANDBOX_PORT_BASE"
        )
    if module.check_mode:
        return dict(changed=True, running=False)
    logfile = params["logfile"] or os.devnull
    with open(logfile, "ab") as log, open(os.devnull, "rb") as devnull:
        # A new session detaches it from Ansible's process group: it outlives this task.
        proc = subprocess.Popen(
            params["argv"],
            stdin=devnull,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=params["chdir"],
            start_new_session=True,
            close_fds=True,
        )
    with open(params["pidfile"], "w", encoding="ascii") as handle:
        handle.write(f"{proc.pid}\n")
    with open(params["pidfile"] + ".cmd", "w", encoding="utf-8") as handle:
        handle.write(os.path.basename(params["argv"][0]))
    deadline = time.monotonic() + params["timeout"]
    while params["wait_port"] and not port_open(params["wait_port"]):
        if proc.poll() is not None:
            module.fail_json(msg=f"{params['argv'][0]} exited with status {proc.returncode} at start: see {logfile}")
        if time.monotonic() > deadline:
            proc.terminate()
            module.fail_json(
                msg=f"{params['argv'][0]} did not listen on port {params['wait_port']} within {params['timeout']}s: see {logfile}"
            )
        time.sleep(0.2)
    return dict(changed=True, pid=proc.pid, running=True)


def stop(module: AnsibleModule) -> dict[str, Any]:
    pidfile = module.params["pidfile"]
    pid = live_pid(pidfile)
    if pid is None:
        if os.path.exists(pidfile) and not module.check_mode:
            os.unlink(pidfile)  # stale: the process is gone already
        return dict(changed=False, running=False)
    if module.check_mode:
        return dict(changed=True, pid=pid, running=True)
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + module.params["timeout"]
    while live_pid(pidfile) == pid and time.monotonic() < deadline:
        time.sleep(0.2)
    if live_pid(pidfile) == pid:
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    for path in (pidfile, pidfile + ".cmd"):
        if os.path.exists(path):
            os.unlink(path)
    return dict(changed=True, pid=pid, running=False)


def argument_spec() -> dict[str, Any]:
    return dict(
        state=dict(type="str", choices=["started", "stopped", "status"], default="started"),
        argv=dict(type="list", elements="str"),
        pidfile=dict(type="path", required=True),
        logfile=dict(type="path"),
        chdir=dict(type="path"),
        wait_port=dict(type="int"),
        timeout=dict(type="int", default=30),
    )


def main() -> None:
    module = AnsibleModule(
        argument_spec=argument_spec(),
        supports_check_mode=True,
    )
    state = module.params["state"]
    if state == "status":
        pid = live_pid(module.params["pidfile"])
        result: dict[str, Any] = dict(changed=False, running=pid is not None, pid=pid)
    else:
        result = start(module) if state == "started" else stop(module)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
