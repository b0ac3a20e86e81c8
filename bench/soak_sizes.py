"""The long soak's gauges (``python -m bench.soak --long``): sizes sampled over time, one broker
restart, a flatness verdict and a hand-drawn SVG plot (issue 23 part 4).

A leak shows as growth that does not stop: so every ``--sample-every`` seconds the soak notes
each live worker's resident memory (``VmRSS`` of the worker and of its children, from /proc),
the broker's size (Redis: ``INFO memory`` ``used_memory``; PostgreSQL: heap, index and total
size of every table in the soak's schema) and how many tasks were enqueued and finished.

Finished records are kept ``result_ttl`` (600 s by default, ``runq.models.DEFAULT_RESULT_TTL``),
so a healthy broker grows for about ten minutes and then stays flat: :func:`flatness` compares
the median of the first and the last third of the samples after the warm-up.

The restart: on Redis a graceful ``SHUTDOWN`` of the private, append-only server and a start on
the same port and directory (nothing is lost: the AOF is flushed at shutdown and read back at
start). The PostgreSQL server is shared, so it is not restarted: every backend of the soak's
private database is terminated (``pg_terminate_backend``), which cuts every connection the
workers and the producer hold, as a restart would, without the server going away.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from html import escape
from pathlib import Path
from typing import Any, Protocol

# -- worker memory -----------------------------------------------------------------------------


def rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 when it is gone)."""
    total = 0
    for each in [pid, *descendants(pid)]:
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total


def descendants(pid: int) -> list[int]:
    """Children of every thread of ``pid``, recursively (``/proc/PID/task/TID/children``)."""
    found: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError):
        return found
    for task in tasks:
        try:
            children = [int(child) for child in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
        for child in children:
            found += [child, *descendants(child)]
    return found


# -- the broker's size and its restart ---------------------------------------------------------


class Store(Protocol):
    def size(self) -> dict[str, int]:
        """Named byte counts (and row or key counts) of the broker's store now."""

    def restart(self) -> str:
        """Cut the broker off as a restart does; what was done, in words."""


class RedisStore:
    """A private redis-server (``tests.support.servers.RedisServer``) started with ``--appendonly yes``."""

    def __init__(self, server: Any) -> None:
        import redis

        self.server = server
        self.client: Any = redis.Redis.from_url(server.url, socket_timeout=10)

    def size(self) -> dict[str, int]:
        return {"used_memory": int(self.client.info("memory")["used_memory"]), "keys": int(self.client.dbsize())}

    def restart(self) -> str:
        import redis

        with contextlib.suppress(redis.ConnectionError):
            self.client.shutdown()  # SAVE-less, but the AOF is fsynced before the server exits
        assert self.server.proc is not None
        self.server.proc.wait(120)
        self.server.proc = None
        started = time.monotonic()
        self.server.start(timeout=300)  # answers PONG once the AOF is loaded
        down = time.monotonic() - started
        return f"redis-server SHUTDOWN (appendonly), started again on port {self.server.port}: up {down:.1f} s after"


SIZES = """
SELECT c.relname, pg_relation_size(c.oid), pg_indexes_size(c.oid), pg_total_relation_size(c.oid),
       coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = %s AND c.relkind = 'r'
"""


class PostgresStore:
    """The soak's schema in its private database; the server itself is shared and left running."""

    def __init__(self, url: str) -> None:
        base, _, query = url.partition("?")
        self.dsn = base
        self.schema = query.removeprefix("schema=")
        self.conn: Any = None
        self.lock = threading.Lock()

    def _conn(self) -> Any:
        import psycopg

        if self.conn is None or self.conn.closed:
            self.conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=10)
        return self.conn

    def size(self) -> dict[str, int]:
        with self.lock:
            try:
                rows = self._conn().execute(SIZES, (self.schema,)).fetchall()
            except Exception:
                self.conn = None
                raise
        found = {"heap": 0, "indexes": 0, "total": 0, "live_rows": 0, "dead_rows": 0}
        for name, heap, indexes, total, live, dead in rows:
            found["heap"] += heap
            found["indexes"] += indexes
            found["total"] += total
            found["live_rows"] += live
            found["dead_rows"] += dead
            found[f"total:{name}"] = total
        return found

    def restart(self) -> str:
        with self.lock:
            cut = (
                self._conn()
                .execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
                .fetchone()[0]
            )
        return f"pg_terminate_backend on all {cut} other backends of the private database (the shared server stays up)"


