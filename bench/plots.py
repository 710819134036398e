"""Drawing the figures as PNG files with matplotlib, beside the results they come from."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no screen on a server

import matplotlib.pyplot as plt  # noqa: E402 - after the backend is chosen


@contextmanager
def figure(path: Path, title: str, xlabel: str, ylabel: str) -> Iterator[Any]:
    """Axes to draw on; saved to ``path`` (and closed) when the block ends."""
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    try:
        yield ax
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)
