"""The analytics API: the caller's usage by period and dimension, provider performance,
trends with a month-end forecast, cost recommendations, and the raw-event export."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any, TypeVar

from flask import Blueprint, current_app, request
from pydantic import BaseModel

from app.analytics.queries import (
    DateRange,
    UsageQuery,
)
from app.analytics.usage import UsageRequest, usage_between
from app.config import Settings
from app.customers.keys import keys_of
from app.customers.models import ApiKey
from app.customers.services import authenticate_customer
from app.errors import ValidationError
from app.models.types import utcnow
from app.plans.services import daily_charges
from app.shapes import parse

analytics = Blueprint("analytics", __name__)

Query = TypeVar("Query", bound=BaseModel)
# Hours are many: an hourly answer covers at most this many days.
MAX_HOURLY_RANGE_DAYS = 31


def parse_query(shape: type[Query]) -> Query:
    """The query string as ``shape``, each parameter given once (a repeat is a 400)."""
    given = request.args.to_dict(flat=False)
    for name, values in given.items():
        if len(values) > 1:
            raise ValidationError(f"{name} is given more than once", field=name)
    return parse(shape, {name: values[0] for name, values in given.items()}, whole="query")


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def check_range(query: DateRange, settings: Settings, hours: bool) -> None:
    """The range's length, and for hourly detail its length and age, within bounds."""
    days = (query.end_date - query.start_date).days + 1
    if days > settings.max_usage_range_days:
        raise ValidationError(
            f"the range is longer than {settings.max_usage_range_days} days", field="end_date"
        )
    if not hours:
        return
    oldest = utcnow().date() - timedelta(days=settings.usage_hourly_retention_days)
    if query.start_date < oldest:
        raise ValidationError(
            f"hourly detail, task types and statuses are kept for "
            f"{settings.usage_hourly_retention_days} days (from {oldest})",
            field="start_date",
        )


def _keys(customer_id: int, wanted: tuple[int, ...] | None) -> list[ApiKey]:
    keys = keys_of(customer_id)
    unknown = set(wanted or ()) - {key.id for key in keys}
    if unknown:
        raise ValidationError(f"no key of yours has id {min(unknown)}", field="key")
    return keys


def usage_request(query: UsageQuery, settings: Settings) -> UsageRequest:
    """The usage question a query asks, its bounds checked."""
    wanted = UsageRequest(
        query.start_date,
        query.end_date,
        query.granularity,
        tuple(dict.fromkeys(query.group_by)),
        query.given(),
    )
    check_range(query, settings, wanted.needs_hours)
    if wanted.granularity == "hour":
        if (query.end_date - query.start_date).days + 1 > MAX_HOURLY_RANGE_DAYS:
            raise ValidationError(
                f"an hourly answer covers at most {MAX_HOURLY_RANGE_DAYS} days", field="end_date"
            )
    return wanted


@analytics.get("/v1/billing/usage")
def get_usage() -> dict[str, Any]:
    customer = authenticate_customer(request)
    wanted = usage_request(parse_query(UsageQuery), _settings())
    keys = _keys(customer.id, wanted.filters.get("key"))
    charges: dict[date, Any] = {}
    if not wanted.filters and wanted.granularity != "hour":
        charges = daily_charges(customer, wanted.start, wanted.end)
    return usage_between(keys, wanted, charges).as_json()
