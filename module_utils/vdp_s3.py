# The S3 client the backup, verification and restore modules share: built from module params named
# as amazon.aws names them (endpoint_url, region, access_key, secret_key, session_token), with the
# AWS environment as fallback, and errors turned into one secret-free line that says what to fix.
"""S3 client from module params, bucket checks, and one-line error descriptions."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from ansible.module_utils.vdp_errors import OperatorError, redact

try:
    import boto3
    import botocore
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR: str | None = None
    S3_ERRORS: tuple[type[BaseException], ...] = (ClientError, BotoCoreError)
except ImportError as exc:  # pragma: no cover - reported by the module through fail_json
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = str(exc)
    S3_ERRORS = ()

# S3 limits on object tags (https://docs.aws.amazon.com/AmazonS3/latest/userguide/object-tagging.html).
MAX_TAGS = 10
MAX_TAG_KEY = 128
MAX_TAG_VALUE = 256

_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound", "NoSuchBucket"}
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
}


# The inventory's vdp_s3 dict: a role passes it whole as `s3` and the module spreads it onto its flat
# options here, once (the keys are the flat options' names).
S3_DICT_OPTIONS: dict[str, Any] = dict(
    bucket=dict(type="str", required=True),
    endpoint_url=dict(type="str"),
    region=dict(type="str"),
    prefix=dict(type="str", default=""),
    access_key=dict(type="str", no_log=True),
    secret_key=dict(type="str", no_log=True),
    session_token=dict(type="str", no_log=True),
    sse=dict(type="str", default="AES256", choices=["AES256", "aws:kms", "none"]),
    kms_key_id=dict(type="str", no_log=False),
    create_bucket=dict(type="bool", default=False),
)


def s3_argument_spec() -> dict[str, Any]:
    """The options doc fragment vdp_s3 documents: the inventory's vdp_s3 dict (`s3`, spread onto the flat options of
    the same names by vdp_lifecycle.run_module), the bucket, the key prefix, and the connection options named as
    amazon.aws names them, with AWS_* environment fallback."""
    return dict(
        s3=dict(type="dict", options=S3_DICT_OPTIONS),
        bucket=dict(type="str"),
        prefix=dict(type="str", default=""),
        endpoint_url=dict(
            type="str", aliases=["aws_endpoint_url", "s3_url"], fallback=(_env, ["AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"])
        ),
        region=dict(type="str", aliases=["aws_region"], fallback=(_env, ["AWS_REGION", "AWS_DEFAULT_REGION"])),
        access_key=dict(
            type="str", no_log=True, aliases=["aws_access_key_id", "aws_access_key"], fallback=(_env, ["AWS_ACCESS_KEY_ID"])
        ),
        secret_key=dict(
            type="str",
            no_log=True,
            aliases=["aws_secret_access_key", "aws_secret_key"],
            fallback=(_env, ["AWS_SECRET_ACCESS_KEY"]),
        ),
        session_token=dict(type="str", no_log=True, aliases=["aws_session_token"], fallback=(_env, ["AWS_SESSION_TOKEN"])),
        validate_certs=dict(type="bool", default=True),
        ca_bundle=dict(type="path", aliases=["aws_ca_bundle"]),
        s3_connect_timeout=dict(type="int", default=10),
        s3_read_timeout=dict(type="int", default=120),
        s3_max_attempts=dict(type="int", default=5),
    )


def bucket_problem(params: dict[str, Any], what: str = "the bucket of the backups") -> str | None:
    """The input problem of a module that needs a bucket and was given none (neither bucket nor vdp_s3.bucket)."""
    return None if params.get("bucket") else f"no bucket: set vdp_s3.bucket ({what})"


def apply_s3(params: dict[str, Any]) -> dict[str, Any]:
    """params with the `s3` dict (when given) spread onto the flat options of the same names that the module has."""
    given = params.get("s3") or {}
    merged = dict(params)
    for key, value in given.items():
        if key in params and value not in (None, ""):
            merged[key] = value
    return merged


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


class S3Failure(OperatorError):
    """An S3 operation that failed, described in one line without any secret."""


def s3_secrets(params: dict[str, Any]) -> list[str]:
    """The values that must never appear in any output."""
    return [v for v in (params.get("access_key"), params.get("secret_key"), params.get("session_token")) if v]


def s3_client(params: dict[str, Any]) -> Any:
    """A boto3 S3 client from module params; path-style addressing when an endpoint is given."""
    if not HAS_BOTO3:
        raise S3Failure(f"the Python package boto3 is required on the controller: {BOTO3_IMPORT_ERROR}")
    endpoint = params.get("endpoint_url") or None
    config = Config(
        connect_timeout=params.get("s3_connect_timeout") or 10,
        read_timeout=params.get("s3_read_timeout") or 120,
        retries={"max_attempts": params.get("s3_max_attempts") or 5, "mode": "standard"},
        s3={"addressing_style": "path"} if endpoint else {},
        signature_version="s3v4",
    )
    verify: bool | str = params.get("ca_bundle") or bool(params.get("validate_certs", True))
    try:
        session = boto3.session.Session(
            aws_access_key_id=params.get("access_key") or None,
            aws_secret_access_key=params.get("secret_key") or None,
            aws_session_token=params.get("session_token") or None,
            region_name=params.get("region") or ("us-east-1" if endpoint else None),
        )
        return session.client("s3", endpoint_url=endpoint, config=config, verify=verify)
    except (BotoCoreError, ValueError) as exc:
        raise S3Failure(
            f"cannot build an S3 client for {endpoint or 'AWS S3'}: {redact(str(exc), *s3_secrets(params))}"
        ) from None


def error_code(exc: BaseException) -> str:
    if HAS_BOTO3 and isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_not_found(exc: BaseException) -> bool:
    return error_code(exc) in _NOT_FOUND_CODES


def describe_s3_error(exc: BaseException, action: str, params: dict[str, Any], bucket: str | None = None) -> str:
    """One line: what failed, why, and what to check. Never contains a key."""
    where = params.get("endpoint_url") or "AWS S3"
    target = f"s3://{bucket}" if bucket else where
    code = error_code(exc)
    if code in _AUTH_CODES:
        hint = (
            "the S3 credentials were refused: check access_key/secret_key (vdp_s3 / AWS_ACCESS_KEY_ID / "
            "AWS_SECRET_ACCESS_KEY / AWX credential) and the bucket policy"
        )
    elif code in {"NoSuchBucket"} or (code in {"404", "NotFound"} and action == "check the bucket"):
        hint = f"bucket '{bucket}' does not exist: create it, or set vdp_s3.create_bucket: true to let the backup create it"
    elif code in {"NoSuchKey", "404", "NotFound"}:
        hint = "the object does not exist: check the key, the run id and the prefix"
    elif HAS_BOTO3 and isinstance(exc, botocore.exceptions.EndpointConnectionError | botocore.exceptions.ConnectTimeoutError):
        hint = f"S3 endpoint {where} is unreachable: check endpoint_url, DNS, proxies and firewalls"
    elif HAS_BOTO3 and isinstance(exc, botocore.exceptions.NoCredentialsError):
        hint = "no S3 credentials found: set vdp_s3.access_key/secret_key or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
    elif HAS_BOTO3 and isinstance(exc, botocore.exceptions.ReadTimeoutError):
        hint = f"S3 endpoint {where} stopped answering: check its health, or raise s3_read_timeout"
    elif HAS_BOTO3 and isinstance(exc, botocore.exceptions.SSLError):
        hint = "TLS to the S3 endpoint failed: check ca_bundle / validate_certs"
    else:
        hint = "check the S3 endpoint, bucket and permissions"
    detail = redact(str(exc), *s3_secrets(params)).strip().splitlines()
    text = detail[0] if detail else type(exc).__name__
    return f"cannot {action} on {target} ({where}): {text} -- {hint}"


def s3_call(action: str, params: dict[str, Any], bucket: str | None, call: Callable[[], Any]) -> Any:
    """Run an S3 call; any failure becomes an S3Failure with one secret-free line."""
    try:
        return call()
    except S3_ERRORS as exc:
        raise S3Failure(describe_s3_error(exc, action, params, bucket)) from None


def head_or_none(client: Any, bucket: str, key: str) -> dict[str, Any] | None:
    """The object's head, or None when it does not exist (any other failure is raised)."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except Exception as exc:
        if is_not_found(exc):
            return None
        raise


