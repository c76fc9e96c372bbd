#!/usr/bin/python
# pg_dump in an archive format to S3: streamed straight into a multipart upload (no local disk) or
# via a local file; hashed while written; published with its SHA-256 in metadata, tags and SSE;
# with a manifest of exact row counts taken in the dump's own snapshot; and retention.
"""Ansible module vdp_backup: verified-ready pg_dump backups in S3."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_backup
short_description: Back up a PostgreSQL database to S3 with pg_dump, a SHA-256 and a manifest
description:
  - Runs C(pg_dump) in an archive format that C(pg_restore) can read (custom, or directory with parallel jobs),
    never a plain SQL script.
  - I(mode=stream) pipes C(pg_dump -Fc) straight into an S3 multipart upload, hashing the bytes as they pass;
    memory stays at about (upload_threads + 1) x part_size_mb and nothing is written to local disk.
    I(mode=file) dumps to a local file (custom) or folder (directory format, C(-j jobs)) first, then uploads it.
  - A directory-format dump is stored as ONE uncompressed tar object (its data files are compressed already),
    toc.dat first, so it has one key, one SHA-256 and one verification like a custom dump.
  - The upload goes to a temporary key under C(<prefix>/<run_id>/.incoming/); when it is complete and pg_dump
    exited 0, a server-side copy publishes it on its final key C(<prefix>/<run_id>/<db>_<UTC timestamp>.pgdump)
    with the SHA-256 in the object metadata (C(x-amz-meta-sha256); S3 metadata can only be set when an object is
    written, and the hash is only known at the end), the tags and server-side encryption. A failed pg_dump or
    upload aborts the multipart upload and leaves no object.
  - Writes C(<prefix>/<run_id>/manifest.json) beside it - source host/port/db/user (no secret), server and pg_dump
    versions, format, size, SHA-256, exact row counts of the tables the migration touches, the roles the dump
    references, start/end, run id. The counts and the dump read the SAME exported snapshot, so they match the
    archive exactly even while the database is being written.
  - Idempotent per run id - when this run's backup exists and its object matches its manifest, nothing is
    uploaded (changed=false). I(state=pruned) applies retention (keep the newest I(keep_last) and those younger
    than I(keep_days)); the run's own backup is never deleted.
  - pg_dump must be at least the server's major version; an older one is refused with the fix named.
  - With I(progress_file), writes the bytes dumped and uploaded as they pass (the dump's size is known only at its end,
    so there is no ETA; the note gives the database's size on disk).
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_postgres, vdp_s3, vdp_progress]
options:
  state:
    description: C(present) makes this run's backup; C(pruned) applies retention only.
    type: str
    choices: [present, pruned]
    default: present
  run_id:
    description: The run id; it names the backup's folder and is never pruned.
    type: str
    required: true
  prefix:
    description: Key prefix of this database's backups (e.g. C(virtue/production)).
    type: str
    default: ""
  create_bucket:
    description: Create the bucket when it does not exist. When false a missing bucket is an error.
    type: bool
    default: false
  mode:
    description: C(stream) (no local disk) or C(file) (dump to I(workdir), then upload).
    type: str
    choices: [stream, file]
    default: stream
  format:
    description: C(custom) (C(-Fc)) or C(directory) (C(-Fd) with I(jobs); needs I(mode=file)).
    type: str
    choices: [custom, directory]
    default: custom
  jobs:
    description: Parallel pg_dump jobs for the directory format.
    type: int
    default: 2
  compress:
    description: pg_dump compression level 0-9; pg_dump's default when omitted.
    type: int
  workdir:
    description: Local folder for I(mode=file) (a temporary folder inside it, removed afterwards).
    type: path
  part_size_mb:
    description: Multipart part size in MiB (at least 5; doubles every 1000 parts so any size fits).
    type: int
    default: 32
  upload_threads:
    description: Parts uploaded in parallel while pg_dump keeps writing.
    type: int
    default: 2
  sse:
    description: Server-side encryption, or C(none).
    type: str
    choices: [AES256, aws:kms, none]
    default: AES256
  kms_key_id:
    description: KMS key id or ARN for I(sse=aws:kms) (the bucket's default KMS key when empty).
    type: str
  tags:
    description: Extra object tags (the module adds C(vdp:run_id), C(vdp:database), C(vdp:kind), C(vdp:sha256)).
    type: dict
    default: {}
  tables:
    description:
      - Tables (schema.name) whose exact row counts go in the manifest. Default - the legacy tables
        (vdp_legacy.LEGACY_TABLES) and the migration's target tables when present.
    type: list
    elements: str
  pg_bindir:
    description: Folder of the PostgreSQL client programs; default the server major's usual folder, then PATH.
    type: path
  force:
    description: Replace this run's existing backup instead of keeping it.
    type: bool
    default: false
  keep_last:
    description: With I(state=pruned), keep the newest N backups.
    type: int
  keep_days:
    description: With I(state=pruned), keep backups younger than D days.
    type: int
notes:
  - Connection options follow community.postgresql (login_host, login_port, login_user, login_password, login_db,
    ssl_mode, ca_cert, connect_timeout) with PGHOST/PGPORT/PGUSER/PGPASSWORD/PGDATABASE fallback; the password
    reaches pg_dump only through PGPASSWORD in its environment.
  - SeaweedFS (the sandbox) supports multipart upload, copy with metadata replacement, tags and AES256; it has no
    KMS, so C(aws:kms) is exercised against AWS only.
attributes:
  check_mode:
    support: full
    details: Connects, checks versions, bucket and this run's backup; dumps and uploads nothing.
  diff_mode:
    support: full
    details: Shows the backup key that would be added, or the backups that would be pruned.
requirements:
  - psycopg >= 3.1
  - boto3
  - pg_dump and pg_restore of the server's major version or newer
"""

