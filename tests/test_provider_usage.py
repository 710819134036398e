"""Charging what providers bill: their own responses and streams, built by their SDKs,
read by the price source's extractors, every usage dimension in the ledger.

Each stored cost is held against ``calc_price(extract_usage(...))`` of the same
response at the event's own timestamp, to 10⁻¹² USD.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from genai_prices import Usage, calc_price, extract_usage
from sqlalchemy import select

from app.customers.models import BillingCustomer
from app.extensions import db
from app.ingest.models import RejectedEvent, UsageDaily, UsageEvent
from app.ingest.validation import EventLimits, validate_event
from app.pricing.dimensions import COLUMN_OF, COLUMNS
from app.security import hash_api_key
from tests.factories import event
from tests.fake_provider import FakeProvider
from tests.helpers import (
    ADMIN_TOKEN,
    SERVICE_TOKEN,
    auth,
    count_events,
    measured,
    record,
    scrape,
    stored_events,
    wait_for,
)
from tests.processes import ShippedStack
from tests.provider_responses import Scenario, chat_completion, chat_stream, scenarios

TOLERANCE = Decimal("1e-12")
NOW = datetime.now(UTC)
LIMITS = EventLimits(timedelta(days=35), timedelta(minutes=5), 8192)


def reference_flavor(scenario: Scenario) -> str:
    if scenario.provider != "openai":
        return "default"
    assert scenario.reference is not None
    return "responses" if scenario.reference.get("object") == "response" else "chat"


def reference_cost(scenario: Scenario, when: datetime) -> Decimal:
    """What the price source makes of the provider's own response."""
    assert scenario.reference is not None
    extracted = extract_usage(
        scenario.reference, provider_id=scenario.provider, api_flavor=reference_flavor(scenario)
    )
    return extracted.calc_price(genai_request_timestamp=when).total_price


def reference_counts(scenario: Scenario) -> dict[str, int]:
    assert scenario.reference is not None
    extracted = extract_usage(
        scenario.reference, provider_id=scenario.provider, api_flavor=reference_flavor(scenario)
    )
    return {COLUMN_OF[k]: v for k, v in vars(extracted.usage).items() if k in COLUMN_OF}


def _provider_event(scenario: Scenario, **fields: Any) -> dict[str, Any]:
    assert scenario.reference is not None
    raw = event(f"key-{scenario.name}", provider=scenario.provider, **fields)
    for name in ("model", "tokens_input", "tokens_output"):
        raw.pop(name)
    raw["provider_usage"] = scenario.reference
    return raw


JSON_SCENARIOS = [s for s in scenarios() if not s.streamed]


@pytest.mark.parametrize("scenario", JSON_SCENARIOS, ids=lambda s: s.name)
def test_a_provider_response_is_charged_what_the_price_source_computes(
    app: Flask, scenario: Scenario
) -> None:
    """The worker's path on the SDK-built response of every flavour: its usage read
    by the extractor (no flavour given), priced, stored in each dimension."""
    raw = _provider_event(scenario, timestamp=NOW.isoformat())
    with app.app_context():
        result = record([raw], now=NOW)
    [row] = stored_events(app, event_id=raw["event_id"])
    assert result.inserted == 1 and not result.rejected, result.rejected
    assert abs(row.cost_total - reference_cost(scenario, row.created_at)) <= TOLERANCE
    expected = reference_counts(scenario)
    assert {name: getattr(row, name) for name in expected} == expected
    assert row.tokens_total == row.tokens_input + row.tokens_output
    if row.charges is not None:  # the lines add up to what was charged
        lines = sum(Decimal(amount) for _, _, amount in row.charges.values())
        assert abs(lines - row.cost_total) <= TOLERANCE * len(row.charges)


def test_anthropic_caching_is_charged_for_every_part_not_refused() -> None:
    """The issue's case: input 50 beside 100,000 cached and 2,000 written, refused
    before as 'tokens_cache_read cannot exceed tokens_input'."""
    [scenario] = [s for s in JSON_SCENARIOS if s.name == "anthropic-cached"]
    parsed = validate_event(_provider_event(scenario, timestamp=NOW.isoformat()), NOW, LIMITS)
    assert (parsed.tokens_input, parsed.tokens_cache_read, parsed.tokens_cache_write) == (
        102_050,
        100_000,
        2_000,
    )
    # claude-sonnet-4-5: $3 input, $0.30 cache read, $3.75 cache write, $15 output per MTok
    assert reference_cost(scenario, NOW) == Decimal("0.04515")


