"""``flask billing credits …``: grant, void, refund and list a customer's credits, the
same operations as the admin endpoints, from a shell."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import click
from flask import current_app
from flask.cli import AppGroup

from app.columns import amount_str, utcnow
from app.credits.ledger import (
    account_of,
    add_grant,
    balance,
    grant_of,
    grants_of,
    refund_grant,
    remaining,
    void_grant,
)
from app.customers.keys import announce
from app.errors import ServiceError

credits_cli = AppGroup("credits", help="Prepaid credits.")


def _amount(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        amount = Decimal(value)
    except InvalidOperation as exc:
        raise click.BadParameter("an amount in USD, such as 25 or 12.50") from exc
    if not amount.is_finite():
        raise click.BadParameter("an amount in USD, such as 25 or 12.50")
    return amount


def _instant(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError as exc:
        raise click.BadParameter("ISO 8601 with an offset, such as 2027-01-01T00:00:00Z") from exc
    if when.tzinfo is None:
        raise click.BadParameter("needs an offset (Z or +hh:mm)")
    return when


def _run(change: Callable[[], tuple[int, dict[str, Any]]]) -> None:
    """Make one change, commit and announce it, print its JSON; a refusal is the
    command's error, as the endpoint's would be."""
    try:
        customer_id, shown = change()
    except ServiceError as exc:
        raise click.ClickException(f"{exc.field}: {exc.message}") from exc
    announce(customer_id)
    click.echo(json.dumps(shown))


def _grant_json(grant: Any) -> dict[str, Any]:
    return {
        "id": grant.id,
        "customer_id": grant.customer_id,
        "amount": amount_str(grant.amount),
        "remaining": amount_str(remaining(grant)),
        "category": grant.category,
        "priority": grant.priority,
        "expires_at": grant.expires_at.isoformat() if grant.expires_at else None,
        "closed_at": grant.closed_at.isoformat() if grant.closed_at else None,
    }


@credits_cli.command("grant")
@click.option("--customer", "customer_id", type=int, required=True)
@click.option("--amount", callback=_amount, required=True, help="USD, such as 25 or 12.50.")
@click.option("--category", type=click.Choice(["promotional", "purchased"]), default="promotional")
@click.option("--priority", type=click.IntRange(0, 100), default=50, help="Lower pays first.")
@click.option("--expires", "expires_at", callback=_instant, help="ISO 8601 with an offset.")
@click.option("--note")
def credits_grant(
    customer_id: int,
    amount: Decimal,
    category: str,
    priority: int,
    expires_at: datetime | None,
    note: str | None,
) -> None:
    """Grant a customer credit (it becomes prepaid if it was not)."""

    def change() -> tuple[int, dict[str, Any]]:
        grant, _ = add_grant(
            customer_id,
            amount,
            category,
            f"cli:{secrets.token_hex(16)}",
            utcnow(),
            current_app.config["SETTINGS"].max_event_age_days,
            priority=priority,
            expires_at=expires_at,
            note=note,
        )
        return customer_id, _grant_json(grant)

    _run(change)


@credits_cli.command("void")
@click.option("--grant", "grant_id", type=int, required=True)
@click.option("--note")
def credits_void(grant_id: int, note: str | None) -> None:
    """Withdraw what is left of a grant."""

    def change() -> tuple[int, dict[str, Any]]:
        grant = grant_of(grant_id)
        void_grant(grant, utcnow(), note)
        return grant.customer_id, _grant_json(grant)

    _run(change)


@credits_cli.command("refund")
@click.option("--grant", "grant_id", type=int, required=True)
@click.option("--amount", callback=_amount, required=True)
@click.option("--note")
def credits_refund(grant_id: int, amount: Decimal, note: str | None) -> None:
    """Give back part of a purchased grant's unspent amount (the money goes by Stripe)."""

    def change() -> tuple[int, dict[str, Any]]:
        grant = grant_of(grant_id)
        refund_grant(grant, amount, utcnow(), note)
        return grant.customer_id, _grant_json(grant)

    _run(change)


@credits_cli.command("list")
@click.option("--customer", "customer_id", type=int, required=True)
def credits_list(customer_id: int) -> None:
    """The customer's balance, then each grant, one JSON line each."""
    account = account_of(customer_id)
    if account is None:
        raise click.ClickException(f"customer_id: customer {customer_id} has no credits")
    click.echo(
        json.dumps(
            {
                "customer_id": customer_id,
                "balance": amount_str(balance(customer_id)),
                "overage": account.overage,
            }
        )
    )
    for grant in grants_of(customer_id):
        click.echo(json.dumps(_grant_json(grant)))
