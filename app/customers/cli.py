"""``flask billing customers …`` and ``flask billing keys …``: onboarding and API keys."""

from __future__ import annotations

import json

import click
from flask import current_app
from flask.cli import AppGroup

from app.customers.keys import IssuedKey, issue_key, keys_of, revoke_key, rotate_key
from app.customers.services import LinkState, link_state, link_stripe_customer, register_customer
from app.customers.views import IssuedKeyAnswer, KeyAnswer
from app.errors import BillingRejected, BillingUnavailable, Conflict, NotFound
from app.registry import services
from app.security import hash_api_key

customers_cli = AppGroup("customers", help="Billing customers.")


@customers_cli.command("create")
@click.option("--email", required=True)
@click.option("--name", required=True)
@click.option("--api-key", required=True, help="Hashed at once; never stored or printed.")
@click.option("--company", default=None)
def customers_create(email: str, name: str, api_key: str, company: str | None) -> None:
    """Create the customer here, then link it to Stripe now (when a key is set)."""
    try:
        customer = register_customer(email, name, hash_api_key(api_key), company=company)
    except Conflict as exc:
        raise click.ClickException(exc.message) from None
    settings = current_app.config["SETTINGS"]
    if link_state(customer, settings) == LinkState.PENDING:
        try:
            link_stripe_customer(customer, services().stripe)
        except (BillingUnavailable, BillingRejected) as exc:
            click.echo(f"not linked to Stripe yet (the daily report retries): {exc}", err=True)
    click.echo(
        json.dumps(
            {
                "id": customer.id,
                "stripe_customer_id": customer.stripe_customer_id,
                "stripe_link": link_state(customer, settings),
            }
        )
    )


keys_cli = AppGroup("keys", help="A customer's API keys.")


def _echo_issued(issued: IssuedKey) -> None:
    click.echo(IssuedKeyAnswer.issued(issued).model_dump_json())
    click.echo("the key is shown only now: hand it over and do not store it", err=True)


@keys_cli.command("create")
@click.option("--customer", "customer_id", type=int, required=True)
@click.option("--label", required=True, help="For people to tell keys apart.")
def keys_create(customer_id: int, label: str) -> None:
    """Issue a key; it is printed once and never stored."""
    try:
        _echo_issued(issue_key(customer_id, label))
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc


@keys_cli.command("list")
@click.option("--customer", "customer_id", type=int, required=True)
def keys_list(customer_id: int) -> None:
    """Every key of the customer, by id, label and prefix."""
    try:
        keys = keys_of(customer_id)
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc
    for key in keys:
        click.echo(KeyAnswer.of(key).model_dump_json())


@keys_cli.command("revoke")
@click.argument("key_id", type=int)
def keys_revoke(key_id: int) -> None:
    try:
        click.echo(KeyAnswer.of(revoke_key(key_id)).model_dump_json())
    except NotFound as exc:
        raise click.ClickException(exc.message) from exc


@keys_cli.command("rotate")
@click.argument("key_id", type=int)
def keys_rotate(key_id: int) -> None:
    """A new key with the same label; the old one is revoked at once."""
    try:
        _echo_issued(rotate_key(key_id))
    except (NotFound, Conflict) as exc:
        raise click.ClickException(exc.message) from exc
