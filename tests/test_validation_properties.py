"""Generated inputs, not lists (issue 19 part 7): for every option and name, the Python API,
the CLI and the HTTP API accept and refuse exactly the same values, and an accepted value
reads back the same through ``info``, ``list`` and the dashboard's JSON, on every broker.

Bounded to stay fast: a fixed number of examples per broker, derandomized, no database.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import runq
from runq.cli import main
from runq.options import MAX_KEY, MAX_NAME, MAX_SECONDS
from tests.conftest import WITH_POSTGRES

pytest.importorskip("fastapi", reason="the dashboard extra is not installed")
import httpx

from tests.test_dashboard import Dashboard

BROKER_KINDS = WITH_POSTGRES
EXAMPLES = 100  # per broker: ~20-40 s each on a loaded 2-core machine

# Text that hits every rule: controls (ESC, NUL, DEL, C1), invisible formatting (bidi, ZWJ),
# separators, spaces at either end, non-ASCII letters, and lengths around each limit.
TRICKY = st.sampled_from(["\x1b", "\x00", "\x7f", "\x85", "\u202e", "\u200d", "\u2028", " ", "\t", "é", "-", "."])
WORDS = st.text(st.one_of(st.characters(codec="utf-8", exclude_categories=["Cs"]), TRICKY), max_size=12)


def around(limit: int, char: str) -> st.SearchStrategy[str]:
    return st.integers(limit - 2, limit + 2).map(lambda n: char * max(n, 0))


def durations() -> st.SearchStrategy[Any]:
    """Seconds around every bound a duration has: 0, the smallest float, 10 years, NaN, infinity."""
    return st.one_of(
        st.floats(allow_nan=True, allow_infinity=True),
        st.floats(0, MAX_SECONDS * 1.01),
        st.integers(-5, 10**13),
        st.sampled_from([0, 0.0, MAX_SECONDS, MAX_SECONDS + 1, 1e12, -0.0, 5e-324]),
    )


OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(WORDS, around(MAX_NAME, "n"), st.just("")),
    "queue": st.one_of(st.text(st.sampled_from("ab_.-9 \x1b{é"), max_size=8), around(64, "q")),
    "key": st.one_of(WORDS, around(MAX_KEY, "k"), st.just("")),
    # A float priority is left out: JSON has one number type, so HTTP reads 5.0 as the integer 5.
    "priority": st.one_of(st.integers(-150, 150), st.integers(), st.booleans()),
    "delay": durations(),
    "timeout": durations(),
    "soft_timeout": durations(),
    "expires": durations(),
    "debounce": durations(),  # with a key of its lane (debounce needs one)
    # CLI and HTTP give a limit as text ("N" or "N:arg"); an int, a bool or garbage too. "N:arg"
    # is refused everywhere here: no registered task, so the argument cannot be checked.
    "concurrency": st.one_of(
        st.integers(-2, 10_002),
        st.booleans(),
        st.integers(-2, 10_002).map(str),
        st.sampled_from(["8:user_id", " 3 ", "0", "x", "", "1:", ":1", "10001", "9" * 30]),
    ),
}
CALLS = st.sampled_from(sorted(OPTIONS)).flatmap(lambda option: st.tuples(st.just(option), OPTIONS[option]))


@pytest.fixture
def http(app: runq.App) -> Iterator[httpx.Client]:
    dashboard = Dashboard(app)
    with dashboard.client() as client:
        yield client
    dashboard.stop()


def call_of(option: str, value: Any, lane: str) -> tuple[str, dict[str, Any]]:
    """(name, options) of one call: ``option=value`` in a queue of its own (``lane``), unless
    the queue is what is drawn, so that listing that queue finds it whatever else is queued."""
    options = {"queue": lane} | ({} if option == "name" else {option: value})
    if option == "debounce":  # merges enqueues of one key: this lane's, so the three calls share it
        options["key"] = f"k-{lane}"
    return (value if option == "name" else "t"), options


def python_enqueue(app: runq.App, option: str, value: Any, lane: str) -> str | None:
    name, options = call_of(option, value, lane)
    try:
        return app.enqueue(name, **options).id
    except (TypeError, ValueError):
        return None


def cli_enqueue(url: str, option: str, value: Any, lane: str) -> str | None:
    name, options = call_of(option, value, lane)
    flags = [item for key, given in options.items() for item in (f"--{key.replace('_', '-')}", _text(given))]
    # Options first and NAME after "--", so a name that starts with "-" is a name.
    done = CliRunner().invoke(main, ["enqueue", "--url", url, *flags, "--", name])
    assert done.exit_code in (0, 2), (done.exit_code, done.output, done.exception)
    assert "Traceback" not in done.output and "No such option" not in done.output, done.output
    return done.stdout.strip() if done.exit_code == 0 else None


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def http_enqueue(client: httpx.Client, option: str, value: Any, lane: str) -> str | None:
    name, options = call_of(option, value, lane)
    body = {"name": name, **options}
    response = client.post("/api/tasks", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert response.status_code in (202, 422), response.text
    return str(response.json()["id"]) if response.status_code == 202 else None


def expected(option: str, value: Any, lane: str) -> dict[str, Any]:
    """What info/list/dashboard must show for a task enqueued with ``option=value``."""
    shown = {"name": "t", "queue": lane, "priority": 0, "key": f"k-{lane}" if option == "debounce" else None}
    if option in shown:
        shown[option] = value
    return shown


def check_reads(
    app: runq.App, url: str, client: httpx.Client, task_id: str, option: str, value: Any, lane: str
) -> None:
    want = expected(option, value, lane)
    info = app.info(task_id)
    assert info is not None
    assert {name: getattr(info, name) for name in want} == want
    as_cli = json.loads(CliRunner().invoke(main, ["info", task_id, "--json", "--url", url]).stdout)
    as_http = client.get(f"/api/tasks/{task_id}").json()
    for shown in (info.to_dict(), as_cli, as_http):
        assert {name: shown[name] for name in want} == want
        assert shown["status"] in ("pending", "scheduled")
        if option in ("delay", "debounce") and value >= 1:  # runs no sooner than asked, on every path
            assert shown["status"] == "scheduled"
            eta = datetime.fromisoformat(str(shown["eta"]).replace("Z", "+00:00"))
            enqueued = datetime.fromisoformat(str(shown["enqueued_at"]).replace("Z", "+00:00"))
            assert math.isclose((eta - enqueued).total_seconds(), value, abs_tol=5)
    queue = want["queue"]
    listed = CliRunner().invoke(main, ["list", "--json", "--limit", "1000", "--queue", queue, "--url", url]).stdout
    assert task_id in [t["id"] for t in json.loads(listed)]
    assert task_id in [t["id"] for t in client.get("/api/tasks", params={"limit": 1000, "queue": queue}).json()]
    assert task_id in [t.id for t in app.list(queue=queue, limit=1000)]


def test_every_entry_point_accepts_and_refuses_the_same_values(
    app: runq.App, broker_url: str, http: httpx.Client
) -> None:
    seen: dict[str, set[bool]] = {option: set() for option in OPTIONS}
    lanes: list[str] = []

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(call=CALLS)
    def check(call: tuple[str, Any]) -> None:
        option, value = call
        lane = value if option == "queue" else f"lane{len(lanes)}"
        lanes.append(lane)
        ids = [python_enqueue(app, option, value, lane), cli_enqueue(broker_url, option, value, lane)]
        ids.append(http_enqueue(http, option, value, lane))
        accepted = [task_id is not None for task_id in ids]
        assert len(set(accepted)) == 1, f"{option}={value!r}: python, cli, http accepted {accepted}"
        seen[option].add(accepted[0])
        for task_id in ids:
            if task_id is not None:
                check_reads(app, broker_url, http, task_id, option, value, lane)

    check()
    # The run saw both sides of every rule (else the strategies drifted away from the limits).
    assert {option: sorted(kinds) for option, kinds in seen.items()} == {o: [False, True] for o in OPTIONS}
