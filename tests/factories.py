"""Test data, built by factory_boy: usage events, customers, the metered API's responses.

Each factory holds the one valid default of its kind; a test names only what it
is about (``event("key-b", model="gpt-4o")``) and the rest stays valid.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import factory
from factory.alchemy import SQLAlchemyModelFactory

from app.billing.models import UsageReport
from app.customers.models import ApiKey, BillingCustomer
from app.extensions import db
from app.security import hash_api_key


def _new_id(prefix: str) -> Any:
    return factory.LazyFunction(lambda: f"{prefix}{uuid.uuid4().hex}")


class UsageEventFactory(factory.DictFactory):
    """A valid usage event as a service posts it (``POST /v1/usage/events``)."""

    class Params:
        api_key = "key-a"

    event_id = _new_id("evt-")
    api_key_hash = factory.LazyAttribute(lambda o: hash_api_key(o.api_key))
    provider = "anthropic"
    model = "claude-3-5-sonnet-20241022"
    tokens_input = 1000
    tokens_output = 100
    timestamp = factory.LazyFunction(lambda: datetime.now(UTC).isoformat())
    task_type = "code_generation"
    status = "success"


def event(api_key: str = "key-a", **overrides: Any) -> dict[str, Any]:
    """One event of the caller with key ``api_key``."""
    return UsageEventFactory(api_key=api_key, **overrides)


def _chat_usage() -> dict[str, Any]:
    """OpenAI's own usage object, built and dumped by its SDK: 1,000 prompt tokens
    (200 of them cached) and 500 completion tokens."""
    from openai.types.completion_usage import CompletionUsage

    usage = CompletionUsage(
        prompt_tokens=1000,
        completion_tokens=500,
        total_tokens=1500,
        prompt_tokens_details={"cached_tokens": 200},
    )
    return usage.model_dump(mode="json")


class ExecuteResponseFactory(factory.DictFactory):
    """A ``/v1/execute`` response, with the usage the middleware meters: the provider's
    own usage object beside the call's provider and model."""

    execution_id = factory.LazyFunction(lambda: uuid.uuid4().hex)
    task_type = "code_generation"
    status = "success"
    provider = "openai"
    model = "gpt-4o-2024-08-06"
    usage = factory.LazyFunction(_chat_usage)
    execution_time = 1.25


class _Committed(SQLAlchemyModelFactory):
    class Meta:
        abstract = True
        sqlalchemy_session_factory = lambda: db.session  # noqa: E731 - the app's scoped session
        sqlalchemy_session_persistence = "commit"


class ApiKeyFactory(_Committed):
    """A key of a customer, by the hash of ``api_key``."""

    class Meta:
        model = ApiKey

    class Params:
        api_key = factory.LazyFunction(lambda: f"key-{uuid.uuid4().hex}")

    key_hash = factory.LazyAttribute(lambda o: hash_api_key(o.api_key))
    label = "registered"


class CustomerFactory(_Committed):
    """A billing customer with ``api_key`` as its first key, committed; built inside an
    app context, as onboarding makes one."""

    class Meta:
        model = BillingCustomer

    class Params:
        api_key = factory.LazyFunction(lambda: f"key-{uuid.uuid4().hex}")

    api_key_hash = factory.LazyAttribute(lambda o: hash_api_key(o.api_key))
    email = factory.Sequence(lambda n: f"customer{n}@example.com")
    name = "Test Customer"
    stripe_customer_id = None

    @factory.post_generation
    def first_key(customer: BillingCustomer, create: bool, extracted: Any, **fields: Any) -> None:
        if create:
            ApiKeyFactory(customer_id=customer.id, key_hash=customer.api_key_hash, **fields)


class UsageReportFactory(_Committed):
    """A row of the report's ledger: one meter event of a customer's day, committed."""

    class Meta:
        model = UsageReport

    seq = 0
    mode = "meter_events"
    quantity = 1
    quantity_unit = "tokens"
    cumulative_exact = Decimal(1)
    cumulative_units = 1
    identifier = factory.Sequence(lambda n: f"ub-test-{n}")
    idempotency_key = factory.LazyAttribute(lambda o: o.identifier)
    stripe_event_name = "llm_usage"
    status = "sent"
