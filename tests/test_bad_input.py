"""Bad input: property-based tests, a schema-driven fuzz of every endpoint, and the hard cases."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import negative_data_rejection
from schemathesis.core.parameters import ParameterLocation

from app.errors import ValidationError
from app.ingest.validation import CHECKED, EventLimits, validate_event
from app.registry import services
from tests.factories import event
from tests.helpers import ADMIN_TOKEN, SERVICE_TOKEN, auth, count_events, measured, wait_for

LIMITS = EventLimits(timedelta(days=35), timedelta(minutes=5), 8192)
NOW = datetime(2026, 11, 20, tzinfo=UTC)
EVENT_FIELDS = {
    "event",
    "event_id",
    "api_key_hash",
    "provider",
    "model",
    "tokens_input",
    "tokens_input_uncached",
    "tokens_output",
    "tokens_cache_read",
    "tokens_cache_write",
    "tokens_input_audio",
    "tokens_cache_audio_read",
    "tokens_output_audio",
    "tokens_output_reasoning",
    "usage_extra",
    "provider_usage",
    "api_flavor",
    "usage_flag",
    "timestamp",
    "execution_id",
    "task_type",
    "status",
    "execution_time",
    "metadata",
    "created_at",
}

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(sorted(EVENT_FIELDS)), json_values) | json_values)
@settings(max_examples=400, deadline=None)
def test_any_json_is_an_event_or_a_validation_error_naming_a_field(raw: Any) -> None:
    try:
        validate_event(raw, NOW, LIMITS)
    except ValidationError as error:
        unknown = set(raw) - EVENT_FIELDS if isinstance(raw, dict) else set()
        assert error.field in EVENT_FIELDS | unknown
        assert error.message


@given(
    tokens_input=st.integers(min_value=-(10**12), max_value=10**12),
    tokens_output=st.integers(min_value=-(10**12), max_value=10**12),
    cached=st.integers(min_value=-5, max_value=10**12),
)
@settings(max_examples=300, deadline=None)
def test_token_counts_are_accepted_exactly_when_in_range(
    tokens_input: int, tokens_output: int, cached: int
) -> None:
    raw = event(
        tokens_input=tokens_input,
        tokens_output=tokens_output,
        tokens_cache_read=cached,
        timestamp=NOW.isoformat(),
    )
    ok = 0 <= tokens_input <= 10**9 and 0 <= tokens_output <= 10**9 and 0 <= cached <= tokens_input
    try:
        parsed = validate_event(raw, NOW, LIMITS)
    except ValidationError as error:
        assert not ok and error.field in {"tokens_input", "tokens_output", "tokens_cache_read"}
    else:
        assert ok and parsed.tokens_input == tokens_input


def _deep(levels: int) -> dict:
    value: dict = {}
    for _ in range(levels):
        value = {"x": value}
    return value


BAD_EVENTS: dict[str, tuple[dict, str]] = {
    "negative tokens": (event(tokens_input=-1), "tokens_input"),
    "huge tokens": (event(tokens_output=10**15), "tokens_output"),
    "float tokens": (event(tokens_input=1.5), "tokens_input"),
    "string tokens": (event(tokens_input="100"), "tokens_input"),
    "boolean tokens": (event(tokens_output=True), "tokens_output"),
    "far-future timestamp": (event(timestamp="2100-01-01T00:00:00+00:00"), "timestamp"),
    "far-past timestamp": (event(timestamp="1999-01-01T00:00:00+00:00"), "timestamp"),
    "impossible date": (event(timestamp="2026-02-30T00:00:00+00:00"), "timestamp"),
    "timestamp without offset": (event(timestamp="2026-11-20T10:00:00"), "timestamp"),
    "deep metadata": (event(metadata=_deep(50)), "metadata"),
    "metadata nested 900 deep": (event(metadata=_deep(900)), "metadata"),
    "first instant at +14:00": (event(timestamp="0001-01-01T00:00:00+14:00"), "timestamp"),
    "last instant at -14:00": (event(timestamp="9999-12-31T23:59:59-14:00"), "timestamp"),
    "an unknown field": (event(tokens_in=5), "tokens_in"),
    "its time given twice": (event(created_at=NOW.isoformat()), "created_at"),
    "huge metadata": (event(metadata={"blob": "x" * 20000}), "metadata"),
    "emoji event id": (event(event_id="evt-💥"), "event_id"),
    "zero-width model": (event(model="gpt\u200b-4o"), "model"),
    "bidi override provider": (event(provider="open\u202eai"), "provider"),
    "nul byte task type": (event(task_type="code\x00gen"), "task_type"),
    "NaN execution time": (event(execution_time=float("nan")), "execution_time"),
    "NaN in metadata": (event(metadata={"ratio": float("nan")}), "metadata"),
    "Infinity in metadata": (event(metadata={"deep": [{"x": float("inf")}]}), "metadata"),
    "integer past 64 bits in metadata": (event(metadata={"n": 2**64}), "metadata"),
    "missing model": ({k: v for k, v in event().items() if k != "model"}, "model"),
    "raw key instead of hash": (event(api_key_hash="sk-live-abc"), "api_key_hash"),
    "not an object": ([1, 2, 3], "event"),  # type: ignore[dict-item]
}


def test_mixed_batch_keeps_the_good_events_and_stores_none_of_the_bad(
    app: Flask, client: FlaskClient, celery_worker
) -> None:
    good = [event(metadata={"note": "模型 ünïcødé ✓"}), event(model="unknown-model-x")]
    bad = [body for body, _ in BAD_EVENTS.values()]
    resp = client.post(
        "/v1/usage/events", json={"events": [good[0], *bad, good[1]]}, headers=auth(SERVICE_TOKEN)
    )
    assert resp.status_code == 202
    results = resp.get_json()["results"]
    assert [r["status"] for r in results] == ["accepted", *["rejected"] * len(bad), "accepted"]
    for result, (name, (_, field)) in zip(results[1:-1], BAD_EVENTS.items(), strict=True):
        assert result["error"]["field"] == field, name
    services(app).outbox.flush()
    for evt in good:
        wait_for(lambda evt=evt: count_events(app, event_id=evt["event_id"]) == 1)
    for body in bad:
        if isinstance(body, dict) and isinstance(body.get("event_id"), str):
            assert count_events(app, event_id=body["event_id"]) == 0


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        (b"{not json", "application/json", 400, "body"),
        (b"[" * 100_000, "application/json", 400, "body"),
        (b'{"events": []}', "application/json", 400, "events"),
        (b'{"events": {}}', "application/json", 400, "events"),
        (b'"just a string"', "application/json", 400, "events"),
        (b'{"events": [1]}', "text/plain", 415, "Content-Type"),
        (b"x" * (5 * 1024 * 1024), "application/json", 413, "body"),
    ],
)
def test_malformed_bodies_get_a_json_4xx_naming_the_field(
    client: FlaskClient, body: bytes, content_type: str, status: int, field: str
) -> None:
    resp = client.post(
        "/v1/usage/events", data=body, content_type=content_type, headers=auth(SERVICE_TOKEN)
    )
    assert resp.status_code == status
    assert resp.get_json()["error"]["field"] == field


def test_oversize_batch_is_413_and_stores_nothing(app: Flask, client: FlaskClient) -> None:
    events = [event() for _ in range(1001)]
    resp = client.post("/v1/usage/events", json={"events": events}, headers=auth(SERVICE_TOKEN))
    assert resp.status_code == 413 and resp.get_json()["error"]["field"] == "events"
    assert count_events(app, event_id=events[0]["event_id"]) == 0


FUZZ_KEY = "sk-fuzz-customer"
NO_INPUT_PATHS = {"/healthz", "/readyz", "/openapi.json"}
# schemathesis' default statuses for a refused schema-violating request
REFUSALS = ["400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429", "5xx"]


def _auth_for(path: str) -> dict[str, str]:
    if path == "/v1/usage/events":
        return auth(SERVICE_TOKEN)
    if path.startswith(
        (
            "/v1/billing/customers",
            "/v1/billing/keys",
            "/v1/billing/plans",
            "/v1/billing/credits/grants",
        )
    ) or path == ("/v1/billing/budgets/{budget_id}"):
        return auth(ADMIN_TOKEN)
    return auth(FUZZ_KEY)


def _unknowable(case) -> list:
    """The checks a case's answer cannot be held to: a negative case whose negation
    touched a header no longer is one once ``_auth_for`` has put the real credentials
    on it, so whether it ought to have been refused is not known (its answer is still
    checked for status, type and schema)."""
    mutations = getattr(case.meta.phase.data, "mutations", ()) if case.meta else ()
    if any(m.parameter_location is ParameterLocation.HEADER for m in mutations):
        return [negative_data_rejection]
    return []


def _fuzz(operation, mode, failures: list[str]) -> int:
    """Run schemathesis' cases for one operation, every answer checked against the
    document (schemathesis' checks); returns how many were sent. Each failure is
    kept, named, and the run goes on, so one run lists them all."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case) -> None:
        nonlocal sent
        case.headers = {**(case.headers or {}), **_auth_for(case.path)}
        response = case.call()
        sent += 1
        unknowable = _unknowable(case)
        try:
            case.validate_response(response, excluded_checks=unknowable)
        except* Exception as group:
            for failure in group.exceptions:
                for one in getattr(failure, "exceptions", [failure]):
                    failures.append(f"{mode.value} {case.method} {case.path}: {one}"[:600])
        if 400 <= response.status_code < 500:
            assert isinstance(json.loads(response.text)["error"]["field"], str), case.path
        if case.path == "/v1/usage/events" and response.status_code == 202:
            results = json.loads(response.text)["results"]
            for result in results:
                assert result["status"] != "rejected" or result["error"]["field"]
            if mode is schemathesis.GenerationMode.NEGATIVE and not unknowable:
                # the batch is judged event by event: what was made invalid is refused
                assert any(result["status"] == "rejected" for result in results), case.body

    check()
    return sent


def _checks_of(document: dict) -> schemathesis.config.SchemathesisConfig:
    """Schemathesis' checks, told three things the document says in words.

    An operation whose description states rules beyond its schemas (a range's length,
    a tokens limit being whole) may refuse schema-valid input with a 400; every other
    must accept what its schema allows. A batch of events with one valid event is a 202
    that refuses the others one by one: ``_fuzz`` looks for what a negative case made
    invalid among its results. And the credentials are the real ones, put on each case
    here (``_auth_for``): the wrong and the missing ones are tested by the tests of each
    capability, not by ``ignored_auth``.
    """
    ruled = []
    for path, item in document["paths"].items():
        for method, declared in item.items():
            checks = {}
            if "description" in declared:
                checks["positive_data_acceptance"] = {
                    "expected-statuses": ["2xx", "400", "401", "403", "404", "409"]
                }
            if (method, path) == ("post", "/v1/usage/events"):
                checks["negative_data_rejection"] = {"expected-statuses": [*REFUSALS, "202"]}
            if checks:
                ruled.append(
                    {"include-path": path, "include-method": method.upper(), "checks": checks}
                )
    return schemathesis.config.SchemathesisConfig.from_dict(
        {"operations": ruled, "checks": {"ignored_auth": {"enabled": False}}}
    )


def test_fuzzed_requests_get_answers_as_the_document_declares_them(
    app: Flask, make_customer, stripe_server
) -> None:
    """Every operation of /openapi.json, driven by schemathesis' generated cases: no
    5xx, every answer of the declared status, type and schema, invalid input refused,
    valid input accepted (where the document states no further rule), and every
    refusal naming its field."""
    make_customer(FUZZ_KEY, stripe_customer_id=stripe_server.add_customer("cus_fuzz"))
    document = app.test_client().get("/openapi.json").get_json()
    schema = schemathesis.openapi.from_wsgi("/openapi.json", app, config=_checks_of(document))
    operations = [result.ok() for result in schema.get_all_operations()]
    served = {
        re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # /x/<id> is /x/{id} in the document
        for rule in app.url_map.iter_rules()
        if rule.endpoint != "static"
        # pages (tests/test_pages.py) and the Prometheus exposition (tests/test_metrics.py)
        and rule.endpoint.split(".")[0] not in {"dashboard", "admin", "metrics"}
        and not rule.endpoint.startswith("test_")  # the stand-in /v1/execute of the tests
    }
    assert {op.path for op in operations} == served
    calls: dict[str, int] = {}
    failures: list[str] = []
    modes = (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE)
    for operation, mode in itertools.product(operations, modes):
        if mode is modes[1] and operation.path in NO_INPUT_PATHS:
            continue  # nothing to make invalid
        calls[f"{mode.value} {operation.method.upper()} {operation.path}"] = _fuzz(
            operation, mode, failures
        )
    measured(
        f"schemathesis: {sum(calls.values())} requests over {len(calls)} operations and modes,"
        f" {len(failures)} failures"
    )
    assert not failures, "\n".join(dict.fromkeys(failures))


def test_created_at_is_read_as_the_event_time() -> None:
    """The original design's name for the event's time is its documented alias."""
    raw = {k: v for k, v in event().items() if k != "timestamp"}
    at = NOW - timedelta(hours=3)
    assert validate_event({**raw, "created_at": at.isoformat()}, NOW, LIMITS).created_at == at


def test_the_fields_an_event_may_hold_are_those_it_travels_with() -> None:
    """Every field reaches the worker, or what it stands for does: the alias of the
    time, the input in Anthropic's convention, a provider's own usage (as counts)."""
    from app.pricing.dimensions import PART_COLUMNS

    every_part = {name: 1 for name in PART_COLUMNS}
    full = event(
        timestamp=NOW.isoformat(),
        **every_part,
        usage_extra={"web_searches": 2},
        usage_flag="stream_cut_off",
    )
    parsed = validate_event(full, NOW, LIMITS)
    converted = {"created_at", "tokens_input_uncached", "provider_usage", "api_flavor"}
    assert _accepted_fields() == {*parsed.to_message(), *converted} - {CHECKED}


def _accepted_fields() -> set[str]:
    from app.ingest.validation import EventShape

    return set(EventShape.__annotations__)


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("start_date=2026-01-01&start_date=bogus&end_date=2026-01-02", "start_date"),
        ("start_date=2026-01-01&end_date=2026-01-02&end_date=2026-01-03", "end_date"),
        ("start_date=2026-W01-1&end_date=2026-01-31", "start_date"),  # an ISO week date
        ("start_date=2026-001&end_date=2026-01-31", "start_date"),  # an ordinal date
        ("start_date=20260101&end_date=2026-01-31", "start_date"),
    ],
)
def test_usage_dates_are_given_once_as_calendar_dates(
    client: FlaskClient, make_customer, query: str, field: str
) -> None:
    make_customer("key-dates")
    resp = client.get(f"/v1/billing/usage?{query}", headers=auth("key-dates"))
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == field


