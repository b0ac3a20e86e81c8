"""Observability (issue 14): one trace from producer to worker across real processes, per-task
metrics after a known workload, logs that join traces, and promtool on /metrics and the docs."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra is not installed: pip install -e '.[dev]'")
pytest.importorskip("opentelemetry.sdk", reason="the dev extra installs opentelemetry-sdk")

import httpx
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

import runq
from runq.dashboard import create_app
from runq.models import Message, new_task_id
from runq.observe import tracing
from runq.observe.task_metrics import OTHER_TASK, TaskMetrics, read
from runq.tasks import NO_OPTIONS
from tests.conftest import ROOT, WITH_POSTGRES, wait_until
from tests.otel_spans import span_record

DOCS = ROOT / "docs" / "observability.md"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# -- helpers -----------------------------------------------------------------------------------


class TracedWorker:
    """``runq worker tests.otel_tasks:app``: a worker whose app module configures an SDK."""

    def __init__(self, url: str, tmp_path: Path, *args: str) -> None:
        self.spans = tmp_path / "spans.jsonl"
        self.log = tmp_path / "worker.log"
        env = {**os.environ, "RUNQ_URL": url, "PYTHONPATH": str(ROOT), "RUNQ_TEST_SPANS": str(self.spans)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runq", "worker", "tests.otel_tasks:app", "--json", *args],
                env=env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def exported(self) -> list[dict[str, Any]]:
        if not self.spans.exists():
            return []
        return [json.loads(line) for line in self.spans.read_text().splitlines() if line.strip()]

    def events(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def traced_worker(tmp_path: Path) -> Iterator[Callable[..., TracedWorker]]:
    started: list[TracedWorker] = []

    def start(url: str, *args: str) -> TracedWorker:
        worker = TracedWorker(url, tmp_path, *args)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def producer_spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """An SDK for this process's producer spans, without touching the global tracer provider
    (which other tests' payloads would then carry)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "_tracer", lambda: provider.get_tracer("runq"))
    return exporter


def scrape(app: runq.App) -> str:
    """The dashboard's real ``/metrics`` response (in-process ASGI, no server to start)."""

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(app))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            return await client.get("/metrics")

    response = asyncio.run(get())
    assert response.status_code == 200, response.text
    return response.text


def samples(text: str) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool is not installed (apt-get install prometheus; .ci/run does)")
    return subprocess.run([path, *args], input=stdin, capture_output=True, text=True, timeout=60)


def doc_block(language: str, marker: str) -> str:
    """The fenced ``language`` block that follows ``marker`` in docs/observability.md."""
    text = DOCS.read_text()
    found = re.search(rf"{re.escape(marker)}.*?```{language}\n(.*?)```", text, flags=re.DOTALL)
    assert found, f"no {language} block after {marker!r} in {DOCS}"
    return found.group(1)


