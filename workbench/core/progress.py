"""Progress for long work: one bar style (rich, on stderr, shown on a terminal and quiet when
piped) as a context manager yielding an `advance(n)`, and one-time costs said out loud.

Another front end (the browser UI) listens with `reporting(sink)`: every bar and every `step`
of the work on that thread is also handed to `sink` as a `Progress`, which the front end draws
as it likes. The sink is per thread, so two sessions working at once never see each other's.
"""
from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass, field

_local = threading.local()


@dataclass
class Progress:
    """Where the work stands: the current step's text, and its count when it has one. Written by
    the working thread, read by another (each field is replaced whole, never half-written)."""
    step: str = ""
    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.monotonic)
    step_started: float = field(default_factory=time.monotonic)

    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None

    def remaining_s(self) -> float | None:
        """Seconds left in this step, from its rate so far; None until a tenth of it is done."""
        f = self.fraction()
        if not f or f < 0.1:
            return None
        spent = time.monotonic() - self.step_started
        return spent * (1 - f) / f

    def describe(self) -> str:
        text = self.step or "working"
        if self.total:
            text += f" {self.done}/{self.total}"
        left = self.remaining_s()
        text += f" · {time.monotonic() - self.started:.0f} s"
        return text + (f", about {left:.0f} s left in this step" if left is not None else "")


@contextlib.contextmanager
def reporting(sink: Progress):
    """Hand this thread's steps and bars to `sink` while the block runs."""
    before = getattr(_local, "sink", None)
    _local.sink = sink
    try:
        yield sink
    finally:
        _local.sink = before


def step(text: str, total: int = 0) -> None:
    """Say which step the work is in (to a listening sink; nothing otherwise)."""
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink.step, sink.done, sink.total, sink.step_started = text, 0, total, time.monotonic()


def _advance(n: int) -> None:
    sink = getattr(_local, "sink", None)
    if sink is not None:
        sink.done += n


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
    step(description, total)

    def advance(n: int = 1) -> None:
        bar.update(task, advance=n)
        _advance(n)
    with bar:
        task = bar.add_task(description, total=total)
        yield advance


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
