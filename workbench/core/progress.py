"""One progress bar style for long work (rich), as a context manager yielding an `advance(n)`."""
from __future__ import annotations

import contextlib


@contextlib.contextmanager
def progress_bar(description: str, total: int, *, enabled: bool = True):
    """Example:
        >>> with progress_bar("scoring", 10, enabled=False) as advance:
        ...     advance(10)
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), disable=not enabled, transient=False)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.update(task, advance=n)