def test_the_one_hour_cache_writes_and_web_searches_travel_in_usage_extra(app: Flask) -> None:
    [scenario] = [s for s in JSON_SCENARIOS if s.name == "anthropic-1h-cache-thinking-search"]
    raw = _provider_event(scenario, timestamp=NOW.isoformat())
    with app.app_context():
        record([raw], now=NOW)
    [row] = stored_events(app, event_id=raw["event_id"])
    assert row.usage_extra["cache_write_1h_tokens"] == 5_000
    assert row.usage_extra["web_searches"] == 3
    assert row.tokens_output_reasoning == 2_500
    # each unit its own line: 1-hour writes at $10, 5-minute ones at $6.25 per MTok
    assert row.charges["cache_write_1h_tokens"] == [5000, "0.000010000000", "0.050000000000"]
    assert row.charges["cache_write_tokens"] == [1000, "0.000006250000", "0.006250000000"]
    assert row.charges["web_searches"] == [3, "0.010000000000", "0.030000000000"]


def test_a_fee_per_request_is_charged_once_per_event_on_its_own_line(app: Flask) -> None:
    """Perplexity's sonar: $1 per MTok each way and $12 per thousand requests."""
    raw = event(
        provider="perplexity",
        model="sonar",
        tokens_input=1_000,
        tokens_output=500,
        timestamp=NOW.isoformat(),
    )
    with app.app_context():
        record([raw], now=NOW)
    [row] = stored_events(app, event_id=raw["event_id"])
    expected = calc_price(
        Usage(input_tokens=1_000, output_tokens=500), "sonar", provider_id="perplexity"
    )
    assert row.cost_total == expected.total_price == Decimal("0.0135")
    assert row.charges["requests"] == [1, "0.012000000000", "0.012000000000"]


def test_overlapping_parts_fit_when_their_overlap_is_counted() -> None:
    """80 cached and 50 audio input tokens, 30 of them both: 100 in all."""
    parts = {"tokens_cache_read": 80, "tokens_input_audio": 50, "tokens_cache_audio_read": 30}
    parsed = validate_event(
        event(tokens_input=100, timestamp=NOW.isoformat(), **parts), NOW, LIMITS
    )
    assert (parsed.tokens_input, parsed.tokens_cache_audio_read) == (100, 30)


def test_a_flat_event_in_anthropics_convention_says_so_by_its_field() -> None:
    """``tokens_input`` counts every input token; Anthropic's ``input_tokens`` leaves
    the cached ones out, and goes in ``tokens_input_uncached``."""
    raw = event(
        tokens_input_uncached=50,
        tokens_cache_read=100_000,
        tokens_cache_write=2_000,
        timestamp=NOW.isoformat(),
    )
    raw.pop("tokens_input")
    assert validate_event(raw, NOW, LIMITS).tokens_input == 102_050


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"tokens_input": 50, "tokens_cache_read": 100_000}, "tokens_cache_read", "includes"),
        (
            {"tokens_input": 100, "tokens_cache_read": 60, "tokens_cache_write": 50},
            "tokens_cache_read",
            "tokens_cache_read + tokens_cache_write (110) cannot exceed tokens_input (100)",
        ),
        ({"tokens_output": 5, "tokens_output_reasoning": 6}, "tokens_output_reasoning", "5"),
        (  # 80 cached and 50 audio, 10 of them both: 120 tokens, more than 100
            {
                "tokens_input": 100,
                "tokens_cache_read": 80,
                "tokens_input_audio": 50,
                "tokens_cache_audio_read": 10,
            },
            "tokens_cache_audio_read",
            "exceeds tokens_input (100)",
        ),
        ({"tokens_input_uncached": 10}, "tokens_input_uncached", "not both"),
        ({"usage_extra": {"input_tokens": 5}}, "usage_extra", "not a usage key of its own"),
        ({"usage_extra": {"frobs": 5}}, "usage_extra", "frobs"),
        ({"provider_usage": {"usage": {"prompt_tokens": 1}}}, "tokens_input", "usage once"),
    ],
)
def test_a_flat_event_whose_parts_do_not_fit_is_refused_naming_the_field(
    fields: dict[str, Any], field: str, says: str
) -> None:
    from app.errors import ValidationError

    with pytest.raises(ValidationError) as refused:
        validate_event(event(timestamp=NOW.isoformat(), **fields), NOW, LIMITS)
    assert refused.value.field == field and says in refused.value.message


