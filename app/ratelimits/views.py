"""Rate limits over HTTP: admins set a customer's and each key's requests and tokens
per minute; a customer reads the limits it is held to.

A change is committed, then announced (``announce``): admission in every API
process decides the next call on the new limits.
"""

from __future__ import annotations

from typing import Annotated

from flask import Blueprint
from pydantic import BaseModel, ConfigDict

from app.contract import ADMIN, Answer, operation
from app.customers.keys import announce
from app.customers.models import ApiKey, BillingCustomer
from app.customers.services import API_KEY
from app.errors import NotFound
from app.extensions import db
from app.ratelimits.limits import limits_of, set_limits
from app.ratelimits.models import RateLimit
from app.shapes import Whole

rate_limits = Blueprint("rate_limits", __name__)
PerMinute = Annotated[int, Whole(1, 10**12)]


class LimitsSet(BaseModel):
    """Both absent (or null): no limit on this scope."""

    model_config = ConfigDict(extra="forbid")

    requests_per_minute: PerMinute | None = None
    tokens_per_minute: PerMinute | None = None


class LimitAnswer(Answer):
    scope: str
    api_key_id: int | None
    requests_per_minute: int | None
    tokens_per_minute: int | None

    @classmethod
    def of(cls, limit: RateLimit) -> LimitAnswer:
        return cls(
            scope=limit.scope,
            api_key_id=limit.api_key_id,
            requests_per_minute=limit.requests_per_minute,
            tokens_per_minute=limit.tokens_per_minute,
        )


class LimitList(Answer):
    """Every limit over the customer: its own (``customer:<id>``) and its keys'."""

    limits: list[LimitAnswer]

    @classmethod
    def of(cls, customer_id: int) -> LimitList:
        return cls(limits=[LimitAnswer.of(limit) for limit in limits_of(customer_id)])


def _set(customer_id: int, api_key_id: int | None, body: LimitsSet) -> LimitList:
    set_limits(customer_id, api_key_id, body.requests_per_minute, body.tokens_per_minute)
    announce(customer_id)
    return LimitList.of(customer_id)


@operation(
    rate_limits,
    "PUT",
    "/v1/billing/customers/<customer_id>/rate-limits",
    summary="Set the requests and tokens per minute of all a customer's keys together (admin)",
    auth=ADMIN,
    body=LimitsSet,
    answers={200: LimitList},
    errors=(400, 401, 403, 404, 413, 415),
)
def set_for_customer(customer_id: int, body: LimitsSet) -> LimitList:
    if db.session.get(BillingCustomer, customer_id) is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    return _set(customer_id, None, body)


@operation(
    rate_limits,
    "PUT",
    "/v1/billing/keys/<key_id>/rate-limits",
    summary="Set the requests and tokens per minute of one key (admin)",
    auth=ADMIN,
    body=LimitsSet,
    answers={200: LimitList},
    errors=(400, 401, 403, 404, 413, 415),
)
def set_for_key(key_id: int, body: LimitsSet) -> LimitList:
    key = db.session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no key {key_id}", field="key_id")
    return _set(key.customer_id, key.id, body)


@operation(
    rate_limits,
    "GET",
    "/v1/billing/customers/<customer_id>/rate-limits",
    summary="A customer's rate limits, its own and its keys' (admin)",
    auth=ADMIN,
    answers={200: LimitList},
    errors=(401, 403, 404),
)
def list_for_admin(customer_id: int) -> LimitList:
    if db.session.get(BillingCustomer, customer_id) is None:
        raise NotFound(f"no customer {customer_id}", field="customer_id")
    return LimitList.of(customer_id)


@operation(
    rate_limits,
    "GET",
    "/v1/billing/rate-limits",
    summary="The rate limits the caller is held to, its own and its keys'",
    auth=API_KEY,
    answers={200: LimitList},
    errors=(401,),
)
def own_limits(caller: BillingCustomer) -> LimitList:
    return LimitList.of(caller.id)
