"""runq/fastinit.py: a value made without ``__init__`` is the value ``__init__`` makes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from runq.fastinit import maker
from runq.models import Message, Outcome
from runq.observe.middleware import TaskOutcome
from runq.worker.policy import Policy, task_outcome


@dataclasses.dataclass(frozen=True)
class _Sample:
    a: int
    b: list[int] = dataclasses.field(default_factory=list)
    c: str = "c"


def test_made_equals_init_made_and_stays_frozen() -> None:
    make = maker(_Sample)
    made, built = make(a=1), _Sample(1)
    assert made == built and repr(made) == repr(built) and hash(made.c) == hash(built.c)
    assert make(a=1).b is not made.b  # a default factory runs per value
    assert make(a=2, b=[3], c="x") == _Sample(2, [3], "x")
    with pytest.raises(TypeError, match="keywords only"):
        make(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        made.a = 2  # type: ignore[misc]
    assert dataclasses.replace(made, c="y") == _Sample(1, [], "y")
    assert dataclasses.asdict(made) == {"a": 1, "b": [], "c": "c"}


def test_maker_refuses_an_init_that_does_more() -> None:
    @dataclasses.dataclass(frozen=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            if self.a < 0:
                raise ValueError("a < 0")

    with pytest.raises(TypeError, match="does more than assign"):
        maker(Checked)

    @dataclasses.dataclass(frozen=True)
    class Derived:
        a: int
        b: int = dataclasses.field(init=False, default=0)

    with pytest.raises(TypeError, match="not an __init__ field"):
        maker(Derived)


@pytest.mark.parametrize(
    "payload",
    [
        '{"name":"noop"}',
        '{"name":"add","args":[1,2],"kwargs":{"x":1},"retries":5,"timeout":2.5,"after":["a","b"]}',
        '{"name":"s","pass_results":"list","after_final":true,"trace":{"traceparent":"00-x"},"slot":"k"}',
    ],
)
def test_decode_makes_the_message_init_makes(payload: str) -> None:
    data = json.loads(payload)
    if "after" in data:
        data["after"] = tuple(data["after"])
    decoded = Message.decode(payload, "t1", "q")
    assert decoded == Message(id="t1", queue="q", **data)
    assert decoded.payload == Message(id="t1", queue="q", **data).payload
    assert decoded.sealer is None


def test_decode_still_names_wrong_fields() -> None:
    with pytest.raises(ValueError, match=r"payload has wrong fields: .*unexpected keyword argument 'nope'"):
        Message.decode('{"name":"noop","nope":1}', "t1", "q")
    with pytest.raises(ValueError, match="payload has wrong fields"):
        Message.decode('{"args":[]}', "t1", "q")  # no name
    with pytest.raises(ValueError, match="payload has wrong fields"):
        Message.decode('{"name":"noop","id":"other"}', "t1", "q")


def test_policy_outcome_and_task_outcome_as_init_makes_them() -> None:
    message = Message.decode('{"name":"noop","retries":1,"soft_timeout":3}', "t1", "q")
    assert Policy.resolve(message, None) == Policy(retries=1, soft_timeout=3)
    outcome = Outcome("t1", "tok", "retry", error={"type": "E"}, delay=2.0, runtime=0.5)
    assert task_outcome(outcome, 0.25) == TaskOutcome(
        "retrying", error={"type": "E"}, duration=0.5, wait=0.25, retry_in=2.0
    )
