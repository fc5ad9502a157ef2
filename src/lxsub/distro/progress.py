"""Progress for long distro operations: bars on a terminal, quiet otherwise.

    progress = Progress.for_terminal()       # rich bars if stderr is a tty
    with progress:
        task = progress.task("Unpacking", total=96, unit="packages")
        task.advance()
        progress.note("Configuring packages inside the distro")

When stderr is not a terminal (scripts, CI logs) nothing is drawn: with
`verbose` set, each step and note is one plain line (`lx --install ... 2>&1
| cat` shows where it is), else scripted runs stay quiet. rich is imported only when a bar is actually drawn; a Python without
it gets the quiet behaviour rather than an error.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Any, Iterator, TextIO


@contextlib.contextmanager
def signals_blocked() -> Iterator[None]:
    """Threads started inside inherit a mask blocking every signal.

    The kernel provider reads SIGCHLD from a signalfd, which works only
    while no thread can take the signal; helper threads (bar refresh, log
    watcher) must therefore never have it unblocked. Ctrl-C still reaches
    the main thread.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_quiet_thread(thread: threading.Thread) -> None:
    """thread.start() with every signal blocked in the new thread."""
    with signals_blocked():
        thread.start()


class Task:
    def __init__(self, owner: "Progress", handle: Any) -> None:
        self.owner = owner
        self.handle = handle

    def advance(self, amount: float = 1) -> None:
        self.owner._advance(self.handle, amount)

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None) -> None:
        self.owner._update(self.handle, completed, total, description)

    def done(self) -> None:
        self.owner._done(self.handle)


class Progress:
    """Quiet progress: records nothing, draws nothing."""

    def __init__(self, stream: TextIO | None = None, verbose: bool = False) -> None:
        self.stream = stream or sys.stderr
        self.verbose = verbose

    @staticmethod
    def for_terminal(stream: TextIO | None = None, verbose: bool = False) -> "Progress":
        stream = stream or sys.stderr
        try:
            tty = stream.isatty()
        except (AttributeError, ValueError):
            tty = False
        if tty:
            try:
                return _RichProgress(stream)
            except ImportError:
                pass
        return Progress(stream, verbose)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def task(self, description: str, total: float | None = None, unit: str = "") -> Task:
        self.note(f"{description}...")
        return Task(self, description)

    def note(self, message: str) -> None:
        if self.verbose:
            print(message, file=self.stream, flush=True)

    def _advance(self, handle: Any, amount: float) -> None:
        pass

    def _update(self, handle: Any, completed: float | None, total: float | None,
                description: str | None) -> None:
        pass

    def _done(self, handle: Any) -> None:
        if handle is not None:
            self.note(f"{handle}: done")


class _RichProgress(Progress):
    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream, verbose=True)
        from rich.console import Console
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn,
                                   Progress as Bars, SpinnerColumn, TextColumn,
                                   TimeElapsedColumn)

        self._mofn = MofNCompleteColumn()
        self._bytes = DownloadColumn()
        columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                   _Amount(self._mofn, self._bytes), TimeElapsedColumn()]
        self.console = Console(file=stream)
        self.bars = Bars(*columns, console=self.console, transient=False)

    def __enter__(self) -> "Progress":
        with signals_blocked():  # rich refreshes from a thread of its own
            self.bars.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bars.stop()

    def task(self, description: str, total: float | None = None, unit: str = "") -> Task:
        handle = self.bars.add_task(description, total=total, unit=unit)
        return Task(self, handle)

    def note(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False)

    def _advance(self, handle: Any, amount: float) -> None:
        self.bars.advance(handle, amount)

    def _update(self, handle: Any, completed: float | None, total: float | None,
                description: str | None) -> None:
        kwargs: dict[str, Any] = {}
        if completed is not None:
            kwargs["completed"] = completed
        if total is not None:
            kwargs["total"] = total
        if description is not None:
            kwargs["description"] = description
        self.bars.update(handle, **kwargs)

    def _done(self, handle: Any) -> None:
        task = self.bars.tasks[[t.id for t in self.bars.tasks].index(handle)]
        if task.total is None:
            self.bars.update(handle, total=task.completed or 1, completed=task.completed or 1)
        else:
            self.bars.update(handle, completed=task.total)


def _Amount(mofn: Any, download: Any) -> Any:
    """A column showing bytes for byte tasks and 'n/m' for counted ones."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Amount(ProgressColumn):
        def render(self, task: Any) -> Any:
            if task.fields.get("unit") == "bytes":
                return download.render(task)
            if task.total is None:
                return Text(f"{int(task.completed)}")
            return mofn.render(task)

    return Amount()


__all__ = ["Progress", "Task", "signals_blocked", "start_quiet_thread"]
