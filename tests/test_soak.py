"""The chaos soak with concurrency-limited tasks, bounded for CI (bench/soak.py --limited, issue 21):
real workers SIGKILLed and replaced while tasks limited per key (``runq.Limit(2, key="key")``) and
as a whole (``concurrency=2``) flow; the tasks' own ledger shows nothing lost, no key ever running
more than its limit, and every seat free afterwards (the limit's probe runs of each key all start
before any ends). The full-size soak and its figures: docs/reliability.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import soak

BROKER_KINDS = ["sqlite", "redis", "postgres"]


@pytest.mark.timeout(300)
def test_a_limited_soak_loses_nothing_and_leaks_no_seat(broker_url: str, tmp_path: Path) -> None:
    options = {"--limit": 2, "--keys": 8, "--tasks": 900, "--seconds": 6, "--fault-every": 1.5, "--workers": 3}
    options |= {"--concurrency": 8, "--lease": 2, "--probe-seconds": 1, "--seed": 7}
    args = soak.parse(["--limited", *(str(part) for pair in options.items() for part in pair)])
    result = soak.soak_once(broker_url, args, "default", tmp_path)
    found, limit = result.analysis, result.limit
    assert result.kills >= 2  # the faults happened
    assert (found["lost"], found["not_succeeded"], found["anomalies"]) == (0, 0, [])
    assert not found["causes"].get("settled, yet ran again") and not found["causes"].get("unexplained")
    assert limit["most_at_once"] == 2 and limit["keys_over_limit"] == []  # reached, never passed
    assert limit["probed_keys"] == 9 and limit["keys_with_a_busy_seat"] == []


def test_the_ledger_puts_each_duplicate_down_to_its_cause() -> None:
    """bench/ledger.py's reading of runs and faults (the soak's figures rest on it)."""
    from bench.ledger import Fault, Run, analyse, peak_overlap

    kill, stop = Fault(1, "kill", 10.0, 10.0), Fault(2, "stop", 20.0, 30.0)
    runs = {
        "unsettled": [Run("unsettled", 1, 1, 9.0, 9.1), Run("unsettled", 2, 3, 15.0, 15.1, settled=True)],
        "frozen": [Run("frozen", 1, 2, 19.0, 31.0, refused=True), Run("frozen", 2, 3, 26.0, 26.1, settled=True)],
        "thawed": [Run("thawed", 1, 2, 30.5, 30.6, refused=True), Run("thawed", 2, 3, 26.0, 26.1, settled=True)],
        "late": [Run("late", 1, 3, 40.0, 40.1, refused=True), Run("late", 2, 4, 46.0, 46.1, settled=True)],
        "bug": [Run("bug", 1, 3, 50.0, 50.1, settled=True), Run("bug", 2, 4, 51.0, 51.1, settled=True)],
        "cut": [Run("cut", 1, 1, 9.5), Run("cut", 3, 3, 16.0, 16.1, settled=True)],
        "lost": [Run("lost", 1, 1, 9.8)],
    }
    statuses = {task: ("succeeded", len(task_runs)) for task, task_runs in runs.items()}
    statuses["cut"] = ("succeeded", 3)  # one claim of it was never started
    found = analyse(runs, runs, [kill, stop], statuses, lease=5.0)
    assert found.lost == ["lost"] and found.duplicates == 5
    assert found.causes == {
        "finished, unsettled at SIGKILL": 1,
        "SIGSTOP: running at it": 1,
        "SIGSTOP: started after SIGCONT": 1,
        "lease lost, no fault": 1,
        "settled, yet ran again": 1,
    }
    assert found.interrupted == {"by SIGKILL": 2} and found.unstarted_claims == 1
    assert found.by_kill == {1: 1} and found.unsettled_at_kill == {1: 1}
    keyed = [Run("a", 1, 1, 0.0, 2.0, key="k"), Run("b", 1, 1, 1.0, key="k"), Run("c", 1, 3, 10.0, 11.0, key="k")]
    assert peak_overlap(keyed, [kill]) == ({"k": 2}, 0)  # b ends at its worker's kill, before c starts
    assert peak_overlap([*keyed, Run("d", 1, 2, 25.0, 26.0, key="k")], [kill, stop]) == ({"k": 2}, 1)


def test_the_long_soak_gauges_memory_judges_growth_and_draws_it(tmp_path: Path) -> None:
    """bench/soak_sizes.py, which the long soak's verdicts and plots (docs/soak-*.svg) rest on."""
    import os
    import subprocess
    import sys
    import xml.etree.ElementTree as ET

    from bench.soak_sizes import descendants, flatness, plot, rss

    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        assert child.pid in descendants(os.getpid())
        assert rss(os.getpid()) > rss(child.pid) > 0  # the tree counts the child
    finally:
        child.communicate(b"")
    flat = [(float(t), 100.0 + t % 3) for t in range(100)]
    growing = [(float(t), 100.0 + t) for t in range(100)]
    assert flatness(flat, 10, 99)["verdict"] == "flat"
    grown = flatness(growing, 10, 99)
    assert grown["verdict"] == "GROWING" and grown["growth_percent"] > 40
    samples = [{"t": t, "rss_spared": 5e7, "store": {"used_memory": 1e6 + t}} for t in range(0, 70, 10)]
    samples[3]["store"] = None  # the broker restarting: a gap, not a zero
    panels = [("RSS", [("rss_spared", "spared")], 1.0, "B"), ("Redis", [("store.used_memory", "used")], 1.0, "B")]
    plot(tmp_path / "soak.svg", "t", samples, panels, kills=[15.0], restart=30.0, warm_up=20.0)
    svg = "{http://www.w3.org/2000/svg}"
    root = ET.parse(tmp_path / "soak.svg").getroot()
    lines = root.findall(f"{svg}polyline")
    assert len(lines) == 2 and len(lines[1].attrib["points"].split()) == 6
    assert any(line.attrib["stroke"] == "red" for line in root.findall(f"{svg}line"))
