"""One module per scenario; ``make bench`` runs every one, in the order of their ``ORDER``.

A scenario module defines:

- ``ORDER`` (int) and ``run(run: Run, results: dict) -> None``, which measures
  and writes its figures into ``results`` under its own keys;
- ``rows(results) -> list[(measure, value, target)]``: its lines of the table;
- optionally ``headline(results) -> dict`` (its fields of ``bench/history.jsonl``),
  ``draw(results, directory) -> list[Path]`` (its PNG files), and ``ENABLED``
  (False to skip it in this run, e.g. reads at scale with ``BENCH_SCALE_EVENTS=0``).

A new scenario (budgets, exports, dashboards) is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType


def scenarios() -> list[ModuleType]:
    """Every scenario module of this package, in run order."""
    modules = [
        importlib.import_module(f"{__name__}.{info.name}")
        for info in pkgutil.iter_modules(__path__)
    ]
    return sorted(modules, key=lambda module: module.ORDER)
