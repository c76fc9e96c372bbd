"""The test tiers: tests/extended.txt lists the node ids `make test` leaves out (conftest marks them `extended`)."""

from __future__ import annotations

from pathlib import Path

EXTENDED_LIST = Path(__file__).resolve().parents[1] / "extended.txt"


def extended_tests() -> set[str]:
    """The listed node ids (a parametrized test with its [id], or without it for every parameter)."""
    lines = EXTENDED_LIST.read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}