class Vacuumer(threading.Thread):
    """``VACUUM (ANALYZE)`` of every table in the soak's schema every ``every`` seconds, for a
    server whose autovacuum is off (the machine's shared PostgreSQL has ``autovacuum = off``):
    what autovacuum would do with runq's per-table settings (``postgres/schema.sql``: vacuum at
    2 % dead, no cost delay), which a 560 tasks/s churn passes within every naptime (1 min)."""

    def __init__(self, url: str, every: float) -> None:
        super().__init__(name="soak-vacuum", daemon=True)
        base, _, query = url.partition("?")
        self.dsn, self.schema, self.every = base, query.removeprefix("schema="), every
        self.started = time.time()
        self.runs: list[tuple[float, float]] = []  # (seconds in, seconds it took)
        self.errors: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import psycopg

        while not self.halt.wait(self.every):
            at = time.time()
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=10) as conn:
                    tables = conn.execute(
                        "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY tablename", (self.schema,)
                    ).fetchall()
                    for (table,) in tables:
                        conn.execute(f'VACUUM (ANALYZE) "{self.schema}"."{table}"')
            except Exception as error:  # cut by the restart: the next round goes on
                self.errors.append(f"{at - self.started:.0f} {type(error).__name__}: {error}"[:200])
                continue
            self.runs.append((round(at - self.started, 1), round(time.time() - at, 2)))

    def stop(self) -> None:
        self.halt.set()
        self.join()


# -- sampling ----------------------------------------------------------------------------------


class Sampler(threading.Thread):
    """Every ``every`` seconds: worker RSS by pid, the store's size, tasks enqueued and finished."""

    def __init__(
        self,
        every: float,
        workers: Callable[[], Sequence[int]],
        spared: Callable[[], Iterable[int]],
        store: Store,
        progress: Callable[[], tuple[int, int | None]],
    ) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.every, self.workers, self.spared, self.store, self.progress = every, workers, spared, store, progress
        self.started = time.time()
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while True:
            self.samples.append(self.sample())
            if self.halt.wait(self.every):
                return

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.samples.append(self.sample())

    def sample(self) -> dict[str, Any]:
        spared = set(self.spared())
        memory = {pid: rss(pid) for pid in self.workers()}
        others = [value for pid, value in memory.items() if pid not in spared and value]
        sample: dict[str, Any] = {
            "t": round(time.time() - self.started, 1),
            "rss": {str(pid): value for pid, value in memory.items()},
            "rss_spared": sum(memory.get(pid, 0) for pid in spared) or None,
            "rss_others_median": int(statistics.median(others)) if others else None,
        }
        try:
            sample["store"] = self.store.size()
        except Exception as error:  # the broker is down (the restart): note it, go on
            sample["store"], sample["store_error"] = None, f"{type(error).__name__}: {error}"[:200]
        try:
            sample["enqueued"], sample["finished"] = self.progress()
        except Exception:
            sample["enqueued"], sample["finished"] = None, None
        return sample


# -- the verdict -------------------------------------------------------------------------------


def series(samples: list[dict[str, Any]], name: str) -> list[tuple[float, float]]:
    """(t, value) of ``name``: ``rss_spared``, ``rss_others_median`` or ``store.<key>``."""
    points = []
    for sample in samples:
        if name.startswith("store."):
            value = (sample.get("store") or {}).get(name.removeprefix("store."))
        else:
            value = sample.get(name)
        if value is not None:
            points.append((float(sample["t"]), float(value)))
    return points


