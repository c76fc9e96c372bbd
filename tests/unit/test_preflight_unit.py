"""vdp_preflight without a database: input validation, target comparison, go/no-go bookkeeping, docs."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.ansible_doc import ansible_doc
from tests.support.code import ROOT, library, module_utils

_checks = module_utils("vdp_readiness")
pf: Any = SimpleNamespace(
    validate=library("vdp_preflight").validate,
    **{n: getattr(_checks, n) for n in ("Report", "OK", "WARNING", "BLOCKING", "staging_params")},
)


def params(**changes: Any) -> dict[str, Any]:
    base = dict(max_users=1000, long_transaction_seconds=300, sample_limit=20, s3=None)
    base.update(changes)
    return base


def test_valid_input_has_no_problems() -> None:
    assert pf.validate(params(s3={"bucket": "vdp-backups"})) == []


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"max_users": 0}, "max_users must be a positive number"),
        ({"long_transaction_seconds": 0}, "long_transaction_seconds must be >= 1"),
        ({"sample_limit": -1}, "sample_limit must be between 0 and 1000"),
        ({"s3": {"bucket": "ab"}}, "is not a bucket name"),
    ],
)
def test_invalid_input_is_named(changes: dict[str, Any], needle: str) -> None:
    problems = pf.validate(params(**changes))
    assert len(problems) == 1 and needle in problems[0]


def test_report_goes_only_without_blocking_checks() -> None:
    report = pf.Report()
    report.add("one", pf.OK, "fine")
    report.add("two", pf.WARNING, "odd")
    assert report.blocking == [] and report.warnings == ["two: odd"]
    report.add("three", pf.BLOCKING, "broken: fix it")
    assert report.blocking == ["three: broken: fix it"]


def test_staging_params_carry_the_timeouts_but_not_production_credentials() -> None:
    base = dict(connect_timeout=3, application_name="app", lock_timeout="1s", statement_timeout="0", login_password="prod-pw")
    sp = pf.staging_params(dict(host="s", port=6543, dbname="stage", user="u", password=None, ssl_mode="require"), base)
    assert sp["login_host"] == "s" and sp["login_port"] == 6543 and sp["login_db"] == "stage"
    assert sp["login_password"] is None and sp["connect_timeout"] == 3 and sp["ssl_mode"] == "require"


def run_raw(args: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    import json

    from tests.support.modrun import _BOOTSTRAP

    return subprocess.run(
        [sys.executable, "-c", _BOOTSTRAP, str(ROOT), str(ROOT / "library" / "vdp_preflight.py")],
        input=json.dumps({"ANSIBLE_MODULE_ARGS": args}),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_bad_input_fails_before_connecting_and_hides_the_password() -> None:
    proc = run_raw(dict(login_host="127.0.0.1", login_port=1, login_password="Very-Secret-Pw-1", max_users=0))
    assert '"failed": true' in proc.stdout
    assert "max_users must be a positive number" in proc.stdout
    assert "Very-Secret-Pw-1" not in proc.stdout + proc.stderr


def test_unknown_s3_option_is_refused() -> None:
    proc = run_raw(dict(login_host="127.0.0.1", login_port=1, s3=dict(bucket="vdp-backups", acl="public-read")))
    assert '"failed": true' in proc.stdout and "acl" in proc.stdout


def test_documentation_renders() -> None:
    proc = ansible_doc("vdp_preflight")
    assert proc.returncode == 0, proc.stderr
    assert "capacity_policy" in proc.stdout and "warning_messages" in proc.stdout
    assert "WARNING" not in proc.stderr
