"""Terminal output: progress for long work and tables for results, on rich where it is
installed, and as plain text where it is not (a runtime-only install on a target
machine has numpy and one runtime).

Progress goes to stderr so that stdout carries only results; with ``quiet`` nothing
but errors is printed. Library callers get no output unless they pass a ``UI``, except
in a Jupyter notebook, where the API shows progress and tables unless given ``SILENT``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

HAVE_RICH = importlib.util.find_spec("rich") is not None


class UI:
    """Where a run reports: progress bars, notes and tables."""

    def __init__(self, quiet: bool = False, out: Any = None, err: Any = None) -> None:
        self.quiet = quiet
        self.plain = not HAVE_RICH
        self._out = out or sys.stdout
        self._err = err or sys.stderr
        if self.plain:
            return
        from rich.console import Console

        # Off a terminal (CI logs, pipes) rich assumes 80 columns and wraps tables.
        width = None if self._out.isatty() else 140
        self.out = Console(file=self._out, highlight=False, soft_wrap=True, width=width)
        self.err = Console(
            file=self._err, highlight=False, soft_wrap=True,
            width=None if self._err.isatty() else 140,
        )  # fmt: skip

    @contextlib.contextmanager
    def progress(self, description: str, total: int | None) -> Iterator[Callable[[int], None]]:
        """A progress bar; yields ``advance(n)``."""
        if self.quiet:
            yield lambda n: None
            return
        if self.plain:
            with _plain_progress(self._err, description, total) as advance:
                yield advance
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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
        if self.quiet:
            return
        if self.plain:
            print(text, file=self._err, flush=True)
        else:
            self.err.print(text, markup=False)

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        if self.quiet:
            return
        if self.plain:
            print(plain_table(title, columns, rows), file=self._out, flush=True)
            return
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        self.out.print(t)


def plain_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table as aligned text: the first column left, the others right."""
    widths = [max([len(c), *(len(r[i]) for r in rows)]) for i, c in enumerate(columns)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([title, line(columns), rule, *(line(r) for r in rows)])


@contextlib.contextmanager
def _plain_progress(
    err: Any, description: str, total: int | None
) -> Iterator[Callable[[int], None]]:
    """Progress as a line at most every 2 s, and one at the end."""
    done, last, start = 0, time.perf_counter(), time.perf_counter()

    def report() -> None:
        of = f"/{total}" if total else ""
        print(
            f"{description}: {done}{of} ({time.perf_counter() - start:.0f} s)", file=err, flush=True
        )

    shown = -1

    def advance(n: int) -> None:
        nonlocal done, last, shown
        done += n
        if time.perf_counter() - last >= 2.0:
            last, shown = time.perf_counter(), done
            report()

    yield advance
    if shown != done:
        report()


SILENT = UI(quiet=True)


def api_ui(ui: UI | None) -> UI:
    """The UI an API call reports to: the one given; else, in a Jupyter notebook (where
    rich renders progress bars and tables), a visible one; else none."""
    if ui is not None:
        return ui
    return UI() if in_notebook() else SILENT


def in_notebook() -> bool:
    """Whether this runs in a Jupyter kernel (IPython's ZMQ shell, not a terminal)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return type(shell).__name__ == "ZMQInteractiveShell"
