"""Each HTTP operation declared once: its route, caller, parameters, body and answers.

A view is declared with ``@operation(...)``. The declaration registers the Flask
route; checks the caller (``Auth``); reads the path's ids, the query string and
the JSON body with their pydantic models; and renders what the view returns
through the answer's response model. ``/openapi.json`` is rendered from the same
declarations (``openapi_document``), so what the document promises, what the
code checks and what it answers cannot drift apart: a test fuzzes every
operation from the document and holds each answer to its schema.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from functools import wraps
from typing import Annotated, Any

from flask import Blueprint, Flask, Response, current_app, request
from pydantic import BaseModel, ConfigDict, PlainSerializer, TypeAdapter, WithJsonSchema
from pydantic.json_schema import models_json_schema
from werkzeug.wrappers import Response as BaseResponse

from app.columns import amount_str, money_str
from app.errors import ValidationError
from app.security import require_token
from app.shapes import MAX_ID, Model, json_body, parse, parse_query, path_id

_OPERATION = "__operation__"
_PATH_PARAMETER = re.compile(r"<(?:\w+:)?(\w+)>")
_REF = "#/components/schemas/{model}"


class Answer(BaseModel):
    """A response model: what an operation answers.

    A field without a default is always there (``null`` when it has no value); one
    with a default is left out of an answer that did not set it.
    """

    model_config = ConfigDict(extra="forbid")


def _text(render: Callable[[Any], str], schema: dict[str, Any]) -> Any:
    return (PlainSerializer(render, return_type=str), WithJsonSchema(schema))


# How answers write values JSON has no type for (the same as before the models).
Instant = Annotated[datetime, *_text(datetime.isoformat, {"type": "string", "format": "date-time"})]
Day = Annotated[date, *_text(date.isoformat, {"type": "string", "format": "date"})]
_DECIMAL = {"type": "string", "pattern": r"^-?\d+(\.\d+)?$"}
Money = Annotated[Decimal, *_text(money_str, {**_DECIMAL, "description": "USD, a decimal string"})]
"""An amount of money in full: fixed-point, every stored place ("0.000450000000")."""
Quantity = Annotated[Decimal, *_text(amount_str, _DECIMAL)]
"""A limit or a spend as people write it: no trailing zeros ("1500", "0.01")."""


class ErrorDetail(Answer):
    code: str
    message: str
    field: str | None


class ErrorAnswer(Answer):
    """The one shape of every 4xx and 5xx (``app/errors.py``)."""

    error: ErrorDetail


@dataclass(frozen=True)
class Auth:
    """Who may call: an OpenAPI security scheme, and the check that the caller is one.

    ``check`` raises the 401 or 403; what it returns (the customer whose key it
    is) reaches the view as ``caller`` when ``passes_caller`` is set.
    """

    scheme: str
    security: Mapping[str, str]
    check: Callable[[], Any]
    passes_caller: bool = False


def token_auth(scheme: str, setting: str, what: str) -> Auth:
    """A shared bearer token of the settings (an unset one locks the operation)."""

    def check() -> None:
        token = getattr(current_app.config["SETTINGS"], setting).get_secret_value()
        require_token(request, token, what)

    return Auth(scheme, {"type": "http", "scheme": "bearer", "description": f"{what} token"}, check)


ADMIN = token_auth("adminToken", "admin_token", "admin")
SERVICE = token_auth("serviceToken", "service_token", "service")


@dataclass(frozen=True)
class Media:
    """An answer that is not a JSON object: a file or a text, in one of these types."""

    types: tuple[str, ...]


Reply = type[BaseModel] | Media


@dataclass(frozen=True)
class Operation:
    method: str
    rule: str
    summary: str
    auth: tuple[Auth, ...]
    answers: Mapping[int, Reply]
    errors: tuple[int, ...]
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # a required header: its meaning
    schemas: Mapping[str, TypeAdapter[Any]] = field(default_factory=dict)
    rules: str | None = None  # what the body or query must also hold, beyond their schemas

    @property
    def path(self) -> str:
        """The rule as OpenAPI writes a path: ``/x/<id>`` is ``/x/{id}``."""
        return _PATH_PARAMETER.sub(r"{\1}", self.rule)

    @property
    def path_ids(self) -> list[str]:
        return _PATH_PARAMETER.findall(self.rule)


def operation(
    blueprint: Blueprint,
    method: str,
    rule: str,
    *,
    summary: str,
    answers: Mapping[int, Reply],
    auth: Auth | tuple[Auth, ...] = (),
    errors: Iterable[int] = (),
    query: type[BaseModel] | None = None,
    body: type[BaseModel] | None = None,
    read_body: bool = True,
    body_field: str = "body",
    headers: Mapping[str, str] | None = None,
    schemas: Mapping[str, TypeAdapter[Any]] | None = None,
    rules: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare and register one operation.

    The view is called with each path id as an int, ``query`` and ``body`` as
    their models (unless ``read_body`` is off: a body the view must read itself,
    such as one whose signature covers its bytes), and ``caller``. Every path
    parameter is an id: anything else there is a 404 naming it. With several
    ``auth`` schemes the view checks which one the caller used.
    """
    schemes = auth if isinstance(auth, tuple) else (auth,)
    declared = Operation(
        method=method.upper(),
        rule=rule,
        summary=summary,
        auth=schemes,
        answers=answers,
        errors=tuple(sorted(set(errors))),
        query=query,
        body=body,
        headers=headers or {},
        schemas=schemas or {},
        rules=rules,
    )
    checked = schemes[0] if len(schemes) == 1 else None

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        @wraps(view)
        def endpoint(**path: str) -> Any:
            arguments: dict[str, Any] = {name: path_id(value, name) for name, value in path.items()}
            if checked is not None:
                caller = checked.check()
                if checked.passes_caller:
                    arguments["caller"] = caller
            if query is not None:
                arguments["query"] = parse_query(query)
            if body is not None and read_body:
                arguments["body"] = parse(body, json_body(request), whole=body_field)
            return _render(declared, view(**arguments))

        setattr(endpoint, _OPERATION, declared)
        blueprint.add_url_rule(rule, view_func=endpoint, methods=[declared.method])
        return endpoint

    return register


