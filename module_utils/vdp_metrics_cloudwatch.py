# The monitor gate's CloudWatch source: an RDS instance's CPUUtilization (namespace AWS/RDS) through
# boto3's get_metric_data, for databases whose host node_exporter cannot reach. Credentials come from
# boto3's usual chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY injected by an AWX credential, an
# instance role ...), never from module options, so they can never appear in the output.
"""AWS CloudWatch (AWS/RDS CPUUtilization) metric source of the vdp_monitor gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ansible.module_utils.vdp_metrics import ConfigError, MetricSpec, Sample, SourceDefaults, SourceUnreachable, utc_now

NAMESPACE = "AWS/RDS"


class CloudWatchSource(SourceDefaults):
    """The latest datapoint of the metric in the look-back window, once per sample (percent -> ratio)."""

    name = "cloudwatch"

    def __init__(self, options: dict[str, Any], thresholds: dict[str, Any]) -> None:
        try:  # imported here: boto3 costs half a second, and only this source needs it
            import boto3
            from botocore.config import Config
        except ImportError:
            raise ConfigError("the cloudwatch source needs boto3 and botocore on the controller (requirements.txt)") from None
        self.options = options
        self.threshold = thresholds.get("db_cpu_ratio")
        config = Config(
            connect_timeout=options["timeout_seconds"], read_timeout=options["timeout_seconds"], retries={"max_attempts": 2}
        )
        self.client = boto3.client(
            "cloudwatch", region_name=options["region"], endpoint_url=options.get("endpoint_url") or None, config=config
        )

    def specs(self) -> list[MetricSpec]:
        return [
            MetricSpec(
                "cloudwatch",
                "cpu_ratio",
                threshold=self.threshold,
                threshold_name="db_cpu_ratio",
                unit="ratio",
                label=f"{self.options['metric_name']} ({self.options['statistic']})",
            )
        ]

    def describe(self) -> str:
        o = self.options
        return (
            f"CloudWatch {NAMESPACE} {o['metric_name']} {o['statistic']} of DB instance {o['db_instance_identifier']} "
            f"({o['region']}), {o['period']} s periods, latest datapoint of the last {o['lookback_seconds']} s"
        )

    def query(self) -> dict[str, Any]:
        o = self.options
        end = datetime.now(UTC)
        return dict(
            MetricDataQueries=[
                dict(
                    Id="cpu",
                    MetricStat=dict(
                        Metric=dict(
                            Namespace=NAMESPACE,
                            MetricName=o["metric_name"],
                            Dimensions=[dict(Name="DBInstanceIdentifier", Value=o["db_instance_identifier"])],
                        ),
                        Period=o["period"],
                        Stat=o["statistic"],
                    ),
                    ReturnData=True,
                )
            ],
            StartTime=end - timedelta(seconds=o["lookback_seconds"]),
            EndTime=end,
            ScanBy="TimestampDescending",
        )

    def sample(self) -> list[Sample]:
        from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, NoRegionError

        now = utc_now()
        where = f"CloudWatch ({self.options.get('endpoint_url') or self.options['region']})"
        try:
            resp = self.client.get_metric_data(**self.query())
        except NoCredentialsError:
            raise SourceUnreachable(
                f"{where}: no AWS credentials - set AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(an AWX credential) or give the controller an instance role"
            ) from None
        except NoRegionError:
            raise SourceUnreachable(f"{where}: no region: set cloudwatch.region") from None
        except ClientError as exc:
            err = exc.response.get("Error", {})
            raise SourceUnreachable(f"{where}: {err.get('Code', 'error')}: {err.get('Message', '')}".rstrip(": ")) from None
        except BotoCoreError as exc:
            raise SourceUnreachable(f"{where}: {exc}") from None
        results = resp.get("MetricDataResults") or [{}]
        first = results[0]
        values, stamps = first.get("Values") or [], first.get("Timestamps") or []
        if not values:
            return [
                Sample(
                    now,
                    "cloudwatch",
                    "cpu_ratio",
                    None,
                    dict(no_data="no datapoint in the look-back window", status_code=first.get("StatusCode")),
                )
            ]
        latest = max(zip(stamps, values, strict=False), key=lambda pair: pair[0]) if stamps else (None, values[0])
        stamp, percent = latest
        return [
            Sample(
                now,
                "cloudwatch",
                "cpu_ratio",
                float(percent) / 100.0,
                dict(
                    percent=float(percent),
                    datapoint_time=stamp.isoformat() if stamp else None,
                    status_code=first.get("StatusCode"),
                ),
            )
        ]