def test_an_unknown_response_shape_is_refused_naming_what_was_tried(client: FlaskClient) -> None:
    raw = event(provider="openai")
    for name in ("model", "tokens_input", "tokens_output"):
        raw.pop(name)
    raw["provider_usage"] = {"usage": {"tokens": 12}}
    resp = client.post("/v1/usage/events", json={"events": [raw]}, headers=auth(SERVICE_TOKEN))
    [result] = resp.get_json()["results"]
    assert result["status"] == "rejected" and result["error"]["field"] == "provider_usage"
    assert "chat: Missing value at `usage.prompt_tokens`" in result["error"]["message"]


def test_the_batch_endpoint_takes_a_providers_response_beside_flat_events(
    app: Flask, client: FlaskClient, celery_worker: Any
) -> None:
    """``POST /v1/usage/events`` with Gemini's and OpenAI's own responses: read at the
    API (a bad one is a 4xx there), sent on flat, priced by the worker."""
    picked = [
        s for s in JSON_SCENARIOS if s.name in {"gemini-cached-thinking", "openai-chat-audio"}
    ]
    raws = [_provider_event(s, timestamp=NOW.isoformat()) for s in picked]
    resp = client.post("/v1/usage/events", json={"events": raws}, headers=auth(SERVICE_TOKEN))
    assert resp.status_code == 202 and resp.get_json()["accepted"] == 2, resp.get_json()
    ids = {r["event_id"] for r in raws}
    wait_for(lambda: count_events(app, list(ids)) == 2, timeout=30)
    by_id = {row.event_id: row for row in stored_events(app) if row.event_id in ids}
    for scenario, raw in zip(picked, raws, strict=True):
        row = by_id[raw["event_id"]]
        assert abs(row.cost_total - reference_cost(scenario, row.created_at)) <= TOLERANCE
    [audio] = [row for row in by_id.values() if row.provider == "openai"]
    assert (audio.tokens_input_audio, audio.tokens_output_audio) == (1_200, 700)


def test_geminis_breakdown_lists_every_kind_it_had(app: Flask) -> None:
    """Gemini lists the modalities of its cached tokens; one it leaves out had none.
    The price source, given the listed ones only, refuses to guess how many cached
    tokens were audio; read as the breakdown says (none), the call is priced."""
    from tests.provider_responses import gemini_json, gemini_response

    body = gemini_json(
        gemini_response("gemini-2.5-flash", 20_000, 500, cached=12_000, audio_in=4_000)
    )
    with pytest.raises(ValueError, match="require explicit cache_audio_read_tokens"):
        extract_usage(body, provider_id="google").calc_price()
    raw = event(provider="google", timestamp=NOW.isoformat())
    for name in ("model", "tokens_input", "tokens_output"):
        raw.pop(name)
    raw["provider_usage"] = body
    with app.app_context():
        record([raw], now=NOW)
    [row] = stored_events(app, event_id=raw["event_id"])
    usage = Usage(
        **vars(extract_usage(body, provider_id="google").usage), cache_audio_read_tokens=0
    )
    expected = calc_price(usage, "gemini-2.5-flash", provider_id="google").total_price
    assert row.tokens_cache_audio_read == 0 and abs(row.cost_total - expected) <= TOLERANCE
    # and without the breakdown at all the response is ambiguous: refused, not guessed
    del body["usageMetadata"]["cacheTokensDetails"]
    from app.errors import ValidationError

    raw["provider_usage"] = body
    with pytest.raises(ValidationError, match="ambiguous"):
        validate_event(raw, NOW, LIMITS)


# -- Streams, read as the providers' SDKs read them ---------------------------------------
STREAMS = [s for s in scenarios() if s.streamed]


@pytest.fixture()
def fake_provider() -> Iterator[FakeProvider]:
    no_usage = chat_stream(
        "openai-chat-stream-no-usage", chat_completion("gpt-4o", 900, 80), include_usage=False
    )
    unknown = Scenario(
        "unknown-shape", "openai", None, "gpt-4o", body={"id": "x", "usage": {"n": 1}}
    )
    server = FakeProvider([*scenarios(), no_usage, unknown]).start()
    yield server
    server.stop()


