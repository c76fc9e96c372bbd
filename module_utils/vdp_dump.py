# The backup's half of the S3 plumbing: where a run's backup lives (its key layout), the streaming
# multipart upload that hashes bytes as they pass (bounded memory, no local disk), the publication of
# the finished object with its SHA-256 in metadata and tags, the manifest, and the facts of the
# source database the manifest records (exact row counts, the roles the dump references).
"""Streaming pg_dump -> S3: key layout, hashing multipart upload, publication, manifest, source facts."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from ansible.module_utils.vdp_errors import OperatorError, first_line, redact
from ansible.module_utils.vdp_pgtools import StderrTail, child_env, conninfo
from ansible.module_utils.vdp_s3 import join_key, tagging_string

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
SINGLE_COPY_LIMIT = 5 * 1024 * MiB  # copy_object's limit; above it the copy is multipart
COPY_PART_SIZE = 512 * MiB
READ_CHUNK = 1 * MiB

MANIFEST_NAME = "manifest.json"
INCOMING_DIR = ".incoming"
MANIFEST_VERSION = 1
FORMAT_EXTENSIONS = {"custom": "pgdump", "directory": "pgdir.tar"}
META_SHA256 = "sha256"
TAG_SHA256 = "vdp:sha256"


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------- key layout


@dataclass(frozen=True)
class Layout:
    """Where one run's backup lives: <prefix>/<run_id>/{<db>_<ts>.<ext>, manifest.json, .incoming/}."""

    prefix: str
    run_id: str

    @property
    def run_prefix(self) -> str:
        return join_key(self.prefix, self.run_id) + "/"

    @property
    def manifest_key(self) -> str:
        return join_key(self.prefix, self.run_id, MANIFEST_NAME)

    def dump_key(self, dbname: str, started: datetime, fmt: str) -> str:
        safe_db = re.sub(r"[^A-Za-z0-9_.-]", "_", dbname)
        return join_key(self.prefix, self.run_id, f"{safe_db}_{started:%Y%m%dT%H%M%SZ}.{FORMAT_EXTENSIONS[fmt]}")

    def incoming_key(self, final_key: str) -> str:
        return join_key(self.prefix, self.run_id, INCOMING_DIR, posixpath.basename(final_key))


RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def check_run_id(run_id: str) -> None:
    if not RUN_ID_RE.match(run_id or ""):
        raise ValueError(
            f"run_id {run_id!r} is not usable in an S3 key: use letters, digits, '-', '_', '.', ':' (e.g. 20261125T091500Z-ab12)"
        )


# --------------------------------------------------------------------------- streaming upload


@dataclass
class UploadResult:
    key: str
    size: int
    sha256: str
    parts: int
    part_size: int