# -- tracing -----------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", ["thread", "process", "async"])
def test_one_trace_from_producer_to_worker(
    pool: str, sqlite_url: str, producer_spans: InMemorySpanExporter, traced_worker: Callable[..., TracedWorker]
) -> None:
    app = runq.App(sqlite_url)
    worker = traced_worker(sqlite_url, "--pool", pool, "--concurrency", "1")
    with tracing._tracer().start_as_current_span("request"):
        added = app.enqueue("add", [1, 2])
        flaky = app.enqueue("flaky", [2])  # attempt 1 fails, attempt 2 succeeds
        step = app.enqueue("add", [3, 4], after=[added.id])
    assert (added.result(timeout=60), flaky.result(timeout=60), step.result(timeout=60)) == (3, 2, 7)

    produced = {
        span["attributes"]["messaging.message.id"]: span
        for span in map(span_record, producer_spans.get_finished_spans())
        if span["kind"] == "PRODUCER"
    }
    assert set(produced) == {added.id, flaky.id, step.id}
    assert len({span["trace_id"] for span in produced.values()}) == 1  # all under the caller's span
    assert produced[added.id]["attributes"]["messaging.operation.type"] == "create"

    def consumed() -> list[dict[str, Any]]:
        spans = [span for span in worker.exported() if span["kind"] == "CONSUMER"]
        return spans if len(spans) == 4 else []

    by_task: dict[str, list[dict[str, Any]]] = {}
    for span in sorted(wait_until(consumed, timeout=30), key=lambda s: s["attributes"]["runq.task.attempt"]):
        by_task.setdefault(span["attributes"]["messaging.message.id"], []).append(span)
    for task_id, attempts in by_task.items():
        for span in attempts:  # every attempt continues the producer's trace, under its span
            assert span["trace_id"] == produced[task_id]["trace_id"]
            assert span["parent"] == produced[task_id]["span_id"]
            assert span["pid"] != os.getpid()
            assert span["attributes"]["messaging.system"] == "runq"
            assert span["attributes"]["messaging.destination.name"] == "default"
            assert span["attributes"]["messaging.operation.type"] == "process"
    [ok] = by_task[added.id]
    assert ok["attributes"]["runq.task.name"] == "add" and ok["attributes"]["runq.task.outcome"] == "succeeded"
    if pool == "process":  # the span came from a child, not the worker process itself
        assert ok["pid"] != worker.proc.pid
    first, second = by_task[flaky.id]
    assert first["status"] == "ERROR" and "exception" in first["events"]
    assert first["attributes"]["error.type"] == "RuntimeError" and first["attributes"]["runq.task.retryable"]
    assert second["attributes"]["runq.task.attempt"] == 2 and second["status"] != "ERROR"
    assert second["links"] == [first["span_id"]]  # the retry links to the attempt before it
    [after] = by_task[step.id]
    assert after["links"] == [produced[added.id]["span_id"]]  # a step links to its parent

    # Logs join traces: the task event of an attempt names its trace and its span.
    events = wait_until(lambda: [e for e in worker.events() if e.get("event") == "succeeded"], timeout=30)
    line = next(e for e in events if e["task_id"] == added.id)
    assert (line["task"], line["queue"], line["attempt"]) == ("add", "default", 1)
    assert (line["trace_id"], line["span_id"]) == (ok["trace_id"], ok["span_id"])
    assert line["worker"].split(":")[1] == str(worker.proc.pid)

    # A carrier that is not W3C trace context (a foreign or broken producer) never breaks a run.
    bad = Message(id=new_task_id("default"), name="add", queue="default", args=[2, 2], trace={"traceparent": 5})  # type: ignore[dict-item]
    [bad_id] = app.broker.enqueue([bad], 60)
    assert app.handle(bad_id).result(timeout=60) == 4


def test_without_an_sdk_messages_carry_no_trace(sqlite_url: str) -> None:
    assert tracing.ENABLED  # the API is installed (dev extra), but this process configured no SDK
    message = runq.App(sqlite_url).message("add", [1, 2], None, NO_OPTIONS)
    assert message.trace is None and message.payload == '{"name":"add","args":[1,2]}'


