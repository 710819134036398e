"""HTTP: one blueprint per resource, one JSON error shape for every failure."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from app.contract import refuse_unasked_query
from app.database import UNAVAILABLE as DATABASE_UNAVAILABLE
from app.errors import ServiceError, ServiceUnavailable

log = logging.getLogger("usage_billing.api")


class JSONProvider(DefaultJSONProvider):
    """Responses encoded by orjson, keys in the order views build them.

    orjson encodes an ingest response's per-event results in a fraction of the
    standard library's time. Anything orjson would write
    differently from Flask (dates, which Flask writes as HTTP dates; Decimal;
    integers past 64 bits; non-string keys) or not at all goes to Flask's
    encoder, as does the indented form of debug mode. Request bodies stay with the standard library:
    orjson reads an integer past 64 bits as a float, which validation must see.
    """

    sort_keys = False
    _OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        if "indent" not in kwargs:
            try:
                return orjson.dumps(obj, option=self._OPTIONS).decode()
            except TypeError:
                pass
        return super().dumps(obj, **kwargs)


def _service_error(error: ServiceError) -> tuple[Any, int]:
    return jsonify(error.to_dict()), error.status


def _http_error(error: HTTPException) -> tuple[Any, int, dict[str, str]]:
    status = error.code or 500
    field = "body" if status == 413 else None
    body = {
        "error": {
            "code": error.name.lower().replace(" ", "_"),
            "message": error.description,
            "field": field,
        }
    }
    # The error's own headers (a 405's Allow), but not its HTML content type.
    headers = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
    return jsonify(body), status, headers


def _database_unavailable(error: Exception) -> tuple[Any, int, dict[str, str]]:
    """The database is down or restarting: a 503 the client can retry, not a 500."""
    log.warning("database unavailable: %s", type(error).__name__)
    unavailable = ServiceUnavailable("the database is unavailable; retry shortly")
    headers = {"Retry-After": str(unavailable.retry_after_seconds)}
    return jsonify(unavailable.to_dict()), unavailable.status, headers


def _unexpected(error: Exception) -> tuple[Any, int]:
    log.exception("unhandled error")
    return jsonify(ServiceError("internal error").to_dict()), 500


def register_api(app: Flask) -> None:
    app.json = JSONProvider(app)
    from app.analytics.views import analytics
    from app.api.health import health
    from app.api.metrics import metrics
    from app.api.openapi import openapi
    from app.billing.views import billing
    from app.budgets.views import budgets
    from app.credits.views import credits
    from app.customers.views import customers
    from app.ingest.views import ingest
    from app.plans.views import plans
    from app.ratelimits.views import rate_limits

    api = (
        ingest,
        analytics,
        customers,
        budgets,
        credits,
        rate_limits,
        plans,
        billing,
        health,
        metrics,
        openapi,
    )
    for blueprint in api:
        app.register_blueprint(blueprint)
    names = frozenset(blueprint.name for blueprint in api)

    @app.before_request
    def _query_asked() -> None:  # the pages (/dashboard, /admin) read their own
        if request.blueprint in names:
            refuse_unasked_query()

    app.register_error_handler(ServiceError, _service_error)
    app.register_error_handler(HTTPException, _http_error)
    for error in DATABASE_UNAVAILABLE:
        app.register_error_handler(error, _database_unavailable)
    app.register_error_handler(Exception, _unexpected)
