"""CSV injection: what a caller writes into an event (a model name, a task type) never
becomes a formula in the spreadsheet that opens an export.

Each CSV the service writes (the raw-event export on PostgreSQL and on the embedded
SQLite default, and the dashboard's breakdown and event downloads) is opened by
LibreOffice's own CSV import (``soffice --headless --convert-to fods``), and the
sheet it made is read back: no cell holds a formula, and each hostile text is
there as text. Without LibreOffice the test skips, except in CI, where it fails.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.analytics.export import neutral
from tests.factories import event
from tests.helpers import auth, record

SOFFICE = shutil.which("soffice")
spreadsheet = pytest.mark.skipif(
    SOFFICE is None and os.environ.get("CI", "").lower() != "true",
    reason="needs LibreOffice (apt-get install libreoffice-calc-nogui)",
)
# OWASP's list: each of these starts a formula, or a DDE command, in some spreadsheet.
HOSTILE = [
    '=HYPERLINK("http://evil.example","click")',
    "=1+2",
    "+1+2",
    "-1+2",
    "@SUM(1,2)",
    "\t=1+2",
    "\r=1+2",
    "=cmd|' /C calc'!A0",
]
NOW = datetime.now(UTC)


def sheet_of(csv_bytes: bytes, tmp_path: Path, name: str) -> tuple[list[str], str]:
    """The sheet LibreOffice makes of a CSV: its formulas, and its flat XML."""
    source = tmp_path / f"{name}.csv"
    source.write_bytes(csv_bytes)
    profile = tmp_path / "lo-profile"  # its own profile: never one another run holds
    subprocess.run(
        [
            SOFFICE or "soffice",
            f"-env:UserInstallation=file://{profile}",
            "--headless",
            "--convert-to",
            "fods",
            "--outdir",
            str(tmp_path),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sheet = (tmp_path / f"{name}.fods").read_text()
    return re.findall(r'table:formula="([^"]*)"', sheet), sheet


def _hostile_events() -> list[dict[str, Any]]:
    return [
        event(
            "key-csv",
            model=f"m{n}",
            task_type=text.strip() or "x",
            status=text.strip()[:32],
            execution_id=text.strip() or "x",
            timestamp=NOW.isoformat(),
            metadata={"note": text},
        )
        for n, text in enumerate(HOSTILE)
    ] + [
        event("key-csv", provider="=evil", model=text, timestamp=NOW.isoformat())
        for text in HOSTILE
        if text.isprintable()
    ]


def test_the_neutralised_cell_is_the_text_with_an_apostrophe() -> None:
    assert [neutral(text) for text in HOSTILE] == ["'" + text for text in HOSTILE]
    assert [neutral(v) for v in ("gpt-4o", "0.0025", 5, None)] == ["gpt-4o", "0.0025", 5, None]


def _csv_exports(client: FlaskClient, app: Flask) -> dict[str, bytes]:
    day = NOW.date().isoformat()
    exported = client.get(
        f"/v1/billing/usage/export?start_date={day}&end_date={day}&format=csv",
        headers=auth("key-csv"),
    )
    assert exported.status_code == 200 and exported.headers["Cache-Control"] == "no-store"
    files = {"export": exported.data}
    page = client.get("/dashboard/sign-in").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    client.post("/dashboard/sign-in", data={"api_key": "key-csv", "csrf_token": token})
    for name in ("breakdown", "events"):
        resp = client.get(f"/dashboard/{name}.csv?days=7")
        assert resp.status_code == 200 and resp.headers["Cache-Control"] == "no-store"
        files[name] = resp.data
    return files


@spreadsheet
@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_no_export_smuggles_a_formula_into_a_spreadsheet(
    app: Flask, sqlite_app: Flask, make_customer: Any, tmp_path: Path, database: str
) -> None:
    """Every CSV, as LibreOffice opens it: not one formula, and every hostile text
    kept (behind the apostrophe that keeps it text)."""
    target = app if database == "postgresql" else sqlite_app
    if database == "postgresql":
        make_customer("key-csv")
    else:
        from app.customers.services import register_customer
        from app.security import hash_api_key

        with sqlite_app.app_context():
            from app.customers.services import customer_for_key_hash

            if customer_for_key_hash(hash_api_key("key-csv")) is None:
                register_customer("csv@example.com", "Csv", hash_api_key("key-csv"))
    with target.app_context():
        result = record(_hostile_events(), now=NOW)
        assert not result.rejected, result.rejected
    files = _csv_exports(target.test_client(), target)
    for name, data in files.items():
        rows = list(csv.reader(io.StringIO(data.decode())))
        cells = {cell for row in rows for cell in row}
        for text in HOSTILE:
            if name != "breakdown" or text.isprintable():  # the breakdown shows models
                assert "'" + text in cells or "'" + text.strip() in cells, (name, text)
        formulas, _ = sheet_of(data, tmp_path, f"{database}-{name}")
        assert formulas == [], (database, name, formulas)