def test_without_the_extra_no_tracing_code_runs(sqlite_url: str) -> None:
    script = f"""
import sys
sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
import runq, runq.observe.tracing, runq.worker.run, runq.worker.ended
from runq.tasks import NO_OPTIONS
assert not runq.observe.tracing.ENABLED
app = runq.App({sqlite_url!r})
app.task(name="add")(lambda a, b: a + b)
message = app.message("add", [1, 2], None, NO_OPTIONS)
assert message.payload == '{{"name":"add","args":[1,2]}}', message.payload
result = runq.worker.run.run_job(app, runq.worker.run.Job(message.id, "add", "default", 1, [1, 2], {{}}))
assert isinstance(result, runq.worker.ended.Finished) and result.result == "3" and not result.notes
assert not any(name.startswith("opentelemetry") and sys.modules[name] for name in sys.modules)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


# -- per-task metrics --------------------------------------------------------------------------


def test_per_task_metrics_after_a_known_workload(
    app: runq.App, broker_url: str, start_worker: Callable[..., Any]
) -> None:
    start_worker(broker_url, "--pool", "thread", "--concurrency", "2")
    handles = [app.enqueue("add", [i, i]) for i in range(5)]
    handles += [app.enqueue("fail_always") for _ in range(2)]
    handles.append(app.enqueue("flaky", [2]))  # retried once, then succeeds
    handles.append(app.enqueue("not_registered_anywhere"))  # fails: UnknownTask, folded into one label
    for handle in handles:
        info = app.broker.wait(handle.id, 60)
        assert info is not None and info.status.final

    def tasks_total(task: str, outcome: str) -> tuple[str, tuple[tuple[str, str], ...]]:
        return ("runq_tasks_total", (("outcome", outcome), ("queue", "default"), ("task", task)))

    expected = {
        ("add", "succeeded"): 5,
        ("fail_always", "failed"): 2,
        ("flaky", "retried"): 1,
        ("flaky", "succeeded"): 1,
        (OTHER_TASK, "failed"): 1,
    }

    # The worker sends its counts with its heartbeat (every 2 s): wait for all 10 attempts.
    def counted() -> Samples | None:
        found = samples(scrape(app))
        attempts = sum(value for (name, _), value in found.items() if name == "runq_tasks_total")
        return found if attempts >= 10 else None

    found = wait_until(counted, timeout=30)
    for task in ("add", "fail_always", "flaky", OTHER_TASK):
        for outcome in ("succeeded", "failed", "retried", "cancelled"):
            assert found[tasks_total(task, outcome)] == expected.get((task, outcome), 0), (task, outcome)
    runs = {"add": 5, "fail_always": 2, "flaky": 2, OTHER_TASK: 1}
    waits = {"add": 5, "fail_always": 2, "flaky": 1, OTHER_TASK: 1}  # first attempts only
    for task, count in runs.items():
        labels = (("queue", "default"), ("task", task))
        assert found[("runq_task_run_seconds_count", labels)] == count
        assert found[("runq_task_run_seconds_bucket", (("le", "+Inf"), *labels))] == count
        assert 0 <= found[("runq_task_run_seconds_sum", labels)] < 60
        assert found[("runq_task_wait_seconds_count", labels)] == waits[task]
    assert not any(labels and ("task", "not_registered_anywhere") in labels for _, labels in found)
    assert found[("runq_tasks_succeeded_total", ())] == 6  # the broker's own counters agree

    checked = promtool("check", "metrics", stdin=scrape(app))
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("broker_url", WITH_POSTGRES, indirect=True)
def test_brokers_add_task_metric_deltas(app: runq.App) -> None:
    broker = app.broker
    assert broker.task_metrics() == {}
    app.enqueue("x", queue="a")  # registers the queues with the broker
    app.enqueue("x", queue="b")
    broker.add_task_metrics({"a": {"succeeded:mod:fn": 2, "run_sum:mod:fn": 0.25}, "b": {"failed:t": 1}})
    broker.add_task_metrics({"a": {"succeeded:mod:fn": 3, "run_sum:mod:fn": 0.5}})
    assert broker.task_metrics() == {
        "a": {"succeeded:mod:fn": 5.0, "run_sum:mod:fn": 0.75},
        "b": {"failed:t": 1.0},
    }


def test_counts_survive_a_failed_flush_and_histograms_are_cumulative() -> None:
    metrics = TaskMetrics(lambda name: name == "known")
    metrics.record("q", "known", "succeeded", 0.003, 0.2)
    metrics.record("q", "known", "succeeded", 7.0, None)
    metrics.record("q", "stranger", "failed", None, None)

    def broken(deltas: Any) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        metrics.flush(broken)
    sent: list[Any] = []
    metrics.flush(sent.append)  # what the failed flush took is sent with the next one
    metrics.flush(sent.append)  # nothing new: nothing sent
    assert len(sent) == 1
    [other, known] = read(sent[0])  # sorted by task: "(other)" first
    assert (other.task, other.outcomes["failed"]) == (OTHER_TASK, 1)
    assert known.outcomes["succeeded"] == 2 and known.run.count == 2 and known.run.sum == pytest.approx(7.003)
    assert dict(known.run.labelled())["0.005"] == 1 and dict(known.run.labelled())["5.0"] == 1
    assert dict(known.run.labelled())["10.0"] == 2 and known.wait.count == 1


# -- the docs: alert rules and the Grafana dashboard -------------------------------------------


def test_promtool_checks_the_alert_rules_in_the_docs(tmp_path: Path) -> None:
    rules = tmp_path / "runq-rules.yml"
    rules.write_text(doc_block("yaml", "<!-- rules -->"))
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 3 rules found" in checked.stdout


RULE_TESTS = """
rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'runq_queue_tasks{queue="emails",state="pending"}'
        values: '200+10x40'
      - series: 'runq_queue_tasks{queue="calm",state="pending"}'
        values: '500x40'
      - series: 'runq_tasks_total{queue="default",task="send",outcome="failed"}'
        values: '0+1x40'
      - series: 'runq_tasks_total{queue="default",task="send",outcome="succeeded"}'
        values: '0+9x40'
      - series: 'runq_tasks_total{queue="default",task="fine",outcome="failed"}'
        values: '0x40'
      - series: 'runq_tasks_total{queue="default",task="fine",outcome="succeeded"}'
        values: '0+10x40'
      - series: 'runq_workers'
        values: '1x10 0x30'
      - series: 'runq_broker_up'
        values: '1x40'
    alert_rule_test:
      - eval_time: 10m
        alertname: RunqQueueBacklogGrowing
        exp_alerts: []
      - eval_time: 35m
        alertname: RunqQueueBacklogGrowing
        exp_alerts:
          - exp_labels: {severity: warning, queue: emails}
            exp_annotations:
              summary: "runq queue emails backlog keeps growing"
              description: "550 pending tasks in emails, growing for 15 minutes: add workers or look for a slow task."
      - eval_time: 35m
        alertname: RunqTaskFailureRatioHigh
        exp_alerts:
          - exp_labels: {severity: warning, queue: default, task: send}
            exp_annotations:
              summary: "runq task send fails more than 5% of the time"
              description: "10% of send runs in default end failed (retries exhausted)."
      - eval_time: 11m
        alertname: RunqNoLiveWorkers
        exp_alerts: []
      - eval_time: 35m
        alertname: RunqNoLiveWorkers
        exp_alerts:
          - exp_labels: {severity: critical}
            exp_annotations:
              summary: "no runq worker has a live heartbeat"
              description: "The broker answers, but no worker heartbeat for 2 minutes: no task runs."
