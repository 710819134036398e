"""The analytics API: the caller's usage by period and dimension, provider performance,
trends with a month-end forecast, cost recommendations, and the raw-event export."""

from __future__ import annotations

import itertools
from datetime import date, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context
from pydantic import BaseModel, ConfigDict

from app.analytics.answers import (
    ForecastAnswer,
    PerformanceAnswer,
    RecommendationsAnswer,
    UsageAnswer,
)
from app.analytics.calls import CallsAnswer, CallsQuery, CallsRequest, recent_calls
from app.analytics.export import ExportRequest, download_headers, export_chunks
from app.analytics.forecast import forecast
from app.analytics.performance import performance
from app.analytics.queries import (
    DateRange,
    ExportQuery,
    PerformanceQuery,
    RecommendationQuery,
    UsageQuery,
)
from app.analytics.recommendations import comparable_groups, recommendations
from app.analytics.usage import UsageRequest, usage_between
from app.budgets.services import budgets_of
from app.columns import utcnow
from app.config import Settings
from app.contract import ADMIN, Media, operation
from app.customers.keys import keys_of
from app.customers.models import ApiKey, BillingCustomer
from app.customers.services import API_KEY, authenticate_customer
from app.database import read_snapshot
from app.errors import NotFound, ValidationError
from app.extensions import db
from app.plans.services import daily_charges
from app.pricing.book import price_book
from app.security import is_admin

analytics = Blueprint("analytics", __name__)


class NoQuery(BaseModel):
    """An endpoint that takes no query parameters: any is a 400 naming it."""

    model_config = ConfigDict(extra="forbid")


# Hours are many: an hourly answer covers at most this many days.
MAX_HOURLY_RANGE_DAYS = 31


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


def check_range(query: DateRange, settings: Settings, hours: bool) -> None:
    """The range's length, and for hourly detail its length and age, within bounds."""
    if query.days > settings.max_usage_range_days:
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


def customer_keys(customer_id: int, wanted: tuple[int, ...] | None) -> list[ApiKey]:
    """The customer's keys, once each named key is known to be one of them."""
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
        if query.days > MAX_HOURLY_RANGE_DAYS:
            raise ValidationError(
                f"an hourly answer covers at most {MAX_HOURLY_RANGE_DAYS} days", field="end_date"
            )
    return wanted


def usage_answer(customer: BillingCustomer, query: UsageQuery) -> dict[str, Any]:
    """``GET /v1/billing/usage``'s answer to ``query``, for ``customer``."""
    wanted = usage_request(query, _settings())
    read_snapshot()  # the charges and the usage they are of, at one moment
    keys = customer_keys(customer.id, wanted.filters.get("key"))
    charges: dict[date, Any] = {}
    if not wanted.filters and wanted.granularity != "hour":
        charges = daily_charges(customer, wanted.start, wanted.end)
    return usage_between(keys, wanted, charges).as_json()


def performance_answer(customer: BillingCustomer, query: PerformanceQuery) -> dict[str, Any]:
    check_range(query, _settings(), hours=True)
    wanted = UsageRequest(query.start_date, query.end_date, "day", (), query.given())
    keys = customer_keys(customer.id, wanted.filters.get("key"))
    return {
        "start_date": query.start_date.isoformat(),
        "end_date": query.end_date.isoformat(),
        "percentiles": "estimated from log-spaced latency buckets, within ±19 %",
        "models": performance(keys, wanted),
    }


def calls_answer(customer: BillingCustomer, query: CallsQuery) -> dict[str, Any]:
    """``GET /v1/billing/calls``'s answer: the range's latest calls, or the one named."""
    check_range(query, _settings(), hours=False)
    wanted = CallsRequest(
        query.start_date, query.end_date, query.given(), query.execution_id, query.limit
    )
    keys = customer_keys(customer.id, wanted.filters.get("key"))
    return {
        "start_date": query.start_date,
        "end_date": query.end_date,
        "execution_id": query.execution_id,
        "calls": recent_calls(keys, wanted),
    }


def forecast_answer(customer: BillingCustomer, query: NoQuery) -> dict[str, Any]:
    return forecast(keys_of(customer.id), budgets_of(customer.id), utcnow())


def recommendations_answer(customer: BillingCustomer, query: RecommendationQuery) -> dict[str, Any]:
    book = price_book.get()
    groups = comparable_groups(_settings().recommendation_groups)
    return recommendations(keys_of(customer.id), book, utcnow(), query.days, groups)