def test_a_wrong_method_is_a_json_405_with_allow(client: FlaskClient) -> None:
    resp = client.get("/v1/usage/events", headers=auth(SERVICE_TOKEN))
    assert resp.status_code == 405 and resp.get_json()["error"]["code"] == "method_not_allowed"
    assert "POST" in resp.headers["Allow"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"created": "1700000000"}, "created"),
        ({"created": 10**30}, "created"),
        ({"created": True}, "created"),
        ({"id": "evt_" + "x" * 300}, "id"),
        ({"id": 12}, "id"),
        ({"type": "t" * 300}, "type"),
        ({"type": None}, "type"),
        ({"data": [1, 2]}, "data"),
        ({"data": {"object": "cus_1"}}, "data"),
    ],
)
def test_a_signed_webhook_of_the_wrong_shape_is_a_400_naming_the_field(
    client: FlaskClient, change: dict, field: str
) -> None:
    import hashlib
    import hmac
    import time

    from tests.helpers import WEBHOOK_SECRET

    body = {"id": "evt_shape", "type": "invoice.paid", "created": int(time.time()), "data": {}}
    payload = json.dumps({**body, **change}).encode()
    at = int(time.time())
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{at}.".encode() + payload, hashlib.sha256)
    resp = client.post(
        "/v1/billing/webhooks/stripe",
        data=payload,
        headers={
            "Content-Type": "application/json",
            "Stripe-Signature": f"t={at},v1={mac.hexdigest()}",
        },
    )
    assert resp.status_code == 400 and resp.get_json()["error"]["field"] == field


