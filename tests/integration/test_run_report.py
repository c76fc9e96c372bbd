"""The run record as an auditor reads it: run.html rendered by a real headless Chromium (Debian's `chromium`), and
the copy of the record in the sandbox's real SeaweedFS S3.

One real migrate.yml run per module gives the record; hand-made variants of it (a hostile organization name and
summaries, a run killed with phases missing, a dry run) are written by playbooks/report.yml, as an operator would.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import struct
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.integration.test_app_deploy_standin import TOKEN as STANDIN_TOKEN
from tests.integration.test_app_deploy_standin import StandIn
from tests.support.sandbox import Sandbox
from tests.support.world import make_world, play, recap

WINDOW = (1280, 2000)
HOSTILE_ORG = "<script>document.body.setAttribute('data-pwned','org')</script>"
HOSTILE_SUMMARY = "<img src=x onerror=\"document.body.setAttribute('data-pwned','img')\"> {{ 7*7 }}"
HOSTILE_DETAIL = "</td></tr></table><script>alert(1)</script>"


# --------------------------------------------------------------------------- Chromium


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Debian's chromium is not installed: run scripts/bootstrap.sh (make test does)"
    return path


def _chromium(page: Path, profile: Path, *action: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
         "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--hide-scrollbars",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", *action, page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


class Dom(HTMLParser):
    """The rendered DOM as Chromium dumped it: its text (style content aside) and what could run."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.scripts = 0
        self.handlers: list[str] = []
        self.external: list[str] = []
        self.pwned = False
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self._in_style = tag == "style"
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append(f"{tag}.{name}")
            if name == "data-pwned":
                self.pwned = True
            if name in ("src", "href") and value and not value.startswith("#"):
                self.external.append(value)

    def handle_endtag(self, tag: str) -> None:
        self._in_style = False if tag == "style" else self._in_style

    def handle_data(self, data: str) -> None:
        if not self._in_style:
            self.parts.append(data)

    @property
    def text(self) -> str:
        return re.sub(r"\s+", " ", " ".join(self.parts))


@dataclass
class Rendered:
    dom: Dom
    png: bytes
    blank_png_size: int
    html: str = field(repr=False)

    @property
    def text(self) -> str:
        return self.dom.text


def render(page: Path, tmp: Path) -> Rendered:
    """run.html through headless Chromium: the DOM it built (--dump-dom) and a screenshot of the first screen."""
    dumped = _chromium(page, tmp / "profile-dom", "--dump-dom")
    assert dumped.returncode == 0 and "<html" in dumped.stdout, dumped.stderr[-2000:]
    shot, blank = tmp / "page.png", tmp / "blank.png"
    took = _chromium(page, tmp / "profile-shot", f"--screenshot={shot}")
    assert took.returncode == 0 and shot.exists(), took.stderr[-2000:]
    (tmp / "blank.html").write_text("<!DOCTYPE html><html><body></body></html>")
    _chromium(tmp / "blank.html", tmp / "profile-blank", f"--screenshot={blank}")
    dom = Dom()
    dom.feed(dumped.stdout)
    return Rendered(dom=dom, png=shot.read_bytes(), blank_png_size=blank.stat().st_size, html=page.read_text())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def at(ts: str) -> datetime:
    return datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ")


def duration(seconds: float) -> str:
    """The page's wording of a duration (roles/run_report/filter_plugins/run_report_view.py)."""
    total = round(seconds)
    minutes, secs = divmod(total, 60)
    if minutes:
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    return f"{secs} s"


# --------------------------------------------------------------------------- fixtures


def s3_client(box: Sandbox) -> Any:
    s3 = box.s3
    return boto3.client("s3", endpoint_url=s3["endpoint_url"], region_name=s3["region"],
                        aws_access_key_id=s3["access_key"], aws_secret_access_key=s3["secret_key"])  # fmt: skip


