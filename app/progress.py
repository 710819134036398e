"""How far a long operation has got, told to whoever watches it.

Services that loop over many customers or rows take a ``Progress`` and call it
as they go; the ``flask billing`` commands pass one that draws a progress bar,
Celery tasks pass none. The service never knows which.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[int, int], None]
"""Called with (done, total) whenever more is done; total may grow as work is found."""


def unwatched(done: int, total: int) -> None:
    """The progress of a run nobody watches (a scheduled task)."""
