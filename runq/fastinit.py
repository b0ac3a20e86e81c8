"""Making frozen dataclasses on a worker's per-task path without their generated ``__init__``.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, ~50 ns a
field: a :class:`~runq.models.Message` (24 fields) took ~2 µs to make, an
:class:`~runq.models.Outcome` or a :class:`~runq.worker.policy.Policy` ~1.3 µs, and a worker
makes several such values for every task it runs (issue 20's "speed does not regress"). The
function :func:`maker` returns fills the instance's ``__dict__`` in two updates instead. The
value is the same in every way that can be observed (its fields, equality, hash, repr,
``dataclasses.replace``/``asdict``), and it stays frozen. For a class of a few fields the
generated ``__init__`` is as fast: use it there.

Only for dataclasses whose ``__init__`` does nothing but assign its fields: no
``__post_init__``, no ``__slots__``, every field in ``__init__`` (checked when the maker is made).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, ParamSpec, TypeVar, cast

P = ParamSpec("P")
T = TypeVar("T")


def maker(cls: Callable[P, T]) -> Callable[P, T]:
    """A function that does ``cls(**fields)`` without ``__init__``, typed as ``cls`` itself, so
    the type checker holds each call to the fields' names and types as it would a constructor's.
    Keywords only. At run time a name that is not a field is not caught: callers pass literal
    keywords, or names checked first (:meth:`runq.models.Message.decode` sends any other payload
    to ``__init__``)."""
    if not isinstance(cls, type) or not is_dataclass(cls) or hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        raise TypeError(
            f"maker() cannot make {getattr(cls, '__name__', cls)}: its __init__ does more than assign fields"
        )
    plain: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    for spec in fields(cls):
        if not spec.init:
            raise TypeError(f"maker() cannot make {cls.__name__}: {spec.name} is not an __init__ field")
        if spec.default is not MISSING:
            plain[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            factories.append((spec.name, spec.default_factory))
    new = object.__new__
    kind = cls

    def make(*args: P.args, **values: P.kwargs) -> T:
        if args:
            raise TypeError(f"{kind.__name__} made without __init__ takes keywords only")
        made: Any = new(kind)
        state = made.__dict__
        state.update(plain)
        for name, factory in factories:  # empty for most classes: no cost measured
            if name not in values:
                state[name] = factory()
        state.update(values)
        return cast(T, made)

    return make
