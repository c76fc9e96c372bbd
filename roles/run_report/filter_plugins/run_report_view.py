"""Filters that turn a run record into what run.html draws: the phases on one time axis, the budgets measured against
them, and the unconverted relationships read from their .jsonl file.

Kept in Python because timestamp arithmetic and SVG geometry are unreadable in Jinja; the templates only lay out
what these return. Every function takes plain JSON data (run.json, the phase records) and never fails on a missing
or half-written record: a field it cannot read becomes None and the page says "not recorded".
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

# SVG geometry of the timeline (user units; the SVG scales to the page width).
WIDTH = 960
LABEL = 230  # the left column: phase name and status
PLOT = WIDTH - LABEL - 20
ROW = 24
GAUGE_ROW = 40
BUDGET_ROW = 34
BAR = 14
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
MAX_TICKS = 8
WORDS_WIDTH = 330  # room the budget's words take on the timeline (12px text)
BAD_STATUSES = {"failed", "FAILED", "NO-GO", "no-go", "breach", "BREACH", "error"}
_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as the records write them (Z, +00:00, fractions), or None."""
    if not isinstance(value, str):
        return None
    match = _TIME.match(value.strip())
    if not match:
        return None
    zone = match.group(4) or "Z"
    zone = "+00:00" if zone == "Z" else (zone if ":" in zone else f"{zone[:3]}:{zone[3:]}")
    try:
        return datetime.fromisoformat(f"{match.group(1)}T{match.group(2)}{match.group(3) or ''}{zone}").astimezone(UTC)
    except ValueError:
        return None


def duration(seconds: Any) -> str:
    """Seconds in words an operator reads: 7 s, 2 min 43 s, 1 h 02 min; '-' when unknown."""
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return "-"
    total = round(float(seconds))
    if float(seconds) < 10 and float(seconds) != total:
        return f"{float(seconds):.1f} s"
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s" if secs else f"{minutes} min"
    return f"{secs} s"


def _span(entries: list[dict[str, Any]]) -> tuple[datetime | None, datetime | None]:
    starts = [t for t in (parse_time(e.get("started_at")) for e in entries) if t]
    ends = [t for t in (parse_time(e.get("finished_at")) for e in entries) if t]
    return (min(starts) if starts else None, max(ends) if ends else None)


def _deploy_phase(deploy: dict[str, Any]) -> dict[str, Any] | None:
    """deploy.json (app_deploy: one entry per action) as one phase: first start, last end, failed if any failed."""
    actions = deploy.get("actions") if isinstance(deploy, dict) else None
    if not isinstance(actions, dict) or not actions:
        return None
    # The seed's "app deployment" is the deploy action (image, rollout, flags, smoke checks); a later rollback or
    # the recording of the state before the maintenance is not part of its time.
    timed = (
        [actions["deploy"]]
        if isinstance(actions.get("deploy"), dict)
        else [a for name, a in actions.items() if isinstance(a, dict) and name not in ("record", "maintenance_start", "rollback")]
    )
    start, end = _span(timed)
    failed = [name for name, a in actions.items() if isinstance(a, dict) and a.get("outcome") == "failed"]
    summary = ", ".join(f"{name} {a.get('outcome', '?')}" for name, a in actions.items() if isinstance(a, dict))
    return dict(started_at=_iso(start), finished_at=_iso(end), status="failed" if failed else "ok",
                summary=f"app deploy actions: {summary}", file="deploy.json")  # fmt: skip


def _monitor_phase(monitor: dict[str, Any]) -> dict[str, Any] | None:
    if not isinstance(monitor, dict) or not monitor:
        return None
    return dict(started_at=monitor.get("started"), finished_at=monitor.get("finished"),
                status=str(monitor.get("verdict") or "unknown"), summary=text(monitor.get("summary") or monitor.get("msg")),
                file="monitor.json")  # fmt: skip


def text(value: Any) -> str:
    """A summary as one line: lists (a module's per-source lines) joined with '; '."""
    if isinstance(value, list | tuple):
        return "; ".join(text(v) for v in value)
    return "" if value is None else str(value)


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ") if value else None


