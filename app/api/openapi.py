"""``GET /openapi.json``: the OpenAPI 3.1 document of every endpoint.

The paths are written here; every request shape is rendered from the pydantic
model that validates it (``app/ingest/validation.py``, ``app/api/schemas.py``),
so the two cannot drift. A test checks that every registered route appears
here, and schemathesis fuzzes the API from it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from pydantic import BaseModel

from app.analytics.queries import (
    ExportQuery,
    PerformanceQuery,
    RecommendationQuery,
    UsageQuery,
)
from app.api.schemas import PortalRequest
from app.billing.stripe_gateway import StripeEvent
from app.budgets.views import BudgetCreate, BudgetUpdate, CustomerLimit, WebhookSet
from app.customers.views import CustomerCreate, KeyCreate
from app.ingest.validation import EVENT_SCHEMA, EVENT_SHAPE, EventBatch
from app.plans.views import PlanAssign, PlanCreate

openapi = Blueprint("openapi", __name__)

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "field"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "field": {"type": ["string", "null"]},
            },
        }
    },
}
# The request shapes, rendered from the models that validate them.
_MODELS: dict[str, type[BaseModel]] = {
    "EventBatch": EventBatch,
    "CustomerCreate": CustomerCreate,
    "KeyCreate": KeyCreate,
    "BudgetCreate": BudgetCreate,
    "BudgetUpdate": BudgetUpdate,
    "CustomerLimit": CustomerLimit,
    "WebhookSet": WebhookSet,
    "PlanCreate": PlanCreate,
    "PlanAssign": PlanAssign,
    "PortalRequest": PortalRequest,
    "UsageQuery": UsageQuery,
    "StripeEvent": StripeEvent,
}


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR, EVENT_SCHEMA: EVENT_SHAPE.json_schema()}
    for name, model in _MODELS.items():
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[name] = schema
    # A batch's items are validated one by one, as events: show them as such.
    schemas["EventBatch"]["properties"]["events"]["items"] = _ref(EVENT_SCHEMA)
    return schemas


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    return [
        {
            "name": name,
            "in": "query",
            "required": name in schema.get("required", []),
            "schema": prop,
        }
        for name, prop in schema["properties"].items()
    ]


def _errors(*codes: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(code): {"description": "error", **ref} for code in codes}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _path_id(name: str) -> list[dict[str, Any]]:
    schema = {"type": "integer", "minimum": 1, "maximum": 2**31 - 1}
    return [{"name": name, "in": "path", "required": True, "schema": schema}]


def _ok(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or {"type": "object"}}}
    return {"description": description, "content": content}


SPEC: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "usage-billing", "version": "0.1.0"},
    "components": {
        "securitySchemes": {
            "apiKey": {"type": "http", "scheme": "bearer", "description": "customer API key"},
            "serviceToken": {"type": "http", "scheme": "bearer"},
            "adminToken": {"type": "http", "scheme": "bearer"},
        },
        "schemas": _schemas(),
    },
    "paths": {
        "/v1/usage/events": {
            "post": {
                "summary": "Record a batch of usage events",
                "security": [{"serviceToken": []}],
                "requestBody": _json_body(_ref("EventBatch")),
                "responses": {
                    "202": _ok("per-event results: accepted, duplicate or rejected"),
                    **_errors(400, 401, 403, 413, 415),
                },
            }
        },
        "/v1/billing/usage": {
            "get": {
                "summary": "The caller's usage by hour, day or month, grouped and filtered",
                "security": [{"apiKey": []}],
                "parameters": _query_parameters(UsageQuery),
                "responses": {"200": _ok("usage"), **_errors(400, 401, 503)},
            }
        },
        "/v1/billing/performance": {
            "get": {
                "summary": "Calls, error rate, latency percentiles and tokens/s per model",
                "security": [{"apiKey": []}],
                "parameters": _query_parameters(PerformanceQuery),
                "responses": {"200": _ok("per provider and model"), **_errors(400, 401, 503)},
            }
        },
        "/v1/billing/forecast": {
            "get": {
                "summary": "This month against the last, the month-end projection and budgets'",
                "security": [{"apiKey": []}],
                "responses": {"200": _ok("trend and forecast"), **_errors(400, 401, 503)},
            }
        },
        "/v1/billing/recommendations": {
            "get": {
                "summary": "Cheaper models for the caller's token mix, and caching's saving",
                "security": [{"apiKey": []}],
                "parameters": _query_parameters(RecommendationQuery),
                "responses": {"200": _ok("a price comparison"), **_errors(400, 401, 503)},
            }
        },
        "/v1/billing/usage/export": {
            "get": {
                "summary": "Raw events as CSV or JSON lines, streamed (admins: any customer's)",
                "security": [{"apiKey": []}, {"adminToken": []}],
                "parameters": _query_parameters(ExportQuery),
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {
                            "text/csv": {"schema": {"type": "string"}},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    **_errors(400, 401, 404, 503),
                },
            }
        },
        "/v1/billing/portal": {
            "post": {
                "summary": "A Stripe billing portal session for the caller",
                "security": [{"apiKey": []}],
                "requestBody": _json_body(_ref("PortalRequest")),
                "responses": {
                    "200": _ok(
                        "session", {"type": "object", "properties": {"url": {"type": "string"}}}
                    ),
                    **_errors(400, 401, 404, 415, 502, 503),
                },
            }
        },
        "/v1/billing/customers": {
            "post": {
                "summary": "Onboard a customer (admin)",
                "security": [{"adminToken": []}],
                "requestBody": _json_body(_ref("CustomerCreate")),
                "responses": {"201": _ok("created"), **_errors(400, 401, 403, 415, 502, 503)},
            }
        },
        "/v1/billing/customers/{customer_id}/keys": {
            "post": {
                "summary": "Issue an API key (admin); the key is in this answer only",
                "security": [{"adminToken": []}],
                "parameters": _path_id("customer_id"),
                "requestBody": _json_body(_ref("KeyCreate")),
                "responses": {"201": _ok("the key, once"), **_errors(400, 401, 403, 404, 415)},
            },
            "get": {
                "summary": "A customer's API keys (admin): labels and prefixes, never a key",
                "security": [{"adminToken": []}],
                "parameters": _path_id("customer_id"),
                "responses": {"200": _ok("keys"), **_errors(401, 403, 404)},
            },
        },
        "/v1/billing/keys/{key_id}/revoke": {
            "post": {
                "summary": "Revoke an API key (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("key_id"),
                "responses": {"200": _ok("the revoked key"), **_errors(401, 403, 404)},
            }
        },
        "/v1/billing/keys/{key_id}/rotate": {
            "post": {
                "summary": "A new key with the same label, the old one revoked (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("key_id"),
                "responses": {"201": _ok("the new key, once"), **_errors(401, 403, 404, 409)},
            }
        },
        "/v1/billing/customers/{customer_id}/budgets": {
            "post": {
                "summary": "Set a budget (admin): per customer, or per key",
                "security": [{"adminToken": []}],
                "parameters": _path_id("customer_id"),
                "requestBody": _json_body(_ref("BudgetCreate")),
                "responses": {"201": _ok("the budget"), **_errors(400, 401, 403, 404, 415)},
            },
            "get": {
                "summary": "A customer's budgets with this period's spend (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("customer_id"),
                "responses": {"200": _ok("budgets"), **_errors(401, 403, 404)},
            },
        },
        "/v1/billing/budgets/{budget_id}": {
            "put": {
                "summary": "Change a budget's limit, thresholds or hardness (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("budget_id"),
                "requestBody": _json_body(_ref("BudgetUpdate")),
                "responses": {"200": _ok("the budget"), **_errors(400, 401, 403, 404, 415)},
            },
            "delete": {
                "summary": "Remove a budget (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("budget_id"),
                "responses": {"200": _ok("deleted"), **_errors(401, 403, 404)},
            },
        },
        "/v1/billing/customers/{customer_id}/alerts": {
            "get": {
                "summary": "A customer's alerts and every delivery attempt (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("customer_id"),
                "responses": {"200": _ok("alerts"), **_errors(401, 403, 404)},
            }
        },
        "/v1/billing/budgets": {
            "get": {
                "summary": "The caller's budgets with this period's spend",
                "security": [{"apiKey": []}],
                "responses": {"200": _ok("budgets"), **_errors(401)},
            }
        },
        "/v1/billing/budgets/{budget_id}/customer-limit": {
            "put": {
                "summary": "The caller's own lower limit on one of its budgets (null removes it)",
                "security": [{"apiKey": []}],
                "parameters": _path_id("budget_id"),
                "requestBody": _json_body(_ref("CustomerLimit")),
                "responses": {"200": _ok("the budget"), **_errors(400, 401, 404, 415)},
            }
        },
        "/v1/billing/alerts/webhook": {
            "put": {
                "summary": "Where the caller's alerts go; the answer holds the secret, once",
                "security": [{"apiKey": []}],
                "requestBody": _json_body(_ref("WebhookSet")),
                "responses": {"200": _ok("url and secret"), **_errors(400, 401, 415)},
            }
        },
        "/v1/billing/alerts": {
            "get": {
                "summary": "The caller's alerts and every delivery attempt",
                "security": [{"apiKey": []}],
                "responses": {"200": _ok("alerts"), **_errors(401)},
            }
        },
        "/v1/billing/plans": {
            "post": {
                "summary": "A new version of a plan (admin); versions are never edited",
                "security": [{"adminToken": []}],
                "requestBody": _json_body(_ref("PlanCreate")),
                "responses": {"201": _ok("the version"), **_errors(400, 401, 403, 415)},
            },
            "get": {
                "summary": "Every plan version (admin)",
                "security": [{"adminToken": []}],
                "responses": {"200": _ok("plans"), **_errors(401, 403)},
            },
        },
        "/v1/billing/customers/{customer_id}/plan": {
            "post": {
                "summary": "Put a customer on a plan from a day's start, UTC (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("customer_id"),
                "requestBody": _json_body(_ref("PlanAssign")),
                "responses": {"201": _ok("assigned"), **_errors(400, 401, 403, 404, 415)},
            }
        },
        "/v1/billing/customers/{customer_id}/invoice/upcoming": {
            "get": {
                "summary": "A customer's period so far, with our cost and the margin (admin)",
                "security": [{"adminToken": []}],
                "parameters": _path_id("customer_id"),
                "responses": {"200": _ok("invoice"), **_errors(401, 403, 404)},
            }
        },
        "/v1/billing/invoice/upcoming": {
            "get": {
                "summary": "The caller's billing period so far, line by line",
                "security": [{"apiKey": []}],
                "responses": {"200": _ok("invoice"), **_errors(401)},
            }
        },
        "/v1/billing/webhooks/stripe": {
            "post": {
                "summary": "Stripe webhook (signed with STRIPE_WEBHOOK_SECRET)",
                "parameters": [
                    {
                        "name": "Stripe-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    }
                ],
                "requestBody": _json_body(_ref("StripeEvent")),
                "responses": {"200": _ok("processed or duplicate"), **_errors(400, 503)},
            }
        },
        "/healthz": {"get": {"summary": "Process alive", "responses": {"200": _ok("ok")}}},
        "/readyz": {
            "get": {
                "summary": "Database and broker reachable",
                "responses": {"200": _ok("ready"), "503": _ok("not ready")},
            }
        },
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": _ok("spec")}}},
    },
}


@openapi.get("/openapi.json")
def spec() -> dict[str, Any]:
    return SPEC
