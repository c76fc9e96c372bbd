"""Pure functions of the backup/restore code: TOC parsing, key layout, tags, errors, child processes.

(The production guard, which decides by server identity, is tested in tests/unit/test_guard_units.py and,
against real servers, in tests/integration/test_production_guard.py.)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from tests.support.code import module_utils

vb: Any = SimpleNamespace(
    **{
        n: getattr(module_utils("vdp_archive"), n)
        for n in ("parse_toc", "ReadBack", "Verdict", "judge", "recorded_hashes", "_outcome")
    },
    **{n: getattr(module_utils("vdp_dump"), n) for n in ("Layout", "check_run_id")},
    **{n: getattr(module_utils("vdp_pgtools"), n) for n in ("conninfo", "child_env")},
)
vs: Any = module_utils("vdp_s3")

TOC = """;
; Archive created at 2026-11-25 09:21:01 UTC
;     dbname: virtue
;     Format: CUSTOM
;     Dumped from database version: 15.18
;
5; 2615 16385 SCHEMA - auth supabase_admin
214; 1259 16389 TABLE auth users postgres
215; 1259 16396 TABLE public profiles postgres
216; 1259 16400 TABLE public my table owner_x
3344; 0 16389 TABLE DATA auth users postgres
3345; 0 16396 TABLE DATA public profiles postgres
3346; 0 16400 TABLE DATA public my table owner_x
3201; 2606 16395 CONSTRAINT public profiles profiles_pkey postgres
4000; 0 0 ACL - SCHEMA public pg_database_owner
"""


def test_parse_toc_finds_tables_data_owners_and_header() -> None:
    toc = vb.parse_toc(TOC)
    assert toc.entries == 9
    assert toc.tables == {"auth.users", "public.profiles", "public.my table"}
    assert toc.table_data == {"auth.users", "public.profiles", "public.my table"}
    assert {"postgres", "supabase_admin", "owner_x"} <= toc.owners
    assert toc.header["Format"] == "CUSTOM"
    assert toc.missing(["auth.users", "public.virtues"]) == ["public.virtues"]


def test_parse_toc_table_without_data_is_missing() -> None:
    toc = vb.parse_toc("214; 1259 16389 TABLE public virtues postgres\n")
    assert toc.missing(["public.virtues"]) == ["public.virtues"]


def test_layout_keys_carry_prefix_run_id_and_timestamp() -> None:
    from datetime import UTC, datetime

    layout = vb.Layout("virtue/production/", "20261125T091500Z-ab12")
    started = datetime(2026, 11, 25, 9, 15, 2, tzinfo=UTC)
    key = layout.dump_key("virtue", started, "custom")
    assert key == "virtue/production/20261125T091500Z-ab12/virtue_20261125T091502Z.pgdump"
    assert layout.manifest_key == "virtue/production/20261125T091500Z-ab12/manifest.json"
    assert layout.incoming_key(key) == "virtue/production/20261125T091500Z-ab12/.incoming/virtue_20261125T091502Z.pgdump"
    assert vb.Layout("", "r1").manifest_key == "r1/manifest.json"
    assert vb.Layout("p", "r").dump_key("we/ird db", started, "directory").endswith("/we_ird_db_20261125T091502Z.pgdir.tar")


@pytest.mark.parametrize("run_id", ["", "../x", "a/b", "a b", "x" * 200])
def test_bad_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(ValueError, match="run_id"):
        vb.check_run_id(run_id)


def test_tags_are_limited_like_s3() -> None:
    assert vs.validate_tags({"a": 1}) == {"a": "1"}
    with pytest.raises(ValueError, match="at most 10 tags"):
        vs.validate_tags({str(i): "x" for i in range(11)})
    with pytest.raises(ValueError, match="values at most 256"):
        vs.validate_tags({"k": "v" * 257})


def test_s3_errors_are_one_line_and_secret_free() -> None:
    from botocore.exceptions import ClientError, EndpointConnectionError

    params = {"endpoint_url": "http://s3.local:9000", "access_key": "AKIASECRET", "secret_key": "sup3rs3cr3t"}
    denied = ClientError({"Error": {"Code": "InvalidAccessKeyId", "Message": "bad key AKIASECRET sup3rs3cr3t"}}, "HeadBucket")
    msg = vs.describe_s3_error(denied, "check the bucket", params, "b")
    assert "credentials were refused" in msg and "AKIASECRET" not in msg and "sup3rs3cr3t" not in msg and "\n" not in msg
    down = vs.describe_s3_error(EndpointConnectionError(endpoint_url="http://s3.local:9000"), "upload", params, "b")
    assert "unreachable" in down and "http://s3.local:9000" in down
    missing = ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadBucket")
    assert "create_bucket" in vs.describe_s3_error(missing, "check the bucket", params, "b")


def test_conninfo_never_holds_the_password_and_quotes_values() -> None:
    target = type("T", (), dict(host="h'1", port=5432, dbname="db name", user="u"))()
    text = vb.conninfo(target, {"login_password": "pw-secret", "ssl_mode": "require"}, "app")
    assert "pw-secret" not in text and "host='h\\'1'" in text and "dbname='db name'" in text and "sslmode='require'" in text
    env = vb.child_env("pw-secret")
    assert env["PGPASSWORD"] == "pw-secret"
    assert "PGPASSWORD" not in vb.child_env(None)


def test_judge_lists_every_problem() -> None:
    back = vb.ReadBack(10, "aa", vb.parse_toc("214; 1259 1 TABLE public t postgres\n"), None)
    manifest = {"sha256": "cc", "size": 11, "tables": {"public.t": 1}}
    verdict = vb.Verdict(manifest_key="m", key="k")
    vb.recorded_hashes(verdict, {"Metadata": {"sha256": "bb"}}, {"vdp:sha256": "dd"}, manifest)
    verdict = vb.judge(verdict, manifest, back, ["public.t"])
    assert not verdict.ok
    text = " | ".join(verdict.problems)
    assert "differs from the object metadata" in text and "differs from the manifest" in text and "size read back" in text
    assert "differs from the object tag" in text
    assert verdict.missing_tables == ["public.t"]  # TABLE without TABLE DATA


def test_one_rewritten_hash_is_enough_to_refuse() -> None:
    """The attack: the SHA-256 rewritten in the metadata AND the manifest; the tag still tells the truth."""
    toc = vb.parse_toc("214; 1259 1 TABLE public t postgres\n3344; 0 1 TABLE DATA public t postgres\n")
    back = vb.ReadBack(10, "forged", toc, None, decoded=True)
    manifest = {"sha256": "forged", "size": 10, "tables": {"public.t": 1}}
    verdict = vb.Verdict(manifest_key="m", key="k")
    vb.recorded_hashes(verdict, {"Metadata": {"sha256": "forged"}}, {"vdp:sha256": "original"}, manifest)
    assert [p for p in vb.judge(verdict, manifest, back, ["public.t"]).problems if "object tag" in p]


def test_an_archive_that_does_not_decode_is_refused() -> None:
    listed = (0, "214; 1259 1 TABLE public t postgres\n3344; 0 1 TABLE DATA public t postgres\n", "")
    back = vb._outcome(10, "aa", listed, (1, "", "pg_restore: error: could not read input file: end of file"))
    assert back.problem and "does not decode to the end" in back.problem and not back.decoded
    assert vb._outcome(10, "aa", listed, (0, "", "")).decoded
