"""Issue 12 item 4: no secret in anything a run writes, nor in anything a crashed run leaves behind.

One world, the whole runbook (migrate.yml with the stand-in app as the deploy target), crashed twice on its way:
1. the controller host dies in the data step (SIGKILL of the whole process tree, mid-module): what it left on disk
   (Ansible's temporary files - its AnsiballZ payloads hold the module arguments - and the project's work folders);
2. the run is resumed and ansible-playbook alone is killed mid-module (its module keeps running): the files and the
   command lines of what still runs, then `playbooks/stop.yml` (the documented stop) and what is left after it;
3. the run is resumed to the end: then every log, the run record (run.json, run.md, run.html, every phase's file,
   progress files, notices), the S3 objects of the world (key, metadata, tags, body) and unfinished multipart uploads,
   the sandbox's logs and mail sink, and the runs' temporary folders (Ansible's remote_tmp and local_tmp, TMPDIR).
The secrets are the sandbox's: the PostgreSQL password and both S3 keys. Zero hits anywhere the project writes; the
files a crash left that could hold one (Ansible's remote temp folders, the project's vdp-* work folders) are gone.
"""

from __future__ import annotations

import dataclasses
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import psycopg
import pytest
from botocore.config import Config

from tests.support.attack import descendants, kill_tree, migrated, start_playbook, wait_for, wait_sessions_gone
from tests.support.sandbox import Sandbox
from tests.support.standin import StandIn, app_vars
from tests.support.world import play

pytestmark = pytest.mark.slow

SLOW_DATA = {"vdp_batch_size": 50, "org_data_migration_pause_between_batches": 0.3}
# What the test itself gives the run (the inputs hold the secrets on purpose), never output.
INPUTS = {"vars.json", "app-vars.json", "pg_password", "token"}


def secrets(box: Sandbox) -> dict[str, bytes]:
    return {"postgres password": box.password.encode(), "S3 access key": box.s3_access_key.encode(),
            "S3 secret key": box.s3_secret_key.encode()}  # fmt: skip


def grep(paths: list[Path], box: Sandbox) -> list[str]:
    """'<file>: <which secret>' for every secret found in the files (folders walked)."""
    hits = []
    for path in _files(paths):
        try:
            data = path.read_bytes()
        except OSError:
            continue  # removed while walking
        hits += [f"{path}: {name}" for name, value in secrets(box).items() if value in data]
    return hits


def _files(paths: list[Path]) -> Iterator[Path]:
    for top in paths:
        if top.is_file():
            yield top
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if d not in ("secrets", "data")]  # the sandbox's own secrets and server data
            yield from (Path(folder) / n for n in names if n not in INPUTS)


def private_temp(box: Sandbox, folder: Path) -> Sandbox:
    """The sandbox with this test's runs' temporary folders of their own (Ansible's remote_tmp - ~/.ansible/tmp by
    default - and local_tmp, and TMPDIR of the modules' work folders), so that what they leave is theirs alone."""
    env = dict(ANSIBLE_REMOTE_TEMP=str(folder / "remote_tmp"), ANSIBLE_LOCAL_TEMP=str(folder / "local_tmp"),
               TMPDIR=str(folder / "tmp"))  # fmt: skip
    for path in env.values():
        Path(path).mkdir(mode=0o700, parents=True, exist_ok=True)
    return dataclasses.replace(box, env={**box.env, **env})


def temp_leftovers(box: Sandbox) -> list[Path]:
    """What is in the runs' temporary folders: Ansible's (module payloads, its cache) and the project's work folders."""
    return [p for name in ("ANSIBLE_REMOTE_TEMP", "ANSIBLE_LOCAL_TEMP", "TMPDIR") for p in Path(box.env[name]).iterdir()]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def s3_findings(box: Sandbox, prefix: str) -> tuple[list[str], list[str]]:
    """Every object of the world's prefix: (hits of a secret in its key, metadata, tags or body; the keys seen)."""
    s3 = boto3.client("s3", endpoint_url=box.s3["endpoint_url"], region_name=box.region,
                      aws_access_key_id=box.s3_access_key, aws_secret_access_key=box.s3_secret_key,
                      config=Config(s3={"addressing_style": "path"}))  # fmt: skip
    hits, keys = [], []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=box.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            key = obj["Key"]
            keys.append(key)
            head = s3.head_object(Bucket=box.bucket, Key=key)
            tags = s3.get_object_tagging(Bucket=box.bucket, Key=key)["TagSet"]
            body = s3.get_object(Bucket=box.bucket, Key=key)["Body"].read()
            text = f"{key} {head.get('Metadata')} {tags}".encode()
            hits += [f"s3://{key}: {name}" for name, value in secrets(box).items() if value in text or value in body]
    uploads = s3.list_multipart_uploads(Bucket=box.bucket, Prefix=prefix).get("Uploads", [])
    hits += [f"unfinished upload {u['Key']}: {n}" for u in uploads for n, v in secrets(box).items() if v in u["Key"].encode()]
    return hits, keys


