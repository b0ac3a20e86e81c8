"""One frozen settings object: explicit arguments, else ``RUNQ_*`` variables, else defaults.

Reading the environment in exactly one place keeps every other module free of
``os.environ`` and makes a worker's effective configuration easy to print.
Each field ``name`` is read from ``RUNQ_<NAME>`` (``RUNQ_RESULT_TTL``…); the CLI's
flags arrive as ``overrides`` and win. The README's configuration table lists them
all with their defaults (a test keeps the two in step).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from runq.models import DEFAULT_RESULT_TTL
from runq.options import check_queue, check_seconds, parse_queues
from runq.signing import check_keys

POOLS = ("process", "thread", "async")
LOG_FORMATS = ("text", "json")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MAX_SETTLE_BATCH = 10_000

DEFAULT_URL = "sqlite:///runq.db"  # the embedded default: a file in the current directory


@dataclass(frozen=True)
class Settings:
    url: str = DEFAULT_URL
    queues: tuple[str, ...] = ("default",)
    concurrency: int = 0  # 0: the pool's own default (CPU count for process, 8 for thread, 100 for async)
    pool: str = "process"
    lease: float = 30.0
    grace: float = 30.0
    result_ttl: float = DEFAULT_RESULT_TTL  # runq/models.py: why ten minutes
    key_ttl: float = 86400.0
    max_payload: int = 1024 * 1024
    connect_timeout: float = 5.0
    log_level: str = "INFO"
    log_format: str = "text"
    # HMAC keys for signed messages (runq/signing.py): the first signs, all verify. Never shown.
    signing_keys: tuple[str, ...] = field(default=(), repr=False)
    # Process pool: replace a child after the task during which it ran this many tasks, or its
    # peak memory reached this many MiB (0: no limit). See runq/worker/pools/processes.py.
    max_tasks_per_child: int = 0
    max_memory_per_child: int = 0
    # What a SIGKILLed worker can run twice (docs/reliability.md): it never has more than
    # concurrency + settle_batch runs started and not settled (0: a slot starts its next task only
    # once its last outcome is settled); the settler waits up to settle_interval seconds for
    # settle_batch outcomes to gather before it settles fewer.
    settle_batch: int = 256
    settle_interval: float = 0.0

    def __post_init__(self) -> None:
        # Flags and variables are case-insensitive (--log-level debug, RUNQ_POOL=Thread).
        object.__setattr__(self, "log_level", str(self.log_level).upper())
        object.__setattr__(self, "pool", str(self.pool).lower())
        object.__setattr__(self, "log_format", str(self.log_format).lower())
        object.__setattr__(self, "signing_keys", check_keys(self.signing_keys))
        if self.pool not in POOLS:
            raise ValueError(f"pool must be one of {', '.join(POOLS)}, got {self.pool!r}")
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"log format must be text or json, got {self.log_format!r}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}")
        for name in ("concurrency", "max_tasks_per_child", "max_memory_per_child"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lease", "result_ttl", "key_ttl", "connect_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.grace < 0:
            raise ValueError(f"grace must be >= 0, got {self.grace}")
        if not 0 <= self.settle_batch <= MAX_SETTLE_BATCH:
            raise ValueError(f"settle_batch must be between 0 and {MAX_SETTLE_BATCH}, got {self.settle_batch}")
        object.__setattr__(self, "settle_interval", check_seconds("settle_interval", self.settle_interval))
        if self.max_payload <= 0:
            raise ValueError(f"max_payload must be > 0, got {self.max_payload}")
        if not self.queues:
            raise ValueError("at least one queue is needed")
        for queue in self.queues:
            check_queue(queue)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults ← ``RUNQ_<FIELD>`` variables ← ``overrides`` (``None`` values are ignored)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            raw = environ.get(f"RUNQ_{spec.name.upper()}")
            if raw is not None and raw != "":
                values[spec.name] = _parse(spec.name, raw)
        values.update({name: value for name, value in overrides.items() if value is not None})
        if isinstance(values.get("queues"), str):
            values["queues"] = _parse("queues", values["queues"])
        return cls(**values)

    def with_(self, **changes: Any) -> Settings:
        """A copy with ``changes`` applied (``None`` values are ignored, as for flags not given)."""
        return replace(self, **{name: value for name, value in changes.items() if value is not None})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``queues`` becomes a list): how a worker hands its settings to its
        process-pool children."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Settings:
        values = dict(data)
        values["queues"] = tuple(values.get("queues", ("default",)))
        values["signing_keys"] = tuple(values.get("signing_keys", ()))
        return cls(**values)

    @property
    def recycles(self) -> bool:
        """Whether process-pool children are replaced at a limit."""
        return bool(self.max_tasks_per_child or self.max_memory_per_child)

    @property
    def effective_concurrency(self) -> int:
        if self.concurrency:
            return self.concurrency
        return {"process": os.cpu_count() or 2, "thread": 8, "async": 100}[self.pool]


def _parse(name: str, raw: str) -> Any:
    kind = {spec.name: spec.type for spec in fields(Settings)}[name]
    if name == "queues":
        try:
            return parse_queues(raw)
        except ValueError as exc:
            raise ValueError(f"RUNQ_QUEUES={raw!r}: {exc}") from None
    if name == "signing_keys":  # comma-separated; an error names the variable, never its value
        try:
            return check_keys([key.strip() for key in raw.split(",") if key.strip()])
        except ValueError as exc:
            raise ValueError(f"RUNQ_SIGNING_KEYS: {exc}") from None
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        raise ValueError(f"RUNQ_{name.upper()}={raw!r} is not a valid {kind}") from None
    return raw
