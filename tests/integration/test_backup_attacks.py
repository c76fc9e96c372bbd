"""Issue 7 items 9 and 10, reproduced on the real sandbox (PostgreSQL 15 + SeaweedFS S3): no mocks.

Item 9 - leftovers of a crash: an unfinished multipart upload of production data under
`<prefix>/<run>/.incoming/`, a plaintext dump in `/tmp/vdp-restore-<pid>-...` of a killed run, the
restore's work folder (mode 0700, removed on every exit path, SIGTERM included), and the run record a
killed run leaves.

Item 10 - verification before destruction: backups tampered with so that some or all of the recorded
SHA-256s agree with the damaged bytes. The restore must refuse BEFORE it drops the staging database
(which holds a sentinel table), and vdp_backup_verify must say the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.support.backups import (
    PG_BINDIR,
    backup,
    legacy_clone,
    login,
    no_secret,
    restore_args,
    s3_args,
    s3_of,
    staging_with_sentinel,
    verify,
)
from tests.support.modrun import _BOOTSTRAP, ROOT
from tests.support.sandbox import Sandbox
from tests.support.world import play, record

PG_RESTORE = f"{PG_BINDIR}/pg_restore"


# --------------------------------------------------------------------------- fixtures and helpers


source = legacy_clone("source", "ba")  # production's stand-in, backed up by each test under its own prefix
staging = staging_with_sentinel()


@pytest.fixture
def prefix() -> str:
    return f"test-attacks/{uuid.uuid4().hex[:10]}"


def untouched(conn: dict[str, Any]) -> tuple[int, bool]:
    """(database OID, sentinel present): a drop and recreate changes both."""
    with psycopg.connect(**conn) as c:
        oid = c.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        return int(oid), bool(c.execute("SELECT to_regclass('public.sentinel') IS NOT NULL").fetchone()[0])


def restore(run_module: Any, box: Sandbox, target: dict[str, Any], prefix: str, **extra: Any) -> Any:
    result = run_module("vdp_restore", restore_args(box, target, prefix, **extra))
    no_secret(result, box)
    return result


def dead_pid() -> int:
    """The id of a process that has exited (and been reaped): nobody owns a folder named after it."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    with pytest.raises(ProcessLookupError):
        os.kill(proc.pid, 0)
    return proc.pid


def killed_runs_folder(kind: str, parent: str | None = None) -> Path:
    """What a SIGKILLed run leaves: /tmp/vdp-<kind>-<dead pid>-xyz holding a plaintext dump."""
    folder = Path(parent or tempfile.gettempdir()) / f"vdp-{kind}-{dead_pid()}-xyz{uuid.uuid4().hex[:6]}"
    folder.mkdir(mode=0o700)
    (folder / "dump.pgdump").write_bytes(b"PGDMP plaintext rows of production")
    return folder


# --------------------------------------------------------------------------- S3 tampering (as an attacker would)


def sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def tags_of(client: Any, bucket: str, key: str) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]}


def put_with(client: Any, bucket: str, key: str, body: bytes, metadata: dict[str, str], tags: dict[str, str]) -> None:
    client.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
    client.put_object_tagging(Bucket=bucket, Key=key, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in tags.items()]})


