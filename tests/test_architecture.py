"""The house's layout: imports run one way, and the documents draw the tree as it is."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = [
    sys.executable,
    "-c",
    "from importlinter.cli import lint_imports_command; lint_imports_command()",
]


def _layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layered,) = (c for c in config["contracts"] if c["type"] == "layers")
    return [name.strip() for layer in layered["layers"] for name in layer.split("|")]


def _lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [*LINT_IMPORTS, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True
    )


def test_imports_run_one_way() -> None:
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_import_back_up_breaks_the_check(tmp_path: Path) -> None:
    """The check is live: pricing (low) importing the billing report (high) fails it,
    and it names the import."""
    for part in ("app", "tasks", "pyproject.toml"):
        source = ROOT / part
        if source.is_dir():
            shutil.copytree(source, tmp_path / part, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(source, tmp_path / part)
    cost = tmp_path / "app" / "pricing" / "cost.py"
    cost.write_text(cost.read_text() + "\nfrom app.billing.report import report_day  # noqa\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "app.pricing.cost -> app.billing.report" in result.stdout


def test_every_package_has_a_layer_and_the_documents_name_them() -> None:
    """Each module or package of ``app`` sits on a layer of the contract, and both
    docs/architecture.md and the README's layout section name every one of them."""
    packages = {
        p.stem if p.is_file() else p.name
        for p in (ROOT / "app").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").exists()
    }
    assert packages == set(_layers())
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    for name in packages:
        path = f"app/{name}/" if (ROOT / "app" / name).is_dir() else f"app/{name}.py"
        assert re.search(re.escape(f"`{path}`"), architecture), (
            f"{path} not in docs/architecture.md"
        )
        assert path in layout, f"{path} not in the README's layout section"


def test_the_answers_carry_every_dimension_the_ledger_counts() -> None:
    """The analytics' token counts are listed in their model: held to the ledger's."""
    from app.analytics.answers import TokenCounts
    from app.pricing.dimensions import COLUMNS

    assert tuple(TokenCounts.model_fields) == COLUMNS
