"""Human output for the CLI and the demo: rich tables on a terminal, plain columns in a pipe.

A pipe gets plain, aligned, uncoloured text (one header line, one row per line) so
``grep`` and ``awk`` work; scripts that need structure use ``--json`` instead. rich is
imported only when a terminal asks for it, which keeps ``runq worker`` start-up quick.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from runq.options import visible

if TYPE_CHECKING:
    from rich.console import Console

STATUS_STYLES = {
    "pending": "cyan",
    "scheduled": "blue",
    "waiting": "magenta",
    "running": "yellow",
    "succeeded": "green",
    "failed": "bold red",
    "cancelled": "dim",
}

# Columns a table never cuts on a narrow terminal: the ids other commands need.
WHOLE = ("id", "worker")

_console: Console | None = None


def console() -> Console:
    """One stdout console per process (rich decides colour from the terminal and NO_COLOR)."""
    global _console
    if _console is None:
        from rich.console import Console

        _console = Console(highlight=False)
    return _console


def is_terminal() -> bool:
    return sys.stdout.isatty() and console().is_terminal


def echo_json(data: Any) -> None:
    """``data`` as JSON; what a terminal would obey or UTF-8 cannot hold is written as a JSON escape."""
    sys.stdout.write(visible(json.dumps(data, indent=2, default=str, ensure_ascii=False), keep="\n") + "\n")
    sys.stdout.flush()


def cell(value: Any) -> str:
    """How one value reads in a table: no ``None``, short timestamps, compact JSON, and what a
    terminal would obey (an ESC sequence in a stored name, result or error) escaped."""
    return visible(_cell(value))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if value != int(value) else str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return str(value)


def seconds(value: float | None) -> str:
    """A latency for people: ms below a second, else seconds."""
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def rate(per_second: float) -> str:
    """A throughput that stays readable when it is small (3 tasks in a minute is 0.05/s, not 0.0/s)."""
    return f"{per_second:.1f}/s" if per_second >= 10 or per_second == 0 else f"{per_second:.2f}/s"


def table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    title: str | None = None,
    status_column: str | None = "status",
    footer: Sequence[Any] | None = None,
    whole: Sequence[str] = WHOLE,
) -> None:
    """Print rows under ``columns``; the ``status_column`` is coloured on a terminal.

    The ``whole`` columns hold what other commands take as arguments (a task id for
    ``info``/``retry``/``cancel``): a narrow terminal squeezes the other columns, never these.
    """
    texts = [[cell(value) for value in row] for row in rows]
    foot = [cell(value) for value in footer] if footer is not None else None
    if not is_terminal():
        _plain(columns, texts, title, foot)
        return
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=title, title_justify="left", show_footer=foot is not None, header_style="bold")
    for index, name in enumerate(columns):
        numeric = bool(texts) and all(_numeric(row[index]) for row in texts)
        justify: Literal["left", "right"] = "right" if numeric else "left"
        if name in whole or name == status_column:
            width = max((len(row[index]) for row in texts), default=0)
            grid.add_column(name, footer=foot[index] if foot else "", justify=justify, no_wrap=True,
                            min_width=width, overflow="fold")  # fmt: skip
        else:
            grid.add_column(name, footer=foot[index] if foot else "", justify=justify)
    status_index = columns.index(status_column) if status_column in columns else -1
    for row in texts:
        grid.add_row(
            *(Text(v, style=STATUS_STYLES.get(v, "")) if i == status_index else Text(v) for i, v in enumerate(row))
        )
    console().print(grid)


def pairs(items: Sequence[tuple[str, Any]], title: str | None = None) -> None:
    """A two-column ``name value`` listing (one task, one worker)."""
    if not is_terminal():
        if title:
            print(title)
        width = max((len(name) for name, _ in items), default=0)
        for name, value in items:
            print(f"{name:<{width}}  {cell(value)}")
        return
    from rich.table import Table
    from rich.text import Text

    grid = Table(title=title, title_justify="left", show_header=False, box=None, padding=(0, 2, 0, 0))
    grid.add_column(style="bold")
    grid.add_column()
    for name, value in items:
        text = cell(value)
        grid.add_row(name, Text(text, style=STATUS_STYLES.get(text, "") if name == "status" else ""))
    console().print(grid)


def line(text: str, style: str = "") -> None:
    """One line of prose; coloured on a terminal."""
    if is_terminal():
        from rich.text import Text

        console().print(Text(text, style=style))
    else:
        print(text)


def _numeric(text: str) -> bool:
    return text == "-" or text.replace(".", "", 1).replace("%", "").replace(" ms", "").replace(" s", "").isdigit()


def _plain(columns: Sequence[str], rows: list[list[str]], title: str | None, footer: list[str] | None) -> None:
    every = [list(columns), *rows, *([footer] if footer else [])]
    widths = [max(len(row[i]) for row in every) for i in range(len(columns))]
    if title:
        print(title)
    for row in every:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    sys.stdout.flush()
