"""A URL's password never shows (SPEC §8): one masker (runq.logs.mask_url / scrub) for every URL
form, used by every broker's errors, the CLI's output and every runq log line; and no text
from a broker steers a text log line."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import time
import unicodedata
from urllib.parse import quote, quote_plus

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import runq
from runq import logs
from runq.logs import mask_url, scrub
from tests.conftest import ROOT
from tests.support.servers import free_port

# Every URL form runq takes, with "{pw}" where a password goes, and its masked form.
FORMS = [
    ("redis://user:{pw}@host:6379/0", "redis://user:***@host:6379/0"),
    ("redis://:{pw}@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
    ("redis://:{pw}@[::1]:6379/2?socket_timeout=3", "redis://:***@[::1]:6379/2?socket_timeout=3"),
    ("rediss://default:{pw}@cache.example:6380/0?ssl_ca_certs=/ca.pem", None),
    ("redis://host:6379/0?password={pw}&db=1", "redis://host:6379/0?password=***&db=1"),
    ("redis+sentinel://:{pw}@h1:26379,h2:26379/mymaster/0", "redis+sentinel://:***@h1:26379,h2:26379/mymaster/0"),
    ("redis+cluster://app:{pw}@n1:7000,n2:7001,n3:7002", "redis+cluster://app:***@n1:7000,n2:7001,n3:7002"),
    ("unix://:{pw}@/run/redis/redis.sock?db=3", "unix://:***@/run/redis/redis.sock?db=3"),
    ("unix:///run/redis/redis.sock?password={pw}", "unix:///run/redis/redis.sock?password=***"),
    ("postgresql://bob:{pw}@db:5432/app?schema=jobs", "postgresql://bob:***@db:5432/app?schema=jobs"),
    ("postgresql://bob@db/app?password={pw}", "postgresql://bob@db/app?password=***"),
    (
        "postgresql://bob@db/app?sslmode=require&sslpassword={pw}",
        "postgresql://bob@db/app?sslmode=require&sslpassword=***",
    ),
    ("postgres://bob:{pw}@db/app", "postgres://bob:***@db/app"),
    (
        "postgresql:///app?host=/var/run/postgresql&password={pw}",
        "postgresql:///app?host=/var/run/postgresql&password=***",
    ),
]
PLAIN = [
    "sqlite:///runq.db",
    "sqlite:////var/lib/app/runq.db",
    "redis://127.0.0.1:6379/0",
    "redis://user@host/0",
    "unix:///tmp/redis.sock",
    "postgresql://bob@db/app",
    "redis+cluster://h1:1,[::1]:2",
]


@pytest.mark.parametrize(("template", "expected"), FORMS)
def test_every_url_form_is_masked(template: str, expected: str | None) -> None:
    url = template.format(pw="s3cret-pw")
    masked = mask_url(url)
    assert "s3cret-pw" not in masked
    assert masked == (expected or template.format(pw="***"))


@pytest.mark.parametrize("url", PLAIN)
def test_a_url_without_a_password_is_left_as_it_is(url: str) -> None:
    assert mask_url(url) == url


def _encoded(template: str, password: str) -> str:
    """The password written as a URL must carry it: percent-encoded (``+`` for spaces in a query)."""
    return quote_plus(password, safe="") if "={pw}" in template else quote(password, safe="")


def _place(template: str, password: str) -> str:
    return template.replace("{pw}", _encoded(template, password))


@given(password=st.text(min_size=1, max_size=40), form=st.sampled_from(FORMS))
def test_a_generated_password_never_shows_in_the_masked_url(password: str, form: tuple[str, str | None]) -> None:
    template, _ = form
    skeleton = template.replace("{pw}", "")
    url = _place(template, password)
    encoded = _encoded(template, password)
    assume(password not in skeleton and encoded not in skeleton)
    masked = mask_url(url)
    assert password not in masked and encoded not in masked
    assert masked == template.replace("{pw}", "***")


@given(password=st.text(min_size=1, max_size=40), form=st.sampled_from(FORMS))
def test_a_generated_password_never_shows_in_a_scrubbed_message(password: str, form: tuple[str, str | None]) -> None:
    """A driver's error may echo the URL or the password itself (as written or decoded)."""
    template, _ = form
    url = _place(template, password)
    message = f"cannot connect to {url}: authentication with {password!s} failed ({url})"
    assume(password not in f"cannot connect to {mask_url(url)}: authentication with  failed")
    assert password not in scrub(message, url)


def test_every_runq_log_line_scrubs_a_connected_brokers_password(tmp_path: object) -> None:
    url = "postgresql://bob@db.invalid/app?password=log-s3cret"
    logs.hide(url)  # what runq.brokers.connect() does for every broker URL
    for formatter in (logs.TextFormatter(), logs.JSONFormatter()):
        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(formatter)
        logger = logging.getLogger("runq.test_masking")
        logger.addHandler(handler)
        try:
            logger.warning("driver said: password log-s3cret rejected for %s", url, extra={"detail": url})
        finally:
            logger.removeHandler(handler)
        assert "log-s3cret" not in stream.getvalue() and "***" in stream.getvalue()


def test_postgres_broker_unavailable_masks_a_query_password() -> None:
    pytest.importorskip("psycopg")
    url = f"postgresql://bob@127.0.0.1:{free_port()}/app?password=pg-s3cret"
    app = runq.App(url)
    try:
        with pytest.raises(runq.BrokerUnavailable) as caught:
            app.stats()
    finally:
        app.close()
    assert "pg-s3cret" not in str(caught.value)
    assert "postgresql://bob@127.0.0.1" in str(caught.value) and "password=***" in str(caught.value)


@pytest.mark.parametrize("url", ["postgresql://bob@127.0.0.1:{port}/app?password=cli-s3cret", "{admin}/no_such_db"])
def test_cli_on_an_unreachable_postgres_fails_fast_with_one_masked_line(url: str) -> None:
    """``runq status`` took 5.3 s and printed psycopg_pool's raw "error connecting" lines (three)
    before its own; now: one line naming the masked URL and the server's reason, exit 1, at once."""
    pytest.importorskip("psycopg")
    from tests.conftest import POSTGRES_ADMIN_URL

    target = url.format(port=free_port(), admin=POSTGRES_ADMIN_URL.rsplit("/", 1)[0].replace("@", ":cli-s3cret@", 1))
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "runq", "status", "--url", target],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    took = time.monotonic() - started
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: PostgreSQL at "), done.stderr
    assert "cli-s3cret" not in done.stdout + done.stderr and "***" in lines[0]
    assert "error connecting" not in done.stderr
    assert took < 4.0  # (was 5.3 s: the pool's 5 s wait) Python's start-up included


@given(name=st.text(min_size=1), error=st.text())
def test_a_text_log_line_stays_one_printable_line_whatever_the_broker_holds(name: str, error: str) -> None:
    """A task's name and error come from the broker (anyone who can write to it): an ESC or a
    newline in them is printed escaped, never obeyed by a terminal or read as a second line."""
    record = logging.makeLogRecord(
        {"name": "runq.worker", "levelname": "INFO", "msg": "unknown task %s", "args": (name,)}
    )
    record.task = {"task": name, "error": f"Boom: {error}"}
    line = logs.TextFormatter().format(record)
    assert len(line.splitlines()) == 1, line
    assert not [c for c in line if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp", "Cs")], line
