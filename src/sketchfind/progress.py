"""Progress for long work (indexing, encoding, training), one helper for every command.

On a terminal it is a rich progress bar on stderr. Anywhere else (a log file, ``docker logs``, CI) a bar
would only be drawn once, full, at the end; there it prints a plain line every ``every`` seconds and one
at the end, with the count, the rate and the time left::

    indexing: 640/3125 (20%), 71.3/s, about 35 s left
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

Advance = Callable[..., None]  # advance(n=1, **info): n more items done; info shown beside the count


@contextmanager
def progress(
    total: int,
    label: str,
    *,
    done: int = 0,
    enabled: bool = True,
    every: float = 10.0,
    stream: TextIO | None = None,
) -> Iterator[Advance]:
    """A context whose value ``advance(n=1, **info)`` reports ``n`` more of ``total`` items done
    (``done`` of them were done before, e.g. by a resumed run)."""
    stream = stream or sys.stderr
    if not enabled or total <= 0:
        yield lambda n=1, **info: None
    elif stream.isatty():
        with _rich_bar(total, label, done, stream) as advance:
            yield advance
    else:
        lines = _PlainLines(total, label, done, every, stream)
        yield lines.advance
        lines.finish()


@contextmanager
def _rich_bar(total: int, label: str, done: int, stream: TextIO) -> Iterator[Advance]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
    )
    with Progress(*columns, console=Console(file=stream)) as bar:
        task = bar.add_task(label, total=total, completed=done, info="")

        def advance(n: int = 1, **info) -> None:
            bar.update(task, advance=n, info=_format_info(info))

        yield advance


class _PlainLines:
    """Periodic plain progress lines for output that is not a terminal."""

    def __init__(self, total: int, label: str, done: int, every: float, stream: TextIO):
        self.total, self.label, self.every, self.stream = total, label, every, stream
        self.done, self.before, self.info = done, done, {}
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1, **info) -> None:
        self.done += n
        self.info = info or self.info
        if time.monotonic() - self.last >= self.every:
            self.line()

    def finish(self) -> None:
        if self.done > self.before:
            self.line()

    def line(self) -> None:
        self.last = time.monotonic()
        elapsed = max(self.last - self.start, 1e-9)
        rate = (self.done - self.before) / elapsed
        left = (self.total - self.done) / rate if rate > 0 and self.done < self.total else 0.0
        text = f"{self.label}: {self.done}/{self.total} ({100 * self.done / self.total:.0f}%), {rate:.1f}/s"
        text += f", about {_duration(left)} left" if self.done < self.total else f", done in {_duration(elapsed)}"
        if self.info:
            text += f"  {_format_info(self.info)}"
        print(text, file=self.stream, flush=True)


def _format_info(info: dict) -> str:
    return " ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items())


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
