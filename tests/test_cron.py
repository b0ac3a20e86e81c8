"""Cron in a time zone, with arguments (SPEC §9): the schedule is read in an IANA zone; a local
time a DST change repeats fires once, one it skips fires at the first instant after the gap.

The clock is fake: ``next_after(moment)`` is a pure function, checked at generated moments
around the transitions of several zones against a brute-force reading of the rule (minute
by minute), with no sleeping. Real beats firing a schedule with arguments close the file.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import runq
from runq.models import Status
from runq.schedule import Periodic
from runq.worker.beat import Beat
from tests.conftest import WorkerProcess, wait_until
from tests.test_dashboard import Dashboard
from tests.test_dashboard import browser as browser  # the fixture, shared

ZONES = ["America/New_York", "Europe/Paris", "Australia/Lord_Howe"]
# Crons that tick at least daily (the brute force scans minute by minute up to the next tick),
# many of them inside the hours that DST changes skip or repeat.
CRONS = [
    "* * * * *",
    "*/15 * * * *",
    "30 * * * *",
    "0 2 * * *",
    "30 2 * * *",
    "15 2 * * *",
    "45 1 * * *",
    "0,30 1-3 * * *",
    "0 9 * * *",
    "59 1 * * *",
    "0 3 * * *",
    "*/20 0-4 * * *",
]
UTC = timezone.utc


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


@functools.cache
def transitions(zone_name: str) -> tuple[int, ...]:
    """Every instant in 2024-2027 at which ``zone_name``'s UTC offset changes."""
    zone = ZoneInfo(zone_name)
    found = []
    moment, end = int(utc(2024, 1, 1)), int(utc(2028, 1, 1))
    while moment < end:
        if _offset(moment + 3600, zone) != _offset(moment, zone):
            low, high = moment, moment + 3600
            while high - low > 1:
                middle = (low + high) // 2
                low, high = (middle, high) if _offset(middle, zone) == _offset(low, zone) else (low, middle)
            found.append(high)
        moment += 3600
    return tuple(found)


def _offset(moment: float, zone: ZoneInfo) -> timedelta | None:
    return datetime.fromtimestamp(moment, zone).utcoffset()


def is_tick(cron: str, zone: ZoneInfo, moment: int) -> bool:
    """The rule, read literally at one whole minute: the first occurrence of a matching local
    time, or the first instant after a gap that held a matching local time."""
    local = datetime.fromtimestamp(moment, zone)
    wall = local.replace(tzinfo=None)
    if croniter.match(cron, wall) and local.fold == 0:
        return True
    before = datetime.fromtimestamp(moment - 1, zone).replace(tzinfo=None)
    skipped = before + timedelta(seconds=1)  # the first local time the gap skipped (if any)
    while skipped < wall:
        if croniter.match(cron, skipped):
            return True
        skipped += timedelta(minutes=1)
    return False


