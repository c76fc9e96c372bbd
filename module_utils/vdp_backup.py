# What the backup, verification and restore modules share: where a run's backup lives in S3, the
# streaming multipart upload that hashes bytes as they pass (bounded memory, no local disk), the
# publication of the finished object with its SHA-256 in metadata, the manifest, reading an object
# back while hashing it, `pg_restore --list` parsing, and the production guard of the restore.
"""Streaming pg_dump <-> S3 plumbing with SHA-256, manifests, TOC checks and the restore guard."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import posixpath
import re
import socket
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from ansible.module_utils.vdp_s3 import S3_ERRORS, S3Failure, describe_s3_error, is_not_found, join_key, tagging_string

MiB = 1024 * 1024
MIN_PART_SIZE = 5 * MiB  # S3's minimum for every part but the last
MAX_PARTS = 10000  # S3's maximum number of parts
SINGLE_COPY_LIMIT = 5 * 1024 * MiB  # copy_object's limit; above it the copy is multipart
COPY_PART_SIZE = 512 * MiB
READ_CHUNK = 1 * MiB

MANIFEST_NAME = "manifest.json"
INCOMING_DIR = ".incoming"
MANIFEST_VERSION = 1
FORMAT_EXTENSIONS = {"custom": "pgdump", "directory": "pgdir.tar"}
META_SHA256 = "sha256"

# The exact phrase that lets the restore overwrite the production database (rollback path only).
PRODUCTION_CONFIRMATION = "I understand this overwrites production"

# Tables the migration creates; counted in the manifest when present (the legacy ones come from vdp_legacy).
TARGET_TABLES: tuple[str, ...] = ("public.organizations", "public.practitioner_assignments")


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
    ) -> None:
        self.client, self.bucket, self.key = client, bucket, key
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


# --------------------------------------------------------------------------- pg_dump


class DumpFailure(Exception):
    """pg_dump (or what feeds the upload) failed; the message is one secret-free line."""


class StderrTail:
    """Collect the last lines a child writes to stderr, in a thread (so the pipe never fills)."""

    def __init__(self, stream: IO[bytes], keep: int = 20) -> None:
        self.lines: list[str] = []
        self._keep = keep
        self._thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._thread.start()

    def _run(self, stream: IO[bytes]) -> None:
        for raw in iter(stream.readline, b""):
            self.lines.append(raw.decode("utf-8", "replace").rstrip())
            del self.lines[: -self._keep]

    def text(self, secrets: Iterable[str | None] = ()) -> str:
        self._thread.join(timeout=5)
        out = " | ".join(line for line in self.lines if line)
        for secret in secrets:
            if secret:
                out = out.replace(secret, "********")
        return out


# pg_dump/pg_restore need none of these; they never reach the child.
_CHILD_ENV_DROP = frozenset({"PGPASSWORD", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID"})


def child_env(password: str | None) -> dict[str, str]:
    """The child's environment: the password only here (never argv, never output)."""
    env = {k: v for k, v in os.environ.items() if k not in _CHILD_ENV_DROP}
    if password:
        env["PGPASSWORD"] = password
    return env


def conninfo(target: Any, params: dict[str, Any], application: str) -> str:
    """A libpq conninfo string WITHOUT the password (it goes through PGPASSWORD)."""

    def quote(value: Any) -> str:
        text = str(value).replace("\\", "\\\\").replace("'", "\\'")
        return f"'{text}'"

    items = {
        "host": target.host,
        "port": target.port,
        "dbname": target.dbname,
        "user": target.user,
        "sslmode": params.get("ssl_mode") or "prefer",
        "connect_timeout": params.get("connect_timeout") or 10,
        "application_name": application,
    }
    if params.get("ca_cert"):
        items["sslrootcert"] = params["ca_cert"]
    return " ".join(f"{k}={quote(v)}" for k, v in items.items())


def pump(source: IO[bytes], sink: Callable[[bytes], Any], chunk: int = READ_CHUNK) -> int:
    """Copy a binary stream into a sink chunk by chunk; returns bytes copied."""
    total = 0
    fd = source.fileno() if hasattr(source, "fileno") else None
    while True:
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


# --------------------------------------------------------------------------- manifest & lookup


def read_json_object(client: Any, bucket: str, key: str) -> dict[str, Any]:
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body.decode("utf-8"))


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


