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

from app.api.schemas import CustomerCreate, PortalRequest, UsageQuery
from app.billing.stripe_gateway import StripeEvent
from app.ingest.validation import EVENT_SCHEMA, EVENT_SHAPE, EventBatch

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
        {"name": name, "in": "query", "required": name in schema["required"], "schema": prop}
        for name, prop in schema["properties"].items()
    ]


def _errors(*codes: int) -> dict[str, Any]:
    ref = {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    return {str(code): {"description": "error", **ref} for code in codes}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


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
                "summary": "The caller's usage, totals and per day and model",
                "security": [{"apiKey": []}],
                "parameters": _query_parameters(UsageQuery),
                "responses": {"200": _ok("usage"), **_errors(400, 401, 503)},
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