def tamper(client: Any, bucket: str, prefix: str, run_id: str, damage: Callable[[bytes], bytes], fix_tag: bool) -> bytes:
    """Damage the dump object and rewrite its recorded SHA-256 in the object metadata and the manifest (and the size),
    and in the object tag too when fix_tag; the manifest is re-signed (its own metadata sha256), as an attacker who
    knows the format would. Returns the damaged bytes."""
    manifest_key = f"{prefix}/{run_id}/manifest.json"
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    key = manifest["key"]
    head = client.head_object(Bucket=bucket, Key=key)
    tags = tags_of(client, bucket, key)
    damaged = damage(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    new_sha = sha256(damaged)
    new_tags = dict(tags, **({"vdp:sha256": new_sha} if fix_tag else {}))
    put_with(client, bucket, key, damaged, dict(head["Metadata"], sha256=new_sha), new_tags)
    manifest.update(sha256=new_sha, size=len(damaged))
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    manifest_head = client.head_object(Bucket=bucket, Key=manifest_key)
    manifest_tags = tags_of(client, bucket, manifest_key)
    put_with(client, bucket, manifest_key, body, dict(manifest_head["Metadata"], sha256=sha256(body)), manifest_tags)
    return damaged


def flip_middle_byte(body: bytes) -> bytes:
    data = bytearray(body)
    data[len(data) // 2] ^= 0xFF
    return bytes(data)


def cut_in_half(body: bytes) -> bytes:
    return body[: len(body) // 2]


def pg_restore_rc(archive: bytes, tmp: Path, *args: str) -> int:
    path = tmp / f"archive-{uuid.uuid4().hex[:6]}.pgdump"
    path.write_bytes(archive)
    return subprocess.run([PG_RESTORE, *args, str(path)], capture_output=True, check=False).returncode


# --------------------------------------------------------------------------- item 10: verification before destruction


def test_hash_rewritten_in_metadata_and_manifest_is_caught_by_the_tag_before_the_drop(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any], prefix: str
) -> None:
    """Before: the restore compared the bytes with the metadata and the manifest only; both had been rewritten, so it
    dropped staging and only then pg_restore failed with `incorrect data check`."""
    assert not backup(run_module, sandbox, source, prefix, "tag-1").failed
    client = s3_of(sandbox)
    tamper(client, sandbox.bucket, prefix, "tag-1", flip_middle_byte, fix_tag=False)
    before = untouched(staging)
    for mode in ("file", "stream"):
        refused = restore(run_module, sandbox, staging, prefix, run_id="tag-1", mode=mode)
        assert refused.failed and not refused.changed and not refused["restored"]
        assert "FAILED verification" in refused["msg"] and "nothing was changed" in refused["msg"]
        assert "differs from the object tag vdp:sha256" in refused["msg"], refused["msg"]
        assert not any("differs from the object metadata" in p or "differs from the manifest" in p for p in refused["problems"])
        assert "drop_create" not in refused["seconds"]
        assert untouched(staging) == before
    checked = verify(run_module, sandbox, prefix, run_id="tag-1")
    assert checked.failed and not checked["verified"] and "Do not restore it" in checked["msg"]
    assert any("differs from the object tag vdp:sha256" in p for p in checked["problems"]), checked["problems"]
    assert checked["sha256_metadata"] == checked["sha256_manifest"] == checked["sha256"] != checked["sha256_tag"]


def test_truncated_archive_with_every_hash_fixed_up_is_refused_by_the_full_decode(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    """Every recorded SHA-256 and the size agree with a half archive: only reading all of it can tell."""
    assert not backup(run_module, sandbox, source, prefix, "cut-1").failed
    half = tamper(s3_of(sandbox), sandbox.bucket, prefix, "cut-1", cut_in_half, fix_tag=True)
    assert pg_restore_rc(half, tmp_path, "--list") == 0  # the attack's premise: the table of contents still reads
    assert pg_restore_rc(half, tmp_path, "-f", os.devnull) != 0
    decode_problem = "the archive does not decode to the end (pg_restore -f /dev/null"

    checked = verify(run_module, sandbox, prefix, run_id="cut-1")
    assert checked.failed and not checked["verified"] and not checked["decoded"]
    assert len(checked["problems"]) == 1 and checked["problems"][0].startswith(decode_problem), checked["problems"]
    assert checked["sha256"] == checked["sha256_metadata"] == checked["sha256_tag"] == checked["sha256_manifest"]
    assert "FAILED verification" in checked["msg"] and "Do not restore it: take a new backup" in checked["msg"]

    before = untouched(staging)
    for mode in ("file", "stream"):
        refused = restore(run_module, sandbox, staging, prefix, run_id="cut-1", mode=mode)
        assert refused.failed and not refused.changed and not refused["restored"]
        assert decode_problem in refused["msg"] and "nothing was changed" in refused["msg"], refused["msg"]
        assert refused["verification"]["decoded"] is False and len(refused["problems"]) == 1
        assert "drop_create" not in refused["seconds"]
        assert untouched(staging) == before


def test_manifest_altered_after_it_was_written_is_refused(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any], prefix: str
) -> None:
    assert not backup(run_module, sandbox, source, prefix, "man-1").failed
    client = s3_of(sandbox)
    manifest_key = f"{prefix}/man-1/manifest.json"
    head = client.head_object(Bucket=sandbox.bucket, Key=manifest_key)
    manifest = json.loads(client.get_object(Bucket=sandbox.bucket, Key=manifest_key)["Body"].read())
    manifest["tables"]["public.profiles"] += 1  # a count nobody could prove any more
    body = json.dumps(manifest, indent=2, sort_keys=True).encode()
    put_with(client, sandbox.bucket, manifest_key, body, head["Metadata"], tags_of(client, sandbox.bucket, manifest_key))
    altered = "was altered after it was written (its SHA-256 differs from the one in its metadata)"

    before = untouched(staging)
    refused = restore(run_module, sandbox, staging, prefix, run_id="man-1")
    assert refused.failed and not refused.changed and altered in refused["msg"] and "do not trust this backup" in refused["msg"]
    assert manifest_key in refused["msg"]
    assert untouched(staging) == before
    checked = verify(run_module, sandbox, prefix, run_id="man-1")
    assert checked.failed and not checked["verified"] and altered in checked["msg"]


# --------------------------------------------------------------------------- item 9: leftovers of a crash


def test_killed_runs_dump_folders_are_removed_by_the_next_restore_backup_and_verify(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    """The modules' default work place is the system temp dir (/tmp). The modules here get a temp dir of their own
    (TMPDIR), so that no other vdp run on this machine cleans the planted folders first."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    alive = tmp / f"vdp-restore-{os.getpid()}-live"
    alive.mkdir(mode=0o700)  # a folder of a process that still runs (this one) is never touched

    left = killed_runs_folder("restore", str(tmp))
    args = dict(login(source), **s3_args(sandbox, prefix), run_id="left-1", pg_bindir=PG_BINDIR)
    done = run_module("vdp_backup", args, env=env)
    assert not done.failed and done["removed_leftovers"] == [str(left)] and not left.exists()

    left = killed_runs_folder("restore", str(tmp))
    checked = run_module("vdp_backup_verify", dict(s3_args(sandbox, prefix), run_id="left-1"), env=env)
    assert checked["verified"], checked.get("msg")
    assert not left.exists(), "vdp_backup_verify left a killed run's dump folder behind"

    left = killed_runs_folder("backup", str(tmp))
    restored = run_module("vdp_restore", restore_args(sandbox, staging, prefix, run_id="left-1"), env=env)
    assert not restored.failed and restored["restored"], restored.get("msg")
    assert restored["removed_leftovers"] == [str(left)] and not left.exists()
    assert sorted(p.name for p in tmp.iterdir()) == [alive.name]  # and each run removed its own work folder


def start_module(name: str, args: dict[str, Any]) -> subprocess.Popen[str]:
    """library/<name>.py in its own process (as tests/support/modrun.py runs it), to watch it and signal it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _BOOTSTRAP, str(ROOT), str(ROOT / "library" / f"{name}.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    proc.stdin.close()
    return proc


def watch_workdir(proc: subprocess.Popen[str], parent: Path, until: Callable[[Path], bool]) -> tuple[Path | None, int | None]:
    """Poll parent for the process's vdp-restore-<pid>-* folder until `until(folder)` or the process ends.
    Returns (folder, its mode) as last seen."""
    seen: Path | None = None
    mode: int | None = None
    while proc.poll() is None:
        for entry in parent.glob(f"vdp-restore-{proc.pid}-*"):
            try:
                mode = stat.S_IMODE(entry.stat().st_mode)
            except FileNotFoundError:
                continue
            seen = entry
            if until(entry):
                return seen, mode
        time.sleep(0.002)
    return seen, mode


def test_restore_work_folder_is_private_and_removed_after_success_and_after_sigterm(
    run_module: Any, sandbox: Sandbox, source: dict[str, Any], staging: dict[str, Any], prefix: str, tmp_path: Path
) -> None:
    assert not backup(run_module, sandbox, source, prefix, "wd-1").failed
    parent = tmp_path / "work"
    parent.mkdir()
    args = restore_args(sandbox, staging, prefix, run_id="wd-1", workdir=str(parent), force=True)

    proc = start_module("vdp_restore", args)
    folder, mode = watch_workdir(proc, parent, lambda f: (f / "dump.pgdump").exists())
    assert proc.stdout is not None
    out = proc.stdout.read()
    proc.wait(timeout=300)
    result = json.loads(out[out.index("{") :])
    assert not result.get("failed") and result["restored"], result.get("msg")
    assert folder is not None and mode == 0o700, (folder, oct(mode or 0))
    assert not folder.exists() and list(parent.iterdir()) == []

    proc = start_module("vdp_restore", args)
    folder, mode = watch_workdir(proc, parent, lambda f: (f / "dump.pgdump").exists())
    assert folder is not None and proc.poll() is None, "the restore ended before its dump could be seen"
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.returncode  # it was stopped, not finished
    assert mode == 0o700 and not folder.exists() and list(parent.iterdir()) == []


def test_next_backup_aborts_a_killed_runs_unfinished_upload(sandbox: Sandbox, world: dict[str, Any]) -> None:
    client = s3_of(sandbox)
    prefix = world["vdp_s3"]["prefix"]
    stale_key = f"{prefix}/t-killed/.incoming/pp_x_20260101T000000Z.pgdump"
    other_key = f"{prefix}/t-killed/not-incoming.bin"  # not the backup's: left alone
    uploads = {}
    for key in (stale_key, other_key):
        uploads[key] = client.create_multipart_upload(Bucket=sandbox.bucket, Key=key)["UploadId"]
        client.upload_part(Bucket=sandbox.bucket, Key=key, UploadId=uploads[key], PartNumber=1, Body=b"production rows" * 100)
    try:
        run = play(sandbox, world, "playbooks/backup.yml")
        assert run.returncode == 0, run.stdout[-3000:]
        assert "aborted 1 unfinished upload(s) of a killed run" in run.stdout
        assert record(world, "backup")["aborted_stale_uploads"] == [stale_key]
        left = client.list_multipart_uploads(Bucket=sandbox.bucket, Prefix=f"{prefix}/").get("Uploads") or []
        assert [u["Key"] for u in left] == [other_key]
    finally:
        client.abort_multipart_upload(Bucket=sandbox.bucket, Key=other_key, UploadId=uploads[other_key])


def module_pids_marked(marker: str) -> list[int]:
    """Processes (e.g. a module Ansible's worker left running) whose environment carries `marker`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "environ").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def test_a_killed_migrate_run_leaves_a_run_record_saying_how_far_it_got(sandbox: Sandbox, world: dict[str, Any]) -> None:
    marker = f"VDP_TEST_KILLED_RUN={uuid.uuid4().hex}"
    env = dict(sandbox.env, **dict([marker.split("=", 1)]))
    run_json = world["run_dir"] / "run.json"
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ansible-playbook"), "migrate.yml", "-e", f"@{world['vars_file']}"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 300
    state: dict[str, Any] = {}
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if run_json.is_file():
                state = json.loads(run_json.read_text())
                if state.get("phases", {}).get("preflight", {}).get("status") not in (None, "running"):
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "migrate.yml ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the controller dies: nothing after this point writes the record
        proc.wait(timeout=30)
    finally:
        for pid in module_pids_marked(marker):  # a module the killed worker left running (issue 7 item 8)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    kept = json.loads(run_json.read_text())  # whole: it is written to a temporary name and renamed
    assert kept["run_id"] == world["vdp_run_id"] and kept["outcome"] == "running" and kept["finished_at"] is None
    assert kept["phases"]["preflight"]["status"] in ("ok", "go"), kept["phases"]
    assert kept["phases"]["preflight"]["finished_at"]
    assert (world["run_dir"] / "preflight.json").is_file()