@pytest.fixture(scope="module")
def migrated(sandbox: Sandbox, legacy_template: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One real migrate.yml run, the whole runbook, on a clone of the legacy fixture: its own stand-in app on that
    clone is the app deployed, smoke-checked and watched (the sandbox's stand-in reads another database)."""
    folder = tmp_path_factory.mktemp("run-report")
    with make_world(sandbox, legacy_template(), folder) as world:
        app = StandIn(folder / "standin", world["vdp_production_db"])
        try:
            settings = json.loads(Path(world["vars_file"]).read_text())
            settings.update(
                vdp_app=dict(platform="none", base_url=app.url, release="organizational-1", admin_token=STANDIN_TOKEN),
                vdp_monitor=dict(
                    sql=dict(long_query_seconds=30), http=dict(probes=[dict(name="health", url=f"{app.url}/health")])
                ),
                monitor_period_seconds=10,
                monitor_interval_seconds=5,
            )
            Path(world["vars_file"]).write_text(json.dumps(settings))
            proc = play(sandbox, world, "migrate.yml")
            assert proc.returncode == 0, proc.stdout[-6000:]
            assert STANDIN_TOKEN not in proc.stdout + proc.stderr
            yield dict(world, output=proc.stdout)
        finally:
            app.stop()


def copy_record(world: dict[str, Any], folder: Path) -> Path:
    target = folder / world["vdp_run_id"]
    shutil.copytree(world["run_dir"], target)
    return target


def edit(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def report(box: Sandbox, world: dict[str, Any], run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """playbooks/report.yml on a record folder (as for a killed run), without touching the lease."""
    return play(box, world, "playbooks/report.yml", "-e", f"vdp_run_dir={run_dir}", "-e", "run_report_release_lease=false",
                *args)  # fmt: skip


# --------------------------------------------------------------------------- the real run


def test_real_run_page_in_chromium(migrated: dict[str, Any], tmp_path: Path) -> None:
    run_dir: Path = migrated["run_dir"]
    run = json.loads((run_dir / "run.json").read_text())
    page = render(run_dir / "run.html", tmp_path)
    text = page.text

    # The verdict first, and every phase of the record.
    assert run["verdict"] in text and text.index(run["verdict"]) < text.index("Timeline and budgets")
    for phase, entry in run["phases"].items():
        assert re.search(rf"\b{re.escape(phase)}\b", text), f"phase {phase} is not on the page"
        assert entry["status"] in text
    # The budgets in words: the maintenance window is schema start -> data end, measured from run.json.
    window = (at(run["phases"]["data"]["finished_at"]) - at(run["phases"]["schema"]["started_at"])).total_seconds()
    assert f"{duration(window)} of 30 min" in text and "): met" in text, text[:3000]
    if "deploy" not in run["phases"] and not (run_dir / "deploy.json").exists():
        assert "App deploy" in text and "not measured: none of its phases ran" in text
    # Counts, the complete list of unconverted relationships, the backup, every validation check.
    data = json.loads((run_dir / "data.json").read_text())
    assert f"{data['membership']['migrated']:,}" in text and f"{data['assignments']['inserted']:,}" in text
    listed = [json.loads(line) for line in (run_dir / "data.not_converted.jsonl").read_text().splitlines() if line]
    assert listed, "the fixture has unconverted relationships"
    assert all(r["id"] in text for r in listed) and f"All {len(listed)} are listed here." in text
    backup = json.loads((run_dir / "backup.json").read_text())
    assert backup["key"] in text and backup["sha256"] in text and "verified" in text and "decoded to the end" in text
    validate = json.loads((run_dir / "validate.json").read_text())
    assert all(c["name"] in text for c in validate["checks"])
    assert "organizations.max_users of the default organization" in text
    # Self-contained and inert: nothing fetched, nothing that runs.
    assert page.dom.scripts == 0 and not page.dom.handlers and not page.dom.external, page.dom.external
    # The screenshot is the window's size and shows a drawn page, not a blank one.
    assert png_size(page.png) == WINDOW
    assert len(page.png) > 4 * page.blank_png_size, (len(page.png), page.blank_png_size)
    # The operator is told where the page is.
    assert f"report: {run_dir}/run.html" in migrated["output"]


def test_real_run_record_is_in_s3_with_sse(sandbox: Sandbox, migrated: dict[str, Any]) -> None:
    client = s3_client(sandbox)
    base = f"{migrated['vdp_s3']['prefix']}/{migrated['vdp_run_id']}/report/"
    listed = client.list_objects_v2(Bucket=sandbox.bucket, Prefix=base).get("Contents", [])
    keys = {o["Key"][len(base) :] for o in listed}
    local = {p.name for p in migrated["run_dir"].iterdir() if p.is_file() and not p.name.startswith(".")}
    assert {"run.json", "run.md", "run.html", "data.json", "backup.json", "data.not_converted.jsonl"} <= keys
    # Every file of the record was uploaded (the folder may gain nothing after the upload but run.json's close).
    assert local <= keys, local - keys
    for name in ("run.html", "data.not_converted.jsonl", "backup.json"):
        head = client.head_object(Bucket=sandbox.bucket, Key=base + name)
        assert head["ServerSideEncryption"] == "AES256", (name, head)
        body = client.get_object(Bucket=sandbox.bucket, Key=base + name)["Body"].read()
        assert hashlib.sha256(body).hexdigest() == head["Metadata"]["sha256"]
    html = client.get_object(Bucket=sandbox.bucket, Key=base + "run.html")["Body"].read()
    assert html == (migrated["run_dir"] / "run.html").read_bytes()
    assert f"record copied to s3://{sandbox.bucket}/{base}" in migrated["output"].replace("\n        ", " ")


# --------------------------------------------------------------------------- hand-made records


def test_hostile_values_are_text_not_markup(sandbox: Sandbox, migrated: dict[str, Any], tmp_path: Path) -> None:
    run_dir = copy_record(migrated, tmp_path / "hostile")

    def org(d: dict[str, Any]) -> None:
        d["organization"]["organization"]["name"] = HOSTILE_ORG

    def failed_validation(d: dict[str, Any]) -> None:
        d["checks"][0].update(ok=False, detail=HOSTILE_DETAIL, sample=[HOSTILE_ORG])
        d["valid"] = False

    def summary(d: dict[str, Any]) -> None:
        d["phases"]["validate"].update(status="failed", summary=HOSTILE_SUMMARY)
        # ... and a maintenance window that took 31 of its 30 minutes.
        late = at(d["phases"]["schema"]["started_at"]) + timedelta(minutes=31)
        d["phases"]["data"]["finished_at"] = late.strftime("%Y-%m-%dT%H:%M:%SZ")

    edit(run_dir / "data.json", org)
    edit(run_dir / "validate.json", failed_validation)
    edit(run_dir / "run.json", summary)
    proc = report(sandbox, migrated, run_dir, "-e", "run_report_upload=false")
    assert proc.returncode == 0, proc.stdout[-4000:]

    page = render(run_dir / "run.html", tmp_path)
    assert "<script" not in page.html and "<img" not in page.html
    assert page.dom.scripts == 0 and not page.dom.handlers and not page.dom.pwned
    for value in (HOSTILE_ORG, HOSTILE_SUMMARY, HOSTILE_DETAIL):
        assert value in page.text, value
    assert f"FAILED at validate: {HOSTILE_SUMMARY}" in page.text  # the verdict, first
    assert "INVALID" in page.text and "FAILED" in page.text
    assert "31 min of 30 min (103 %): MISSED by 1 min" in page.text


def test_missing_phases_render_sensibly(sandbox: Sandbox, migrated: dict[str, Any], tmp_path: Path) -> None:
    """A run killed during its data phase: no record of backup, data, validation, app, monitor or rollback."""
    run_dir = tmp_path / "killed" / migrated["vdp_run_id"]
    run_dir.mkdir(parents=True)
    real = json.loads((migrated["run_dir"] / "run.json").read_text())
    keep = {name: dict(real["phases"][name]) for name in ("preflight", "schema")}
    keep["data"] = dict(started_at=real["phases"]["data"]["started_at"], status="running")
    hand_made = {k: v for k, v in real.items() if k not in ("phases", "finished_at", "verdict")}
    hand_made.update(phases=keep, outcome="running")
    (run_dir / "run.json").write_text(json.dumps(hand_made))
    for name in ("preflight", "schema"):
        shutil.copy(migrated["run_dir"] / f"{name}.json", run_dir)
    proc = report(sandbox, migrated, run_dir, "-e", "run_report_upload=false")
    assert proc.returncode == 0, proc.stdout[-4000:]

    text = render(run_dir / "run.html", tmp_path).text
    for said in (
        "not measured: data did not finish",
        "not finished",
        "not measured: none of its phases ran",
        "The data phase is not in this run",
        "Validation is not in this run",
        "No backup in this run",
        "The app deploy is not in this run",
        "The monitor gate is not in this run",
        "No rollback in this run",
        "1 phase never finished: data",
        "Not copied to S3 (run_report_upload is false)",
    ):
        assert said in text, said
    for phase in ("preflight", "schema", "data"):
        assert phase in text
    # Never called a success: the phase that never finished is named, and the outcome says so.
    closed = json.loads((run_dir / "run.json").read_text())
    assert closed["outcome"] == "interrupted", closed["outcome"]
    assert closed["verdict"].startswith("STOPPED at data: the phase never finished"), closed["verdict"]
    assert "succeeded" not in closed["verdict"] and closed["verdict"] in text


def test_dry_run_record_says_would(sandbox: Sandbox, migrated: dict[str, Any], tmp_path: Path) -> None:
    run_dir = copy_record(migrated, tmp_path / "dry")
    edit(run_dir / "run.json", lambda d: d.update(check_mode=True))
    proc = report(sandbox, migrated, run_dir, "--check")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "dry run: would copy the record to" in proc.stdout

    text = render(run_dir / "run.html", tmp_path).text
    assert "DRY RUN (--check): nothing was written" in text
    assert "not measured: a dry run" in text and "): met" not in text
    assert "A dry run: would copy this record to" in text
    client = s3_client(sandbox)
    base = f"{migrated['vdp_s3']['prefix']}/{migrated['vdp_run_id']}/report/"
    head = client.head_object(Bucket=sandbox.bucket, Key=base + "run.html")
    assert head["Metadata"]["sha256"] != hashlib.sha256((run_dir / "run.html").read_bytes()).hexdigest(), "--check uploaded"


def test_failing_s3_only_warns(sandbox: Sandbox, migrated: dict[str, Any], tmp_path: Path) -> None:
    run_dir = copy_record(migrated, tmp_path / "nos3")
    wrong_secret = "W" * 40
    prefix = f"{migrated['vdp_s3']['prefix']}-refused"
    extra = tmp_path / "wrong_s3.json"
    extra.write_text(json.dumps({"run_report_s3": dict(migrated["vdp_s3"], secret_key=wrong_secret, prefix=prefix)}))
    proc = report(sandbox, migrated, run_dir, "-e", f"@{extra}")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert recap(proc.stdout)["failed"] == 0
    assert "WARNING: the run record was NOT copied to" in proc.stdout and "S3 credentials were refused" in proc.stdout
    assert wrong_secret not in proc.stdout + proc.stderr
    text = render(run_dir / "run.html", tmp_path).text
    assert "NOT copied to" in text and "This folder is the only copy" in text
    assert not s3_client(sandbox).list_objects_v2(Bucket=sandbox.bucket, Prefix=prefix).get("Contents")


# --------------------------------------------------------------------------- the upload module


def test_upload_module_is_idempotent_and_encrypts(sandbox: Sandbox, run_module: Any, tmp_path: Path) -> None:
    folder = tmp_path / "record"
    (folder / "notices").mkdir(parents=True)
    (folder / "run.json").write_text('{"run_id": "x"}\n')
    (folder / "run.html").write_text("<!DOCTYPE html><title>x</title>\n")
    (folder / "notices" / "start.txt").write_text("maintenance starts\n")
    (folder / ".tmp-half-written").write_text("{")
    (folder / "passwd").symlink_to("/etc/passwd")
    args = dict(s3=dict(sandbox.s3, prefix="test-report-upload", sse="AES256"), run_id=f"r{uuid.uuid4().hex[:10]}",
                src_dir=str(folder))  # fmt: skip
    expected = ["notices/start.txt", "run.html", "run.json"]

    planned = run_module("vdp_report_upload", args, check=True)
    assert not planned.failed and sorted(planned["uploaded"]) == expected, planned
    client = s3_client(sandbox)
    base = planned["location"].split(f"s3://{sandbox.bucket}/", 1)[1]
    assert not client.list_objects_v2(Bucket=sandbox.bucket, Prefix=base).get("Contents"), "check mode wrote"

    first = run_module("vdp_report_upload", args)
    assert first.changed and sorted(first["uploaded"]) == expected, first
    for name in expected:
        assert client.head_object(Bucket=sandbox.bucket, Key=base + name)["ServerSideEncryption"] == "AES256"
    assert {o["Key"][len(base) :] for o in client.list_objects_v2(Bucket=sandbox.bucket, Prefix=base)["Contents"]} == set(
        expected
    )

    again = run_module("vdp_report_upload", args)
    assert not again.changed and again["uploaded"] == [] and sorted(again["unchanged"]) == expected, again

    (folder / "run.json").write_text('{"run_id": "x", "finished_at": "later"}\n')
    third = run_module("vdp_report_upload", args)
    assert third.changed and third["uploaded"] == ["run.json"], third

    refused = run_module("vdp_report_upload", dict(args, s3=dict(args["s3"], secret_key="W" * 40)))
    assert refused.failed and "S3 credentials were refused" in refused["msg"] and "W" * 40 not in json.dumps(refused)


# --------------------------------------------------------------------------- the view filters, alone


def view() -> Any:
    path = Path(__file__).resolve().parents[2] / "roles" / "run_report" / "filter_plugins" / "run_report_view.py"
    spec = importlib.util.spec_from_file_location("run_report_view", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_view_budgets_and_lists_on_odd_records() -> None:
    v = view()
    budgets = [dict(id="w", name="window", minutes=30, phases=["schema", "data"])]
    run = dict(started_at="2026-01-01T10:00:00Z", phases=dict(
        schema=dict(started_at="2026-01-01T10:00:00Z", finished_at="2026-01-01T10:20:00Z", status="ok"),
        data=dict(started_at="2026-01-01T10:20:00Z", finished_at="2026-01-01T10:45:30Z", status="ok")))  # fmt: skip
    missed = v.timeline(run, {}, budgets)["budgets"][0]
    assert missed["met"] is False and missed["words"] == "45 min 30 s of 30 min (152 %): MISSED by 15 min 30 s"
    run["check_mode"] = True
    assert v.timeline(run, {}, budgets)["budgets"][0]["verdict"] == "not measured"
    broken = v.timeline(dict(phases=dict(schema=dict(started_at="yesterday", status="running"))), {}, budgets)
    assert broken["rows"][0]["offset"] is None and broken["budgets"][0]["words"] == "not measured: schema did not finish"
    assert v.timeline({}, {}, [])["rows"] == []
    listed = v.jsonl('{"id": 1}\n\n{"id": 2}\n{broken\n{"id": 3}\n', 2)
    assert listed == dict(total=4, rows=[{"id": 1}, {"id": 2}], shown=2, truncated=True, bad_lines=1)
    assert v.duration(3725) == "1 h 02 min" and v.duration("16.7") == "17 s" and v.duration(None) == "-"


def test_every_value_in_the_html_templates_is_escaped() -> None:
    """Ansible's templating does not autoescape: each {{ }} of run.html's templates ends in `| e`, or is a macro of
    html/macros.j2 (whose own values end in `| e`). A value added without it fails here before it reaches a page."""
    folder = Path(__file__).resolve().parents[2] / "roles" / "run_report" / "templates"
    found = 0
    for template in [folder / "run.html.j2", *sorted((folder / "html").glob("*.j2"))]:
        for match in re.finditer(r"\{\{-?(.*?)-?\}\}", template.read_text(), re.S):
            found += 1
            expression = match.group(1).strip()
            assert expression.endswith("| e") or re.match(r"^(ui\.|tone\(|badge\()", expression), (template.name, expression)
    assert found > 100
