# The runbook's error vocabulary, shared by every module: one base class for refusals and failures
# whose message is already written for the operator, and the two text helpers every error path
# needs (keep secrets out, keep one line). Nothing here talks to a server.
"""Operator-facing errors and the redact / first-line helpers of every module."""

from __future__ import annotations

from typing import Any

MASK = "********"


class OperatorError(Exception):
    """A refusal or failure whose message already says what is wrong and what to do.

    `details` go into the module result next to the message (counts, samples, the blocking
    sessions...). Subclasses name the kind: a connection, the run lock, S3, the engine's rules.
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class EngineError(OperatorError):
    """The migration engine refused or stopped (its rules, its inputs, the state it found)."""


def redact(text: str, *secrets: str | None) -> str:
    """`text` with every secret replaced by a mask (longest first, so a secret inside another is masked too)."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def first_line(value: BaseException | str) -> str:
    """The first non-empty line of an exception's (or a text's) message; the class name when it has none."""
    text = str(value).strip()
    if text:
        return text.splitlines()[0]
    return type(value).__name__ if isinstance(value, BaseException) else ""
