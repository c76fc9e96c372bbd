# The project's versioned SQL files, as files: finding them in migrations/, their versions, kinds and
# checksums, their revert files, whether one opts out of the single transaction, and splitting one
# into statements (quotes, comments and dollar quotes aware). Pure: nothing here talks to a server.
"""Versioned SQL migration files: discovery, checksums and statement splitting (no database access)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ansible.module_utils.vdp_errors import EngineError

NO_TRANSACTION_MARKER = "vdp:no-transaction"
# A file applied before the legacy baseline is stored (e.g. a trigger that journals the application's writes:
# installed first, it leaves no gap between the baseline's snapshot and the first journaled write).
BEFORE_BASELINE_MARKER = "vdp:before-baseline"


def kind_of(version: str) -> str:
    for kind in ("schema", "data", "indexes"):
        if version.endswith(f"_{kind}"):
            return kind
    return "other"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- migration files


@dataclass
class Statement:
    text: str
    line: int


@dataclass
class MigrationFile:
    version: str
    path: Path
    checksum: str
    transactional: bool
    kind: str
    revert_path: Path | None
    before_baseline: bool = False

    @property
    def name(self) -> str:
        return self.path.name


def discover(directory: str | Path) -> list[MigrationFile]:
    """Forward migration files (<version>.sql, not *.revert.sql), in version order."""
    root = Path(directory)
    if not root.is_dir():
        raise EngineError(f"migrations directory {root} does not exist: set the path to the project's migrations/ folder")
    files: list[MigrationFile] = []
    for path in sorted(root.glob("*.sql")):
        if path.name.endswith(".revert.sql"):
            continue
        data = path.read_bytes()
        text = data.decode("utf-8")
        version = path.name[: -len(".sql")]
        revert = path.with_name(f"{version}.revert.sql")
        files.append(
            MigrationFile(
                version=version,
                path=path,
                checksum=sha256_hex(data),
                transactional=not declares_no_transaction(text),
                kind=kind_of(version),
                revert_path=revert if revert.exists() else None,
                before_baseline=declares(text, BEFORE_BASELINE_MARKER),
            )
        )
    return files


def declares(text: str, marker: str) -> bool:
    """Whether the file has a comment line that is exactly `-- <marker>`."""
    return any(line.strip().lstrip("-").strip() == marker for line in text.splitlines() if line.strip().startswith("--"))


def declares_no_transaction(text: str) -> bool:
    """A file opts out of the single transaction with a comment line `-- vdp:no-transaction`."""
    return declares(text, NO_TRANSACTION_MARKER)


_DOLLAR_TAG = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*\$|\$\$")


def split_statements(text: str) -> list[Statement]:
    """Split SQL into statements on top-level semicolons (quotes, comments, dollar quotes aware)."""
    statements: list[Statement] = []
    buf: list[str] = []
    i, n, line, start_line = 0, len(text), 1, None
    while i < n:
        ch = text[i]
        nxt = text[i + 1] if i + 1 < n else ""
        if ch == "-" and nxt == "-":
            end = text.find("\n", i)
            end = n if end < 0 else end
            i = end
            continue
        if ch == "/" and nxt == "*":
            end = text.find("*/", i + 2)
            end = n if end < 0 else end + 2
            line += text.count("\n", i, end)
            i = end
            buf.append(" ")
            continue
        if ch in ("'", '"'):
            end = i + 1
            while end < n:
                if text[end] == ch and end + 1 < n and text[end + 1] == ch:
                    end += 2
                    continue
                if text[end] == ch:
                    break
                end += 1
            end = min(end + 1, n)
            chunk = text[i:end]
        elif ch == "$" and (m := _DOLLAR_TAG.match(text, i)):
            tag = m.group(0)
            close = text.find(tag, m.end())
            end = n if close < 0 else close + len(tag)
            chunk = text[i:end]
        elif ch == ";":
            stmt = "".join(buf).strip()
            if stmt:
                statements.append(Statement(stmt, start_line or line))
            buf, start_line = [], None
            i += 1
            continue
        else:
            chunk = ch
            end = i + 1
        if start_line is None and not chunk.isspace():
            start_line = line
        buf.append(chunk)
        line += chunk.count("\n")
        i = end
    stmt = "".join(buf).strip()
    if stmt:
        statements.append(Statement(stmt, start_line or line))
    return statements


_SET_LOCK_TIMEOUT = re.compile(r"^SET\s+(LOCAL\s+|SESSION\s+)?lock_timeout\b", re.IGNORECASE)


def body_statements(path: Path, transactional: bool) -> list[Statement]:
    """The statements to run: a transactional file's own BEGIN/COMMIT are left to the runner.

    A file's own `SET [LOCAL] lock_timeout` (there for squawk and for runs by hand) is skipped: the
    module's lock_timeout is authoritative, so the operator tunes it per environment, and the
    bounded retries are what make a short lock_timeout safe.
    """
    statements = [s for s in split_statements(path.read_text(encoding="utf-8")) if not _SET_LOCK_TIMEOUT.match(s.text)]
    if transactional:
        if statements and statements[0].text.upper() in ("BEGIN", "START TRANSACTION", "BEGIN TRANSACTION"):
            statements = statements[1:]
        if statements and statements[-1].text.upper() in ("COMMIT", "END", "COMMIT TRANSACTION"):
            statements = statements[:-1]
        inner = [s for s in statements if s.text.upper() in ("BEGIN", "COMMIT", "ROLLBACK", "END")]
        if inner:
            raise EngineError(
                f"{path.name} line {inner[0].line}: a transaction statement inside the file's body; a transactional "
                "file may only open with BEGIN and end with COMMIT (or declare '-- vdp:no-transaction')"
            )
    return statements
