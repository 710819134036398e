"""``/dashboard``: a customer's usage, spend, forecast, latency and alerts, signed in with
an API key. The page's figures come from ``/dashboard/data/<name>``, which answers
with exactly what the API answers for the signed-in customer."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

from flask import Blueprint, Response, redirect, render_template, request, url_for
from pydantic import BaseModel
from werkzeug.wrappers import Response as BaseResponse

from app.analytics.answers import (
    ForecastAnswer,
    PerformanceAnswer,
    RecommendationsAnswer,
    UsageAnswer,
)
from app.analytics.calls import CallsAnswer, CallsQuery
from app.analytics.export import ExportRequest, csv_text, download_headers
from app.analytics.queries import PerformanceQuery, RecommendationQuery, UsageQuery
from app.analytics.usage import UsageRequest, usage_between
from app.analytics.views import (
    NoQuery,
    calls_answer,
    export_response,
    forecast_answer,
    performance_answer,
    recommendations_answer,
    usage_answer,
)
from app.budgets.views import AlertList, BudgetList, alerts_answer, budgets_answer
from app.columns import money_str, utcnow
from app.contract import as_answer
from app.credits.views import PrepaidAnswer, prepaid_answer
from app.customers.keys import keys_of
from app.customers.models import BillingCustomer
from app.dashboard.session import (
    check_csrf,
    csrf_token,
    page_headers,
    sign_in_customer,
    sign_in_form,
    sign_out,
    signed_in_customer,
)
from app.errors import AuthenticationError, NotFound
from app.pricing.dimensions import COLUMNS
from app.shapes import parse_query

dashboard = Blueprint(
    "dashboard",
    __name__,
    url_prefix="/dashboard",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)
dashboard.after_request(page_headers)

# What each /dashboard/data/<name> answers: the API's own answer for the customer, to
# the same query, through the same model.
Answering = Callable[[BillingCustomer, Any], Any]
DATA: dict[str, tuple[type[BaseModel], Answering, type[BaseModel]]] = {
    "usage": (UsageQuery, usage_answer, UsageAnswer),
    "performance": (PerformanceQuery, performance_answer, PerformanceAnswer),
    "calls": (CallsQuery, calls_answer, CallsAnswer),
    "forecast": (NoQuery, forecast_answer, ForecastAnswer),
    "recommendations": (RecommendationQuery, recommendations_answer, RecommendationsAnswer),
    "budgets": (NoQuery, lambda customer, _: budgets_answer(customer), BudgetList),
    "alerts": (NoQuery, lambda customer, _: alerts_answer(customer), AlertList),
    "credits": (NoQuery, lambda customer, _: prepaid_answer(customer), PrepaidAnswer),
}
RANGES = (7, 30, 90)  # the days the page can show
BREAKDOWN_COLUMNS = ("provider", "model", "events", *COLUMNS, "cost")


def _customer() -> BillingCustomer:
    customer = signed_in_customer()
    if customer is None:
        raise AuthenticationError("sign in first", field="session")
    return customer


def _days() -> int:
    days = request.args.get("days", "30")
    return int(days) if days in {str(d) for d in RANGES} else 30


def _range(days: int) -> tuple[date, date]:
    """The page's days: the last ``days`` up to today (UTC), first and last."""
    today = utcnow().date()
    return today - timedelta(days=days - 1), today


@dashboard.get("/")
def page() -> Any:
    customer = signed_in_customer()
    if customer is None:
        return redirect(url_for("dashboard.sign_in_page"))
    days = _days()
    first, last = _range(days)
    return render_template(
        "dashboard.html",
        customer=customer,
        csrf=csrf_token(),
        days=days,
        ranges=RANGES,
        start=first.isoformat(),
        end=last.isoformat(),
    )


@dashboard.get("/sign-in")
def sign_in_page() -> Any:
    return sign_in_form("customer")


@dashboard.post("/sign-in")
def sign_in() -> Any:
    check_csrf()
    if sign_in_customer(request.form.get("api_key", "").strip()) is None:
        return sign_in_form("customer", "That key is unknown, revoked or its account inactive.")
    return redirect(url_for("dashboard.page"))


@dashboard.post("/sign-out")
def sign_out_customer() -> BaseResponse:
    return sign_out("dashboard.sign_in_page")


@dashboard.get("/data/<name>")
def data(name: str) -> dict[str, Any]:
    customer = _customer()
    if name not in DATA:
        raise NotFound(f"no data named {name}", field="name")
    query, answer, reply = DATA[name]
    result = as_answer(reply, answer(customer, parse_query(query)))
    return result.model_dump(mode="json", exclude_unset=True)


@dashboard.get("/breakdown.csv")
def breakdown_csv() -> Response:
    """The page's breakdown table (per model over the range) as a CSV file."""
    customer = _customer()
    first, last = _range(_days())
    summary = usage_between(
        keys_of(customer.id), UsageRequest(first, last, "total", ("provider", "model"))
    )
    groups = next(iter(summary.periods.values()), [])
    rows = [
        [
            *group.values,
            group.usage.events,
            *(getattr(group.usage, name) for name in COLUMNS),
            money_str(group.usage.cost),
        ]
        for group in sorted(groups, key=lambda g: -g.usage.cost)
    ]
    return Response(
        csv_text([BREAKDOWN_COLUMNS, *rows]),
        mimetype="text/csv",
        headers=download_headers(f"usage-breakdown-{first}-{last}.csv"),
    )


@dashboard.get("/events.csv")
def events_csv() -> Response:
    """The range's raw events, as ``GET /v1/billing/usage/export`` streams them."""
    customer = _customer()
    first, last = _range(_days())
    return export_response(ExportRequest(first, last, "csv", customer.id))
