"""``/dashboard``: a customer's usage, spend, forecast, latency and alerts, signed in with
an API key. The page's figures come from ``/dashboard/data/<name>``, which answers
with exactly what the API answers for the signed-in customer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

from flask import Blueprint, Response, current_app, redirect, render_template, request, url_for
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
from app.analytics.queries import DateRange, PerformanceQuery, RecommendationQuery, UsageQuery
from app.analytics.usage import usage_between
from app.analytics.views import (
    NoQuery,
    calls_answer,
    check_range,
    customer_keys,
    export_response,
    forecast_answer,
    performance_answer,
    recommendations_answer,
    usage_answer,
    usage_request,
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
from app.errors import AuthenticationError, NotFound, ValidationError
from app.pricing.dimensions import COLUMNS
from app.shapes import parse, parse_query

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
RANGES = (7, 30, 90)  # the quick ranges the page offers (any other is chosen by dates)
DEFAULT_DAYS = 30
BREAKDOWN_COLUMNS = ("provider", "model", "events", *COLUMNS, "cost")
FILTERS = ("key", "provider", "model", "task_type")  # what the page can narrow to


def _customer() -> BillingCustomer:
    customer = signed_in_customer()
    if customer is None:
        raise AuthenticationError("sign in first", field="session")
    return customer


@dataclass(frozen=True)
class Shown:
    """What the page shows: a range of days, narrowed by the filters, and what was
    wrong with the asked-for range (the page then shows the default, and says so)."""

    start: date
    end: date
    filters: dict[str, str]
    problem: str | None = None
    field: str | None = None

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1


def _shown() -> Shown:
    """The range and filters of the page's query string: ``start``/``end`` (days, UTC),
    or ``days`` (the last so many), and any of the filters."""
    today = utcnow().date()
    filters = {name: v for name in FILTERS if (v := request.args.get(name, "").strip())}
    days = request.args.get("days")
    if days in {str(d) for d in RANGES}:
        return Shown(today - timedelta(days=int(days) - 1), today, filters)
    default = Shown(today - timedelta(days=DEFAULT_DAYS - 1), today, filters)
    if "start" not in request.args and "end" not in request.args:
        return default
    asked = {
        "start_date": request.args.get("start", default.start.isoformat()),
        "end_date": request.args.get("end", default.end.isoformat()),
    }
    try:
        dates = parse(DateRange, asked, whole="query")
        check_range(dates, current_app.config["SETTINGS"], hours=False)
    except ValidationError as exc:
        field = "start" if (exc.field or "").startswith("start") else "end"
        return replace(default, problem=exc.message, field=field)
    return Shown(dates.start_date, dates.end_date, filters)


@dashboard.get("/")
def page() -> Any:
    customer = signed_in_customer()
    if customer is None:
        return redirect(url_for("dashboard.sign_in_page"))
    shown = _shown()
    settings = current_app.config["SETTINGS"]
    today = utcnow().date()
    return render_template(
        "dashboard.html",
        customer=customer,
        csrf=csrf_token(),
        shown=shown,
        ranges=RANGES,
        keys=keys_of(customer.id),
        hourly_from=today - timedelta(days=settings.usage_hourly_retention_days),
        quick=next((d for d in RANGES if shown.days == d and shown.end == today), None),
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
    """The page's breakdown table (per model over its range and filters) as a CSV file."""
    customer = _customer()
    shown = _shown()
    first, last = shown.start, shown.end
    query = parse(
        UsageQuery,
        {
            "start_date": first.isoformat(),
            "end_date": last.isoformat(),
            "granularity": "total",
            "group_by": "provider,model",
            **shown.filters,
        },
        whole="query",
    )
    wanted = usage_request(query, current_app.config["SETTINGS"])
    summary = usage_between(customer_keys(customer.id, wanted.filters.get("key")), wanted)
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
    shown = _shown()
    return export_response(ExportRequest(shown.start, shown.end, "csv", customer.id))
