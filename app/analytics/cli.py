"""``flask billing export``: the raw-event export of the API, to a file or stdout."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import TextIO

import click
from flask.cli import with_appcontext

from app.analytics.export import ExportRequest, count_rows, export_chunks
from app.progress import progress_bar


@click.command("export")
@with_appcontext
@click.option("--start-date", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--end-date", type=click.DateTime(["%Y-%m-%d"]), required=True)
@click.option("--format", "file_format", type=click.Choice(["csv", "jsonl"]), default="csv")
@click.option("--customer-id", type=int, default=None, help="one customer's events (default: all)")
@click.option(
    "--output", type=click.File("w", encoding="utf-8"), default="-", help="a file (default: stdout)"
)
def export_command(
    start_date: datetime,
    end_date: datetime,
    file_format: str,
    customer_id: int | None,
    output: TextIO,
) -> None:
    """Write raw events as CSV or JSON lines, with a progress bar on a terminal."""
    if end_date < start_date:
        raise click.BadParameter("is before --start-date", param_hint="--end-date")
    wanted = ExportRequest(start_date.date(), end_date.date(), file_format, customer_id)
    total = count_rows(wanted)
    header = 1 if file_format == "csv" else 0
    with progress_bar(f"exporting {total} events") as progress:
        done = -header
        for chunk in export_chunks(wanted):
            output.write(chunk)
            done += chunk.count("\n")
            progress(max(done, 0), total)
    output.flush()
    click.echo(f"exported {max(done, 0)} events", file=sys.stderr)
