# The reading half: finding a backup in the bucket (this run's, the newest, or a given key), reading
# it back while hashing it, and proving it before anything is destroyed - every recorded SHA-256
# (object metadata, object tag, manifest) agrees with the bytes read, the size agrees, the table of
# contents holds the expected tables, and the whole archive DECODES (pg_restore -f /dev/null reads
# every data block: `pg_restore --list` alone exits 0 on a half-truncated file).
"""Backups in the bucket: lookup, read-back with SHA-256, table of contents, full decode, the verdict."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import re
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from ansible.module_utils.vdp_dump import MANIFEST_NAME, META_SHA256, READ_CHUNK, TAG_SHA256, Layout
from ansible.module_utils.vdp_errors import OperatorError
from ansible.module_utils.vdp_legacy import LEGACY_TABLES
from ansible.module_utils.vdp_s3 import bucket_exists, bucket_problem, is_not_found, join_key, s3_call, s3_client


class BackupNotFound(OperatorError):
    """The requested backup is not in the bucket, or its manifest cannot be trusted."""


def read_json_object(client: Any, bucket: str, key: str) -> dict[str, Any]:
    """A JSON object written by this runbook; its body must hash to the SHA-256 in its metadata when it has one."""
    response = client.get_object(Bucket=bucket, Key=key)
    body = response["Body"].read()
    recorded = (response.get("Metadata") or {}).get(META_SHA256)
    if recorded and recorded != hashlib.sha256(body).hexdigest():
        raise BackupNotFound(
            f"s3://{bucket}/{key} was altered after it was written (its SHA-256 differs from the one in its metadata): "
            "do not trust this backup; take a new one"
        )
    return json.loads(body.decode("utf-8"))


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

    def __init__(self, body: Any, on_read: Callable[[int], None] | None = None) -> None:
        self.body = body
        self.hash = hashlib.sha256()
        self.size = 0
        self.on_read = on_read  # called with the bytes read so far (the progress file)

    def read(self, amount: int = -1) -> bytes:
        data = self.body.read(amount if amount and amount > 0 else None)
        self.hash.update(data)
        self.size += len(data)
        if self.on_read is not None:
            self.on_read(self.size)
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
    """Result of reading an object back: its size and SHA-256 as recomputed here, its TOC, and whether it decoded."""

    def __init__(self, size: int, sha256: str, toc: Toc | None, problem: str | None = None, decoded: bool = False) -> None:
        self.size, self.sha256, self.toc, self.problem, self.decoded = size, sha256, toc, problem, decoded


class ChildReader:
    """A pg_restore child fed on stdin; its stdout (optional) and stderr collected in threads."""

    def __init__(self, argv: list[str], keep_stdout: bool) -> None:
        out = subprocess.PIPE if keep_stdout else subprocess.DEVNULL
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
        self.out: list[bytes] = []
        self.err: list[bytes] = []
        self.open = True
        streams = [(self.proc.stderr, self.err)] + ([(self.proc.stdout, self.out)] if keep_stdout else [])
        self._threads = [threading.Thread(target=lambda s=s, b=b: b.append(s.read()), daemon=True) for s, b in streams]
        for thread in self._threads:
            thread.start()

    def feed(self, data: bytes) -> None:
        if not self.open:
            return
        try:
            self.proc.stdin.write(data)  # type: ignore[union-attr]
        except (BrokenPipeError, OSError):  # pg_restore --list stops reading after the TOC
            self.open = False

    def finish(self) -> tuple[int, str, str]:
        try:
            self.proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass
        rc = self.proc.wait(timeout=3600)
        for thread in self._threads:
            thread.join(timeout=30)
        err = b"".join(self.err).decode("utf-8", "replace").strip().replace("\n", " | ")
        return rc, b"".join(self.out).decode("utf-8", "replace"), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def _run(argv: list[str]) -> tuple[int, str, str]:
    run = subprocess.run(argv, capture_output=True, timeout=3600, check=False)
    return (
        run.returncode,
        run.stdout.decode("utf-8", "replace"),
        run.stderr.decode("utf-8", "replace").strip().replace("\n", " | "),
    )


def _outcome(size: int, sha: str, listed: tuple[int, str, str], decoded: tuple[int, str, str] | None) -> ReadBack:
    """The read-back's verdict from `pg_restore --list` and `pg_restore -f /dev/null` (the full decode)."""
    rc, out, err = listed
    if rc != 0:
        return ReadBack(size, sha, None, f"pg_restore --list cannot read the archive: {err or 'exit ' + str(rc)}")
    toc = parse_toc(out)
    if decoded is None:
        return ReadBack(size, sha, toc)
    rc, _, err = decoded
    if rc != 0:
        return ReadBack(
            size, sha, toc, f"the archive does not decode to the end (pg_restore -f /dev/null: {err or 'exit ' + str(rc)})"
        )
    return ReadBack(size, sha, toc, decoded=True)


