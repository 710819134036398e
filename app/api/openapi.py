"""``GET /openapi.json``: the OpenAPI 3.1 document of every endpoint.

Written by hand next to the views it describes; a test checks that every
registered route appears here, and schemathesis fuzzes the API from it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint

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
_EVENT = {
    "type": "object",
    "required": ["event_id", "api_key_hash", "provider", "model", "tokens_input", "tokens_output"],
    "properties": {
        "event_id": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
        "api_key_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "provider": {"type": "string", "maxLength": 64},
        "model": {"type": "string", "maxLength": 128},
        "tokens_input": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
        "tokens_output": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
        "tokens_cache_read": {"type": "integer", "minimum": 0},
        "timestamp": {"type": "string", "format": "date-time"},
        "created_at": {
            "type": "string",
            "format": "date-time",
            "description": "alias of timestamp; give one or the other",
        },
        "execution_id": {"type": "string", "maxLength": 128},
        "task_type": {"type": "string", "maxLength": 64},
        "status": {"type": "string", "maxLength": 32},
        "execution_time": {"type": "number", "minimum": 0},
        "metadata": {"type": "object"},
    },
    "additionalProperties": False,  # an unknown field is a 400 naming it
}


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
        "schemas": {"Error": _ERROR, "UsageEvent": _EVENT},
    },
    "paths": {
        "/v1/usage/events": {
            "post": {
                "summary": "Record a batch of usage events",
                "security": [{"serviceToken": []}],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": {
                            "events": {
                                "type": "array",
                                "minItems": 1,
                                "maxItems": 1000,
                                "items": {"$ref": "#/components/schemas/UsageEvent"},
                            }
                        },
                    }
                ),
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
                "parameters": [
                    {
                        "name": n,
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "format": "date"},
                    }
                    for n in ("start_date", "end_date")
                ],
                "responses": {"200": _ok("usage"), **_errors(400, 401, 503)},
            }
        },
        "/v1/billing/portal": {
            "post": {
                "summary": "A Stripe billing portal session for the caller",
                "security": [{"apiKey": []}],
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["return_url"],
                        "properties": {"return_url": {"type": "string", "format": "uri"}},
                    }
                ),
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
                "requestBody": _json_body(
                    {
                        "type": "object",
                        "required": ["email", "name", "api_key"],
                        "properties": {
                            "email": {"type": "string", "format": "email"},
                            "name": {"type": "string"},
                            "api_key": {"type": "string"},
                            "company": {"type": "string"},
                        },
                    }
                ),
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
                "requestBody": _json_body({"type": "object"}),
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
