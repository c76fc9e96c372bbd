# Documentation of the S3 options (module_utils/vdp_s3.py's s3_argument_spec), written once: the inventory's
# vdp_s3 dict, the bucket, the prefix (a module may describe it in its own words) and the connection options.
"""Doc fragment: S3 connection options of the vdp_* modules."""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  s3:
    description:
      - The bucket as the inventory describes it (C(vdp_s3)); its keys fill the options of the same names (I(bucket),
        I(prefix), I(endpoint_url), I(region), I(access_key), I(secret_key), I(session_token), and where the module has
        them I(sse), I(kms_key_id), I(create_bucket)). Roles pass the whole dict.
    type: dict
    suboptions:
      bucket: {description: Bucket., type: str, required: true}
      endpoint_url: {description: S3 endpoint; AWS when empty., type: str}
      region: {description: Region., type: str}
      prefix: {description: Key prefix of the backups., type: str, default: ""}
      access_key: {description: Access key. Never printed., type: str, no_log: true}
      secret_key: {description: Secret key. Never printed., type: str, no_log: true}
      session_token: {description: Session token. Never printed., type: str, no_log: true}
      sse: {description: Server-side encryption., type: str, default: AES256, choices: [AES256, "aws:kms", none]}
      kms_key_id: {description: KMS key for I(sse=aws:kms)., type: str}
      create_bucket: {description: May the backup create a missing bucket., type: bool, default: false}
  bucket:
    description: S3 bucket (or I(s3.bucket)); required one way or the other.
    type: str
  prefix:
    description: Key prefix of the backups (or I(s3.prefix)).
    type: str
    default: ""
  endpoint_url:
    description: S3 endpoint for S3-compatible stores (C(AWS_ENDPOINT_URL_S3) / C(AWS_ENDPOINT_URL)); AWS when empty.
    type: str
    aliases: [aws_endpoint_url, s3_url]
  region:
    description: Region (C(AWS_REGION) / C(AWS_DEFAULT_REGION)).
    type: str
    aliases: [aws_region]
  access_key:
    description: Access key id (C(AWS_ACCESS_KEY_ID), else boto3's usual chain). Never printed.
    type: str
    aliases: [aws_access_key_id, aws_access_key]
  secret_key:
    description: Secret access key (C(AWS_SECRET_ACCESS_KEY)). Never printed.
    type: str
    aliases: [aws_secret_access_key, aws_secret_key]
  session_token:
    description: Session token (C(AWS_SESSION_TOKEN)). Never printed.
    type: str
    aliases: [aws_session_token]
  validate_certs:
    description: Verify the endpoint's TLS certificate.
    type: bool
    default: true
  ca_bundle:
    description: CA bundle for the endpoint's certificate.
    type: path
    aliases: [aws_ca_bundle]
  s3_connect_timeout:
    description: Seconds to wait for a connection to S3.
    type: int
    default: 10
  s3_read_timeout:
    description: Seconds to wait for an S3 answer.
    type: int
    default: 120
  s3_max_attempts:
    description: Attempts per S3 call (boto3 standard retry mode).
    type: int
    default: 5
notes:
  - S3 options follow amazon.aws (endpoint_url, region, access_key, secret_key, session_token, validate_certs,
    ca_bundle) with AWS_* environment fallback.
"""
