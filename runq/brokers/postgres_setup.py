"""Reaching the PostgreSQL broker's schema: the URL split for libpq, and the migrations.

``postgres_schema.sql`` holds numbered migrations; :func:`migrate` applies the missing
ones under an advisory lock, each in the transaction that bumps the version, so many
processes starting at once migrate exactly once and a half-applied step never shows.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from psycopg import Cursor

from runq.logs import mask_url

_SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,47}")


def postgres_conninfo(url: str) -> tuple[str, str]:
    """``(conninfo for libpq, schema)``: the ``schema`` query parameter is runq's, the rest libpq's."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL (expected postgresql://user@host/db): {mask_url(url)!r}")
    query = parse_qsl(parts.query)
    schema = next((value for name, value in query if name == "schema"), "runq")
    if not _SCHEMA_NAME.fullmatch(schema):
        raise ValueError(f"schema must be 1-48 of a-z 0-9 _ (not starting with a digit), got {schema!r}")
    rest = urlencode([(name, value) for name, value in query if name != "schema"])
    return urlunsplit(("postgresql", parts.netloc, parts.path, rest, "")), schema


def migrations() -> list[tuple[int, str]]:
    """The numbered migrations of ``postgres_schema.sql``, in order."""
    text = resources.files("runq.brokers").joinpath("postgres_schema.sql").read_text()
    chunks = re.split(r"^-- migration: (\d+)\s*$", text, flags=re.MULTILINE)
    return [(int(chunks[i]), chunks[i + 1]) for i in range(1, len(chunks), 2)]


def migrate(cur: Cursor[Any], schema: str) -> None:
    """Bring ``schema`` to the latest migration; one cheap read when it already is."""
    s = f'"{schema}"'
    steps = migrations()
    latest = steps[-1][0]
    exists = cur.execute("SELECT to_regclass(%s)", (f"{s}.version",)).fetchone() != (None,)
    if exists and cur.execute(f"SELECT max(version) FROM {s}.version").fetchone() == (latest,):
        return
    with cur.connection.transaction():
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f"runq-migrate:{schema}",))
        cur.execute(f"CREATE SCHEMA IF NOT EXISTS {s}")
        cur.execute(f"CREATE TABLE IF NOT EXISTS {s}.version (version integer NOT NULL)")
        row = cur.execute(f"SELECT coalesce(max(version), 0) FROM {s}.version").fetchone()
        current = row[0] if row else 0
        for number, script in steps:
            if number > current:
                cur.execute(script.replace("{schema}", s).encode())
                cur.execute(f"DELETE FROM {s}.version")
                cur.execute(f"INSERT INTO {s}.version (version) VALUES (%s)", (number,))
