"""Onboarding and API keys (admin): ``/v1/billing/customers`` and ``/v1/billing/keys``."""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint, current_app
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from app.contract import ADMIN, Answer, Instant, operation
from app.customers.keys import IssuedKey, issue_key, keys_of, revoke_key, rotate_key
from app.customers.models import ApiKey
from app.customers.services import LinkState, link_state, register_customer, request_link
from app.errors import ValidationError
from app.security import hash_api_key
from app.shapes import Text

customers = Blueprint("customers", __name__)


def _address(value: str) -> str:
    if "@" not in value:
        raise ValidationError("email is not an address", field="email")
    return value


class CustomerCreate(BaseModel):
    """Onboarding (admin): the raw key is hashed at once, never stored or sent on."""

    model_config = ConfigDict(extra="forbid")

    email: Annotated[Annotated[str, Text(320)], AfterValidator(_address)] = Field(
        json_schema_extra={"format": "email"}
    )
    name: Annotated[str, Text(200)]
    api_key: Annotated[str, Text(512)]
    company: Annotated[str, Text(200)] | None = None


class KeyCreate(BaseModel):
    """A new key (admin): its label, for people to tell keys apart."""

    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, Text(100)]


class KeyAnswer(Answer):
    """A key as admins read it: its label and prefix, never the key nor its hash."""

    id: int
    customer_id: int
    label: str
    prefix: str | None  # none for a key onboarded by its hash alone
    created_at: Instant
    revoked_at: Instant | None

    @classmethod
    def of(cls, key: ApiKey) -> KeyAnswer:
        return cls(
            id=key.id,
            customer_id=key.customer_id,
            label=key.label,
            prefix=key.prefix,
            created_at=key.created_at,
            revoked_at=key.revoked_at,
        )


class IssuedKeyAnswer(KeyAnswer):
    """A new key, with the key itself: the only time it is ever shown."""

    key: str

    @classmethod
    def issued(cls, issued: IssuedKey) -> IssuedKeyAnswer:
        return cls(**KeyAnswer.of(issued.key).model_dump(), key=issued.raw)


class KeyList(Answer):
    """A customer's keys."""

    keys: list[KeyAnswer]


class CustomerCreated(Answer):
    """The customer, and whether its Stripe customer exists yet."""

    id: int
    api_key_hash: str
    stripe_customer_id: str | None
    stripe_link: LinkState


@operation(
    customers,
    "POST",
    "/v1/billing/customers",
    summary="Onboard a customer (admin)",
    auth=ADMIN,
    body=CustomerCreate,
    answers={201: CustomerCreated},
    errors=(400, 401, 403, 409, 413, 415, 502, 503),
)
def create_customer(body: CustomerCreate) -> tuple[CustomerCreated, int]:
    api_key_hash = hash_api_key(body.api_key)
    customer = register_customer(body.email, body.name, api_key_hash, company=body.company)
    link = link_state(customer, current_app.config["SETTINGS"])
    if link == LinkState.PENDING:
        request_link(customer)
    created = CustomerCreated(
        id=customer.id,
        api_key_hash=api_key_hash,
        stripe_customer_id=customer.stripe_customer_id,
        stripe_link=link,
    )
    return created, 201


@operation(
    customers,
    "POST",
    "/v1/billing/customers/<customer_id>/keys",
    summary="Issue an API key (admin); the key is in this answer only",
    auth=ADMIN,
    body=KeyCreate,
    answers={201: IssuedKeyAnswer},
    errors=(400, 401, 403, 404, 413, 415),
)
def create_key(customer_id: int, body: KeyCreate) -> tuple[IssuedKeyAnswer, int]:
    return IssuedKeyAnswer.issued(issue_key(customer_id, body.label)), 201


@operation(
    customers,
    "GET",
    "/v1/billing/customers/<customer_id>/keys",
    summary="A customer's API keys (admin): labels and prefixes, never a key",
    auth=ADMIN,
    answers={200: KeyList},
    errors=(401, 403, 404),
)
def list_keys(customer_id: int) -> KeyList:
    return KeyList(keys=[KeyAnswer.of(key) for key in keys_of(customer_id)])


@operation(
    customers,
    "POST",
    "/v1/billing/keys/<key_id>/revoke",
    summary="Revoke an API key (admin)",
    auth=ADMIN,
    answers={200: KeyAnswer},
    errors=(401, 403, 404),
)
def revoke(key_id: int) -> KeyAnswer:
    return KeyAnswer.of(revoke_key(key_id))


@operation(
    customers,
    "POST",
    "/v1/billing/keys/<key_id>/rotate",
    summary="A new key with the same label, the old one revoked at once (admin)",
    auth=ADMIN,
    answers={201: IssuedKeyAnswer},
    errors=(401, 403, 404, 409),
)
def rotate(key_id: int) -> tuple[IssuedKeyAnswer, int]:
    return IssuedKeyAnswer.issued(rotate_key(key_id)), 201