EXAMPLES = r"""
- name: Back up production to S3 without touching local disk
  vdp_backup:
    db: "{{ vdp_production_db }}"
    inventory_key: vdp_production_db
    s3: "{{ vdp_s3 }}"
    run_id: "{{ vdp_run_id }}"
    mode: stream
  no_log: true

- name: Directory format with 4 parallel jobs via a local folder
  vdp_backup:
    login_db: virtue
    bucket: vdp-backups
    run_id: "{{ vdp_run_id }}"
    mode: file
    format: directory
    jobs: 4
    workdir: /var/tmp

- name: Keep the newest 7 backups and any younger than 30 days
  vdp_backup:
    state: pruned
    bucket: vdp-backups
    prefix: virtue/production
    run_id: "{{ vdp_run_id }}"
    keep_last: 7
    keep_days: 30
"""

RETURN = r"""
key:
  description: Object key of the dump.
  returned: state=present
  type: str
  sample: virtue/production/20261125T091500Z-ab12/virtue_20261125T091502Z.pgdump
manifest_key:
  description: Object key of the manifest.
  returned: state=present
  type: str
size:
  description: Size of the dump in bytes.
  returned: state=present and not check mode
  type: int
sha256:
  description: SHA-256 of the dump, computed while it was written.
  returned: state=present and not check mode
  type: str
tables:
  description: Exact row count per table, in the dump's snapshot.
  returned: state=present and not check mode
  type: dict
manifest:
  description: The manifest written beside the dump.
  returned: state=present and not check mode
  type: dict
bucket_created:
  description: Whether the bucket was (or in check mode would be) created.
  returned: always
  type: bool
reused:
  description: True when this run's backup already existed and matched its manifest, so nothing was uploaded.
  returned: state=present
  type: bool
pruned:
  description: Backups (run ids) deleted, or that would be deleted in check mode.
  returned: state=pruned
  type: list
  elements: str
kept:
  description: Backups (run ids) kept.
  returned: state=pruned
  type: list
  elements: str
deleted_objects:
  description: Number of objects deleted.
  returned: state=pruned
  type: int
"""

