"""Workflows: chain, group, chord, built on one broker feature, ``after`` (SPEC §2, §3).

A workflow is enqueued whole, in one ``enqueue`` call: later steps are ``waiting`` tasks
whose ``after`` lists the steps they wait for. The broker releases a waiting task when
its last parent succeeds and cancels it (with its own dependents) when one fails or is
cancelled, in the transaction that settles the parent: no coordinator process, no
polling. Passing results is the worker's job: a step whose message says
``pass_results`` gets its parents' results (read when it starts) as its first argument,
so the broker never rewrites a payload.

* ``chain(a, b, c)``: b waits for a and gets a's result first; c likewise after b.
* ``group(sigs)``: independent tasks, one batch; a :class:`GroupHandle` collects results.
* ``chord(group, callback)``: the callback waits for every member and gets the list of
  their results, in member order; a member that fails cancels it, naming that member.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast

from runq.handles import GroupHandle, Handle
from runq.models import Message, Status, TaskInfo
from runq.observe import tracing
from runq.tasks import Signature

if TYPE_CHECKING:
    from runq.brokers import Broker
    from runq.tasks import Producer


class DependencyError(LookupError):
    """A step's parents cannot give it their results (gone, or not succeeded)."""


def _app_of(signatures: Iterable[Signature]) -> Producer:
    for signature in signatures:
        if not isinstance(signature, Signature):
            raise TypeError(f"workflows take signatures (task.s(...)), got {type(signature).__name__}")
        if signature.app is not None:
            return signature.app
    raise RuntimeError("a workflow needs at least one signature bound to an App (task.s(...))")


def _message(app: Producer, signature: Signature, leading: int = 0) -> Message:
    """``leading``: how many results the step gets in front of its arguments (checked against its signature)."""
    return app.message(signature.name, signature.args, signature.kwargs, signature.opts, leading=leading)


def _after(message: Message, parents: Iterable[str], pass_results: str) -> Message:
    """The message waiting on ``parents`` (before its own ``after``) and taking their results."""
    after = (*parents, *(p for p in message.after if p not in parents))
    step = dataclasses.replace(message, after=after, pass_results=pass_results)  # type: ignore[arg-type]
    return tracing.with_parents(step)


class Chain:
    """``chain(a, b, c)``: run in order, each step's result the next one's first argument."""

    def __init__(self, *signatures: Signature) -> None:
        if not signatures:
            raise ValueError("chain() needs at least one signature")
        self.app = _app_of(signatures)
        self.signatures = signatures

    def messages(self) -> list[Message]:
        messages: list[Message] = []
        for signature in self.signatures:
            message = _message(self.app, signature, 1 if messages else 0)
            if messages:
                message = _after(message, [messages[-1].id], "first")
            messages.append(message)
        return messages

    def delay(self) -> Handle[Any]:
        """Enqueue every step at once (one broker call); the handle of the last step.

        A step that fails (after its retries) or is cancelled cancels the steps after it,
        so ``result()`` on this handle raises ``TaskCancelled`` naming the failed step.
        """
        ids = self.app.broker.enqueue(self.messages(), self.app.settings.key_ttl)
        return Handle(self.app, ids[-1])


class Group:
    """``group(sigs)``: run in parallel; results in member order."""

    def __init__(self, signatures: Iterable[Signature]) -> None:
        self.signatures = list(signatures)
        self.app = _app_of(self.signatures) if self.signatures else None

    def messages(self) -> list[Message]:
        if self.app is None:
            return []
        return [_message(self.app, signature) for signature in self.signatures]

    def delay(self) -> GroupHandle:
        if self.app is None:
            raise RuntimeError("an empty group has no App to enqueue on")
        return GroupHandle(self.app, self.app.enqueue_many(self.signatures))


class Chord:
    """``chord(group, callback)``: the callback runs once, on the list of every member's result."""

    def __init__(self, header: Group | Iterable[Signature], callback: Signature) -> None:
        self.header = header if isinstance(header, Group) else Group(header)
        self.callback = callback
        self.app = _app_of([callback, *self.header.signatures])

    def delay(self) -> Handle[Any]:
        """Enqueue the members and the callback at once; the callback's handle.

        A member that fails (after its retries) or is cancelled cancels the callback,
        whose error names that member.
        """
        members = [_message(self.app, signature) for signature in self.header.signatures]
        callback = _after(_message(self.app, self.callback, 1), [m.id for m in members], "list")
        ids = self.app.broker.enqueue([*members, callback], self.app.settings.key_ttl)
        return Handle(self.app, ids[-1])


def chain(*signatures: Signature) -> Chain:
    return Chain(*signatures)


def group(*signatures: Signature | Iterable[Signature]) -> Group:
    """``group(a, b)`` or ``group(sig for ...)``."""
    if len(signatures) == 1 and not isinstance(signatures[0], Signature):
        return Group(signatures[0])
    return Group(cast("tuple[Signature, ...]", signatures))  # Group checks each one


def chord(header: Group | Iterable[Signature], callback: Signature) -> Chord:
    return Chord(header, callback)


def parent_results(broker: Broker, message: Message) -> list[Any]:
    """The call's arguments with its parents' results in front, as ``pass_results`` asks.

    Called by the worker when the step starts: every parent has succeeded by then (the
    broker released it), unless a result expired in between (``result_ttl``), which
    raises :class:`DependencyError`.
    """
    infos: list[TaskInfo] = []
    for parent in message.after if message.pass_results == "list" else message.after[:1]:
        info = broker.get(parent)
        if info is None or info.status is not Status.SUCCEEDED:
            state = "gone" if info is None else info.status.value
            raise DependencyError(f"parent task {parent} is {state}: its result cannot be passed on")
        infos.append(info)
    if message.pass_results == "first":
        return [infos[0].result if infos else None, *message.args]
    return [[info.result for info in infos], *message.args]