def read_back_custom(
    client: Any,
    bucket: str,
    key: str,
    pg_restore: str,
    save_to: str | None = None,
    decode: bool = True,
    on_read: Callable[[int], None] | None = None,
) -> ReadBack:
    """Stream a custom-format object through SHA-256, `pg_restore --list` (the TOC) and, with decode,
    `pg_restore -f /dev/null` (every data block decompressed); optionally save it to a file - one read of S3."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    reader = HashingReader(body, on_read)
    children = [ChildReader([pg_restore, "--list"], keep_stdout=True)]
    if decode:
        children.append(ChildReader([pg_restore, "-f", os.devnull], keep_stdout=False))
    sink = open(save_to, "wb") if save_to else None
    try:
        while data := reader.read(READ_CHUNK):
            if sink:
                sink.write(data)
            for child in children:
                child.feed(data)
        results = [child.finish() for child in children]
    except BaseException:
        for child in children:
            child.kill()
        raise
    finally:
        if sink:
            sink.close()
    return _outcome(reader.size, reader.hash.hexdigest(), results[0], results[1] if decode else None)


def read_back_directory_tar(
    client: Any,
    bucket: str,
    key: str,
    pg_restore: str,
    workdir: str,
    extract_all: bool,
    decode: bool = True,
    on_read: Callable[[int], None] | None = None,
) -> ReadBack:
    """Stream a tarred directory-format dump through SHA-256; extract it into workdir (everything when it is to be
    decoded or kept, else toc.dat only), list it, and decode it (pg_restore -f /dev/null)."""
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    reader = HashingReader(body, on_read)
    problem = None
    try:
        with tarfile.open(fileobj=reader, mode="r|") as tar:  # type: ignore[call-overload]
            for member in tar:
                safe = member.isfile() and "/" not in member.name and not member.name.startswith(".")
                if not safe:
                    problem = f"unexpected member {member.name!r} in the directory-format tar: refusing to extract it"
                    break
                if extract_all or decode or member.name == "toc.dat":
                    tar.extract(member, workdir, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        problem = f"the directory-format tar is damaged: {exc}"
    reader.drain()
    size, sha = reader.size, reader.hash.hexdigest()
    if problem:
        return ReadBack(size, sha, None, problem)
    if not os.path.exists(os.path.join(workdir, "toc.dat")):
        return ReadBack(size, sha, None, "the directory-format tar has no toc.dat")
    listed = _run([pg_restore, "--list", workdir])
    return _outcome(size, sha, listed, _run([pg_restore, "-f", os.devnull, workdir]) if decode else None)


@dataclass
class Verdict:
    """Outcome of verifying one backup: checks done and problems found (empty = verified)."""

    manifest_key: str
    key: str
    size: int = 0
    sha256_computed: str = ""
    sha256_metadata: str = ""
    sha256_tag: str = ""
    sha256_manifest: str = ""
    decoded: bool = False
    toc_entries: int = 0
    tables_in_toc: list[str] = field(default_factory=list)
    missing_tables: list[str] = field(default_factory=list)
    owners: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def facts(self) -> dict[str, Any]:
        """What a module returns of the verification (vdp_backup_verify's RETURN): the fields of the same names, the
        verdict, and as sha256 the hash of the bytes read back."""
        kept = (f.name for f in fields(self) if f.name not in _NOT_RETURNED)
        return dict({name: getattr(self, name) for name in kept}, verified=self.ok, sha256=self.sha256_computed)


_NOT_RETURNED = ("manifest_key", "sha256_computed", "tables_in_toc", "owners")  # the module returns these its own way


def recorded_hashes(verdict: Verdict, head: dict[str, Any], tags: dict[str, str], manifest: dict[str, Any]) -> None:
    """Every place the backup's SHA-256 was recorded: object metadata, object tag, manifest."""
    verdict.sha256_metadata = str((head.get("Metadata") or {}).get(META_SHA256, ""))
    verdict.sha256_tag = str(tags.get(TAG_SHA256, ""))
    verdict.sha256_manifest = str(manifest.get("sha256", ""))


def judge(verdict: Verdict, manifest: dict[str, Any], back: ReadBack, expected: Iterable[str]) -> Verdict:
    """Compare what was read back with every recorded hash, the size and the TOC; fill in the problems."""
    verdict.size, verdict.sha256_computed, verdict.decoded = back.size, back.sha256, back.decoded
    for where, value in (
        ("object metadata", verdict.sha256_metadata),
        ("object tag vdp:sha256", verdict.sha256_tag),
        ("manifest", verdict.sha256_manifest),
    ):
        if not value:
            verdict.problems.append(f"the {where} records no SHA-256 (it was not published by vdp_backup)")
        elif value != back.sha256:
            verdict.problems.append(f"SHA-256 of the object read back ({back.sha256}) differs from the {where} ({value})")
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


def object_tags(client: Any, bucket: str, key: str) -> dict[str, str]:
    response = client.get_object_tagging(Bucket=bucket, Key=key)
    return {t["Key"]: t["Value"] for t in response.get("TagSet", [])}


def verify_backup(
    client: Any,
    bucket: str,
    manifest_key: str,
    manifest: dict[str, Any],
    pg_restore: str,
    expected: Iterable[str],
    workdir: str,
    save_to: str | None = None,
    on_read: Callable[[int], None] | None = None,
) -> Verdict:
    """Read the backup back from S3 and prove it: every recorded SHA-256, the size, the TOC, a full decode.

    With save_to, the object is also written there while it is checked (custom format: a file;
    directory format: extracted into save_to, a directory), so a restore reads S3 only once and has
    proven the very bytes it will restore before it drops anything. `on_read` is called with the bytes read so far.
    """
    key = str(manifest["key"])
    verdict = Verdict(manifest_key=manifest_key, key=key)
    recorded_hashes(verdict, client.head_object(Bucket=bucket, Key=key), object_tags(client, bucket, key), manifest)
    if manifest.get("format") == "directory":
        back = read_back_directory_tar(
            client, bucket, key, pg_restore, save_to or workdir, extract_all=bool(save_to), on_read=on_read
        )
    else:
        back = read_back_custom(client, bucket, key, pg_restore, save_to=save_to, on_read=on_read)
    return judge(verdict, manifest, back, expected)


# --------------------------------------------------------------------------- the readers' options and steps
# vdp_backup_verify and vdp_restore pick a backup, find it and prove it the same way; doc fragment
# vdp_backup_source documents the options.


def backup_source_spec() -> dict[str, Any]:
    """Which backup to read: source (run, latest, key) with run_id or key, and the tables its archive must hold."""
    return dict(
        source=dict(type="str", choices=["run", "latest", "key"], default="run"),
        run_id=dict(type="str"),
        key=dict(type="str", no_log=False),
        tables=dict(type="list", elements="str"),
    )


def backup_source_problem(params: dict[str, Any], purpose: str) -> str | None:
    """The first input problem of a backup reader (no bucket, source without its run_id or key), or None."""
    if problem := bucket_problem(params):
        return problem
    if params["source"] == "run" and not params["run_id"]:
        return f"source=run needs run_id (the run whose backup to {purpose})"
    if params["source"] == "key" and not params["key"]:
        return "source=key needs key (the dump's object key, or its manifest.json)"
    return None


def expected_tables(params: dict[str, Any]) -> list[str]:
    """The tables the archive must hold: the option, or the legacy tables the migration rewrites."""
    return list(LEGACY_TABLES if params["tables"] is None else params["tables"])


class BackupReader:
    """The S3 side of a backup reader: its client and options, and - once find() has run - the backup they pick."""

    def __init__(self, params: dict[str, Any]) -> None:
        self.params = params
        self.client: Any = None  # built by find(), so a bad S3 setting fails there, not where the reader is made
        self.manifest_key = ""
        self.manifest: dict[str, Any] = {}

    def find(self, purpose: str) -> dict[str, Any]:
        """The manifest of the backup the options pick; a missing bucket is a refusal naming `purpose`."""
        p, bucket = self.params, self.params["bucket"]
        self.client = s3_client(p)
        if not bucket_exists(self.client, bucket, p):
            raise OperatorError(f"bucket '{bucket}' does not exist: there is no backup to {purpose}")
        self.manifest_key, self.manifest = s3_call(
            "read the backup manifest",
            p,
            bucket,
            lambda: locate_backup(self.client, bucket, p["prefix"], p["source"], p["run_id"], p["key"]),
        )
        return self.manifest

    def prove(self, pg_restore: str, workdir: str, on_read: Callable[[int], None], save_to: str | None = None) -> Verdict:
        """verify_backup of the backup found, against the tables the options expect; S3 failures in one line."""
        bucket, expected = self.params["bucket"], expected_tables(self.params)
        return s3_call(
            "read the backup back",
            self.params,
            bucket,
            lambda: verify_backup(
                self.client, bucket, self.manifest_key, self.manifest, pg_restore, expected, workdir, save_to, on_read
            ),
        )
