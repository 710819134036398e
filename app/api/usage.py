"""``GET /v1/billing/usage``: the caller's own usage, totals and per day and model, with
what each day added to its charge under its plan."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, request

from app.api.schemas import UsageQuery
from app.customers.keys import keys_of
from app.customers.services import authenticate_customer
from app.errors import ValidationError
from app.plans.services import daily_charges
from app.services.usage import usage_between
from app.shapes import parse

usage = Blueprint("usage", __name__)


def _query() -> UsageQuery:
    """The query, each parameter given once (a repeated one is a 400, not "first wins")."""
    given = request.args.to_dict(flat=False)
    for name, values in given.items():
        if len(values) > 1:
            raise ValidationError(f"{name} is given more than once", field=name)
    return parse(UsageQuery, {name: values[0] for name, values in given.items()}, whole="query")


@usage.get("/v1/billing/usage")
def get_usage() -> dict[str, Any]:
    customer = authenticate_customer(request)
    query = _query()
    start, end = query.start_date, query.end_date
    if end < start:
        raise ValidationError("end_date is before start_date", field="end_date")
    limit = current_app.config["SETTINGS"].max_usage_range_days
    if (end - start).days + 1 > limit:
        raise ValidationError(f"the range is longer than {limit} days", field="end_date")
    summary = usage_between(keys_of(customer.id), start, end, by_key=query.group_by == "key")
    summary.charges.update(daily_charges(customer, start, end))
    return summary.as_json()