class HashingMultipartWriter:
    """A write()-able sink that uploads to S3 in parts while hashing; memory <= (threads + 1) x part size.

    Parts are uploaded by a small thread pool while the caller keeps reading (pg_dump keeps
    writing). The part size doubles every 1000 parts so a dump of any size fits S3's 10,000 parts.
    Call complete() at the end, or abort() on any failure: an aborted upload leaves no object.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        part_size: int,
        extra_args: dict[str, Any],
        threads: int = 2,
        on_write: Callable[[int], None] | None = None,
    ) -> None:
        self.client, self.bucket, self.key = client, bucket, key
        self.on_write = on_write  # called with the bytes written so far (the progress file)
        self.part_size = max(int(part_size), MIN_PART_SIZE)
        self.first_part_size = self.part_size
        self.hash = hashlib.sha256()
        self.size = 0
        self._buf = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._pending: list[Future[dict[str, Any]]] = []
        self._threads = max(1, threads)
        self._pool = ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="vdp-upload")
        self._number = 0
        self.upload_id: str = client.create_multipart_upload(Bucket=bucket, Key=key, **extra_args)["UploadId"]

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self.hash.update(data)
        self.size += len(data)
        self._buf += data
        while len(self._buf) >= self.part_size:
            self._submit(bytes(self._buf[: self.part_size]))
            del self._buf[: self.part_size]
        if self.on_write is not None:
            self.on_write(self.size)
        return len(data)

    def _submit(self, body: bytes) -> None:
        self._number += 1
        if self._number % 1000 == 0:
            self.part_size *= 2
        while len(self._pending) >= self._threads:
            self._parts.append(self._pending.pop(0).result())
        self._pending.append(self._pool.submit(self._upload, self._number, body))

    def _upload(self, number: int, body: bytes) -> dict[str, Any]:
        response = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        return {"PartNumber": number, "ETag": response["ETag"]}

    def complete(self) -> UploadResult:
        if self._buf or self._number == 0:
            self._submit(bytes(self._buf))
            self._buf = bytearray()
        for future in self._pending:
            self._parts.append(future.result())
        self._pending = []
        self._pool.shutdown(wait=True)
        self._parts.sort(key=lambda p: p["PartNumber"])
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self._parts}
        )
        return UploadResult(self.key, self.size, self.hash.hexdigest(), len(self._parts), self.first_part_size)

    def abort(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
        except Exception:  # noqa: BLE001, S110 - best effort; a lifecycle rule cleans leftovers
            pass

    # tarfile's stream mode wants a file object
    def flush(self) -> None:
        return None


def sse_args(sse: str | None, kms_key_id: str | None) -> dict[str, Any]:
    if not sse:
        return {}
    args: dict[str, Any] = {"ServerSideEncryption": sse}
    if sse == "aws:kms" and kms_key_id:
        args["SSEKMSKeyId"] = kms_key_id
    return args


def publish_copy(
    client: Any,
    bucket: str,
    source_key: str,
    final_key: str,
    size: int,
    metadata: dict[str, str],
    tags: dict[str, str],
    sse: dict[str, Any],
    single_copy_limit: int = SINGLE_COPY_LIMIT,
    copy_part_size: int = COPY_PART_SIZE,
) -> None:
    """Server-side copy of the finished upload onto its final key, with its metadata, tags and SSE.

    S3 metadata is fixed when an upload starts, and the SHA-256 is known only at its end; the copy
    (MetadataDirective=REPLACE) is how the hash gets into the final object's metadata. The final key
    appears only once complete. Above 5 GiB the copy is multipart (UploadPartCopy).
    """
    source = {"Bucket": bucket, "Key": source_key}
    if size <= single_copy_limit:
        client.copy_object(
            Bucket=bucket,
            Key=final_key,
            CopySource=source,
            MetadataDirective="REPLACE",
            Metadata=metadata,
            TaggingDirective="REPLACE",
            Tagging=tagging_string(tags),
            ContentType="application/octet-stream",
            **sse,
        )
        return
    upload_id = client.create_multipart_upload(
        Bucket=bucket,
        Key=final_key,
        Metadata=metadata,
        Tagging=tagging_string(tags),
        ContentType="application/octet-stream",
        **sse,
    )["UploadId"]
    try:
        parts = []
        for number, start in enumerate(range(0, size, copy_part_size), 1):
            end = min(start + copy_part_size, size) - 1
            response = client.upload_part_copy(
                Bucket=bucket,
                Key=final_key,
                UploadId=upload_id,
                PartNumber=number,
                CopySource=source,
                CopySourceRange=f"bytes={start}-{end}",
            )
            parts.append({"PartNumber": number, "ETag": response["CopyPartResult"]["ETag"]})
        client.complete_multipart_upload(Bucket=bucket, Key=final_key, UploadId=upload_id, MultipartUpload={"Parts": parts})
    except Exception:
        client.abort_multipart_upload(Bucket=bucket, Key=final_key, UploadId=upload_id)
        raise


class DumpFailure(OperatorError):
    """pg_dump (or what feeds the upload) failed; the message is one secret-free line."""


def pump(
    source: IO[bytes], sink: Callable[[bytes], Any], chunk: int = READ_CHUNK, check: Callable[[], None] | None = None
) -> int:
    """Copy a binary stream into a sink chunk by chunk (calling `check` between chunks); returns bytes copied."""
    total = 0
    fd = source.fileno() if hasattr(source, "fileno") else None
    while True:
        if check is not None:
            check()
        data = os.read(fd, chunk) if fd is not None else source.read(chunk)
        if not data:
            return total
        sink(data)
        total += len(data)


def tar_directory(directory: str, sink: Any) -> None:
    """Write a directory-format dump as one uncompressed tar stream, toc.dat first (its data files are compressed already)."""
    names = sorted(os.listdir(directory), key=lambda n: (n != "toc.dat", n))
    with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tar.gettarinfo(os.path.join(directory, name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(os.path.join(directory, name), "rb") as handle:
                tar.addfile(info, handle)


def put_manifest(client: Any, bucket: str, key: str, manifest: dict[str, Any], sse: dict[str, Any], tags: dict[str, str]) -> None:
    body = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8")
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=body,
        ContentType="application/json",
        Metadata={META_SHA256: hashlib.sha256(body).hexdigest()},
        Tagging=tagging_string(tags),
        **sse,
    )


def build_manifest(
    p: dict[str, Any],
    layout: Layout,
    key: str,
    upload: Any,
    tags: dict[str, str],
    target: Any,
    identity: dict[str, Any],
    counts: Any,
    started: Any,
) -> dict[str, Any]:
    """The manifest written beside the dump (no secret: the source's address and user, never its password)."""
    finished = utcnow()
    return {
        "kind": "vdp-pg-backup",
        "manifest_version": MANIFEST_VERSION,
        "run_id": p["run_id"],
        "bucket": p["bucket"],
        "key": key,
        "manifest_key": layout.manifest_key,
        "format": p["format"],
        "container": "tar" if p["format"] == "directory" else "pg_dump-custom",
        "mode": p["mode"],
        "jobs": p["jobs"] if p["format"] == "directory" else 1,
        "compress": p["compress"],
        "size": upload.size,
        "sha256": upload.sha256,
        "parts": upload.parts,
        "part_size": upload.part_size,
        "sse": p["sse"],
        "kms_key_id": p.get("kms_key_id") or None,
        "tags": tags,
        "source": {"host": target.host, "port": target.port, "dbname": target.dbname, "user": target.user},
        "source_identity": identity,
        "database": counts.database,
        "roles": counts.roles,
        "tables": counts.counts,
        "legacy_checksums": counts.legacy_checksums,
        "tables_absent": counts.absent,
        "snapshot_consistent": True,
        "started_at": iso(started),
        "finished_at": iso(finished),
        "count_seconds": round(counts.seconds, 3),
        "duration_seconds": round((finished - started).total_seconds(), 3),
    }


# --------------------------------------------------------------------------- row counts & roles

ROLES_SQL = """
WITH acl AS (
  SELECT relowner AS owner, relacl AS acl FROM pg_class
  UNION ALL SELECT nspowner, nspacl FROM pg_namespace
  UNION ALL SELECT proowner, proacl FROM pg_proc
  UNION ALL SELECT typowner, typacl FROM pg_type
  UNION ALL SELECT defaclrole, defaclacl FROM pg_default_acl
), ids AS (
  SELECT owner AS oid FROM acl
  UNION SELECT (aclexplode(acl)).grantee FROM acl WHERE acl IS NOT NULL
  UNION SELECT unnest(polroles) FROM pg_policy
)
SELECT r.rolname FROM pg_roles r JOIN ids ON ids.oid = r.oid
WHERE r.rolname !~ '^pg_' ORDER BY 1
"""

DATABASE_SQL = """
SELECT pg_encoding_to_char(encoding), datcollate, datctype, pg_get_userbyid(datdba)
FROM pg_database WHERE datname = current_database()
"""


def count_rows(conn: Any, tables: Iterable[str]) -> tuple[dict[str, int], list[str]]:
    """Exact count(*) of each table that exists, and the names of those that do not."""
    from psycopg import sql

    counts: dict[str, int] = {}
    absent: list[str] = []
    for table in tables:
        schema, _, name = table.partition(".") if "." in table else ("public", "", table)
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (sql.Identifier(schema, name).as_string(conn),))
            exists = bool(cur.fetchone()[0])
            if not exists:
                absent.append(table)
                continue
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
            counts[table] = int(cur.fetchone()[0])
    return counts, absent


