"""Making frozen dataclasses on a worker's per-task path without their generated ``__init__``.

A frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, ~50 ns a
field: a :class:`~runq.models.Message` (24 fields) took ~1.5 µs to make, an
:class:`~runq.models.Outcome` ~1.3 µs, and a worker makes several such values for every task
it runs (issue 20's "speed does not regress"). :func:`make` fills the instance's ``__dict__``
in one step instead. The value is the same in every way that can be observed (its fields,
equality, hash, repr, ``dataclasses.replace``/``asdict``), and it stays frozen.

Only for dataclasses whose ``__init__`` does nothing but assign its fields: no
``__post_init__``, no ``InitVar``, every field in ``__init__`` (checked once per class).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar, cast

T = TypeVar("T")

_Factories = tuple[tuple[str, Callable[[], Any]], ...]


@functools.cache
def _defaults(cls: type) -> tuple[dict[str, Any], _Factories, frozenset[str]]:
    """The class's plain defaults, its default factories, and the fields without a default."""
    if not is_dataclass(cls) or hasattr(cls, "__post_init__") or hasattr(cls, "__slots__"):
        raise TypeError(f"make() cannot build {cls.__name__}: its __init__ does more than assign fields")
    plain: dict[str, Any] = {}
    factories: list[tuple[str, Callable[[], Any]]] = []
    required: set[str] = set()
    for spec in fields(cls):
        if not spec.init:
            raise TypeError(f"make() cannot build {cls.__name__}: {spec.name} is not an __init__ field")
        if spec.default is not MISSING:
            plain[spec.name] = spec.default
        elif spec.default_factory is not MISSING:
            factories.append((spec.name, spec.default_factory))
        else:
            required.add(spec.name)
    return plain, tuple(factories), frozenset(required)


def make(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls(**values)``, made without ``__init__``. ``values`` must name fields of ``cls`` only,
    and every field that has no default (the callers pass their own literal keys; a key read
    from outside is checked first, as :meth:`runq.models.Message.decode` does)."""
    plain, factories, _ = _defaults(cast(type, cls))
    made = object.__new__(cls)
    state = made.__dict__
    state.update(plain)
    for name, factory in factories:
        if name not in values:
            state[name] = factory()
    state.update(values)
    return made


def required(cls: type) -> frozenset[str]:
    """The fields of ``cls`` that have no default (:func:`make` must be given them)."""
    return _defaults(cls)[2]