def head_or_none(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


@dataclass
class BackupSet:
    """One run's backup in the bucket, as listed (for 'latest' and retention)."""

    run_prefix: str
    manifest_key: str | None = None
    last_modified: datetime | None = None
    keys: list[str] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return self.run_prefix.rstrip("/").rsplit("/", 1)[-1]


def list_backup_sets(client: Any, bucket: str, prefix: str) -> list[BackupSet]:
    """Every run folder under the prefix with its objects, newest manifest first (incomplete runs last)."""
    base = join_key(prefix) + "/" if join_key(prefix) else ""
    sets: dict[str, BackupSet] = {}
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=base):
        for obj in page.get("Contents", []):
            rest = obj["Key"][len(base) :]
            if "/" not in rest:
                continue
            run = rest.split("/", 1)[0]
            entry = sets.setdefault(run, BackupSet(run_prefix=f"{base}{run}/"))
            entry.keys.append(obj["Key"])
            if rest == f"{run}/{MANIFEST_NAME}":
                entry.manifest_key = obj["Key"]
                entry.last_modified = obj["LastModified"]
    # Newest first; S3 times have one-second resolution, so ties go to the run id (run ids start with a UTC timestamp).
    complete = sorted((s for s in sets.values() if s.manifest_key), key=lambda s: (s.last_modified, s.run_id), reverse=True)
    incomplete = [s for s in sets.values() if not s.manifest_key]
    return complete + incomplete


class BackupNotFound(Exception):
    """The requested backup is not in the bucket."""


def locate_backup(
    client: Any,
    bucket: str,
    prefix: str,
    source: str,
    run_id: str | None = None,
    key: str | None = None,
) -> tuple[str, dict[str, Any]]:
    """(manifest key, manifest) of the backup chosen by source: 'run' (run_id), 'latest', or 'key' (dump or manifest key)."""
    if source == "run":
        manifest_key = Layout(prefix, run_id or "").manifest_key
    elif source == "latest":
        sets = [s for s in list_backup_sets(client, bucket, prefix) if s.manifest_key]
        if not sets:
            raise BackupNotFound(f"no backup (no {MANIFEST_NAME}) under s3://{bucket}/{join_key(prefix)}/: run the backup first")
        manifest_key = str(sets[0].manifest_key)
    else:
        if not key:
            raise BackupNotFound("source=key needs the object key of the dump (or of its manifest.json)")
        manifest_key = key if key.endswith(MANIFEST_NAME) else posixpath.join(posixpath.dirname(key), MANIFEST_NAME)
    try:
        manifest = read_json_object(client, bucket, manifest_key)
    except Exception as exc:
        if is_not_found(exc):
            what = f"run {run_id}" if source == "run" else manifest_key
            raise BackupNotFound(
                f"no backup manifest for {what} at s3://{bucket}/{manifest_key}: run the backup first, or pick another"
            ) from None
        raise
    if not isinstance(manifest, dict) or manifest.get("kind") != "vdp-pg-backup" or not manifest.get("key"):
        raise BackupNotFound(f"s3://{bucket}/{manifest_key} is not a vdp backup manifest")
    if source == "key" and key and not key.endswith(MANIFEST_NAME) and manifest["key"] != key:
        raise BackupNotFound(
            f"the manifest beside {key} describes {manifest['key']}, not this object: pick the key the manifest names"
        )
    return manifest_key, manifest


# --------------------------------------------------------------------------- read back & TOC


class HashingReader:
    """A read()-able view of an S3 object body that hashes every byte read through it."""

    def __init__(self, body: Any) -> None:
        self.body = body
        self.hash = hashlib.sha256()
        self.size = 0

    def read(self, amount: int = -1) -> bytes:
        data = self.body.read(amount if amount and amount > 0 else None)
        self.hash.update(data)
        self.size += len(data)
        return data

    def drain(self) -> None:
        while self.read(READ_CHUNK):
            pass


@dataclass
class Toc:
    """What `pg_restore --list` says is in the archive."""

    entries: int
    tables: set[str]
    table_data: set[str]
    owners: set[str]
    header: dict[str, str]
    raw: str = ""

    def missing(self, expected: Iterable[str]) -> list[str]:
        """Expected tables without both their TABLE and TABLE DATA entries."""
        return sorted(t for t in expected if t not in self.tables or t not in self.table_data)


_TOC_LINE = re.compile(r"^\d+;\s+\d+\s+\d+\s+(.*)$")


def parse_toc(text: str) -> Toc:
    """Parse `pg_restore --list` output: tables, table data, owners and the header fields."""
    tables: set[str] = set()
    data: set[str] = set()
    owners: set[str] = set()
    header: dict[str, str] = {}
    entries = 0
    for line in text.splitlines():
        if line.startswith(";"):
            body = line[1:].strip()
            if ":" in body:
                name, _, value = body.partition(":")
                header[name.strip()] = value.strip()
            continue
        match = _TOC_LINE.match(line)
        if not match:
            continue
        entries += 1
        rest = match.group(1)
        tokens = rest.split(" ")
        if len(tokens) >= 2 and tokens[-1] != "-":
            owners.add(tokens[-1])
        for desc, bucket in (("TABLE DATA ", data), ("TABLE ", tables)):
            if rest.startswith(desc):
                words = rest[len(desc) :].split(" ")
                if len(words) >= 3:
                    bucket.add(f"{words[0]}.{' '.join(words[1:-1])}")
                break
    return Toc(entries=entries, tables=tables, table_data=data, owners=owners, header=header, raw=text)


