"""``flask billing plans …``: create plan versions, list them, put customers on them."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import click
from flask.cli import AppGroup

from app.columns import utcnow
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.plans.services import all_plans, assign_plan, check_effective, create_version, plan_version
from app.plans.terms import PlanTerms
from app.shapes import parse

plans_cli = AppGroup("plans", help="Price plans.")


@plans_cli.command("create")
@click.option("--code", required=True, help="The plan's code; an existing code gets a new version.")
@click.option("--name", required=True)
@click.option(
    "--terms",
    "terms_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="A JSON file of terms (docs/plans.md).",
)
def plans_create(code: str, name: str, terms_file: Path) -> None:
    """A new version of a plan; versions already made are never edited."""
    try:
        terms = parse(PlanTerms, json.loads(terms_file.read_text()), whole="terms")
        plan = create_version(code, name, terms)
        db.session.commit()
    except ValidationError as exc:
        raise click.ClickException(f"{exc.field}: {exc.message}") from exc
    except json.JSONDecodeError as exc:
        raise click.ClickException(f"{terms_file} is not JSON: {exc}") from exc
    click.echo(json.dumps({"code": plan.code, "version": plan.version}))


@plans_cli.command("list")
def plans_list() -> None:
    for plan in all_plans():
        click.echo(json.dumps({"code": plan.code, "version": plan.version, "name": plan.name}))


@plans_cli.command("assign")
@click.option("--customer", "customer_id", type=int, required=True)
@click.option("--code", required=True)
@click.option("--version", type=int, default=None, help="Default: the latest.")
@click.option(
    "--from", "effective_from", required=True, help="YYYY-MM-DD: from that day's start, UTC."
)
def plans_assign(customer_id: int, code: str, version: int | None, effective_from: str) -> None:
    """Put a customer on a plan; a change within a period splits the period there."""
    try:
        day = check_effective(date.fromisoformat(effective_from), utcnow().date())
        plan = plan_version(code, version)
        assign_plan(customer_id, plan, day)
        db.session.commit()
    except (NotFound, ValidationError) as exc:
        raise click.ClickException(exc.message) from exc
    except ValueError as exc:
        raise click.ClickException(f"--from: {exc}") from exc
    click.echo(
        json.dumps(
            {
                "customer_id": customer_id,
                "code": plan.code,
                "version": plan.version,
                "from": str(day),
            }
        )
    )