def _migrated(prod: dict[str, Any]) -> int:
    """Profiles the data step has migrated (0 before the schema phase added the column)."""
    try:
        return migrated(prod)
    except psycopg.Error:
        return 0


@pytest.fixture
def app(world: dict[str, Any], tmp_path: Path) -> Iterator[StandIn]:
    standin = StandIn(tmp_path / "standin", world["vdp_production_db"])
    yield standin
    standin.stop()


def test_no_secret_in_what_a_run_writes_or_a_crashed_run_leaves(
    sandbox: Sandbox, world: dict[str, Any], app: StandIn, tmp_path: Path
) -> None:
    prod, run_id = world["vdp_production_db"], world["vdp_run_id"]
    box = private_temp(sandbox, tmp_path / "temp")
    start = ("-e", f"@{app_vars(world, app, tmp_path, **SLOW_DATA)}")

    # 1. The controller host dies mid-module in the data step: ansible-playbook, its worker and the module.
    first = start_playbook(box, world, "migrate.yml", *start, log=tmp_path / "crash-tree.log")
    wait_for(lambda: _migrated(prod) >= 100, 900, "the data step")
    kill_tree(first.pid)
    first.wait(60)
    assert wait_sessions_gone(prod, run_id)
    crash = temp_leftovers(box)
    assert grep(crash, box) == [], f"a killed run left a secret on disk: {grep(crash, box)}"

    # 2. Resumed, then ansible-playbook alone is killed while its module runs on: nothing that still runs carries a
    # secret on its command line, no file it uses holds one; the documented stop ends it.
    mark = migrated(prod)
    second = start_playbook(box, world, "migrate.yml", *start, log=tmp_path / "crash-controller.log")
    wait_for(lambda: migrated(prod) >= mark + 100, 900, "the resumed data step")
    orphans = [p for p in descendants(second.pid) if p != second.pid]
    os.kill(second.pid, signal.SIGKILL)
    second.wait(60)
    argv = [Path(f"/proc/{p}/cmdline").read_bytes() for p in orphans if Path(f"/proc/{p}/cmdline").exists()]
    assert argv and not [n for a in argv for n, v in secrets(box).items() if v in a], "a secret on a command line"
    assert grep(temp_leftovers(box), box) == [], "a running module's files hold a secret"
    stop = play(box, world, "playbooks/stop.yml")
    assert stop.returncode == 0, stop.stdout[-3000:]
    assert wait_sessions_gone(prod, run_id)

    # 3. Resumed to the end.
    last = play(box, world, "migrate.yml", *start)
    assert last.returncode == 0, last.stdout[-4000:]
    assert "validate           passed" in last.stdout, last.stdout[-3000:]

    # Everything the runs wrote: the run record, the logs (ansible-playbook's outputs included), the app's log, the
    # sandbox's logs and mail sink, Ansible's and the project's temporary files, the S3 objects.
    assert grep([world["run_dir"], tmp_path, box.dir], box) == []
    hits, keys = s3_findings(box, world["vdp_s3"]["prefix"])
    assert hits == [] and any(k.endswith(".pgdump") for k in keys) and any("/report/" in k for k in keys), (hits, keys)

    # What the crashes left that could hold a secret is gone: Ansible's remote temp folders (the AnsiballZ files, which
    # hold the module arguments) and the project's vdp-* work folders (a plaintext dump). What remains is Ansible's
    # local cache of the killed controllers (module code), which holds no secret (checked above).
    remaining = [p.name for p in temp_leftovers(box) if p.name.startswith(("ansible-tmp-", "vdp-"))]
    assert remaining == [], remaining