def test_the_fake_streams_are_what_the_sdks_parse(fake_provider: FakeProvider) -> None:
    """Our streams are the providers' own: each SDK, pointed at the fake provider,
    reads the stream into the usage its response holds (the reference)."""
    import anthropic
    import openai
    from google import genai
    from google.genai import types as gt

    by_name = {s.name: s for s in STREAMS}

    def headers(name: str) -> dict[str, str]:
        return {"X-Scenario": name}

    chat = openai.OpenAI(base_url=f"{fake_provider.url}/v1", api_key="sk-test", max_retries=0)
    chunks = list(
        chat.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers("openai-chat-stream"),
        )
    )
    assert chunks[-1].usage.model_dump() == by_name["openai-chat-stream"].reference["usage"]
    with chat.responses.stream(
        model="gpt-4.1-mini", input="hi", extra_headers=headers("openai-responses-stream")
    ) as stream:
        final = stream.get_final_response()
    assert final.usage.model_dump() == by_name["openai-responses-stream"].reference["usage"]
    claude = anthropic.Anthropic(base_url=fake_provider.url, api_key="sk-test", max_retries=0)
    with claude.messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers=headers("anthropic-stream"),
    ) as stream:
        message = stream.get_final_message()
    reference = by_name["anthropic-stream"].reference["usage"]
    assert {k: v for k, v in message.usage.model_dump().items() if k.endswith("tokens")} == {
        k: v for k, v in reference.items() if k.endswith("tokens")
    }
    gemini = genai.Client(
        api_key="test",
        http_options=gt.HttpOptions(base_url=fake_provider.url, headers=headers("gemini-stream")),
    )
    last = list(gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="hi"))[-1]
    assert (
        last.usage_metadata.model_dump(mode="json", by_alias=True, exclude_none=True)
        == (by_name["gemini-stream"].reference["usageMetadata"])
    )


# -- Through the stack as shipped ---------------------------------------------------------
def _shipped(stack: Any, tmp_path: Path, provider: FakeProvider) -> ShippedStack:
    _, _, local = stack
    shipped = ShippedStack(
        local.database_url,
        local.redis_url,
        tmp_path,
        {
            "ENABLE_PRICING_MIDDLEWARE": "true",  # metering is opt-in
            "DEMO_EXECUTE_ENDPOINT": "true",  # the stand-in /v1/execute, relaying ...
            "DEMO_PROVIDER_URL": provider.url,  # ... to the fake provider
        },
    )
    shipped.start_worker()
    shipped.start_api()
    return shipped