import os
from datetime import timedelta
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_archive import list_backup_sets, read_json_object
from ansible.module_utils.vdp_dump import (
    INCOMING_DIR,
    META_SHA256,
    TAG_SHA256,
    DumpFailure,
    Layout,
    abort_stale_uploads,
    build_manifest,
    check_run_id,
    put_manifest,
    utcnow,
)
from ansible.module_utils.vdp_dump_upload import backup_sse, dump_to_incoming, publish
from ansible.module_utils.vdp_guard import identify
from ansible.module_utils.vdp_legacy import LEGACY_TABLES
from ansible.module_utils.vdp_lifecycle import application_name, run_module
from ansible.module_utils.vdp_names import TARGET_TABLES
from ansible.module_utils.vdp_pg import connect, pg_connection_argument_spec, target_from_params
from ansible.module_utils.vdp_pgtools import pg_tool_path, pg_tool_version, skew_problem
from ansible.module_utils.vdp_progress import ProgressFile, amount, progress_file
from ansible.module_utils.vdp_s3 import (
    bucket_problem,
    ensure_bucket,
    head_or_none,
    s3_argument_spec,
    s3_call,
    s3_client,
    validate_tags,
)
from ansible.module_utils.vdp_workdir import remove_stale


def argument_spec() -> dict[str, Any]:
    spec = pg_connection_argument_spec()
    spec.update(s3_argument_spec())
    spec.update(
        state=dict(type="str", choices=["present", "pruned"], default="present"),
        run_id=dict(type="str", required=True),
        create_bucket=dict(type="bool", default=False),
        mode=dict(type="str", choices=["stream", "file"], default="stream"),
        format=dict(type="str", choices=["custom", "directory"], default="custom"),
        jobs=dict(type="int", default=2),
        compress=dict(type="int"),
        workdir=dict(type="path"),
        part_size_mb=dict(type="int", default=32),
        upload_threads=dict(type="int", default=2),
        sse=dict(type="str", choices=["AES256", "aws:kms", "none"], default="AES256"),
        kms_key_id=dict(type="str"),
        tags=dict(type="dict", default={}),
        tables=dict(type="list", elements="str"),
        pg_bindir=dict(type="path"),
        force=dict(type="bool", default=False),
        keep_last=dict(type="int"),
        keep_days=dict(type="int"),
        progress_file=dict(type="path"),
    )
    return spec


def input_problem(p: dict[str, Any]) -> str | None:
    """One line naming the first bad input, or None."""
    if problem := bucket_problem(p):
        return problem
    try:
        check_run_id(p["run_id"])
    except ValueError as exc:
        return str(exc)
    if p["format"] == "directory" and p["mode"] != "file":
        return "format=directory needs mode=file: pg_dump -Fd writes a folder and cannot stream (use format=custom to stream)"
    if p["jobs"] < 1:
        return f"jobs must be at least 1, got {p['jobs']}"
    if p["compress"] is not None and not 0 <= p["compress"] <= 9:
        return f"compress must be 0-9, got {p['compress']}"
    if p["part_size_mb"] < 5 or p["part_size_mb"] > 5120:
        return f"part_size_mb must be 5-5120 (S3 part limits), got {p['part_size_mb']}"
    if p["upload_threads"] < 1 or p["upload_threads"] > 16:
        return f"upload_threads must be 1-16, got {p['upload_threads']}"
    if p["sse"] != "aws:kms" and p.get("kms_key_id"):
        return "kms_key_id is only used with sse=aws:kms: set sse to aws:kms or drop kms_key_id"
    if p["state"] == "pruned":
        if p["keep_last"] is None and p["keep_days"] is None:
            return "state=pruned needs keep_last and/or keep_days"
        if p["keep_last"] is not None and p["keep_last"] < 1:
            return f"keep_last must be at least 1 (the newest backup is always kept), got {p['keep_last']}"
        if p["keep_days"] is not None and p["keep_days"] < 0:
            return f"keep_days must be 0 or more, got {p['keep_days']}"
    if p["workdir"] and not os.path.isdir(p["workdir"]):
        return f"workdir {p['workdir']} is not a folder: create it or point workdir elsewhere"
    return None


