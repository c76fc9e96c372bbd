"""Scratch databases on the test sandbox's clusters, dropped however the test ends (no test here).

A context manager rather than clone-then-try/finally-drop at every call site: the backup, restore, guard and
rules tests each need a throwaway database (empty, or a clone of a template) and had each written that dance.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql

from tests.support.sandbox import Sandbox


@contextmanager
def scratch_database(box: Sandbox, cluster: str, stem: str, template: str | None = None) -> Iterator[dict[str, Any]]:
    """A new database `<stem>_<random>` on `cluster` (a clone of `template` if given), dropped afterwards."""
    name = f"{stem}_{uuid.uuid4().hex[:8]}"
    create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        create = sql.SQL("{} TEMPLATE {}").format(create, sql.Identifier(template))
    with psycopg.connect(**box.pg(cluster, "postgres"), autocommit=True) as c:
        c.execute(create)
    try:
        yield box.pg(cluster, name)
    finally:
        with psycopg.connect(**box.pg(cluster, "postgres"), autocommit=True) as c:
            c.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