def refuse_unasked_query() -> None:
    """``before_request`` of the API's blueprints: a query parameter on an operation that
    declares none is a 400 naming it, as an unknown one is where an operation reads some."""
    if not request.args:
        return
    view = current_app.view_functions.get(request.endpoint or "")
    declared = getattr(view, _OPERATION, None)
    if declared is None or declared.query is None:
        name = next(iter(request.args))
        raise ValidationError(f"{name} is not a parameter of this endpoint", field=name)


def _render(declared: Operation, result: Any) -> Any:
    """A view's result as its answer: a model (or a dict, held to the model) as JSON."""
    if isinstance(result, BaseResponse):
        return result
    status = next(iter(declared.answers))
    if isinstance(result, tuple):
        result, status = result
    reply = declared.answers[status]
    if isinstance(reply, Media):
        return result
    body = as_answer(reply, result).model_dump_json(exclude_unset=True)
    return Response(body, status, mimetype="application/json")


def as_answer(reply: type[Model], result: Model | Mapping[str, Any]) -> Model:
    """``result`` as the answer model, a dict built elsewhere held to it."""
    return result if isinstance(result, reply) else reply.model_validate(result)


# -- the document ---------------------------------------------------------------------


def operations(app: Flask) -> list[Operation]:
    """Every declared operation the app serves, in the order they were registered."""
    found = (getattr(view, _OPERATION, None) for view in app.view_functions.values())
    return [op for op in found if op is not None]


def _schemas(declared: list[Operation]) -> tuple[dict[Any, Any], dict[str, Any]]:
    models: dict[type[BaseModel], str] = {ErrorAnswer: "serialization"}
    for op in declared:
        if op.body is not None:
            models[op.body] = "validation"
        for reply in op.answers.values():
            if isinstance(reply, type):
                models.setdefault(reply, "serialization")
    refs: dict[Any, Any]
    refs, document = models_json_schema(
        [(model, mode) for model, mode in models.items()],  # type: ignore[misc]
        ref_template=_REF,
    )
    schemas = document.get("$defs", {})
    for op in declared:
        for name, adapter in op.schemas.items():
            schemas[name] = adapter.json_schema(ref_template=_REF)
    return refs, schemas


def _content(ref: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": ref}}}


def _parameters(op: Operation) -> list[dict[str, Any]]:
    ids = {"type": "integer", "minimum": 1, "maximum": MAX_ID}
    found: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": ids} for name in op.path_ids
    ]
    if op.query is not None:
        schema = op.query.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", []))
        found += [
            {"name": name, "in": "query", "required": name in required, "schema": prop}
            for name, prop in schema["properties"].items()
        ]
    found += [
        {
            "name": name,
            "in": "header",
            "required": True,
            "description": meaning,
            "schema": {"type": "string"},
        }
        for name, meaning in op.headers.items()
    ]
    return found


def _described(op: Operation, refs: dict[Any, Any]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, reply in op.answers.items():
        if isinstance(reply, Media):
            media = {
                kind: {"schema": {"type": "object" if kind == "application/json" else "string"}}
                for kind in reply.types
            }
            responses[str(status)] = {"description": reply.types[0], "content": media}
        else:
            responses[str(status)] = {
                "description": (reply.__doc__ or reply.__name__).strip().splitlines()[0],
                **_content(refs[(reply, "serialization")]),
            }
    error = refs[(ErrorAnswer, "serialization")]
    for status in op.errors:
        if str(status) not in responses:
            responses[str(status)] = {"description": "the error", **_content(error)}
            continue
        # An answer of its own for some of the status's causes, the error for the others.
        content = responses[str(status)]["content"]["application/json"]
        content["schema"] = {"anyOf": [content["schema"], error]}
    described: dict[str, Any] = {"summary": op.summary, "responses": responses}
    if op.rules:
        described["description"] = op.rules
    if op.auth:
        described["security"] = [{auth.scheme: []} for auth in op.auth]
    if parameters := _parameters(op):
        described["parameters"] = parameters
    if op.body is not None:
        described["requestBody"] = {"required": True, **_content(refs[(op.body, "validation")])}
    return described


def openapi_document(app: Flask, title: str, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every operation the app serves."""
    declared = operations(app)
    refs, schemas = _schemas(declared)
    paths: dict[str, dict[str, Any]] = {}
    for op in declared:
        paths.setdefault(op.path, {})[op.method.lower()] = _described(op, refs)
    security = {auth.scheme: dict(auth.security) for op in declared for auth in op.auth}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "components": {"securitySchemes": security, "schemas": schemas},
        "paths": paths,
    }