class ReadBack:
    """Result of reading an object back: its size and SHA-256 as recomputed here, and its TOC."""

    def __init__(self, size: int, sha256: str, toc: Toc | None, problem: str | None = None) -> None:
        self.size, self.sha256, self.toc, self.problem = size, sha256, toc, problem


def _list_toc(pg_restore: str, stdin: Any = None, path: str | None = None) -> tuple[Toc | None, str | None]:
    args = [pg_restore, "--list"] + ([path] if path else [])
    run = subprocess.run(args, stdin=stdin, capture_output=True, timeout=600, check=False)
    if run.returncode != 0:
        err = run.stderr.decode("utf-8", "replace").strip().replace("\n", " | ")
        return None, f"pg_restore --list cannot read the archive: {err or 'exit ' + str(run.returncode)}"
    return parse_toc(run.stdout.decode("utf-8", "replace")), None


def read_back_custom(client: Any, bucket: str, key: str, pg_restore: str, save_to: str | None = None) -> ReadBack:
    """Stream a custom-format object through SHA-256 and `pg_restore --list` (stdin); optionally save it to a file.

    pg_restore reads the TOC at the head of the stream and exits; the rest of the stream is still
    read and hashed (and saved when asked), so the whole object is always checked.
    """
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    reader = HashingReader(body)
    proc = subprocess.Popen([pg_restore, "--list"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out_chunks: list[bytes] = []
    err_chunks: list[bytes] = []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True),  # type: ignore[union-attr]
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True),  # type: ignore[union-attr]
    ]
    for thread in readers:
        thread.start()
    feeding = True
    sink = open(save_to, "wb") if save_to else None
    try:
        while True:
            data = reader.read(READ_CHUNK)
            if not data:
                break
            if sink:
                sink.write(data)
            if feeding:
                try:
                    proc.stdin.write(data)  # type: ignore[union-attr]
                except (BrokenPipeError, OSError):
                    feeding = False
    finally:
        if sink:
            sink.close()
        try:
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        rc = proc.wait(timeout=600)
        for thread in readers:
            thread.join(timeout=30)
    if rc != 0:
        err = b"".join(err_chunks).decode("utf-8", "replace").strip().replace("\n", " | ")
        return ReadBack(
            reader.size, reader.hash.hexdigest(), None, f"pg_restore --list cannot read the archive: {err or 'exit ' + str(rc)}"
        )
    return ReadBack(reader.size, reader.hash.hexdigest(), parse_toc(b"".join(out_chunks).decode("utf-8", "replace")))