def _execute(port: int, scenario: Scenario) -> tuple[int, str, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    body = {"scenario": scenario.name, "provider": scenario.provider, "task_type": "codegen"}
    if scenario.api_flavor:
        body["api_flavor"] = scenario.api_flavor
    conn.request(
        "POST",
        "/v1/execute",
        json.dumps(body),
        {"Authorization": f"Bearer key-{scenario.name}", "Content-Type": "application/json"},
    )
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, response.getheader("Content-Type") or "", data


def _stored(app: Flask, names: list[str], timeout: float = 60) -> dict[str, UsageEvent]:
    hashes = {hash_api_key(f"key-{name}"): name for name in names}

    def found() -> dict[str, UsageEvent] | None:
        with app.app_context():
            rows = db.session.scalars(
                select(UsageEvent).where(UsageEvent.api_key_hash.in_(list(hashes)))
            ).all()
            for row in rows:
                db.session.expunge(row)
            db.session.rollback()
        return {hashes[r.api_key_hash]: r for r in rows} if len(rows) == len(hashes) else None

    return wait_for(found, timeout=timeout, interval=0.25)


@pytest.mark.services
def test_make_api_meters_every_flavour_streamed_or_not_as_the_provider_bills(
    app: Flask,
    stack: Any,
    tmp_path: Path,
    fake_provider: FakeProvider,
    make_customer: Callable[..., BillingCustomer],
    client: FlaskClient,
) -> None:
    """``make api`` relaying to the provider, ``make worker`` recording: every JSON
    response and stream of every flavour, each stored once at the price source's
    cost of the provider's own response, its streams passed on byte for byte, and
    each dimension in the rollup and the usage endpoint."""
    every = scenarios()
    customers = {s.name: make_customer(f"key-{s.name}") for s in every}
    shipped = _shipped(stack, tmp_path, fake_provider)
    try:
        for scenario in every:
            status, content_type, data = _execute(shipped.port, scenario)
            assert status == 200, (scenario.name, data[:200])
            if scenario.streamed:  # passed on untouched
                assert content_type.startswith("text/event-stream")
                assert data == b"".join(scenario.sse())
            else:
                assert json.loads(data) == scenario.body
        rows = _stored(app, [s.name for s in every])
    finally:
        shipped.stop()
    wrong = []
    for scenario in every:
        row = rows[scenario.name]
        expected = reference_cost(scenario, row.created_at)
        if abs(row.cost_total - expected) > TOLERANCE or row.usage_flag is not None:
            wrong.append((scenario.name, row.cost_total, expected, row.usage_flag))
        counts = reference_counts(scenario)
        assert {name: getattr(row, name) for name in counts} == counts, scenario.name
    measured(f"provider responses through make api: {len(every)} flavours, {len(wrong)} differ")
    assert not wrong
    # every dimension reaches the rollup and the usage endpoint
    [audio] = [s for s in every if s.name == "openai-chat-audio"]
    day = rows[audio.name].created_at.date().isoformat()
    resp = client.get(
        f"/v1/billing/usage?start_date={day}&end_date={day}&granularity=total",
        headers=auth(f"key-{audio.name}"),
    )
    totals = resp.get_json()["totals"]
    assert {name: totals[name] for name in COLUMNS} == {
        name: getattr(rows[audio.name], name) for name in COLUMNS
    }
    with app.app_context():
        daily = db.session.scalar(
            select(UsageDaily).where(UsageDaily.api_key_hash == hash_api_key(f"key-{audio.name}"))
        )
        assert (daily.tokens_input_audio, daily.tokens_output_audio) == (1_200, 700)
        db.session.rollback()
    assert customers  # every key belonged to a customer


@pytest.mark.services
def test_a_stream_cut_off_or_without_usage_is_recorded_flagged_and_a_shape_unknown_is_parked(
    app: Flask,
    stack: Any,
    tmp_path: Path,
    fake_provider: FakeProvider,
    client: FlaskClient,
) -> None:
    """Never dropped silently: a stream the client leaves after Anthropic's
    ``message_start`` is stored with its input and flagged ``stream_cut_off``; a chat
    stream without ``include_usage`` is stored flagged ``stream_without_usage``; a
    response no extractor reads is parked naming ``provider_usage``. Each is counted
    in the metrics and shown on ``/admin``. The stream's first byte is not held back."""
    [anthropic] = [s for s in STREAMS if s.name == "anthropic-stream"]
    no_usage = fake_provider.scenarios["openai-chat-stream-no-usage"]
    unknown = fake_provider.scenarios["unknown-shape"]
    fake_provider.pause_after[anthropic.name] = 1  # message_start, then wait
    shipped = _shipped(stack, tmp_path, fake_provider)
    try:
        # the client reads the first event, waits, and hangs up
        sock = socket.create_connection(("127.0.0.1", shipped.port), timeout=10)
        body = json.dumps({"scenario": anthropic.name, "provider": "anthropic"}).encode()
        started = time.monotonic()
        sock.sendall(
            b"POST /v1/execute HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer key-{anthropic.name}\r\n".encode()
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        first = b""
        while b"message_start" not in first:
            first += sock.recv(65536)
        first_byte = time.monotonic() - started
        sock.close()
        time.sleep(0.5)
        fake_provider.resume.set()  # the provider goes on writing to a closed client
        for scenario in (no_usage, unknown):
            assert _execute(shipped.port, scenario)[0] == 200
        rows = _stored(app, [anthropic.name, no_usage.name])
        parked = wait_for(
            lambda: _parked(app, hash_api_key(f"key-{unknown.name}")), timeout=60, interval=0.25
        )
        worker_metrics = scrape(shipped.worker_metrics_port)
        api_metrics = scrape(shipped.port)
    finally:
        shipped.stop()
    cut = rows[anthropic.name]
    assert cut.usage_flag == "stream_cut_off"
    assert (cut.tokens_input, cut.tokens_cache_read, cut.tokens_output) == (102_050, 100_000, 1)
    empty = rows[no_usage.name]
    assert (empty.usage_flag, empty.tokens_total) == ("stream_without_usage", 0)
    assert parked.field == "provider_usage" and "not a openai response" in parked.reason
    assert first_byte < 5  # the provider held the rest for 10 s: nothing waited for it
    flagged = {
        labels: value
        for (name, labels), value in api_metrics.items()
        if name == "ub_streams_flagged_total"
    }
    assert flagged[(("flag", "stream_cut_off"),)] >= 1
    assert flagged[(("flag", "stream_without_usage"),)] >= 1
    assert worker_metrics[("ub_events_parked_total", (("field", "provider_usage"),))] >= 1
    overview = _admin_overview(client)
    assert {m["model"] for m in overview["flagged_usage"]} >= {cut.model, empty.model}
    assert any(p["field"] == "provider_usage" for p in overview["parked_events"]["latest"])


def _parked(app: Flask, key_hash: str) -> RejectedEvent | None:
    with app.app_context():
        rows = db.session.scalars(select(RejectedEvent)).all()
        for row in rows:
            db.session.expunge(row)
        db.session.rollback()
    return next((r for r in rows if (r.payload or {}).get("api_key_hash") == key_hash), None)


def _admin_overview(client: FlaskClient) -> dict[str, Any]:
    page = client.get("/admin/sign-in").get_data(as_text=True)
    token = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    client.post(
        "/admin/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": token, "operator": "Ada"}
    )
    return client.get("/admin/data").get_json()


# -- The extractors, read as the source reads them ----------------------------------------
def _extractors() -> list[Any]:
    from genai_prices import data_snapshot

    return [
        extractor
        for provider in data_snapshot.get_snapshot().providers
        for extractor in provider.extractors or ()
    ]


def _response_for(extractor: Any, draw: Any) -> Any:
    """A response shaped by the extractor's own paths, with any value at each: counts,
    wrong types, gaps, lists for its per-modality items."""
    from genai_prices.types import ArrayMatch
    from hypothesis import strategies as st

    odd = st.one_of(
        st.integers(min_value=-3, max_value=-1),
        st.floats(allow_nan=True),
        st.none(),
        st.booleans(),
        st.text(max_size=3),
        st.just({}),
    )
    count = st.integers(min_value=0, max_value=10**6)
    value = st.one_of(count, count, count, count, count, count, count, count, odd)

    def put(into: dict, path: list[Any], leaf: Any) -> None:
        *steps, last = path
        for step in steps:
            if isinstance(step, ArrayMatch):
                kind = draw(st.sampled_from(["TEXT", "AUDIO", "IMAGE", "VIDEO", "DOCUMENT"]))
                item = {step.field: kind}
                into.setdefault("_items", []).append(item)
                into = item
            else:
                into = into.setdefault(step, {}) if isinstance(into.get(step, {}), dict) else {}
        into[last] = leaf

    def paths(path: Any) -> list[Any]:
        return [path] if isinstance(path, str) else list(path)

    response: dict[str, Any] = {}
    usage: dict[str, Any] = {}
    for mapping in extractor.mappings:  # a required count is there nine times in ten
        if draw(st.integers(0, 9)) < (9 if mapping.required else 5):
            put(usage, paths(mapping.path), draw(value))
    _lists(usage)
    root = paths(extractor.root)
    if draw(st.integers(0, 9)) < 9:  # sometimes no usage at all
        put(response, root, usage)
    if draw(st.booleans()):
        put(response, paths(extractor.model_path), draw(st.one_of(st.text(max_size=5), value)))
    return response


def _lists(node: Any) -> None:
    """Turn the collected per-modality items into the lists the response holds."""
    if isinstance(node, dict):
        for key, child in list(node.items()):
            if isinstance(child, dict) and "_items" in child:
                node[key] = child.pop("_items")
            _lists(node[key])
    elif isinstance(node, list):
        for child in node:
            _lists(child)


@pytest.mark.parametrize("index", range(len(_extractors())))
def test_the_extractors_read_as_the_source_reads(index: int) -> None:
    """Our reading of each extractor of the catalogue (``read_usage``) gives what the
    source's own ``UsageExtractor.extract`` gives, or refuses with its message."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from app.ingest.provider_usage import read_usage

    extractor = _extractors()[index]

    @settings(max_examples=60, deadline=None)
    @given(st.data())
    def same(data: Any) -> None:
        response = _response_for(extractor, data.draw)
        try:
            model, usage = extractor.extract(response)
            theirs: Any = (model, dict(vars(usage)))
        except ValueError as exc:
            theirs = str(exc)
        try:
            ours: Any = read_usage(extractor, response)
        except ValueError as exc:
            ours = str(exc)
        assert ours == theirs, (extractor.api_flavor, response)

    same()