def flatness(points: list[tuple[float, float]], warm_up: float, end: float, limit: float = 10.0) -> dict[str, Any]:
    """The median of the first third of the points between ``warm_up`` and ``end`` against the
    median of the last third: growth in % (flat when under ``limit`` %), and the peak."""
    window = [value for t, value in points if warm_up <= t <= end]
    if len(window) < 3:
        return {"verdict": "too few samples", "samples": len(window)}
    third = len(window) // 3
    first, last = statistics.median(window[:third]), statistics.median(window[-third:])
    growth = 100.0 * (last - first) / first if first else float("inf")
    return {
        "after_warm_up": first,
        "at_end": last,
        "growth_percent": round(growth, 2),
        "peak": max(window),
        "samples": len(window),
        "verdict": "flat" if abs(growth) < limit else "GROWING" if growth > 0 else "shrinking",
    }


# -- the plot ----------------------------------------------------------------------------------

COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]


def line(x1: float, x2: float, y1: float, y2: float, stroke: str, extra: str = "") -> str:
    return f'<line x1="{x1:.1f}" x2="{x2:.1f}" y1="{y1:.1f}" y2="{y2:.1f}" stroke="{stroke}"{extra}/>'


def plot(
    path: Path,
    title: str,
    samples: list[dict[str, Any]],
    panels: list[tuple[str, list[tuple[str, str]], float, str]],  # heading, [(series, label)], divisor, unit
    kills: list[float],
    restart: float | None,
    warm_up: float,
) -> None:
    """A hand-written SVG: one panel per ``panels`` entry, time in minutes across, a grey tick per
    SIGKILL, a red line at the broker restart, a dotted line at the end of the warm-up."""
    width, left, right, panel_h, gap, top = 900, 70, 170, 170, 50, 40
    end = max((float(sample["t"]) for sample in samples), default=1.0) or 1.0
    plot_w = width - left - right
    height = top + len(panels) * (panel_h + gap)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}"'
        ' font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
    ]

    def x(t: float) -> float:
        return left + plot_w * t / end

    for index, (heading, names, divisor, unit) in enumerate(panels):
        y0 = top + index * (panel_h + gap) + 15
        lines = [(label, [(t, v / divisor) for t, v in series(samples, name)]) for name, label in names]
        values = [v for _, points in lines for _, v in points]
        high = (max(values) if values else 1.0) * 1.1 or 1.0

        def y(v: float, y0: float = y0, high: float = high) -> float:
            return y0 + panel_h - panel_h * v / high

        out.append(f'<text x="{left}" y="{y0 - 5}" font-weight="bold">{escape(heading)} ({escape(unit)})</text>')
        out.append(f'<rect x="{left}" y="{y0}" width="{plot_w}" height="{panel_h}" fill="none" stroke="#999"/>')
        for step in range(5):
            value = high * step / 4
            out.append(f'<text x="{left - 5}" y="{y(value) + 4:.1f}" text-anchor="end">{value:,.1f}</text>')
            out.append(line(left, left + plot_w, y(value), y(value), "#eee"))
        for minute in range(0, int(end // 60) + 1, 5):
            out.append(f'<text x="{x(minute * 60):.1f}" y="{y0 + panel_h + 13}" text-anchor="middle">{minute}</text>')
        for at in kills:
            out.append(line(x(at), x(at), y0 + panel_h - 8, y0 + panel_h, "#666"))
        if restart is not None:
            out.append(line(x(restart), x(restart), y0, y0 + panel_h, "red", ' stroke-width="2"'))
        out.append(line(x(warm_up), x(warm_up), y0, y0 + panel_h, "#999", ' stroke-dasharray="2,3"'))
        for number, (label, points) in enumerate(lines):
            colour = COLOURS[number % len(COLOURS)]
            if points:
                coords = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in points)
                out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            ly = y0 + 12 + 15 * number
            out.append(line(left + plot_w + 10, left + plot_w + 30, ly - 4, ly - 4, colour, ' stroke-width="2"'))
            out.append(f'<text x="{left + plot_w + 35}" y="{ly}">{escape(label)}</text>')
    legend_y = height - 12
    out.append(
        f'<text x="{left}" y="{legend_y}">minutes since the workers started; grey ticks: SIGKILLs; red line: broker'
        " restart; dotted: end of the warm-up (result_ttl + 60 s)</text>"
    )
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")