def backup_tags(p: dict[str, Any], dbname: str, sha256: str | None = None) -> dict[str, str]:
    tags = {"vdp:run_id": p["run_id"], "vdp:database": dbname, "vdp:kind": "pg_dump"}
    if sha256:
        tags[TAG_SHA256] = sha256
    tags.update({str(k): str(v) for k, v in (p["tags"] or {}).items()})
    return validate_tags(tags)


# --------------------------------------------------------------------------- existing backup of this run


def existing_backup(module: AnsibleModule, client: Any, layout: Layout) -> tuple[dict[str, Any] | None, str | None]:
    """(manifest, None): this run's backup exists and matches; (None, why): it is broken; (None, None): absent."""
    p = module.params
    head = s3_call("read this run's manifest", p, p["bucket"], lambda: head_or_none(client, p["bucket"], layout.manifest_key))
    if head is None:
        return None, None
    manifest = s3_call(
        "read this run's manifest", p, p["bucket"], lambda: read_json_object(client, p["bucket"], layout.manifest_key)
    )
    obj = s3_call("check this run's backup", p, p["bucket"], lambda: head_or_none(client, p["bucket"], str(manifest.get("key"))))
    if obj is None:
        return None, f"the manifest names {manifest.get('key')}, which does not exist"
    meta = (obj.get("Metadata") or {}).get(META_SHA256)
    if meta != manifest.get("sha256") or int(obj.get("ContentLength", -1)) != int(manifest.get("size", -2)):
        return None, f"{manifest.get('key')} does not match its manifest (size or sha256)"
    return manifest, None


def make_backup(module: AnsibleModule, client: Any, layout: Layout, result: dict[str, Any], pfile: ProgressFile) -> None:
    p = module.params
    tables = [*LEGACY_TABLES, *TARGET_TABLES] if p["tables"] is None else p["tables"]
    conn = connect(dict(p, application_name=application_name(p, "backup")), autocommit=True)
    try:
        server_major = conn.info.server_version // 10000
        server_version = conn.execute("SHOW server_version").fetchone()[0]
        pg_dump = pg_tool_path("pg_dump", p["pg_bindir"], server_major)
        dump_major, dump_version = pg_tool_version(pg_dump)
        skew = skew_problem("pg_dump", dump_major, server_major)
        if skew:
            raise DumpFailure(skew)
        target = target_from_params(p)
        started = utcnow()
        key = layout.dump_key(target.dbname, started, p["format"])
        result.update(key=key, manifest_key=layout.manifest_key, diff=dict(before={}, after={"backup": key}))
        if module.check_mode:
            result["changed"] = True
            result["would_dump"] = dict(
                source=target.address,
                server_version=str(server_version),
                estimated_bytes=int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]),
            )
            return
        result["removed_leftovers"] = remove_stale(p["workdir"])
        result["aborted_stale_uploads"] = s3_call(
            "abort unfinished uploads", p, p["bucket"], lambda: abort_stale_uploads(client, p["bucket"], p["prefix"])
        )
        identity = identify(conn, target.dbname).as_dict()
        incoming = layout.incoming_key(key)
        on_disk = amount(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0], "bytes")
        pfile.start(None, 0, f"the database is {on_disk} on disk")
        upload, counts, dump_seconds = dump_to_incoming(p, client, conn, pg_dump, incoming, tables, pfile)
        pfile.update(upload.size, total=upload.size, note="publishing it, writing the manifest")
        tags = backup_tags(p, target.dbname, upload.sha256)
        publish_seconds = publish(p, client, incoming, key, upload, tags, dump_version)
        manifest = build_manifest(p, layout, key, upload, tags, target, identity, counts, started)
        manifest.update(
            server_version=str(server_version),
            server_version_num=int(conn.info.server_version),
            pg_dump_version=dump_version,
            pg_dump_major=dump_major,
            dump_seconds=round(dump_seconds, 3),
            publish_seconds=round(publish_seconds, 3),
        )
        s3_call(
            "write the manifest",
            p,
            p["bucket"],
            lambda: put_manifest(client, p["bucket"], layout.manifest_key, manifest, backup_sse(p), tags),
        )
        result.update(changed=True, size=upload.size, sha256=upload.sha256, tables=counts.counts, manifest=manifest)
    finally:
        conn.close()


