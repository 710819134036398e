"""How far a long operation has got, told to whoever watches it.

Services that loop over many customers or rows take a ``Progress`` and call it
as they go; the ``flask billing`` commands (and ``make bench``) pass one that
draws a progress bar, Celery tasks pass none. The service never knows which.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

Progress = Callable[[int, int], None]
"""Called with (done, total) whenever more is done; total may grow as work is found."""


def unwatched(done: int, total: int) -> None:
    """The progress of a run nobody watches (a scheduled task)."""


@contextmanager
def progress_bar(label: str) -> Iterator[Progress]:
    """A progress bar on stderr while a long command runs; on a terminal only, so a
    command whose output is piped or logged prints its JSON and nothing else."""
    if not sys.stderr.isatty():
        yield unwatched
        return
    with click.progressbar(length=0, label=label, file=sys.stderr) as bar:

        def advance(done: int, total: int) -> None:
            bar.length = total
            bar.update(done - bar.pos)

        yield advance