def test_the_documented_event_fields_are_those_validation_takes(client: FlaskClient) -> None:
    schema = client.get("/openapi.json").get_json()["components"]["schemas"]["UsageEvent"]
    assert set(schema["properties"]) == _accepted_fields() == EVENT_FIELDS - {"event"}
    assert schema["additionalProperties"] is False


@pytest.mark.parametrize(
    "path",
    [
        "/v1/billing/customers/1/keys",
        "/v1/billing/customers/1/budgets",
        "/v1/billing/customers/1/alerts",
        "/v1/billing/budgets",
        "/v1/billing/alerts",
        "/v1/billing/plans",
        "/v1/billing/invoice/upcoming",
        "/v1/billing/customers/1/invoice/upcoming",
        "/healthz",
        "/readyz",
        "/openapi.json",
    ],
)
@pytest.mark.parametrize("query", ["frobnicate=1", "verbose=1&verbose=2"])
def test_a_query_parameter_no_endpoint_reads_is_a_400_naming_it(
    client: FlaskClient, make_customer: Any, path: str, query: str
) -> None:
    """docs/api.md: an unknown or repeated query parameter is a 400 naming it, on every
    endpoint, not only on those that read a query."""
    make_customer("key-query")
    token = ADMIN_TOKEN if "/customers/" in path or path.endswith("/plans") else "key-query"
    resp = client.get(f"{path}?{query}", headers=auth(token))
    name = query.split("=", 1)[0]
    assert (resp.status_code, resp.get_json()["error"]["field"]) == (400, name), resp.get_json()


