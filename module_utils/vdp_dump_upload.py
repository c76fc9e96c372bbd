# The dump's way into S3, step by step, for vdp_backup: pg_dump run in the snapshot the row counts read, streamed
# (or, in file mode, uploaded from the work folder) into a hashing multipart upload under the run's .incoming/ key,
# the run lease renewed and a stop request honoured while it runs, then published on its final key and checked.
# The pieces (writer, layout, manifest) are in vdp_dump; this is their order.
"""vdp_backup's steps: pg_dump into the incoming multipart upload, then publication on the final key."""

from __future__ import annotations

import os
import time
from typing import Any

from ansible.module_utils.vdp_baseline import legacy_snapshot
from ansible.module_utils.vdp_dump import (
    META_SHA256,
    DumpFailure,
    HashingMultipartWriter,
    MiB,
    SnapshotCounts,
    dump_command,
    export_snapshot,
    file_dump,
    publish_copy,
    pump,
    sse_args,
    stream_dump,
    tar_directory,
)
from ansible.module_utils.vdp_lease import HeartbeatThread
from ansible.module_utils.vdp_lifecycle import application_name
from ansible.module_utils.vdp_pg import connect, target_from_params
from ansible.module_utils.vdp_progress import ProgressFile
from ansible.module_utils.vdp_s3 import s3_call, s3_secrets
from ansible.module_utils.vdp_workdir import private_workdir


def backup_sse(p: dict[str, Any]) -> dict[str, Any]:
    """The server-side encryption arguments of the options (sse, kms_key_id) for every object the backup writes."""
    return sse_args(None if p["sse"] == "none" else p["sse"], p.get("kms_key_id"))


def snapshot_checksums(conn: Any) -> dict[str, Any]:
    """Rows and content checksum of every legacy table (legacy columns; the migration's flags left out)."""
    return {t: dict(rows=v["rows"], checksum=v["checksum"], columns=v["columns"]) for t, v in legacy_snapshot(conn).items()}


def run_dump(
    p: dict[str, Any],
    client: Any,
    cmd: list[str],
    incoming: str,
    extra: dict[str, Any],
    beat: HeartbeatThread,
    pfile: ProgressFile,
) -> Any:
    """Run pg_dump and stream its archive into the multipart upload of `incoming`; returns the UploadResult.

    On any failure - pg_dump, S3, a stop request (playbooks/stop.yml) - the upload is aborted: nothing is published.
    """
    secrets = [p.get("login_password"), *s3_secrets(p)]
    writer = s3_call(
        "start the upload",
        p,
        p["bucket"],
        lambda: HashingMultipartWriter(
            client, p["bucket"], incoming, p["part_size_mb"] * MiB, extra, p["upload_threads"], on_write=pfile.update
        ),
    )
    try:
        if p["mode"] == "stream":
            s3_call(
                "upload the dump",
                p,
                p["bucket"],
                lambda: stream_dump(cmd, p.get("login_password"), secrets, writer.write, beat.check),
            )
        else:
            pfile.tick("pg_dump into the work folder")
            file_dump(cmd, p.get("login_password"), secrets)
            beat.check()
            output = cmd[-1]
            pfile.stage("backup", "bytes", None if p["format"] == "directory" else os.path.getsize(output), 0, "uploading")
            if p["format"] == "directory":
                s3_call("upload the dump", p, p["bucket"], lambda: tar_directory(output, writer))
            else:
                with open(output, "rb") as handle:
                    s3_call("upload the dump", p, p["bucket"], lambda: pump(handle, writer.write, check=beat.check))
        return s3_call("complete the upload", p, p["bucket"], writer.complete)
    except BaseException:
        writer.abort()
        raise


def dump_to_incoming(
    p: dict[str, Any], client: Any, conn: Any, pg_dump: str, incoming: str, tables: list[str], pfile: ProgressFile
) -> tuple[Any, Any, float]:
    """pg_dump (in the snapshot the counts read) into the incoming upload; (upload, counts, seconds)."""
    snapshot = export_snapshot(conn)
    counts = SnapshotCounts(conn, tables, checksums=snapshot_checksums)
    sse = backup_sse(p)
    beat_params = dict(p, application_name=application_name(p, "backup-heartbeat"))
    with private_workdir("vdp-backup-", p["workdir"]) as workdir:
        output = os.path.join(workdir, "dump" if p["format"] == "directory" else "dump.pgdump") if p["mode"] == "file" else None
        cmd = dump_command(pg_dump, p, target_from_params(p), snapshot, output)
        counts.start()
        started = time.monotonic()
        with HeartbeatThread(lambda: connect(beat_params, autocommit=True), p["run_id"]) as beat:
            upload = run_dump(p, client, cmd, incoming, sse, beat, pfile)
        seconds = time.monotonic() - started
        counts.join()
    conn.execute("COMMIT")
    return upload, counts, seconds


def publish(
    p: dict[str, Any], client: Any, incoming: str, key: str, upload: Any, tags: dict[str, str], dump_version: str
) -> float:
    """Server-side copy of the finished upload onto its final key with its SHA-256 in metadata and tags."""
    bucket = p["bucket"]
    sse = backup_sse(p)
    metadata = {META_SHA256: upload.sha256, "run-id": p["run_id"], "format": p["format"], "pg-dump-version": dump_version}
    started = time.monotonic()
    s3_call("publish the dump", p, bucket, lambda: publish_copy(client, bucket, incoming, key, upload.size, metadata, tags, sse))
    s3_call("remove the temporary upload", p, bucket, lambda: client.delete_object(Bucket=bucket, Key=incoming))
    final = s3_call("check the published dump", p, bucket, lambda: client.head_object(Bucket=bucket, Key=key))
    if int(final["ContentLength"]) != upload.size or (final.get("Metadata") or {}).get(META_SHA256) != upload.sha256:
        raise DumpFailure(f"the published object {key} does not match what was uploaded: check the S3 service")
    return time.monotonic() - started
