"""``GET /v1/billing/usage``: the caller's own usage, totals and per day and model."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from flask import Blueprint, current_app, request

from app.errors import ValidationError
from app.services.customers import authenticate_customer
from app.services.usage import usage_between

usage = Blueprint("usage", __name__)


_CALENDAR_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")  # not ISO's week or ordinal dates


def _date_param(name: str) -> date:
    values = request.args.getlist(name)
    if len(values) > 1:
        raise ValidationError(f"{name} is given more than once", field=name)
    raw = values[0] if values else ""
    if not raw:
        raise ValidationError(f"{name} is required (YYYY-MM-DD)", field=name)
    try:
        if not _CALENDAR_DATE.fullmatch(raw):
            raise ValueError(raw)
        return date.fromisoformat(raw)
    except ValueError as exc:
        raise ValidationError(f"{name} must be a date as YYYY-MM-DD", field=name) from exc


@usage.get("/v1/billing/usage")
def get_usage() -> dict[str, Any]:
    customer = authenticate_customer(request)
    start, end = _date_param("start_date"), _date_param("end_date")
    if end < start:
        raise ValidationError("end_date is before start_date", field="end_date")
    limit = current_app.config["SETTINGS"].max_usage_range_days
    if (end - start).days + 1 > limit:
        raise ValidationError(f"the range is longer than {limit} days", field="end_date")
    return usage_between(customer.api_key_hash, start, end)