def test_metadata_nested_past_the_parsers_stack_rejects_its_event_not_the_batch(
    client: FlaskClient,
) -> None:
    """Nested 1,000 deep, the body cannot be parsed whole: the part too deep is cut,
    and only its event is refused, naming metadata (the whole batch was lost as 'the
    body is not valid JSON')."""
    good = [event(), event()]
    deep = event(metadata={"note": "x"})
    text = json.dumps({"events": [*good, deep]})
    nested = '{"x": ' * 1000 + "1" + "}" * 1000
    text = text.replace('{"note": "x"}', nested)
    resp = client.post(
        "/v1/usage/events",
        data=text,
        headers={**auth(SERVICE_TOKEN), "Content-Type": "application/json"},
    )
    body = resp.get_json()
    assert resp.status_code == 202, body
    assert [r["status"] for r in body["results"]] == ["accepted", "accepted", "rejected"]
    assert body["results"][2]["error"]["field"] == "metadata"


@pytest.mark.services
def test_a_chunked_body_past_the_limit_is_a_413_as_with_a_length(stack: Any, tmp_path: Any) -> None:
    """``make api`` (gunicorn, which reads chunked bodies itself): a body past
    ``MAX_BODY_BYTES`` in chunks is the same 413 as with a Content-Length (it was a 400
    for the JSON the limit cut short)."""
    import socket

    from tests.processes import SHIPPED_SERVICE_TOKEN, ShippedStack

    _, _, local = stack
    shipped = ShippedStack(local.database_url, local.redis_url, tmp_path)
    shipped.start_api()
    big = json.dumps({"events": [event(metadata={"pad": "x" * 7000}) for _ in range(700)]}).encode()
    head = (
        "POST /v1/usage/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: Bearer {SHIPPED_SERVICE_TOKEN}\r\nContent-Type: application/json\r\n"
    ).encode()
    chunks = b"".join(
        f"{len(part):x}\r\n".encode() + part + b"\r\n"
        for part in (big[i : i + 65536] for i in range(0, len(big), 65536))
    )
    requests = [
        head + f"Content-Length: {len(big)}\r\n\r\n".encode() + big,
        head + b"Transfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n",
    ]
    answers = []
    try:
        for request in requests:
            with socket.create_connection(("127.0.0.1", shipped.port), timeout=30) as sock:
                try:  # the server answers as soon as it knows, and may close on the rest
                    sock.sendall(request)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            status = int(answer.split(b" ", 2)[1])
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            answers.append((status, body["error"]["field"]))
    finally:
        shipped.stop()
    assert answers == [(413, "body"), (413, "body")]
