#!/usr/bin/python
# The run record goes to S3 beside the run's backup (<prefix>/<run id>/report/), encrypted as the backup is, so the
# record of what happened survives the machine that ran it. One call for the whole folder (amazon.aws.s3_object
# costs 2-3 s of start-up per file), and "unchanged" is judged by a SHA-256 kept in the object's metadata, which
# works under every SSE mode (an ETag is not an MD5 under SSE-KMS).
"""Ansible module vdp_report_upload: copy a run record folder to S3 with server-side encryption, idempotently."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_report_upload
short_description: Copy a run record folder to S3 beside the run's backup, with server-side encryption
description:
  - Uploads every regular file of I(src_dir) (recursively; hidden files, temporary files and symbolic links are
    skipped) to C(s3://<bucket>/<prefix>/<run_id>/<folder>/<relative path>).
  - Each object is written with the server-side encryption asked for (I(sse), I(kms_key_id)) and carries its SHA-256
    in the metadata; a file whose object already has the same SHA-256 and the same encryption is left alone, so a
    second upload of an unchanged record changes nothing.
  - Fails, naming what to fix and never a key, when S3 refuses a write or stores an object without the encryption
    asked for. The role that calls it (run_report) turns a failure into a warning - the run's outcome is the
    migration's, not the upload's.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_s3]
options:
  prefix:
    description: Key prefix of the backups (I(s3.prefix)); the record goes under C(<prefix>/<run_id>/<folder>/).
    type: str
    default: ""
  run_id:
    description: The run id (names the run's folder, as for its backup).
    type: str
    required: true
  folder:
    description: Sub-folder of the run's folder for the record.
    type: str
    default: report
  src_dir:
    description: The local run record folder.
    type: path
    required: true
  sse:
    description: Server-side encryption of the objects, as for the backup (C(none) stores them unencrypted).
    type: str
    choices: [AES256, "aws:kms", none]
    default: AES256
  kms_key_id:
    description: KMS key id or ARN for I(sse=aws:kms); the bucket's default KMS key when empty.
    type: str
attributes:
  check_mode:
    support: full
    details: Reads the objects' metadata only and says which files it would upload.
  diff_mode:
    support: none
requirements:
  - boto3
"""

EXAMPLES = r"""
- name: Upload the run record beside the backup
  vdp_report_upload:
    s3: "{{ vdp_s3 }}"
    run_id: "{{ vdp_run_id }}"
    src_dir: "{{ vdp_run_dir }}"
  register: __upload
"""

RETURN = r"""
location:
  description: Where the record is, C(s3://<bucket>/<prefix>/<run_id>/<folder>/).
  returned: always
  type: str
uploaded:
  description: Files written (or, in check mode, that would be written), relative to I(src_dir).
  returned: always
  type: list
  elements: str
unchanged:
  description: Files whose object already held the same bytes with the same encryption.
  returned: always
  type: list
  elements: str
objects:
  description: Per file - key, size, sha256, server_side_encryption as S3 reported it, action (uploaded/unchanged).
  returned: always
  type: dict
"""

import hashlib
import mimetypes
import os
from dataclasses import dataclass
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_lifecycle import run_module
from ansible.module_utils.vdp_s3 import S3Failure, bucket_problem, head_or_none, join_key, s3_argument_spec, s3_call, s3_client

CONTENT_TYPES = {
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".md": "text/markdown; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
CHUNK = 1024 * 1024


@dataclass
class LocalFile:
    name: str  # relative to src_dir, with forward slashes
    path: str
    size: int
    sha256: str


def argument_spec() -> dict[str, Any]:
    spec = s3_argument_spec()
    spec.update(
        run_id=dict(type="str", required=True),
        folder=dict(type="str", default="report"),
        src_dir=dict(type="path", required=True),
        sse=dict(type="str", default="AES256", choices=["AES256", "aws:kms", "none"]),
        kms_key_id=dict(type="str", no_log=False),
    )
    return spec


def input_problem(p: dict[str, Any]) -> str | None:
    if problem := bucket_problem(p, "the bucket of the backups, where the run record goes beside them"):
        return problem
    if not os.path.isdir(p["src_dir"]):
        return f"run record folder {p['src_dir']} does not exist: check vdp_run_dir / run_report_dir"
    if "/" in p["run_id"] or not p["run_id"].strip():
        return f"run id {p['run_id']!r} cannot name an S3 folder: check vdp_run_id"
    return None


def local_files(src_dir: str) -> list[LocalFile]:
    """Every regular file under src_dir, sorted; hidden names (temporary files) and symbolic links skipped."""
    found = []
    for root, dirs, names in os.walk(src_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not os.path.islink(os.path.join(root, d)))
        for name in sorted(names):
            path = os.path.join(root, name)
            if name.startswith(".") or os.path.islink(path) or not os.path.isfile(path):
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda h=handle: h.read(CHUNK), b""):
                    digest.update(block)
            rel = os.path.relpath(path, src_dir).replace(os.sep, "/")
            found.append(LocalFile(name=rel, path=path, size=os.path.getsize(path), sha256=digest.hexdigest()))
    return found


