"""Workflows: chain, group, chord, batch, built on one broker feature, ``after`` (SPEC §2, §3, §11).

A workflow is enqueued whole, in one ``enqueue`` call (one per keyed step that later steps
wait for: ``_Plan.enqueue``): later steps are ``waiting`` tasks
whose ``after`` lists the steps they wait for. The broker releases a waiting task when
its last parent succeeds and cancels it (with its own dependents) when one fails or is
cancelled, in the transaction that settles the parent: no coordinator process, no
polling. A step may instead wait in the second mode, ``after_final`` (brokers/rules.py):
released once every parent is final, whatever the outcome, never cancelled by one.
Passing results is the worker's job: a step whose message says ``pass_results`` gets its
parents' results (read when it starts) as its first argument, so the broker never
rewrites a payload.

* ``chain(a, b, c)``: b waits for a and gets a's result first; c likewise after b.
* ``group(members)``: independent tasks, one batch; a :class:`GroupHandle` collects results.
* ``chord(group, callback)``: the callback waits for every member and gets the list of
  their results, in member order; a member that fails cancels it, naming that member.

Any member may be a chain, group or chord itself, to any depth (:class:`_Plan` flattens
the tree). Each part of the tree leaves one task whose result is the part's (a chain's
last step, a chord's callback), except a group, which leaves its members: the step after
a group waits for them all and gets their list (``pass_results="list"``). Where a group
must be *one* value (a member of a group or of a chord's header, or the end of the
workflow whose handle the caller gets), a collector step (:data:`COLLECT`) waits for its
members and ends with their list. It runs no code: the worker settles it when it
claims it (runq/worker/gate.py), so nesting needs nothing new from any broker.

* ``batch(members, on_complete=, on_success=, on_failure=)``: the members run independently;
  the callbacks each run once, on what became of them all. The design, in four tasks of
  the same one ``enqueue``:

  - a summary step (:data:`BATCH`, on the first member's queue, settled by the worker when it
    claims it, like a collector) waits for every member in the ``after_final`` mode, so a
    member that fails or is cancelled releases it rather than cancelling it. It ends with the
    summary, ``{"succeeded": [ids], "failed": [ids], "cancelled": [ids]}``, read from the
    members' records when it runs. Its id is the batch's (:class:`BatchHandle`).
  - ``on_complete`` is a chain step after it: it gets the summary first.
  - ``on_success`` is a chord callback over the members: it gets their results in member
    order, and the broker cancels it (``DependencyFailed``, naming the member) as soon as one
    does not succeed.
  - ``on_failure`` is a chain step after the summary step too, and gets the summary; when
    every member succeeded, the summary step cancels it before it ends (its one argument is
    on_failure's id), so it never runs. That cancel is the one thing the broker does not
    decide, and it is repeatable: a summary step run twice (its worker died) cancels nothing
    more, and on_failure cannot have started, since it waits for the summary step.

  Each callback is released by the settle of its last parent, in the broker's transaction
  (on Redis, by the same repeatable second call as any step on another queue): it runs
  once, whatever the members' queues. A batch may be a member of a chain, group or chord:
  it is one step whose result is its summary. Its members start after the step before it
  (and get its result, as a group's do); a batch never fails, so the step after it always
  runs, on the summary (when the step before it failed, every member is under
  ``"cancelled"``). Its members must be signatures, and there must be at least one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, cast

from runq.handles import BatchHandle, GroupHandle, Handle, summarise
from runq.models import WORKFLOW_RESULT_TTL, Message, Status, TaskInfo, queue_of
from runq.tasks import Options, Signature

if TYPE_CHECKING:
    from runq.brokers import Broker
    from runq.tasks import Producer

COLLECT = "runq.collect"
"""A collector step's task name. Its one argument says whether it keeps its parents' results
(a nested group's list) or only waits for them (an empty group: ``[]`` after the step before)."""

BATCH = "runq.batch"
"""A batch's summary step's task name. Its one argument is the id of the batch's on_failure
callback (or ``None``), which it cancels when every member succeeded."""
STEPS = (COLLECT, BATCH)
"""runq's own steps, which every worker settles without a task of that name."""

PassResults: TypeAlias = Literal["first", "list"]


class DependencyError(LookupError):
    """A step's parents cannot give it their results (gone, or not succeeded)."""


def _app_of(members: Iterable[object]) -> Producer | None:
    """The App of a workflow's members (the first bound one; ``None`` for, say, an empty group,
    which a larger workflow may still hold); ``TypeError`` for a member that is not a
    signature or a workflow, so a mistake fails where the workflow is written."""
    found: Producer | None = None
    for member in members:
        if not isinstance(member, _WORKFLOWS):
            raise TypeError(
                f"workflows take signatures (task.s(...)) or chain/group/chord/batch, got {type(member).__name__}"
            )
        found = found or member.app
    return found


def _plan(app: Producer | None) -> _Plan:
    if app is None:
        raise RuntimeError("a workflow needs at least one signature bound to an App (task.s(...)) to enqueue")
    return _Plan(app)


def _step(
    app: Producer,
    signature: Signature,
    leading: int = 0,
    parents: tuple[str, ...] = (),
    pass_results: PassResults | None = None,
    final: bool = False,
) -> Message:
    """One step's message, waiting on ``parents`` (before its own ``after``) and taking their
    results (``pass_results``; ``final``: the ``after_final`` mode, a batch's summary step).
    The App builds it whole, so its checks and middleware see the step as it is stored
    (tracing links the step to its parents' producer spans).
    ``leading``: how many results come in front of its arguments (checked against its signature)."""
    opts = signature.opts
    if parents:
        own = opts.after or ()
        opts = dataclasses.replace(opts, after=(*parents, *(p for p in own if p not in parents)))
    return app.message(
        signature.name,
        signature.args,
        signature.kwargs,
        opts,
        leading=leading,
        pass_results=pass_results,
        after_final=final,
    )


class Chain:
    """``chain(a, b, c)``: run in order, each member's result the next one's first argument."""

    def __init__(self, *members: Workflow) -> None:
        if not members:
            raise ValueError("chain() needs at least one signature")
        self.app = _app_of(members)
        self.members = members

    def delay(self) -> Handle[Any]:
        """Enqueue every step at once (one broker call); the handle of the last step (of a
        collector step, when the chain ends in a group: its result is the group's list).

        A step that fails (after its retries) or is cancelled cancels the steps after it,
        so ``result()`` on this handle raises ``TaskCancelled`` naming the failed step.
        """
        plan = _plan(self.app)
        return Handle(plan.app, plan.enqueue(plan.one(plan.add(self, None)))[0])


class Group:
    """``group(members)``: run in parallel; results in member order."""

    def __init__(self, members: Iterable[Workflow]) -> None:
        self.members = tuple(members)
        self.app = _app_of(self.members)

    def delay(self) -> GroupHandle:
        """One handle per member: a nested group's is a collector step's, whose result is its list."""
        plan = _plan(self.app)
        return GroupHandle(plan.app, [Handle(plan.app, task_id) for task_id in plan.enqueue(plan.add(self, None))])


class Chord:
    """``chord(header, callback)``: the callback runs once, on the list of every member's result."""

    def __init__(self, header: Group | Iterable[Workflow], callback: Workflow) -> None:
        self.header = header if isinstance(header, Group) else Group(header)
        self.callback = callback
        self.app = _app_of([callback, *self.header.members])

    def delay(self) -> Handle[Any]:
        """Enqueue the members and the callback at once; the callback's handle.

        A member that fails (after its retries) or is cancelled cancels the callback,
        whose error names that member.
        """
        plan = _plan(self.app)
        return Handle(plan.app, plan.enqueue(plan.one(plan.add(self, None)))[0])


class Batch:
    """``batch(members, on_complete=, on_success=, on_failure=)``: callbacks on what became of
    every member, each run once (see the module's docstring for how)."""

    def __init__(
        self,
        members: Iterable[Signature],
        on_complete: Signature | None = None,
        on_success: Signature | None = None,
        on_failure: Signature | None = None,
    ) -> None:
        self.members = tuple(members)
        for member in self.members:
            if not isinstance(member, Signature):
                raise TypeError(f"batch members are signatures (task.s(...)), got {type(member).__name__}")
        if not self.members:
            raise ValueError("batch() needs at least one signature")
        self.on_complete, self.on_success, self.on_failure = on_complete, on_success, on_failure
        for name, callback in (("on_complete", on_complete), ("on_success", on_success), ("on_failure", on_failure)):
            if callback is not None and not isinstance(callback, Signature):
                raise TypeError(f"{name} takes a signature (task.s(...)), got {type(callback).__name__}")
        self.app = _app_of([*self.members, *(c for c in (on_complete, on_success, on_failure) if c is not None)])

    def delay(self) -> BatchHandle:
        """Enqueue the members, the summary step and the callbacks at once (one broker call).

        Once every member is final, ``on_complete`` runs on the summary ``{"succeeded": [ids],
        "failed": [ids], "cancelled": [ids]}``; ``on_success`` on the members' results, in member
        order, if every one succeeded; ``on_failure`` on the summary if any did not.
        """
        plan = _plan(self.app)
        steps = plan.batch(self, None)
        plan.enqueue(_Tail(()))  # every id the broker gave is in plan.given

        def handle(task_id: str | None) -> Handle[Any] | None:
            return None if task_id is None else Handle(plan.app, plan.given[task_id])

        return BatchHandle(
            plan.app,
            plan.given[steps.summary],
            [Handle(plan.app, plan.given[task_id]) for task_id in steps.members],
            handle(steps.on_complete),
            handle(steps.on_success),
            handle(steps.on_failure),
        )


Workflow: TypeAlias = Signature | Chain | Group | Chord | Batch
"""What a chain, group or chord takes as a member: a signature, or a workflow itself."""

_WORKFLOWS = (Signature, Chain, Group, Chord, Batch)


def chain(*members: Workflow) -> Chain:
    return Chain(*members)


def group(*members: Workflow | Iterable[Workflow]) -> Group:
    """``group(a, b)`` or ``group(sig for ...)``; a member may be a workflow itself."""
    if len(members) == 1 and not isinstance(members[0], _WORKFLOWS):
        return Group(members[0])
    return Group(cast("tuple[Workflow, ...]", members))  # Group checks each one


def chord(header: Group | Iterable[Workflow], callback: Workflow) -> Chord:
    return Chord(header, callback)


def batch(
    *members: Signature | Iterable[Signature],
    on_complete: Signature | None = None,
    on_success: Signature | None = None,
    on_failure: Signature | None = None,
) -> Batch:
    """``batch([a, b], on_complete=report.s())`` or ``batch(a, b, ...)``: ``TypeError`` for a
    member or callback that is not a signature, ``ValueError`` for no member at all."""
    if len(members) == 1 and isinstance(members[0], Iterable) and not isinstance(members[0], _WORKFLOWS):
        listed: Iterable[Signature] = members[0]
    else:
        listed = cast("tuple[Signature, ...]", members)  # Batch checks each one
    return Batch(listed, on_complete=on_complete, on_success=on_success, on_failure=on_failure)


@dataclass(frozen=True)
class _BatchSteps:
    """The planned ids of a batch's summary step, members and callbacks."""

    summary: str
    members: tuple[str, ...]
    on_complete: str | None
    on_success: str | None
    on_failure: str | None


@dataclass(frozen=True)
class _Tail:
    """What a planned workflow leaves for the step after it: the one task whose result is the
    workflow's, or (``many``) a group's member tasks, whose results the next step gets as a list."""

    ids: tuple[str, ...]
    many: bool = False


class _Plan:
    """A workflow tree as messages, each after the ones it waits for: one ``enqueue`` call.

    ``add(node, before)`` plans ``node`` so that its first steps wait for ``before`` (the
    tail of what ran before it) and get its result (``"first"``) or list (``"list"``).
    """

    def __init__(self, app: Producer) -> None:
        self.app = app
        self.messages: list[Message] = []
        self.given: dict[str, str] = {}  # planned id -> the id the broker gave (enqueue)
        self._priority: dict[str, int] = {}

    def add(self, node: Workflow, before: _Tail | None) -> _Tail:
        if isinstance(node, Signature):
            if before is None:
                return self._add(_step(self.app, node))
            return self._add(_step(self.app, node, 1, before.ids, _passes(before)))
        if isinstance(node, Chain):
            tail = self.add(node.members[0], before)
            for member in node.members[1:]:
                tail = self.add(member, tail)
            return tail
        if isinstance(node, Group):
            return self._group(node.members, before)
        if isinstance(node, Batch):
            return _Tail((self.batch(node, before).summary,))
        return self.add(node.callback, self._group(node.header.members, before))

    def batch(self, node: Batch, before: _Tail | None) -> _BatchSteps:
        """The members (after ``before``), the summary step waiting for them in the ``after_final``
        mode, and the callbacks: on_complete and on_failure after the summary step, on_success
        after the members. The summary step's argument becomes on_failure's id once it has one."""
        members = tuple(self.add(member, before).ids[0] for member in node.members)
        opts = Options(queue=queue_of(members[0]), priority=self._priority[members[0]])
        at = len(self.messages)
        summary = _step(self.app, Signature(BATCH, (None,), {}, opts), 0, members, "list", final=True)
        self._add(summary)
        after_summary = _Tail((summary.id,))
        on_complete = self._callback(node.on_complete, after_summary)
        on_success = self._callback(node.on_success, _Tail(members, many=True))
        on_failure = self._callback(node.on_failure, after_summary)
        if on_failure is not None:
            self.messages[at] = dataclasses.replace(summary, args=[on_failure])
        return _BatchSteps(summary.id, members, on_complete, on_success, on_failure)

    def _callback(self, callback: Signature | None, before: _Tail) -> str | None:
        return None if callback is None else self.add(callback, before).ids[0]

    def one(self, tail: _Tail) -> _Tail:
        """The tail as one task: a group's results gathered by a collector step."""
        return self._collect(tail.ids, keep=True) if tail.many else tail

    def enqueue(self, tail: _Tail) -> list[str]:
        """Enqueue every planned message; the ids of ``tail`` as the broker gave them.

        An idempotency key may answer with an earlier task's id, and the steps after a keyed
        step must then wait for that task, not for the planned one, which never exists. Their
        ``after`` is in the (signed) payload, so the broker cannot repoint it: the plan goes
        in parts, each ending with a keyed step that a later step waits for, and each later
        part waits for the ids the broker gave. Without such a step it is one call, all or
        nothing; with them, each part is."""
        self.given = {}
        for part in _parts(self.kept_for_later_steps()):
            sent = [_repointed(message, self.given) for message in part]
            ids = self.app.broker.enqueue(sent, self.app.settings.key_ttl)
            self.given.update(zip((message.id for message in part), ids, strict=True))
        return [self.given[task_id] for task_id in tail.ids]

    def kept_for_later_steps(self) -> list[Message]:
        """The messages, each step whose result (or end) a later step reads kept at least
        :data:`~runq.models.WORKFLOW_RESULT_TTL` unless its own ``result_ttl`` was chosen.

        A later step reads its parents' records when it starts, which a backlog can put long
        after they ended: with the short default ``result_ttl`` a chord's first members would
        be gone before its callback starts. A step left at the App's default is kept a day, as
        every step was before that default became ten minutes; one given a ``result_ttl`` of its
        own (by its task or its call) keeps it.
        """
        read = {parent for m in self.messages if m.pass_results or m.after_final for parent in m.after}
        default = self.app.settings.result_ttl
        return [
            dataclasses.replace(m, result_ttl=max(default, WORKFLOW_RESULT_TTL))
            if m.id in read and m.result_ttl == default
            else m
            for m in self.messages
        ]

    def _group(self, members: tuple[Workflow, ...], before: _Tail | None) -> _Tail:
        if not members and before is not None and before.ids:
            return self._collect(before.ids, keep=False)  # an empty list, once the step before ran
        return _Tail(tuple(self.one(self.add(member, before)).ids[0] for member in members), many=True)

    def _collect(self, parents: tuple[str, ...], keep: bool) -> _Tail:
        """A collector step: on the queue and at the priority of the step it follows (without
        one, of the workflow's first step), so the workers that ran that step settle it."""
        follows = parents[0] if parents else self.messages[0].id if self.messages else None
        opts = Options() if follows is None else Options(queue=queue_of(follows), priority=self._priority[follows])
        return self._add(_step(self.app, Signature(COLLECT, (keep,), {}, opts), 0, parents, "list"))

    def _add(self, message: Message) -> _Tail:
        self.messages.append(message)
        self._priority[message.id] = message.priority
        return _Tail((message.id,))


def _passes(before: _Tail) -> PassResults:
    return "list" if before.many else "first"


def _parts(messages: list[Message]) -> list[list[Message]]:
    """``messages`` cut after each keyed step that a later step waits for (see ``_Plan.enqueue``)."""
    awaited = {parent for message in messages for parent in message.after}
    parts: list[list[Message]] = [[]]
    for message in messages:
        parts[-1].append(message)
        if message.key is not None and message.id in awaited:
            parts.append([])
    return [part for part in parts if part]


def _repointed(message: Message, given: dict[str, str]) -> Message:
    """``message`` waiting for the tasks the broker gave in place of its planned parents.
    Duplicates stay: a group of two steps with one key passes that task's result twice."""
    after = tuple(given.get(parent, parent) for parent in message.after)
    return message if after == message.after else dataclasses.replace(message, after=after)


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


def collected(broker: Broker, message: Message) -> Any:
    """A collector step's result: its parents' results, or ``[]`` when it only waited for them.
    Raises :class:`DependencyError` as :func:`parent_results` does."""
    results, *args = parent_results(broker, message)
    return results if not args or args[0] is not False else []


def batch_summary(broker: Broker, message: Message) -> dict[str, list[str]]:
    """A batch's summary step's result: its members' ids by how they ended (``summarise``).

    Every member is final by then (the ``after_final`` mode released the step); one that is
    gone (purged, or past its ``result_ttl``) or not final (put back by ``retry``) raises
    :class:`DependencyError`: how it ended is not known. When every member succeeded, the
    batch's on_failure callback (the step's argument) is cancelled first: it waits for this
    step, so it has not started, and cancelling it again changes nothing.
    """
    statuses = []
    for member in message.after:
        info = broker.get(member)
        if info is None or not info.status.final:
            state = "gone" if info is None else info.status.value
            raise DependencyError(f"batch member {member} is {state}: how it ended is not known")
        statuses.append((member, info.status))
    summary = summarise(statuses)
    on_failure = message.args[0] if message.args else None
    if isinstance(on_failure, str) and len(summary["succeeded"]) == len(statuses):
        broker.cancel(on_failure)
    return summary