# --------------------------------------------------------------------------- retention


def prune(module: AnsibleModule, client: Any, result: dict[str, Any]) -> None:
    p = module.params
    bucket = p["bucket"]
    sets = s3_call("list the backups", p, bucket, lambda: list_backup_sets(client, bucket, p["prefix"]))
    complete = [s for s in sets if s.manifest_key]
    cutoff = utcnow() - timedelta(days=p["keep_days"]) if p["keep_days"] is not None else None
    kept: list[str] = []
    doomed: list[Any] = []
    for index, backup in enumerate(complete):
        young = cutoff is not None and backup.last_modified is not None and backup.last_modified >= cutoff
        newest = p["keep_last"] is not None and index < p["keep_last"]
        if backup.run_id == p["run_id"] or young or newest:
            kept.append(backup.run_id)
        else:
            doomed.append(backup)
    deleted = 0
    pruned: list[str] = []
    for backup in doomed:
        manifest = s3_call("read a manifest", p, bucket, lambda b=backup: read_json_object(client, bucket, str(b.manifest_key)))
        keys = [k for k in backup.keys if k in (manifest.get("key"), backup.manifest_key) or f"/{INCOMING_DIR}/" in k]
        pruned.append(backup.run_id)
        if module.check_mode:
            continue
        for key in [k for k in keys if k != backup.manifest_key] + [str(backup.manifest_key)]:  # manifest last
            s3_call("delete an old backup", p, bucket, lambda k=key: client.delete_object(Bucket=bucket, Key=k))
            deleted += 1
    incomplete = [s.run_id for s in sets if not s.manifest_key]
    result.update(
        changed=bool(pruned),
        pruned=pruned,
        kept=kept,
        incomplete=incomplete,
        deleted_objects=deleted,
        diff=dict(before={"backups": sorted(kept + pruned)}, after={"backups": sorted(kept)}),
    )


# --------------------------------------------------------------------------- main


def work(module: AnsibleModule, _conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    try:
        backup_tags(p, "x", "0" * 64)
    except ValueError as exc:
        raise DumpFailure(str(exc)) from None
    layout = Layout(p["prefix"], p["run_id"])
    client = s3_client(p)
    result["bucket_created"] = ensure_bucket(client, p["bucket"], p["create_bucket"], p, module.check_mode)
    result["changed"] = result["bucket_created"]
    if p["state"] == "pruned":
        if result["bucket_created"]:
            result.update(pruned=[], kept=[], incomplete=[], deleted_objects=0)
            return
        prune(module, client, result)
        return
    if not result["bucket_created"]:
        manifest, broken = existing_backup(module, client, layout)
        if manifest and not p["force"]:
            result.update(
                reused=True,
                key=manifest["key"],
                manifest_key=layout.manifest_key,
                size=manifest["size"],
                sha256=manifest["sha256"],
                tables=manifest.get("tables", {}),
                manifest=manifest,
            )
            return
        if broken and not p["force"]:
            raise DumpFailure(
                f"run {p['run_id']} already has a backup that is inconsistent: {broken}. "
                "Start a new run id, or set backup_force: true to replace it"
            )
    with progress_file(p.get("progress_file"), "backup", "bytes", module.check_mode) as pfile:
        make_backup(module, client, layout, result, pfile)


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, bucket_created=False, reused=False)
    run_module(module, result, work, component="backup", database=False, problem=input_problem)


if __name__ == "__main__":
    main()
