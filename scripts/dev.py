#!/usr/bin/env python3
"""The two set-up commands of the README, with nothing but Python 3.11 needed.

    python3 scripts/dev.py serve   # API + worker + beat on the embedded default
    python3 scripts/dev.py test    # the whole test suite

Both create ``.venv`` and install the project into it first (again only when
pyproject.toml changed). With DATABASE_URL and REDIS_URL set, the same commands
use PostgreSQL and Redis.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
STAMP = VENV / ".installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs before the venv exists
        sys.exit("Python 3.11 or newer is required")
    if not PYTHON.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == wanted:
        return
    print("installing usage-billing and its test and bench dependencies", flush=True)
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
    subprocess.run(
        [PYTHON, "-m", "pip", "install", "--quiet", "-e", f"{ROOT}[test,bench]"], check=True
    )
    STAMP.write_text(wanted)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"serve", "test"}:
        print(__doc__)
        return 2
    ensure_venv()
    os.chdir(ROOT)
    if argv[0] == "serve":
        return subprocess.call([PYTHON, "-m", "app.serve", *argv[1:]])
    code = subprocess.call([PYTHON, "-m", "pytest", *argv[1:]])
    if code == 5:
        print("pytest collected no tests: that is a failure", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
