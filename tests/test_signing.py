"""Signed messages (runq/signing.py): a worker with keys runs only what one of its keys
verifies; everything else ends ``failed`` as ``BadSignature``, raw text kept, never run."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

import runq
from runq.models import Message
from runq.settings import Settings
from runq.signing import BadSignature, Signer, key_id
from tests.conftest import WorkerProcess, corrupt_payload, wait_until

BROKER_KINDS = ["sqlite", "redis", "postgres"]
NEW = "new-key-0123456789abcdef"
OLD = "old-key-0123456789abcdef"
WRONG = "not-the-key-0123456789ab"
StartWorker = Callable[..., WorkerProcess]


def signed(app: runq.App, name: str, *args: object) -> Message:
    return app.message(name, list(args), None, runq.tasks.NO_OPTIONS)


# -- the format, without a broker ---------------------------------------------------


def test_a_signed_payload_opens_to_the_exact_text_it_signed() -> None:
    message = signed(runq.App("sqlite:///unused.db", signing_keys=[NEW]), "add", 2, 3)
    body, _, sig = message.payload.rpartition(',"sig":"')
    assert sig.startswith(key_id(NEW) + ".")
    assert Signer([NEW]).open(message.id, message.payload) == body + "}"
    again = Message.decode(message.payload, message.id, message.queue)  # info()/list() still read it
    assert (again.name, again.args) == ("add", [2, 3])


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda m: m.payload.replace("[2,3]", "[2,4]"), "altered after signing"),
        (lambda m: m.payload.replace('"sig"', '"sig" '), "not signed"),
        (lambda m: signed(runq.App("sqlite:///unused.db", signing_keys=[WRONG]), "add", 2, 3).payload, "not hold"),
        (lambda m: signed(runq.App("sqlite:///unused.db", signing_keys=[]), "add", 2, 3).payload, "not signed"),
    ],
    ids=["tampered", "mangled", "wrong-key", "unsigned"],
)
def test_what_does_not_verify_is_refused(change: Callable[[Message], str], why: str) -> None:
    message = signed(runq.App("sqlite:///unused.db", signing_keys=[NEW]), "add", 2, 3)
    with pytest.raises(BadSignature, match=why):
        Signer([NEW]).open(message.id, change(message))


def test_a_signed_payload_copied_onto_another_task_is_refused() -> None:
    app = runq.App("sqlite:///unused.db", signing_keys=[NEW])
    first, second = signed(app, "add", 2, 3), signed(app, "add", 2, 3)
    with pytest.raises(BadSignature, match="altered"):
        Signer([NEW]).open(second.id, first.payload)


def test_rotation_signs_with_the_first_key_and_verifies_with_any() -> None:
    old_message = signed(runq.App("sqlite:///unused.db", signing_keys=[OLD]), "add", 1, 1)
    new_message = signed(runq.App("sqlite:///unused.db", signing_keys=[NEW, OLD]), "add", 1, 1)
    assert f'"sig":"{key_id(NEW)}.' in new_message.payload
    rotating = Signer([NEW, OLD])
    for message in (old_message, new_message):
        rotating.open(message.id, message.payload)
    with pytest.raises(BadSignature, match="not hold"):
        Signer([OLD]).open(new_message.id, new_message.payload)


def test_workflow_steps_are_signed_too() -> None:
    sent: list[Message] = []

    class Capture(runq.Middleware):
        def on_enqueue(self, message: Message) -> None:
            sent.append(message)

    app = runq.App("memory://", signing_keys=[NEW])
    app.add_middleware(Capture())
    add = app.task(name="add")(lambda a, b: a + b)
    runq.chain(add.s(1, 2), add.s(3), add.s(4)).delay()
    assert len(sent) == 3
    for message in sent:
        assert '"pass_results"' in message.payload or message.after == ()
        Signer([NEW]).open(message.id, message.payload)
    app.close()


def test_keys_come_from_the_environment_and_are_never_shown(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.from_env({"RUNQ_SIGNING_KEYS": f" {NEW} , {OLD},"})
    assert settings.signing_keys == (NEW, OLD)
    assert Settings.from_dict(settings.to_dict()) == settings  # how a process-pool child gets them
    shown = [repr(settings), repr(runq.App(settings=settings)), repr(Signer(settings.signing_keys))]
    assert not [text for text in shown if NEW in text or OLD in text]
    for bad in (["short"], [NEW, NEW], [f" {NEW}"]):
        with pytest.raises(ValueError) as error:
            runq.App("sqlite:///unused.db", signing_keys=bad)
        assert NEW not in str(error.value) and "short" not in str(error.value)
    with pytest.raises(TypeError, match="list of keys"):
        runq.App("sqlite:///unused.db", signing_keys=NEW)
    assert not [r for r in caplog.records if r.levelno >= logging.DEBUG and NEW in r.getMessage()]


# -- real workers ------------------------------------------------------------------


def test_worker_with_keys_runs_only_what_they_verify(
    broker_url: str, start_worker: StartWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tampered (written behind runq's back), copied onto another id, wrong key, unsigned: all
    refused as BadSignature with their raw text kept, and never run; both keys of a rotation run."""
    producers = {name: runq.App(broker_url, signing_keys=keys) for name, keys in _KEYS.items()}
    marks = {name: tmp_path / name for name in [*_KEYS, "tampered", "copied", "attack"]}
    handles = {}
    for name, app in producers.items():
        handles[name] = app.enqueue("touch_then_sleep", [str(marks[name]), 0])
    source = producers["new"]
    for attack in ("tampered", "copied"):
        message = signed(source, "touch_then_sleep", str(marks[attack]), 0)
        [task_id] = source.broker.enqueue([message], 60)
        handles[attack] = source.handle(task_id)
    evil = signed(source, "touch_then_sleep", str(marks["attack"]), 0).payload
    corrupt_payload(broker_url, handles["tampered"].id, evil.replace(str(marks["attack"]), str(marks["tampered"])))
    corrupt_payload(broker_url, handles["copied"].id, evil)  # a valid signature, for another task
    monkeypatch.setenv("RUNQ_SIGNING_KEYS", f"{NEW},{OLD}")
    monkeypatch.setenv("RUNQ_LOG_LEVEL", "DEBUG")
    worker = start_worker(broker_url, "--pool", "thread", "--concurrency", "2")
    for name in ("new", "old"):
        assert handles[name].result(timeout=30) == "finished"
        assert marks[name].exists()
    for name in ("wrong", "unsigned", "tampered", "copied"):
        with pytest.raises(runq.TaskFailed) as failure:
            handles[name].result(timeout=30)
        assert failure.value.type == "BadSignature", name
        info = handles[name].info()
        assert info is not None and info.error is not None and info.error["raw"].startswith('{"name":')
        assert not marks[name].exists() and not marks["attack"].exists(), f"{name} ran"
    tampered_info = handles["tampered"].info()
    assert tampered_info is not None and tampered_info.error is not None
    assert str(marks["tampered"]) in tampered_info.error["raw"]
    wait_until(lambda: "BadSignature" in worker.output(), timeout=10)
    assert f"key ids {key_id(NEW)}, {key_id(OLD)}" in worker.output()  # says which keys, by id
    for key in (NEW, OLD):
        assert key not in worker.output()
    for app in producers.values():
        app.close()


_KEYS = {"new": [NEW, OLD], "old": [OLD], "wrong": [WRONG], "unsigned": []}


def test_worker_without_keys_runs_signed_and_unsigned(
    broker_url: str, start_worker: StartWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RUNQ_SIGNING_KEYS", raising=False)
    start_worker(broker_url, "--pool", "thread")
    for keys in ([NEW], []):
        app = runq.App(broker_url, signing_keys=keys)
        assert app.enqueue("add", [2, 3]).result(timeout=30) == 5
        app.close()