def encryption_args(p: dict[str, Any]) -> dict[str, str]:
    if p["sse"] == "none":
        return {}
    args = {"ServerSideEncryption": p["sse"]}
    if p["sse"] == "aws:kms" and p.get("kms_key_id"):
        args["SSEKMSKeyId"] = p["kms_key_id"]
    return args


def same_encryption(head: dict[str, Any], p: dict[str, Any]) -> bool:
    """Whether the object's encryption is the one asked for (a KMS key id may come back as an ARN ending in it)."""
    got = head.get("ServerSideEncryption")
    if p["sse"] == "none":
        return True  # not asking for encryption never downgrades an object that has it
    if got != p["sse"]:
        return False
    key = p.get("kms_key_id") or ""
    if p["sse"] != "aws:kms" or not key or key.startswith("alias/") or ":alias/" in key:
        return True  # S3 names the key by its ARN, never by an alias: an alias cannot be compared here
    return str(head.get("SSEKMSKeyId", "")).endswith(key)


def put(client: Any, p: dict[str, Any], key: str, item: LocalFile) -> dict[str, Any]:
    extension = os.path.splitext(item.name)[1].lower()
    content_type = CONTENT_TYPES.get(extension) or mimetypes.guess_type(item.name)[0] or "application/octet-stream"
    with open(item.path, "rb") as body:
        answer = client.put_object(Bucket=p["bucket"], Key=key, Body=body, ContentType=content_type,
                                   Metadata={"sha256": item.sha256, "run-id": p["run_id"]}, **encryption_args(p))  # fmt: skip
    if p["sse"] != "none" and not same_encryption(answer, p):
        stored = head_or_none(client, p["bucket"], key) or {}
        if not same_encryption(stored, p):
            raise S3Failure(
                f"s3://{p['bucket']}/{key} was stored with encryption {stored.get('ServerSideEncryption') or 'none'}, "
                f"not {p['sse']} as vdp_s3.sse asks: check the bucket's encryption settings and the server's SSE support"
            )
        answer = stored
    return answer


def upload(module: AnsibleModule, _conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    base = join_key(p["prefix"], p["run_id"], p["folder"])
    result["location"] = f"s3://{p['bucket']}/{base}/"
    client = s3_client(p)
    for item in local_files(p["src_dir"]):
        key = join_key(base, item.name)
        found = s3_call("read a run record object", p, p["bucket"], lambda k=key: head_or_none(client, p["bucket"], k))
        current = found is not None and (found.get("Metadata") or {}).get("sha256") == item.sha256 and same_encryption(found, p)
        entry = dict(key=key, size=item.size, sha256=item.sha256)
        if current:
            entry.update(action="unchanged", server_side_encryption=found.get("ServerSideEncryption"))
            result["unchanged"].append(item.name)
        else:
            entry["action"] = "would upload" if module.check_mode else "uploaded"
            if not module.check_mode:
                answer = s3_call("upload the run record", p, p["bucket"], lambda k=key, i=item: put(client, p, k, i))
                entry["server_side_encryption"] = answer.get("ServerSideEncryption")
            result["uploaded"].append(item.name)
        result["objects"][item.name] = entry
    result["changed"] = bool(result["uploaded"])


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, location="", uploaded=[], unchanged=[], objects={})
    run_module(module, result, upload, component="report", database=False, problem=input_problem)


if __name__ == "__main__":
    main()
