"""Autoscaling on queue load: the ``runq_queue_load`` gauge at the dashboard's /metrics, measured
with a real worker on SQLite and Redis, and deploy/keda/scaledobject.yaml validated against KEDA's
ScaledObject CRD schema (vendored: deploy/keda/scaledobject.schema.json). Nothing here runs on a
Kubernetes cluster.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

import runq
from tests.conftest import ROOT, wait_until
from tests.support.servers import free_port

KEDA = ROOT / "deploy" / "keda"
# The prometheus scaler's metadata keys, from KEDA v2.20.2 pkg/scalers/prometheus_scaler.go.
PROMETHEUS_REQUIRED = {"serverAddress", "query", "threshold"}
PROMETHEUS_OPTIONAL = {
    "queryParameters",
    "activationThreshold",
    "namespace",
    "customHeaders",
    "ignoreNullValues",
    "unsafeSsl",
    "awsRegion",
    "timeout",
    "identityOwner",
}


@pytest.fixture
def metrics(broker_url: str, tmp_path: Path) -> Iterator[Callable[[], dict[str, float]]]:
    """``runq_queue_load`` per queue, as a real ``runq dashboard`` serves it at /metrics."""
    port = free_port()
    token = secrets.token_urlsafe(16)  # Prometheus sends it as a bearer token (deploy/prometheus.yml)
    env = {**os.environ, "RUNQ_URL": broker_url, "RUNQ_DASHBOARD_TOKEN": token, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "dashboard.log"
    command = [sys.executable, "-m", "runq", "dashboard", "tests.keda_tasks:app", "--port", str(port)]
    with open(log, "ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    auth = {"Authorization": f"Bearer {token}"}
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=auth, timeout=60)  # a loaded CI machine

    def load() -> dict[str, float]:
        response = client.get("/metrics")
        assert response.status_code == 200
        return {
            sample.labels["queue"]: sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples
            if sample.name == "runq_queue_load"
        }

    def up() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            return client.get("/metrics").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, timeout=120, interval=0.05)
        yield load
    finally:
        client.close()
        proc.terminate()
        proc.wait(30)


def test_queue_load_is_running_plus_ready_over_worker_slots(
    app: runq.App,
    broker_url: str,
    metrics: Callable[[], dict[str, float]],
    start_worker: Callable[..., Any],
    tmp_path: Path,
) -> None:
    # Every wait is on an observed state with a generous deadline (a loaded 2-core CI machine
    # can take many seconds to start a worker): no step assumes how long another one takes.
    release = tmp_path / "release"
    started = [tmp_path / f"started-{i}" for i in range(3)]
    handles = [app.enqueue("hold", [str(release)], {"started": str(marker)}, queue="load") for marker in started]
    try:
        assert metrics() == {"load": 3.0}  # no worker drains it: the count itself (one slot)

        start_worker(
            broker_url, "--queues", "load,idle", "--pool", "thread", "--concurrency", "2", app="tests.keda_tasks:app"
        )
        # Both slots are taken once two tasks have started; the third cannot start before the
        # release. (Waiting on the load alone was racy: it reads 1.5 as soon as the worker's
        # heartbeat is seen, which can be before its first claim.)
        wait_until(lambda: sum(marker.exists() for marker in started) == 2, timeout=120, interval=0.05)
        assert app.stats().queues["load"].running >= 2, "two tasks started: the broker counts them running"
        # 2 slots busy and 1 task ready (pending, or claimed ahead): (2 + 1) / 2. A pending-only
        # figure would read 0.5 (or 0 with the third claimed ahead): the load counts running tasks.
        wait_until(lambda: metrics() == {"load": 1.5, "idle": 0.0}, timeout=120, interval=0.05)
        assert sum(marker.exists() for marker in started) == 2  # still two busy slots, one waiting
    finally:
        release.touch()
    assert [h.result(timeout=120) for h in handles] == ["released"] * 3
    wait_until(lambda: metrics() == {"load": 0.0, "idle": 0.0}, timeout=120, interval=0.05)


# -- the KEDA ScaledObject ---------------------------------------------------------------------


def strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused (as ``kubeconform -strict``): Kubernetes would
    silently prune a misspelt field, and the autoscaler would run without it."""
    if isinstance(schema, dict):
        made = {key: strict(value) for key, value in schema.items()}
        if made.get("type") == "object" and "properties" in made and "additionalProperties" not in made:
            made["additionalProperties"] = False
        return made
    if isinstance(schema, list):
        return [strict(value) for value in schema]
    return schema


def errors_of(document: dict[str, Any]) -> list[str]:
    schema = json.loads((KEDA / "scaledobject.schema.json").read_text())
    schema.pop("$comment")
    validator = jsonschema_rs.validator_for(strict(schema))
    found = [f"{'/'.join(map(str, e.instance_path))}: {e.message}" for e in validator.iter_errors(document)]
    spec = document.get("spec", {})
    # The CRD's one CEL rule (x-kubernetes-validations), which JSON Schema cannot say:
    if spec.get("minReplicaCount", 0) > spec.get("maxReplicaCount", 100):
        found.append("spec: minReplicaCount must be less than or equal to maxReplicaCount")
    return found


def scaled_objects() -> list[dict[str, Any]]:
    return [doc for path in sorted(KEDA.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_the_scaled_object_is_valid_for_kedas_crd() -> None:
    [document] = scaled_objects()
    assert (document["apiVersion"], document["kind"]) == ("keda.sh/v1alpha1", "ScaledObject")
    assert errors_of(document) == []
    [trigger] = document["spec"]["triggers"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "Value"
    keys = set(trigger["metadata"])
    assert PROMETHEUS_REQUIRED <= keys <= PROMETHEUS_REQUIRED | PROMETHEUS_OPTIONAL
    assert float(trigger["metadata"]["threshold"]) > 0
    assert trigger["metadata"]["query"] == 'max(runq_queue_load{queue="default"})'


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda spec: spec.update(minReplicas=1), "minReplicas"),  # misspelt: KEDA's name is minReplicaCount
        (lambda spec: spec["triggers"][0]["metadata"].update(threshold=0.8), "0.8"),  # metadata are strings
        (lambda spec: spec.update(minReplicaCount=30), "minReplicaCount must be less"),
        (lambda spec: spec.pop("scaleTargetRef"), "scaleTargetRef"),
    ],
)
def test_the_schema_check_catches_mistakes(change: Callable[[dict[str, Any]], Any], says: str) -> None:
    [document] = scaled_objects()
    broken = copy.deepcopy(document)
    change(broken["spec"])
    assert any(says in error for error in errors_of(broken)), errors_of(broken)