def bucket_exists(client: Any, bucket: str, params: dict[str, Any]) -> bool:
    """True when the bucket exists and we can reach it; False when it does not exist."""
    try:
        client.head_bucket(Bucket=bucket)
        return True
    except Exception as exc:  # noqa: BLE001 - botocore raises many kinds; all become one line
        if is_not_found(exc):
            return False
        raise S3Failure(describe_s3_error(exc, "check the bucket", params, bucket)) from None


def ensure_bucket(client: Any, bucket: str, create: bool, params: dict[str, Any], check_mode: bool = False) -> bool:
    """Make sure the bucket exists; create it only when allowed. Returns True when it was (or would be) created."""
    if bucket_exists(client, bucket, params):
        return False
    if not create:
        raise S3Failure(
            f"bucket '{bucket}' does not exist on {params.get('endpoint_url') or 'AWS S3'}: create it, or set "
            "vdp_s3.create_bucket: true to let the backup create it"
        )
    if check_mode:
        return True
    kwargs: dict[str, Any] = {"Bucket": bucket}
    region = params.get("region")
    if region and region != "us-east-1" and not params.get("endpoint_url"):
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        client.create_bucket(**kwargs)
    except Exception as exc:  # noqa: BLE001 - botocore raises many kinds; all become one line
        if error_code(exc) not in {"BucketAlreadyOwnedByYou"}:
            raise S3Failure(describe_s3_error(exc, "create the bucket", params, bucket)) from None
    return True


def validate_tags(tags: dict[str, Any]) -> dict[str, str]:
    """Tags as strings, within S3's limits; raise ValueError naming the offending tag."""
    out = {str(k): str(v) for k, v in (tags or {}).items()}
    if len(out) > MAX_TAGS:
        raise ValueError(f"S3 allows at most {MAX_TAGS} tags per object, got {len(out)} (the backup adds its own): drop some")
    for key, value in out.items():
        if not key or len(key) > MAX_TAG_KEY or len(value) > MAX_TAG_VALUE:
            raise ValueError(f"tag {key!r}: keys must be 1-{MAX_TAG_KEY} characters and values at most {MAX_TAG_VALUE}")
    return out


def tagging_string(tags: dict[str, str]) -> str:
    from urllib.parse import urlencode

    return urlencode(tags)


def join_key(*parts: str) -> str:
    """Join key parts with single slashes, ignoring empty parts."""
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))
