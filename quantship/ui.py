"""Terminal output: progress for long work and tables for results, on rich.

Progress goes to stderr so that stdout carries only results; with ``quiet`` nothing
but errors is printed. Library callers get no output unless they pass a ``UI``.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


class UI:
    """Where a run reports: progress bars, notes and tables."""

    def __init__(self, quiet: bool = False, out: Any = None, err: Any = None) -> None:
        self.quiet = quiet
        out = out or sys.stdout
        err = err or sys.stderr
        # Off a terminal (CI logs, pipes) rich assumes 80 columns and wraps tables.
        width = None if out.isatty() else 140
        self.out = Console(file=out, highlight=False, soft_wrap=True, width=width)
        self.err = Console(
            file=err, highlight=False, soft_wrap=True, width=None if err.isatty() else 140
        )

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A progress bar; yields ``advance(n)``."""
        if self.quiet:
            yield lambda n: None
            return
        bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.err,
            transient=False,
        )
        with bar:
            task = bar.add_task(description, total=total)
            yield lambda n: bar.advance(task, n)

    def note(self, text: str) -> None:
        if not self.quiet:
            self.err.print(text, markup=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.quiet:
            return
        t = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        self.out.print(t)


SILENT = UI(quiet=True)
