"""Progress of long work for the command line and the benchmarks: a bar on a terminal, plain lines otherwise.

    with progress("export products", total=len(frame), unit="rows") as bar:
        for chunk in chunks:
            ...
            bar.advance(len(chunk))

Both go to stderr, so a command's own output on stdout (a CSV, JSON) stays clean. On a terminal the bar is rich's
(done/total, rate, time left); when stderr is not a terminal (CI, a pipe, a log file) a plain line is written at most
every `PLAIN_EVERY` seconds and once at the end, with the same figures.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

PLAIN_EVERY = 5.0


def _eta(done: int, total: int | None, seconds: float) -> str:
    if not total or not done or done >= total:
        return ""
    return f", ~{(total - done) * seconds / done:.0f} s left"


def _rate(per_second: float) -> str:
    """Whole numbers for fast work (rows), two decimals for slow work (batches)."""
    return f"{per_second:,.0f}" if per_second >= 10 else f"{per_second:.2f}"


class Progress:
    """Counts work done; `advance` after each piece. Prefer the `progress` context manager to building one."""

    def __init__(self, label: str, *, total: int | None = None, unit: str = "rows", stream: TextIO | None = None,
                 terminal: bool | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.done = 0
        self._start = self._last = time.monotonic()
        self._bar = None
        if terminal if terminal is not None else self.stream.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as Bar

            class Rate(ProgressColumn):
                def render(self, task):  # noqa: ANN001, ANN202 - rich's column protocol
                    return f"{_rate(task.speed or 0)} {unit}/s"

            self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
                            Rate(), TimeRemainingColumn(), console=Console(file=self.stream))
            self._task = self._bar.add_task(label, total=total)
            self._bar.start()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n)
            return
        now = time.monotonic()
        if now - self._last >= PLAIN_EVERY:
            self._last = now
            self._line(now)

    def set_total(self, total: int) -> None:
        self.total = total
        if self._bar is not None:
            self._bar.update(self._task, total=total)

    def _line(self, now: float, final: bool = False) -> None:
        seconds = max(now - self._start, 1e-9)
        of = f" of {self.total:,}" if self.total is not None else ""
        tail = f" in {seconds:.1f} s" if final else _eta(self.done, self.total, seconds)
        print(f"{self.label}: {self.done:,}{of} {self.unit} ({_rate(self.done / seconds)} {self.unit}/s{tail})",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
        else:
            self._line(time.monotonic(), final=True)


@contextlib.contextmanager
def progress(label: str, *, total: int | None = None, unit: str = "rows", stream: TextIO | None = None,
             terminal: bool | None = None) -> Iterator[Progress]:
    bar = Progress(label, total=total, unit=unit, stream=stream, terminal=terminal)
    try:
        yield bar
    finally:
        bar.close()
