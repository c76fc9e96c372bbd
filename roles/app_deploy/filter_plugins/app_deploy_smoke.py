"""Filter `app_deploy_smoke_verdicts`: turn the registered results of the smoke-check uri loop into verdicts.

Each verdict: name, method, url, status, seconds (uri's whole seconds), ok, problems (list of short sentences an
operator reads: expected vs got). Kept in Python because comparing JSON answers key by key is unreadable in Jinja.
"""

from __future__ import annotations

import json
import re
from typing import Any

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)\}")


class PickError(ValueError):
    """A check names a pick or column app_deploy_smoke_queries did not return."""


def _pick(picks: dict[str, Any], name: str, column: str) -> Any:
    row = picks.get(name)
    if not isinstance(row, dict) or column not in row:
        known = ", ".join(f"{n}.{c}" for n, r in sorted(picks.items()) if isinstance(r, dict) for c in r) or "none"
        raise PickError(f"the smoke checks use {{{name}.{column}}}, but the picks are: {known}")
    return row[column]


def fill(value: Any, picks: dict[str, Any]) -> Any:
    """Replace {pick.column} placeholders in strings (recursively); a string that is one placeholder keeps the type."""
    if isinstance(value, dict):
        return {k: fill(v, picks) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, picks) for v in value]
    if not isinstance(value, str):
        return value
    whole = _PLACEHOLDER.fullmatch(value)
    if whole:
        return _pick(picks, whole.group(1), whole.group(2))
    return _PLACEHOLDER.sub(lambda m: str(_pick(picks, m.group(1), m.group(2))), value)


def _expectations(check: dict[str, Any]) -> tuple[int, float, Any, dict[str, Any]]:
    return (int(check.get("status", 200)), float(check.get("max_seconds", 2.0)), check.get("body_contains"),
            dict(check.get("json") or {}))


def _same(want: Any, got: Any) -> bool:
    """Equal, or equal as text (inventory values are often templated to strings: "12" vs 12, "false" vs false)."""
    if want == got:
        return True
    as_text = json.dumps(got) if not isinstance(got, str) else got
    want_text = json.dumps(want) if not isinstance(want, str) else want
    return want_text.lower() == as_text.lower()


def _problems(check: dict[str, Any], result: dict[str, Any]) -> list[str]:
    status, max_seconds, contains, want_json = _expectations(check)
    got_status = int(result.get("status", -1))
    problems = []
    if got_status != status:
        detail = "" if got_status > 0 else f" ({str(result.get('msg', ''))[:160]})"
        problems.append(f"expected HTTP {status}, got {got_status}{detail}")
    # uri truncates elapsed to whole seconds: elapsed < max_seconds is exact for whole-second limits.
    elapsed = float(result.get("elapsed", 0) or 0)
    if elapsed >= max_seconds:
        problems.append(f"took {elapsed:.0f} s or more (limit {max_seconds:g} s)")
    content = str(result.get("content", "") or "")
    if contains is not None and str(contains) not in content:
        problems.append(f"the answer does not contain {json.dumps(str(contains))}")
    answer = result.get("json")
    for key, want in want_json.items():
        if not isinstance(answer, dict) or key not in answer:
            problems.append(f"the answer has no {key!r} (expected {json.dumps(want)})")
        elif not _same(want, answer[key]):
            problems.append(f"{key} is {json.dumps(answer[key])}, expected {json.dumps(want)}")
    return problems


def smoke_verdicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    verdicts = []
    for result in results or []:
        check = result.get("item") or {}
        problems = _problems(check, result)
        url = result.get("url") or (result.get("invocation") or {}).get("module_args", {}).get("url", "")
        method = str(check.get("method", "GET")).upper()
        verdicts.append({
            "name": check.get("name", "?"),
            "method": method,
            "url": url,
            "status": result.get("status", -1),
            "seconds": result.get("elapsed"),
            "ok": not problems,
            "problems": problems,
            "line": f"Smoke check {check.get('name', '?')!r} failed ({method} {url}): {'; '.join(problems)}." if problems else "",
        })
    return verdicts


class FilterModule:
    """app_deploy's filters."""

    def filters(self) -> dict[str, Any]:
        return {"app_deploy_smoke_verdicts": smoke_verdicts, "app_deploy_smoke_fill": fill}