def referenced_roles(conn: Any) -> list[str]:
    with conn.cursor() as cur:
        cur.execute(ROLES_SQL)
        return [str(r[0]) for r in cur.fetchall()]


def database_info(conn: Any) -> dict[str, str]:
    with conn.cursor() as cur:
        cur.execute(DATABASE_SQL)
        enc, collate, ctype, owner = cur.fetchone()
    return {"encoding": str(enc), "collate": str(collate), "ctype": str(ctype), "owner": str(owner)}


# --------------------------------------------------------------------------- the dump itself


class SnapshotCounts:
    """Counts and catalog facts read in the exported snapshot, in a thread while pg_dump runs."""

    def __init__(self, conn: Any, tables: list[str], checksums: Callable[[Any], dict[str, Any]] | None = None) -> None:
        import threading

        self.conn, self.tables, self._checksums = conn, tables, checksums
        self.counts: dict[str, int] = {}
        self.legacy_checksums: dict[str, Any] = {}
        self.absent: list[str] = []
        self.roles: list[str] = []
        self.database: dict[str, str] = {}
        self.error: BaseException | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> SnapshotCounts:
        self._thread.start()
        return self

    def _run(self) -> None:
        import time

        started = time.monotonic()
        try:
            self.counts, self.absent = count_rows(self.conn, self.tables)
            self.roles = referenced_roles(self.conn)
            self.database = database_info(self.conn)
            if self._checksums is not None:  # the legacy content of this very snapshot: a full rollback proves it back
                self.legacy_checksums = self._checksums(self.conn)
        except BaseException as exc:  # noqa: BLE001 - handed back to the main thread
            self.error = exc
        self.seconds = time.monotonic() - started

    def join(self) -> None:
        self._thread.join()
        if self.error is not None:
            raise DumpFailure(f"counting rows in the dump's snapshot failed: {first_line(self.error)}")