def phases(run: dict[str, Any], extras: dict[str, Any]) -> list[dict[str, Any]]:
    """Every phase of the record in run order: run.json's, completed by deploy.json and monitor.json (roles that keep
    their own record) when run.json has no finished entry for them."""
    found: dict[str, dict[str, Any]] = {}
    for name, entry in ((run or {}).get("phases") or {}).items():
        if isinstance(entry, dict):
            found[name] = dict(entry)
    for name, own in (("deploy", _deploy_phase(extras.get("deploy") or {})),
                      ("monitor", _monitor_phase(extras.get("monitor") or {}))):  # fmt: skip
        if own is None:
            continue
        entry = found.get(name, {})
        if not entry.get("finished_at") or entry.get("status") == "running":
            merged = dict(entry, **{k: v for k, v in own.items() if v is not None})
            merged.setdefault("started_at", own.get("started_at"))
            found[name] = merged
    ordered = sorted(found.items(), key=lambda kv: parse_time(kv[1].get("started_at")) or datetime.max.replace(tzinfo=UTC))
    return [dict(entry, name=name, parent=_parent(name, found)) for name, entry in ordered]


def _parent(name: str, found: dict[str, Any]) -> str | None:
    """rehearsal_schema runs inside rehearsal: drawn indented under it."""
    head = name.split("_", 1)[0]
    return head if head != name and head in found else None


def _seconds(entry: dict[str, Any]) -> float | None:
    if isinstance(entry.get("seconds"), int | float):
        return float(entry["seconds"])
    start, end = parse_time(entry.get("started_at")), parse_time(entry.get("finished_at"))
    return (end - start).total_seconds() if start and end else None


def _short(moment: datetime | None, day: datetime | None) -> str:
    """HH:MM:SS on the run's first day, the full timestamp on another."""
    if moment is None:
        return ""
    same_day = day is not None and moment.date() == day.date()
    return moment.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S")