_RANGE_RULE = (
    "end_date is on or after start_date; the range is at most MAX_USAGE_RANGE_DAYS long"
    " (366 by default)"
)
_HOURLY_RULE = (
    f"; hourly detail (granularity hour, task_type or status) covers at most"
    f" {MAX_HOURLY_RANGE_DAYS} days within USAGE_HOURLY_RETENTION_DAYS; key names the"
    " caller's own keys."
)


# Each answer above, for the customer whose key is the request's bearer token; the
# pages (app/dashboard/customer.py) serve the same answers to a signed-in customer.
@operation(
    analytics,
    "GET",
    "/v1/billing/usage",
    summary="The caller's usage by hour, day or month, grouped and filtered",
    auth=API_KEY,
    query=UsageQuery,
    answers={200: UsageAnswer},
    errors=(400, 401, 503),
    rules=_RANGE_RULE + _HOURLY_RULE,
)
def get_usage(caller: BillingCustomer, query: UsageQuery) -> dict[str, Any]:
    return usage_answer(caller, query)


@operation(
    analytics,
    "GET",
    "/v1/billing/performance",
    summary="Calls, error rate, latency percentiles and tokens/s per model",
    auth=API_KEY,
    query=PerformanceQuery,
    answers={200: PerformanceAnswer},
    errors=(400, 401, 503),
    rules=_RANGE_RULE + _HOURLY_RULE,
)
def get_performance(caller: BillingCustomer, query: PerformanceQuery) -> dict[str, Any]:
    return performance_answer(caller, query)


@operation(
    analytics,
    "GET",
    "/v1/billing/calls",
    summary="The caller's latest calls, or one by execution id, with what each cost and why",
    auth=API_KEY,
    query=CallsQuery,
    answers={200: CallsAnswer},
    errors=(400, 401, 503),
    rules=_RANGE_RULE + "; key names the caller's own keys.",
)
def get_calls(caller: BillingCustomer, query: CallsQuery) -> dict[str, Any]:
    return calls_answer(caller, query)


@operation(
    analytics,
    "GET",
    "/v1/billing/forecast",
    summary="This month against the last, the month-end projection and budgets'",
    auth=API_KEY,
    answers={200: ForecastAnswer},
    errors=(400, 401, 503),
)
def get_forecast(caller: BillingCustomer) -> dict[str, Any]:
    return forecast_answer(caller, NoQuery())


@operation(
    analytics,
    "GET",
    "/v1/billing/recommendations",
    summary="Cheaper models for the caller's token mix, and caching's saving",
    auth=API_KEY,
    query=RecommendationQuery,
    answers={200: RecommendationsAnswer},
    errors=(400, 401, 503),
)
def get_recommendations(caller: BillingCustomer, query: RecommendationQuery) -> dict[str, Any]:
    return recommendations_answer(caller, query)


@operation(
    analytics,
    "GET",
    "/v1/billing/usage/export",
    summary="Raw events as CSV or JSON lines, streamed (admins: any customer's)",
    auth=(API_KEY, ADMIN),
    query=ExportQuery,
    answers={200: Media(("text/csv", "application/x-ndjson"))},
    errors=(400, 401, 404, 503),
    rules=_RANGE_RULE + "; customer_id is for admins only.",
)
def export_usage(query: ExportQuery) -> Response:
    """Stream raw events: a customer's own, or (admin token) one customer's or all."""
    settings = _settings()
    check_range(query, settings, hours=False)
    if is_admin(request, settings):
        customer_id = query.customer_id
        if customer_id is not None and db.session.get(BillingCustomer, customer_id) is None:
            raise NotFound("no such customer", field="customer_id")
    else:
        if query.customer_id is not None:
            raise ValidationError("only an admin may name a customer", field="customer_id")
        customer_id = authenticate_customer(request).id
    wanted = ExportRequest(query.start_date, query.end_date, query.format, customer_id)
    return export_response(wanted)


def export_response(wanted: ExportRequest) -> Response:
    """The export as a download, streamed as it is read. Its query runs before the
    answer starts (the first chunk is taken here): a failure is a 4xx or 503 with the
    JSON error, never a 200 cut off part way."""
    media = "text/csv" if wanted.format == "csv" else "application/x-ndjson"
    chunks = export_chunks(wanted)
    first = next(chunks, "")
    return Response(
        stream_with_context(itertools.chain([first], chunks)),
        mimetype=media,
        headers={**download_headers(wanted.filename), "Cache-Control": "no-store"},
    )