def read_back_directory_tar(client: Any, bucket: str, key: str, pg_restore: str, workdir: str, extract_all: bool) -> ReadBack:
    """Stream a tarred directory-format dump through SHA-256; extract toc.dat (or everything) into workdir and list it."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    reader = HashingReader(body)
    problem = None
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                safe = member.isfile() and "/" not in member.name and not member.name.startswith(".")
                if not safe:
                    problem = f"unexpected member {member.name!r} in the directory-format tar: refusing to extract it"
                    break
                if extract_all or member.name == "toc.dat":
                    tar.extract(member, workdir, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        problem = f"the directory-format tar is damaged: {exc}"
    reader.drain()
    if problem:
        return ReadBack(reader.size, reader.hash.hexdigest(), None, problem)
    if not os.path.exists(os.path.join(workdir, "toc.dat")):
        return ReadBack(reader.size, reader.hash.hexdigest(), None, "the directory-format tar has no toc.dat")
    toc, problem = _list_toc(pg_restore, path=workdir)
    return ReadBack(reader.size, reader.hash.hexdigest(), toc, problem)


@dataclass
class Verdict:
    """Outcome of verifying one backup: checks done and problems found (empty = verified)."""

    manifest_key: str
    key: str
    size: int = 0
    sha256_computed: str = ""
    sha256_metadata: str = ""
    sha256_manifest: str = ""
    toc_entries: int = 0
    tables_in_toc: list[str] = field(default_factory=list)
    missing_tables: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def judge(verdict: Verdict, head: dict[str, Any], manifest: dict[str, Any], back: ReadBack, expected: Iterable[str]) -> Verdict:
    """Compare what was read back with the object metadata and the manifest; fill in the problems."""
    verdict.size = back.size
    verdict.sha256_computed = back.sha256
    verdict.sha256_metadata = str((head.get("Metadata") or {}).get(META_SHA256, ""))
    verdict.sha256_manifest = str(manifest.get("sha256", ""))
    if not verdict.sha256_metadata:
        verdict.problems.append("the object has no sha256 in its metadata (it was not published by vdp_backup)")
    elif verdict.sha256_metadata != back.sha256:
        verdict.problems.append(
            f"SHA-256 of the object read back ({back.sha256}) differs from its metadata ({verdict.sha256_metadata})"
        )
    if verdict.sha256_manifest != back.sha256:
        verdict.problems.append(
            f"SHA-256 of the object read back ({back.sha256}) differs from the manifest ({verdict.sha256_manifest})"
        )
    if int(manifest.get("size", -1)) != back.size:
        verdict.problems.append(f"size read back ({back.size} bytes) differs from the manifest ({manifest.get('size')} bytes)")
    if back.problem:
        verdict.problems.append(back.problem)
    if back.toc is not None:
        verdict.toc_entries = back.toc.entries
        verdict.tables_in_toc = sorted(back.toc.tables)
        verdict.owners = sorted(back.toc.owners)
        wanted = sorted(set(expected) | set((manifest.get("tables") or {}).keys()))
        verdict.missing_tables = back.toc.missing(wanted)
        if verdict.missing_tables:
            verdict.problems.append(f"tables missing from the archive's table of contents: {', '.join(verdict.missing_tables)}")
    return verdict


def verify_backup(
    client: Any,
    bucket: str,
    manifest_key: str,
    manifest: dict[str, Any],
    pg_restore: str,
    expected: Iterable[str],
    workdir: str,
    save_to: str | None = None,
) -> Verdict:
    """Read the backup back from S3 and check SHA-256 (metadata and manifest), size and TOC.

    With save_to, the object is also written there while it is checked (custom format: a file;
    directory format: extracted into save_to, a directory), so a restore reads S3 only once.
    """
    key = str(manifest["key"])
    verdict = Verdict(manifest_key=manifest_key, key=key)
    head = client.head_object(Bucket=bucket, Key=key)
    if manifest.get("format") == "directory":
        target = save_to or workdir
        back = read_back_directory_tar(client, bucket, key, pg_restore, target, extract_all=bool(save_to))
    else:
        back = read_back_custom(client, bucket, key, pg_restore, save_to=save_to)
    return judge(verdict, head, manifest, back, expected)


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


# --------------------------------------------------------------------------- production guard

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}


def _addresses(host: str) -> set[str]:
    """IP addresses a host name resolves to (loopback collapsed to 'loopback'); unix sockets by path."""
    name = (host or "").strip().lower()
    if name.startswith("/"):
        return {f"unix:{os.path.normpath(name)}"}
    if name in _LOOPBACK_NAMES:
        return {"loopback"}
    found: set[str] = set()
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return {f"name:{name}"}
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        found.add("loopback" if address.is_loopback else str(address))
    return found or {f"name:{name}"}


def same_database(a: tuple[str, int, str], b: tuple[str, int, str]) -> bool:
    """True when (host, port, dbname) a and b are the same database (host names resolved, localhost == 127.0.0.1)."""
    (host_a, port_a, db_a), (host_b, port_b, db_b) = a, b
    if int(port_a) != int(port_b) or db_a != db_b:
        return False
    if (host_a or "").strip().lower() == (host_b or "").strip().lower():
        return True
    return bool(_addresses(host_a) & _addresses(host_b))


def production_guard(
    target: tuple[str, int, str], production: tuple[str, int, str] | None, confirmation: str | None
) -> str | None:
    """A refusal message when the restore target is the production database and the confirmation is not exact."""
    if production is None or not production[0]:
        return (
            "the restore needs the production database's address (production_host/port/db, i.e. vdp_production_db) "
            "to prove it is not overwriting production: pass it"
        )
    if not same_database(target, production):
        return None
    if confirmation == PRODUCTION_CONFIRMATION:
        return None
    return (
        f"refusing to restore onto {target[0]}:{target[1]}/{target[2]}: it is the PRODUCTION database "
        f"(vdp_production_db). Point the staging target elsewhere; only the rollback path may restore production, "
        f"with allow_production set to the exact phrase '{PRODUCTION_CONFIRMATION}'"
    )


def s3_call(action: str, params: dict[str, Any], bucket: str | None, call: Callable[[], Any]) -> Any:
    """Run an S3 call; any failure becomes an S3Failure with one secret-free line."""
    try:
        return call()
    except S3_ERRORS as exc:
        raise S3Failure(describe_s3_error(exc, action, params, bucket)) from None


def iter_chunks(path: str, chunk: int = READ_CHUNK) -> Iterator[bytes]:
    with open(path, "rb") as handle:
        while True:
            data = handle.read(chunk)
            if not data:
                return
            yield data