def brute_next(cron: str, zone: ZoneInfo, moment: float) -> int:
    minute = (int(moment) // 60 + 1) * 60  # every zone here is a whole number of minutes off UTC
    for _ in range(3 * 24 * 60):
        if minute > moment and is_tick(cron, zone, minute):
            return minute
        minute += 60
    raise AssertionError("no tick within three days")


moments = st.sampled_from(ZONES).flatmap(
    lambda zone: st.tuples(
        st.just(zone),
        st.sampled_from(transitions(zone)),
        st.one_of(
            st.integers(-2 * 86400, 2 * 86400),
            st.integers(-7200, 7200),
            st.floats(-7200, 7200, allow_nan=False).map(lambda x: round(x, 3)),
        ),
    )
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(moments, st.sampled_from(CRONS))
def test_next_after_is_the_first_tick_the_rule_gives(case: tuple[str, int, float], cron: str) -> None:
    zone_name, transition, shift = case
    moment = transition + shift
    schedule = Periodic("t", cron=cron, tz=zone_name)
    tick = schedule.next_after(moment)
    assert tick == brute_next(cron, ZoneInfo(zone_name), moment), (zone_name, cron, moment)
    assert schedule.tick_id(tick) == Periodic("t", cron=cron, tz=zone_name).tick_id(tick)  # same in every beat


@settings(max_examples=60, deadline=None)
@given(st.sampled_from(ZONES), st.sampled_from(CRONS), st.integers(0, 3))
def test_around_a_transition_each_local_time_fires_once(zone_name: str, cron: str, which: int) -> None:
    """Ticks stepped through a whole day around a transition: strictly increasing, and no local
    time of the day shows twice (the repeated hour fires on its first pass only)."""
    zone = ZoneInfo(zone_name)
    schedule = Periodic("t", cron=cron, tz=zone_name)
    moment = float(transitions(zone_name)[which] - 12 * 3600)
    ticks = []
    while moment < transitions(zone_name)[which] + 12 * 3600:
        moment = schedule.next_after(moment)
        ticks.append(moment)
    walls = [datetime.fromtimestamp(tick, zone).replace(tzinfo=None) for tick in ticks]
    assert ticks == sorted(set(ticks))
    assert len(walls) == len(set(walls)), [w.isoformat() for w in walls]


# -- the transitions, by example -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone", "cron", "after", "fires"),
    [
        # New York springs forward at 02:00 EST (07:00 UTC): 02:30 does not exist that day.
        ("America/New_York", "30 2 * * *", utc(2026, 3, 8, 5), utc(2026, 3, 8, 7)),
        ("America/New_York", "30 2 * * *", utc(2026, 3, 8, 7), utc(2026, 3, 9, 6, 30)),
        # ...and falls back at 02:00 EDT (06:00 UTC): 01:30 happens twice, fires once.
        ("America/New_York", "30 1 * * *", utc(2026, 11, 1, 4), utc(2026, 11, 1, 5, 30)),
        ("America/New_York", "30 1 * * *", utc(2026, 11, 1, 5, 30), utc(2026, 11, 2, 6, 30)),
        # Paris: 09:00 is 08:00 UTC in winter, 07:00 UTC in summer.
        ("Europe/Paris", "0 9 * * *", utc(2026, 3, 28, 12), utc(2026, 3, 29, 7)),
        ("Europe/Paris", "30 2 * * *", utc(2026, 3, 29, 0), utc(2026, 3, 29, 1)),  # skipped: at 03:00 CEST
        ("Europe/Paris", "30 2 * * *", utc(2026, 10, 24, 23), utc(2026, 10, 25, 0, 30)),  # first 02:30 only
        ("Europe/Paris", "30 2 * * *", utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),
        # Lord Howe moves by 30 minutes: 02:00-02:30 is skipped in October, 01:30-02:00 repeated in April.
        ("Australia/Lord_Howe", "15 2 * * *", utc(2026, 10, 3, 12), utc(2026, 10, 3, 15, 30)),
        ("Australia/Lord_Howe", "45 1 * * *", utc(2026, 4, 4, 12), utc(2026, 4, 4, 14, 45)),
        ("Australia/Lord_Howe", "45 1 * * *", utc(2026, 4, 4, 14, 45), utc(2026, 4, 5, 15, 15)),
        # Every 15 minutes through New York's gap: 02:00, 02:15, 02:30, 02:45 are one tick at 03:00 EDT.
        ("America/New_York", "*/15 * * * *", utc(2026, 3, 8, 6, 45), utc(2026, 3, 8, 7)),
        ("America/New_York", "*/15 * * * *", utc(2026, 3, 8, 7), utc(2026, 3, 8, 7, 15)),
    ],
)
def test_dst_changes_by_example(zone: str, cron: str, after: float, fires: float) -> None:
    assert Periodic("t", cron=cron, tz=zone).next_after(after) == fires


def test_without_tz_cron_is_read_in_utc_as_before() -> None:
    schedule = Periodic("c", cron="0 9 * * *")
    assert schedule.next_after(utc(2026, 7, 1)) == utc(2026, 7, 1, 9)
    assert schedule.tick_id(utc(2026, 7, 1, 9)) == str(round(utc(2026, 7, 1, 9) * 1000))  # the ids beats share
    assert Periodic("c", cron="0 9 * * *", tz="UTC").next_after(utc(2026, 7, 1)) == utc(2026, 7, 1, 9)


@pytest.mark.parametrize(
    ("schedule", "error", "says"),
    [
        ({"cron": "0 9 * * *", "tz": "Mars/Olympus"}, ValueError, "tz must be an IANA time zone"),
        ({"cron": "0 9 * * *", "tz": 1}, TypeError, "tz must be a string"),
        ({"every": 30, "tz": "Europe/Paris"}, ValueError, "tz applies to cron schedules"),
        ({"cron": "0 9 * * *", "args": "abc"}, TypeError, "args must be a list or tuple"),
        ({"cron": "0 9 * * *", "kwargs": [1]}, TypeError, "kwargs must be a dict"),
        ({"cron": "0 9 * * *", "args": [{1, 2}]}, TypeError, "must be JSON-serialisable"),
    ],
)
def test_bad_schedules_are_refused_at_decoration(
    schedule: dict[str, object], error: type[Exception], says: str
) -> None:
    app = runq.App("memory://")
    with pytest.raises(error, match=says):
        app.periodic(**schedule)(lambda *a, **k: None)  # type: ignore[arg-type]
    assert app.schedules == []


def test_arguments_must_fit_the_task() -> None:
    app = runq.App("memory://")
    with pytest.raises(TypeError):

        @app.periodic(cron="0 9 * * *", args=[1, 2])
        def one(a: int) -> None: ...


def test_ticks_with_other_arguments_are_other_ticks() -> None:
    """Two schedules of one task at the same instant with other arguments both fire; with the
    same arguments their ids are the same in every beat."""
    daily = Periodic("report", cron="0 9 * * *", tz="Europe/Paris", args=("daily",))
    weekly = Periodic("report", cron="0 9 * * 1", tz="Europe/Paris", args=("weekly",))
    monday = utc(2026, 6, 1, 7)
    assert daily.tick_id(monday) != weekly.tick_id(monday)
    again = Periodic("report", cron="0 9 * * *", tz="Europe/Paris", args=["daily"])
    assert daily.tick_id(monday) == again.tick_id(monday)
    assert Periodic("r", cron="* * * * *", kwargs={"a": 1, "b": 2}).tick_id(60.0) == Periodic(
        "r", cron="* * * * *", kwargs={"b": 2, "a": 1}
    ).tick_id(60.0)


def test_beats_fire_a_tick_with_its_arguments_once(app: runq.App) -> None:
    @app.periodic(cron="0 9 * * *", tz="Europe/Paris", args=["daily"], kwargs={"to": "ops"}, queue="beat")
    def report(kind: str, to: str) -> str:
        return f"{kind} to {to}"

    [entry] = app.schedules
    tick = entry.next_after(utc(2026, 6, 1))
    assert tick == utc(2026, 6, 1, 7)
    beats = [Beat(app), Beat(app), Beat(runq.App(app.settings.url))]
    assert [beat.fire(entry, tick) for beat in beats] == [True, False, False]
    [task] = app.list(queue="beat")
    assert (task.args, task.kwargs) == (["daily"], {"to": "ops"})


StartWorker = Callable[..., WorkerProcess]


def test_a_worker_s_beat_runs_the_periodic_task_with_its_arguments(
    app: runq.App, broker_url: str, start_worker: StartWorker
) -> None:
    start_worker(broker_url, "--pool", "thread", "--queues", "beat", "--beat", app="tests.cron_tasks:app")
    done = wait_until(lambda: app.list(status=Status.SUCCEEDED, queue="beat"), 30)
    assert done[0].result == {"args": ["a", 1], "kwargs": {"flag": True}}


# -- the dashboard lists them ----------------------------------------------------------------------


def test_the_dashboard_lists_periodic_tasks_with_their_next_run(sqlite_url: str, browser: Any) -> None:
    from playwright.sync_api import expect

    app = runq.App(sqlite_url)

    @app.periodic(cron="0 9 * * *", tz="Europe/Paris", args=["daily"], kwargs={"to": "ops"}, name="report")
    def report(kind: str, to: str) -> None: ...

    @app.periodic(every=30, name="cleanup")
    def cleanup() -> None: ...

    dashboard = Dashboard(app)
    try:
        with dashboard.client() as client:
            before = time.time()
            rows = {row["name"]: row for row in client.get("/api/periodic").json()}
            snapshot = client.get("/api/snapshot").json()["periodic"]
            after = time.time()
        assert rows["report"] | {"next_run": None} == {
            "name": "report", "schedule": "0 9 * * * (Europe/Paris)", "cron": "0 9 * * *", "every": None,
            "tz": "Europe/Paris", "args": ["daily"], "kwargs": {"to": "ops"}, "next_run": None,
        }  # fmt: skip
        for entry in app.schedules:
            shown = datetime.fromisoformat(rows[entry.name]["next_run"]).timestamp()
            assert entry.next_after(before) <= shown <= entry.next_after(after)
        assert sorted(row["name"] for row in snapshot) == ["cleanup", "report"]

        page = browser.new_page()
        page.goto(dashboard.url)
        expect(page.locator("#periodic tr")).to_have_count(2)
        row = page.locator('#periodic tr[data-periodic="report"]')
        expect(row).to_contain_text("0 9 * * * (Europe/Paris)")
        expect(row).to_contain_text('"daily", to="ops"')
        expect(row).to_contain_text("(in ")
        expect(page.locator("#periodic-empty")).to_be_hidden()
        page.close()
    finally:
        dashboard.stop()
        app.close()
