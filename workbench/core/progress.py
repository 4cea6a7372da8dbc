"""Progress for long work: one bar style (rich, on stderr, shown on a terminal and quiet when
piped) as a context manager yielding an `advance(n)`, and one-time costs said out loud."""
from __future__ import annotations

import contextlib
import sys


def on_terminal() -> bool:
    """Whether stderr is a terminal: bars are drawn there, never into a pipe or a log file."""
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True):
    """Example:
        >>> with progress_bar("scoring", 10, enabled=False) as advance:
        ...     advance(10)
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), disable=not enabled, transient=False, console=Console(stderr=True))
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.update(task, advance=n)


def notice(text: str) -> None:
    """One line on stderr about work the user is waiting for (stdout stays the command's result)."""
    print(text, file=sys.stderr, flush=True)


@contextlib.contextmanager
def one_time_cost(what: str, where, total: int):
    """Work done once and cached: says what and where before it starts (a silent half-minute
    looks like a hang), with a bar on a terminal. Yields `advance(n)`.

    Example:
        >>> with one_time_cost("collecting statistics", "/tmp/cache", 3) as advance:  # doctest: +SKIP
        ...     advance(3)
    """
    notice(f"{what} once (cached in {where})")
    with progress_bar(what, total, enabled=on_terminal()) as advance:
        yield advance