def _ticks(span: float) -> list[dict[str, Any]]:
    step = next((s for s in TICK_STEPS if span / s <= MAX_TICKS), TICK_STEPS[-1])
    count = int(span // step)
    return [dict(x=round(LABEL + PLOT * (i * step) / span, 1), label=duration(i * step) if i else "0")
            for i in range(count + 1)]  # fmt: skip


def budget_results(
    entries: list[dict[str, Any]], budgets: list[dict[str, Any]], dry_run: bool, recorded: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Each budget measured: the span from its first phase's start to its last phase's end, met or missed, in words.
    A measure run.json already holds (`budgets`, written when the record is closed) is the one shown."""
    by_name = {e["name"]: e for e in entries}
    closed = {b.get("id"): b for b in recorded or [] if isinstance(b, dict) and b.get("seconds") is not None}
    results = []
    for budget in budgets or []:
        names = [str(n) for n in budget.get("phases") or []]
        ran = [by_name[n] for n in names if n in by_name]
        limit = float(budget.get("minutes") or 0) * 60
        start, end = _span(ran)
        unfinished = [e["name"] for e in ran if not parse_time(e.get("finished_at"))]
        seconds = (end - start).total_seconds() if start and end and not unfinished else None
        if budget.get("id") in closed and not unfinished:
            seconds = float(closed[budget.get("id")]["seconds"])
        name = str(budget.get("name") or budget.get("id"))
        result = dict(id=budget.get("id"), name=name, label=_label(name), minutes=budget.get("minutes"),
                      limit_seconds=limit, phases=names, ran=[e["name"] for e in ran],
                      missing=[n for n in names if n not in by_name], seconds=seconds, met=None,
                      start=_iso(start), end=_iso(end))  # fmt: skip
        if not ran:
            result["words"] = "not measured: none of its phases ran"
        elif unfinished:
            result["words"] = f"not measured: {', '.join(unfinished)} did not finish"
        elif dry_run:
            result["words"] = f"not measured: a dry run ({duration(seconds)} of read-only checks) says nothing of the real time"
        else:
            result["met"] = seconds is not None and seconds <= limit
            share = round(100 * seconds / limit) if limit and seconds is not None else None
            verdict = "met" if result["met"] else f"MISSED by {duration((seconds or 0) - limit)}"
            result["words"] = f"{duration(seconds)} of {float(budget.get('minutes') or 0):g} min ({share} %): {verdict}"
            if result["missing"]:
                result["words"] += f" (without {', '.join(result['missing'])}: not run)"
        result["verdict"] = "met" if result["met"] else ("MISSED" if result["met"] is False else "not measured")
        result["tone"] = "ok" if result["met"] else ("bad" if result["met"] is False else "warn")
        results.append(result)
    return results


def _label(name: str) -> str:
    """A budget's name as the timeline's left column can hold it: before any parenthesis, at most 30 characters."""
    head = name.split(" (", 1)[0].strip() or name
    return head if len(head) <= 30 else head[:29] + "\u2026"


def _gauge(result: dict[str, Any]) -> dict[str, Any]:
    """A bar whose full width is max(budget, used): the used part filled, the budget marked by a line."""
    limit, used = result["limit_seconds"] or 0.0, result["seconds"]
    scale = max(limit, used or 0.0) or 1.0
    return dict(used_w=round(PLOT * (used or 0.0) / scale, 1), limit_x=round(LABEL + PLOT * limit / scale, 1))


def timeline(run: dict[str, Any], extras: dict[str, Any], budgets: list[dict[str, Any]]) -> dict[str, Any]:
    """The phases and budgets placed on one axis from the run's start to its last recorded moment."""
    run = run or {}
    entries = phases(run, extras or {})
    times = [t for e in entries for t in (parse_time(e.get("started_at")), parse_time(e.get("finished_at"))) if t]
    start = parse_time(run.get("started_at")) or (min(times) if times else None)
    # The axis ends with the last phase; a phase that never finished is drawn up to the record's last write.
    unfinished = any(not parse_time(e.get("finished_at")) for e in entries)
    last_write = [parse_time(run.get("finished_at") or run.get("updated_at"))] if unfinished else []
    end = max([*times, *filter(None, last_write)], default=start)
    span = max((end - start).total_seconds(), 1.0) if start and end else 1.0
    rows = []
    for index, entry in enumerate(entries):
        begin, finish = parse_time(entry.get("started_at")), parse_time(entry.get("finished_at"))
        offset = (begin - start).total_seconds() if begin and start else None
        length = (finish - begin).total_seconds() if begin and finish else (span - offset if offset is not None else None)
        x = round(LABEL + PLOT * (offset or 0) / span, 1)
        w = round(max(PLOT * (length or 0) / span, 2.0), 1) if offset is not None else 0
        after = x + w + 4 <= WIDTH - 60  # the duration fits after the bar; else it goes before it
        rows.append(dict(entry, seconds=_seconds(entry), offset=offset, finished=finish is not None,
                         summary=text(entry.get("summary")), start_short=_short(begin, start), end_short=_short(finish, start),
                         bad=str(entry.get("status")) in BAD_STATUSES, y=30 + index * ROW, x=x, w=w,
                         note_x=round(x + w + 4 if after else x - 4, 1), note_anchor="start" if after else "end"))  # fmt: skip
    measured = budget_results(entries, budgets, bool(run.get("check_mode")), run.get("budgets"))
    top = 30 + len(rows) * ROW + 8
    for index, result in enumerate(measured):
        first, last = parse_time(result["start"]), parse_time(result["end"])
        result.update(_gauge(result), y=top + index * BUDGET_ROW, gauge_y=10 + index * GAUGE_ROW, bracket=None)
        result.update(words_x=LABEL, words_y=result["y"] + 22)
        if first and last and start:
            x1 = LABEL + PLOT * (first - start).total_seconds() / span
            x2 = max(LABEL + PLOT * (last - start).total_seconds() / span, x1 + 2)
            result["bracket"] = dict(x1=round(x1, 1), x2=round(x2, 1))
            if x2 + 6 + WORDS_WIDTH <= WIDTH:  # the words fit on the bracket's line, after it
                result.update(words_x=round(x2 + 6, 1), words_y=result["y"] + 11)
    opened, closed = parse_time(run.get("started_at")), parse_time(run.get("finished_at"))
    return dict(width=WIDTH, label=LABEL, plot=PLOT, bar=BAR, row=ROW, span=span, span_words=duration(span),
                run_words=duration((closed - opened).total_seconds()) if opened and closed else "-",
                start=_iso(start), end=_iso(end), rows=rows, ticks=_ticks(span), budgets=measured, budgets_top=top,
                height=top + len(measured) * BUDGET_ROW + 8, gauge_height=10 + len(measured) * GAUGE_ROW)  # fmt: skip


def jsonl(text: Any, limit: int = 5000) -> dict[str, Any]:
    """The lines of a .jsonl file: how many, the first `limit` parsed, and how many lines were not JSON."""
    rows, total, bad = [], 0, 0
    for line in str(text or "").splitlines():
        if not line.strip():
            continue
        total += 1
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if len(rows) < int(limit):
            rows.append(row if isinstance(row, dict) else {"value": row})
    return dict(total=total, rows=rows, shown=len(rows), truncated=total - bad > len(rows), bad_lines=bad)


class FilterModule:
    """run_report's filters."""

    def filters(self) -> dict[str, Any]:
        return {
            "run_report_timeline": timeline,
            "run_report_jsonl": jsonl,
            "run_report_duration": duration,
        }
