"""Onboarding and API keys (admin): ``/v1/billing/customers`` and ``/v1/billing/keys``."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, current_app, request
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.customers.keys import (
    IssuedKey,
    describe_key,
    issue_key,
    keys_of,
    revoke_key,
    rotate_key,
)
from app.customers.services import PENDING, link_state, register_customer, request_link
from app.errors import ValidationError
from app.security import hash_api_key, require_token
from app.shapes import json_body, parse, path_id, text

customers = Blueprint("customers", __name__)


def _address(value: str) -> str:
    if "@" not in value:
        raise ValidationError("email is not an address", field="email")
    return value


class CustomerCreate(BaseModel):
    """Onboarding (admin): the raw key is hashed at once, never stored or sent on."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[text(320), AfterValidator(_address)] = Field(
        json_schema_extra={"format": "email"}
    )
    name: text(200)
    api_key: text(512)
    company: text(200) | None = None


class KeyCreate(BaseModel):
    """A new key (admin): its label, for people to tell keys apart."""

    model_config = ConfigDict(extra="forbid")

    label: text(100)


def _admin() -> None:
    require_token(request, current_app.config["SETTINGS"].admin_token, "admin")


def _issued(issued: IssuedKey) -> tuple[dict[str, Any], int]:
    return issued.as_json(), 201


@customers.post("/v1/billing/customers")
def create_customer() -> tuple[dict[str, Any], int]:
    _admin()
    body = parse(CustomerCreate, json_body(request))
    api_key_hash = hash_api_key(body.api_key)
    customer = register_customer(body.email, body.name, api_key_hash, company=body.company)
    link = link_state(customer, current_app.config["SETTINGS"])
    if link == PENDING:
        request_link(customer)
    return {
        "id": customer.id,
        "api_key_hash": api_key_hash,
        "stripe_customer_id": customer.stripe_customer_id,
        "stripe_link": link,
    }, 201


@customers.post("/v1/billing/customers/<customer_id>/keys")
def create_key(customer_id: str) -> tuple[dict[str, Any], int]:
    """Issue a key; the answer is the only place the key ever appears."""
    _admin()
    label = parse(KeyCreate, json_body(request)).label
    return _issued(issue_key(path_id(customer_id, "customer_id"), label))


@customers.get("/v1/billing/customers/<customer_id>/keys")
def list_keys(customer_id: str) -> dict[str, Any]:
    _admin()
    return {"keys": [describe_key(key) for key in keys_of(path_id(customer_id, "customer_id"))]}


@customers.post("/v1/billing/keys/<key_id>/revoke")
def revoke(key_id: str) -> dict[str, Any]:
    _admin()
    return describe_key(revoke_key(path_id(key_id, "key_id")))


@customers.post("/v1/billing/keys/<key_id>/rotate")
def rotate(key_id: str) -> tuple[dict[str, Any], int]:
    """A new key with the same label; the old one is revoked at once."""
    _admin()
    return _issued(rotate_key(path_id(key_id, "key_id")))