def export_snapshot(conn: Any) -> str:
    """Open a REPEATABLE READ transaction and export its snapshot: pg_dump and the counts read the same moment."""
    with conn.cursor() as cur:
        cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        cur.execute("SELECT pg_export_snapshot()")
        return str(cur.fetchone()[0])


def dump_command(pg_dump: str, p: dict[str, Any], target: Any, snapshot: str, output: str | None) -> list[str]:
    """pg_dump's argv: the password is never on it (PGPASSWORD in the child's environment)."""
    cmd = [pg_dump, "--no-password", "--snapshot", snapshot, "-d", conninfo(target, p, "vdp-runbook-backup")]
    cmd += ["-Fd", "-j", str(p["jobs"])] if p["format"] == "directory" else ["-Fc"]
    if p["compress"] is not None:
        cmd += ["-Z", str(p["compress"])]
    if output:
        cmd += ["-f", output]
    return cmd


def stream_dump(
    cmd: list[str], password: str | None, secrets: list[str], sink: Callable[[bytes], Any], check: Callable[[], None] | None
) -> None:
    """Run pg_dump with its archive on stdout, pumped into `sink`; pg_dump is killed if the sink or `check` fails."""
    import subprocess

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=child_env(password))
    tail = StderrTail(proc.stderr)  # type: ignore[arg-type]
    try:
        pump(proc.stdout, sink, check=check)  # type: ignore[arg-type]
    except BaseException:
        proc.kill()  # the upload failed or a stop was requested: pg_dump would block on the full pipe
        proc.wait()
        raise
    rc = proc.wait()
    if rc != 0:
        raise DumpFailure(f"pg_dump failed (exit {rc}): {tail.text(secrets) or 'no message'}")


def file_dump(cmd: list[str], password: str | None, secrets: list[str]) -> None:
    """Run pg_dump into a local file or folder (its -f)."""
    import subprocess

    run = subprocess.run(cmd, capture_output=True, env=child_env(password), check=False)
    if run.returncode != 0:
        err = redact(run.stderr.decode("utf-8", "replace").strip().replace("\n", " | "), *secrets)
        raise DumpFailure(f"pg_dump failed (exit {run.returncode}): {err or 'no message'}")


def abort_stale_uploads(client: Any, bucket: str, prefix: str, keep: str | None = None) -> list[str]:
    """Abort every unfinished multipart upload under <prefix>/*/.incoming/ (left by a killed run; the run lease
    guarantees no other run is uploading). Returns the keys aborted."""
    base = join_key(prefix) + "/" if join_key(prefix) else ""
    aborted = []
    paginator = client.get_paginator("list_multipart_uploads")
    for page in paginator.paginate(Bucket=bucket, Prefix=base):
        for upload in page.get("Uploads", []) or []:
            key = upload["Key"]
            if f"/{INCOMING_DIR}/" not in f"/{key}" or key == keep:
                continue
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload["UploadId"])
            aborted.append(key)
    return aborted