"""


def test_the_alert_rules_fire_when_they_should(tmp_path: Path) -> None:
    """A growing backlog alerts and a large flat one does not; a 10% failure ratio alerts and
    a clean task does not; no workers alerts only after 2 minutes without any."""
    (tmp_path / "rules.yml").write_text(doc_block("yaml", "<!-- rules -->"))
    (tmp_path / "tests.yml").write_text(RULE_TESTS)
    tested = promtool("test", "rules", str(tmp_path / "tests.yml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_grafana_dashboard_queries_series_runq_exposes(sqlite_url: str) -> None:
    dashboard = json.loads(doc_block("json", "<!-- grafana -->"))
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert len(exprs) >= 5
    exposed = {
        name
        for line in scrape(runq.App(sqlite_url)).splitlines()
        if line.startswith("# TYPE")
        for name in _series_names(line.split()[2], line.split()[3])
    }
    for expr in exprs:
        for name in re.findall(r"\brunq_\w+", expr):
            assert name in exposed, (name, expr)


def _series_names(family: str, kind: str) -> set[str]:
    if kind == "counter":
        return {family, f"{family}_total"}
    if kind == "histogram":
        return {family, *(f"{family}_{suffix}" for suffix in ("bucket", "sum", "count", "created"))}
    return {family}
