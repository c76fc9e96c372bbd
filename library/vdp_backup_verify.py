#!/usr/bin/python
# Prove a backup in S3 is whole and usable before anything is changed: read it back, recompute its
# SHA-256, compare with the object metadata AND the manifest, and list its table of contents.
"""Ansible module vdp_backup_verify: read a backup back from S3 and prove it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: vdp_backup_verify
short_description: Verify a pg_dump backup in S3 - SHA-256 read back, manifest, and table of contents
description:
  - Picks a backup written by M(vdp_backup) - this run's (I(source=run)), the newest (I(source=latest)) or an explicit
    key (I(source=key)) - and reads its manifest.
  - Streams the object back from S3 (no local copy of a custom-format dump; only toc.dat of a directory-format tar),
    recomputes its SHA-256 and size, and compares them with the object's C(sha256) metadata and with the manifest.
  - Feeds the stream to C(pg_restore --list) and checks that every expected table, and every table the manifest
    counted, has both its TABLE and TABLE DATA entries.
  - Any mismatch fails the task (the run stops before anything changes), with every problem listed.
  - Read-only - it never changes anything, so it runs the same in check mode and always reports changed=false.
  - With I(progress_file) (not in check mode), writes the bytes read back of the object's size, the rate and the ETA.
version_added: "1.0.0"
extends_documentation_fragment: [vdp_module, vdp_s3, vdp_backup_source, vdp_progress]
options:
  prefix:
    description: Key prefix of the database's backups (as given to M(vdp_backup)).
    type: str
    default: ""
  pg_bindir:
    description: Folder of pg_restore; default the manifest's server major's usual folder, then PATH.
    type: path
  workdir:
    description: Local folder for the toc.dat of a directory-format backup (a temporary folder inside it, removed afterwards).
    type: path
attributes:
  check_mode:
    support: full
    details: Reads only; runs the full verification in check mode too.
  diff_mode:
    support: none
requirements:
  - boto3
  - pg_restore of the dump's major version or newer
"""

EXAMPLES = r"""
- name: Verify this run's backup
  vdp_backup_verify:
    s3: "{{ vdp_s3 }}"
    run_id: "{{ vdp_run_id }}"
  no_log: true

- name: Verify the newest backup
  vdp_backup_verify:
    bucket: vdp-backups
    prefix: virtue/production
    source: latest
"""

RETURN = r"""
verified:
  description: True when every check passed (the task fails otherwise).
  returned: always
  type: bool
key:
  description: Key of the dump verified.
  returned: when a backup was found
  type: str
manifest_key:
  description: Key of its manifest.
  returned: when a backup was found
  type: str
run_id:
  description: Run id of the backup.
  returned: when a backup was found
  type: str
size:
  description: Bytes read back.
  returned: when a backup was found
  type: int
sha256:
  description: SHA-256 recomputed from the bytes read back.
  returned: when a backup was found
  type: str
sha256_metadata:
  description: SHA-256 in the object's metadata.
  returned: when a backup was found
  type: str
sha256_manifest:
  description: SHA-256 in the manifest.
  returned: when a backup was found
  type: str
toc_entries:
  description: Number of entries in the archive's table of contents.
  returned: when a backup was found
  type: int
missing_tables:
  description: Expected tables without TABLE and TABLE DATA entries in the archive.
  returned: when a backup was found
  type: list
  elements: str
problems:
  description: Every verification problem found (empty when verified).
  returned: always
  type: list
  elements: str
manifest:
  description: The backup's manifest.
  returned: when a backup was found
  type: dict
seconds:
  description: Time spent reading back and checking.
  returned: when a backup was found
  type: float
"""

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.vdp_archive import BackupReader, backup_source_problem, backup_source_spec
from ansible.module_utils.vdp_errors import OperatorError
from ansible.module_utils.vdp_lifecycle import run_module
from ansible.module_utils.vdp_pgtools import pg_tool_path
from ansible.module_utils.vdp_progress import progress_file
from ansible.module_utils.vdp_s3 import s3_argument_spec
from ansible.module_utils.vdp_workdir import private_workdir


def argument_spec() -> dict[str, Any]:
    spec = s3_argument_spec()
    spec.update(backup_source_spec())
    spec.update(pg_bindir=dict(type="path"), workdir=dict(type="path"), progress_file=dict(type="path"))
    return spec


def input_problem(p: dict[str, Any]) -> str | None:
    return backup_source_problem(p, "verify")


def verify(module: AnsibleModule, _conn: Any, result: dict[str, Any]) -> None:
    p = module.params
    reader = BackupReader(p)
    manifest = reader.find("verify")
    major = int(manifest.get("server_version_num") or 0) // 10000 or None
    pg_restore = pg_tool_path("pg_restore", p["pg_bindir"], major)
    started = time.monotonic()
    with (
        private_workdir("vdp-verify-", p["workdir"]) as workdir,
        progress_file(p.get("progress_file"), "verification", "bytes", module.check_mode) as pfile,
    ):
        pfile.start(int(manifest.get("size") or 0) or None, 0, "SHA-256, table of contents, full decode")
        verdict = reader.prove(pg_restore, workdir, pfile.update)
        if not verdict.ok:
            pfile.finish("failed", note="the backup FAILED verification")
    result.update(
        verdict.facts(),
        manifest_key=reader.manifest_key,
        run_id=manifest.get("run_id"),
        manifest=manifest,
        seconds=round(time.monotonic() - started, 3),
    )
    if not verdict.ok:
        raise OperatorError(
            f"backup s3://{p['bucket']}/{verdict.key} FAILED verification: {'; '.join(verdict.problems)}. "
            "Do not restore it: take a new backup"
        )


def main() -> None:
    module = AnsibleModule(argument_spec=argument_spec(), supports_check_mode=True)
    result: dict[str, Any] = dict(changed=False, verified=False, problems=[])
    run_module(module, result, verify, component="verify", database=False, problem=input_problem)


if __name__ == "__main__":
    main()
