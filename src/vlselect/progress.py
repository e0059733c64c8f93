"""Progress of long work, one helper for every loop (training, pre-training, features, world making, evaluation,
k-means, reading and checking pools).

On a terminal it is a rich bar on stderr. When stderr is not a terminal (a log file, CI, ``nohup``), a rich bar
prints nothing until the end, so this helper writes plain lines instead: one every ``interval`` seconds (default
30; environment ``VLSELECT_PROGRESS_EVERY``) and, when any was written, one at the end, each with the count, the
rate and the time left (work shorter than ``interval`` stays silent)::

    train loss 2.1034: 120/400 steps (30%) · 3.9 steps/s · 0:01:12 left

The object mimics the part of :class:`rich.progress.Progress` the loops use (``add_task``, ``update``,
``advance``, context manager), so a loop switches by changing one constructor.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, TextIO


def _clock_text(seconds: float) -> str:
    s = int(round(max(seconds, 0.0)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Task:
    __slots__ = ("description", "total", "completed", "t0", "c0", "last_log", "logged_at")

    def __init__(self, description: str, total: float | None, completed: float, now: float):
        self.description, self.total, self.completed = description, total, completed
        self.t0, self.c0, self.last_log, self.logged_at = now, completed, now, None


class ProgressBar:
    """A progress display for one or more counted tasks (see the module docstring).

    Parameters
    ----------
    label:
        What the work is ("train", "activations", "pictures"); starts every line.
    enabled:
        ``False`` shows nothing (e.g. ``--quiet``, or ranks other than 0).
    unit:
        What is counted ("rows", "steps", "samples").
    transient:
        On a terminal, remove the bar when done (log lines are never removed).
    interval:
        Seconds between log lines when not on a terminal; default ``VLSELECT_PROGRESS_EVERY`` or 30.
    stream:
        Where to write (default ``sys.stderr``); a terminal gets the rich bar.
    clock:
        Time source (tests pass a fake one).
    """

    def __init__(self, label: str, *, enabled: bool = True, unit: str = "rows", transient: bool = False,
                 interval: float | None = None, stream: TextIO | None = None,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        self.label, self.enabled, self.unit, self.transient = label, enabled, unit, transient
        self.interval = float(os.environ.get("VLSELECT_PROGRESS_EVERY", "30")) if interval is None else interval
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.live = enabled and is_tty
        self.log = enabled and not is_tty
        self._rich = None
        self._tasks: list[_Task] = []

    # ----------------------------------------------------------------------------------------- context manager
    def __enter__(self) -> "ProgressBar":
        if self.live:
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)  # fmt: skip

            self._rich = Progress(TextColumn(f"[bold]{self.label}[/] {{task.description}}"), BarColumn(),
                                  MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                                  TimeRemainingColumn(), console=Console(file=self.stream),
                                  transient=self.transient)  # fmt: skip
            self._rich.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop(finished=exc[0] is None)

    def stop(self, finished: bool = True) -> None:
        """End the display; log mode writes the last state of each task that has logged a line before."""
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        if self.log and finished:
            for t in self._tasks:
                if t.logged_at is not None and t.logged_at != t.completed:
                    self._write(t)

    # ----------------------------------------------------------------------------------------------- counting
    def add_task(self, description: str = "", total: float | None = None, completed: float = 0,
                 **_fields: Any) -> int:  # fmt: skip
        """Start counting; returns the task id for :meth:`update` / :meth:`advance`."""
        t = _Task(description, total, completed, self.clock())
        self._tasks.append(t)
        if self._rich is not None:
            self._rich.add_task(description, total=total, completed=completed, rate="")
        return len(self._tasks) - 1

    def update(self, task: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, description: str | None = None, **_fields: Any) -> None:  # fmt: skip
        """Move task ``task`` on (``advance``) or to ``completed``; change its ``description`` or ``total``."""
        t = self._tasks[task]
        if advance is not None:
            t.completed += advance
        if completed is not None:
            t.completed = completed
        if total is not None:
            t.total = total
        if description is not None:
            t.description = description
        if self._rich is not None:
            rate = self.rate(task)
            self._rich.update(task, completed=t.completed, total=t.total, description=t.description,
                              rate=f"{rate:.1f} {self.unit}/s" if rate >= 0.5 else
                              (f"{1 / rate:.1f} s/{self.unit.rstrip('s')}" if rate else ""))  # fmt: skip
        if self.log and self.clock() - t.last_log >= self.interval:
            self._write(t)

    def advance(self, task: int, k: float = 1) -> None:
        """``update(task, advance=k)``."""
        self.update(task, advance=k)

    def rate(self, task: int) -> float:
        """Units per second since the task was added (0 before any time has passed)."""
        t = self._tasks[task]
        dt = self.clock() - t.t0
        return (t.completed - t.c0) / dt if dt > 0 else 0.0

    def line(self, task: int) -> str:
        """The plain progress line of task ``task``."""
        t = self._tasks[task]
        head = f"{self.label} {t.description}".rstrip()
        count = f"{t.completed:,.0f}" + (f"/{t.total:,.0f}" if t.total else "") + f" {self.unit}"
        if t.total:
            count += f" ({100 * t.completed / t.total:.0f}%)"
        parts = [f"{head}: {count}"]
        rate = self.rate(task)
        if rate > 0:  # slow work (a training step of half a minute) reads better as seconds per unit
            parts.append(f"{rate:.1f} {self.unit}/s" if rate >= 0.5 else f"{1 / rate:.1f} s/{self.unit.rstrip('s')}")
            if t.total and t.completed < t.total:
                parts.append(f"{_clock_text((t.total - t.completed) / rate)} left")
        elif t.completed:
            parts.append(f"{_clock_text(self.clock() - t.t0)} elapsed")
        return " · ".join(parts)

    def _write(self, t: _Task) -> None:
        self.stream.write(self.line(self._tasks.index(t)) + "\n")
        self.stream.flush()
        t.last_log, t.logged_at = self.clock(), t.completed


def progress_bar(label: str, **kwargs: Any) -> ProgressBar:
    """``ProgressBar(label, **kwargs)``: the one progress display of vlselect (see :class:`ProgressBar`)."""
    return ProgressBar(label, **kwargs)
