"""Reaching the PostgreSQL broker: the URL split for libpq, the first connection (failing
fast, masked, without psycopg_pool's raw log lines), and the schema's migrations.

``schema.sql`` holds numbered migrations; :func:`migrate` applies the missing
ones under an advisory lock, each in the transaction that bumps the version, so many
processes starting at once migrate exactly once and a half-applied step never shows.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import Cursor

from runq.errors import BrokerUnavailable
from runq.logs import mask_url, scrub

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
    # quote, not quote_plus: libpq reads "+" as itself (options=-c%20x must stay "-c x")
    rest = urlencode([(name, value) for name, value in query if name != "schema"], quote_via=quote)
    return urlunsplit(("postgresql", parts.netloc, parts.path, rest, "")), schema


class _OwnPoolNoise(logging.Filter):
    """psycopg_pool logs every failed connection attempt of a pool, raw (three lines before a
    one-shot command gave up). For runq's own pools (named ``runq-<schema>``) runq reports the
    failure itself, once, masked: ``BrokerUnavailable``, and the worker's back-off log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        return not (isinstance(args, tuple) and args and str(args[0]).startswith("runq-"))


logging.getLogger("psycopg.pool").addFilter(_OwnPoolNoise())


def unavailable(url: str, exc: BaseException) -> BrokerUnavailable:
    """``BrokerUnavailable`` naming the (masked) URL, with the driver's reason on one line."""
    reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return BrokerUnavailable(f"PostgreSQL at {mask_url(url)} is unavailable: {scrub(reason, url)}")


def connect_and_migrate(conninfo: str, schema: str, timeout: int) -> None:
    """One direct connection: an unreachable server or a missing database fails at once with
    the server's own reason (a pool would retry for its whole timeout), then :func:`migrate`."""
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=timeout) as conn, conn.cursor() as cur:
        migrate(cur, schema)


def migrations() -> list[tuple[int, str]]:
    """The numbered migrations of ``schema.sql``, in order."""
    text = resources.files("runq.brokers.postgres").joinpath("schema.sql").read_text()
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
