"""The worker reads an event the API checked as the API read it, without checking its
shape again (``read_message``); anything else it checks in full, as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.ingest.validation import CHECKED, EventLimits, read_message, validate_event
from app.pricing.dimensions import PART_COLUMNS
from tests.factories import event
from tests.helpers import SERVICE_TOKEN, auth, count_events, parked_events, record
from tests.provider_responses import scenarios

NOW = datetime.now(UTC)  # the factory dates its events now
LIMITS = EventLimits(timedelta(days=35), timedelta(minutes=5), 16_384)


def _provider_events() -> list[dict[str, Any]]:
    """Each JSON response of the providers' SDKs, as an event carrying it."""
    found = []
    for scenario in scenarios():
        if scenario.streamed or scenario.reference is None:
            continue
        raw = {k: v for k, v in event().items() if k not in ("model", "tokens_input")}
        raw.pop("tokens_output")
        raw.update(provider=scenario.provider, provider_usage=scenario.reference)
        if scenario.api_flavor:
            raw["api_flavor"] = scenario.api_flavor
        found.append(raw)
    return found


SENT = [
    event(timestamp=NOW.isoformat()),
    event(
        timestamp=(NOW - timedelta(days=3))
        .astimezone(timezone(timedelta(hours=-9, minutes=-30)))
        .isoformat(),
        **{name: 1 for name in PART_COLUMNS},
        usage_extra={"web_searches": 2},
        usage_flag="stream_cut_off",
        execution_id="x-1",
        task_type="review",
        status="error",
        execution_time="12.3456",
        metadata={"a": [1, {"b": None}], "note": "模型 ✓"},
    ),
    {
        **{k: v for k, v in event().items() if k != "tokens_input"},
        "tokens_input_uncached": 50,
        "tokens_cache_read": 100_000,
        "tokens_cache_write": 2_000,
    },
    {**{k: v for k, v in event().items() if k != "timestamp"}, "created_at": NOW.isoformat()},
    *_provider_events(),
]


@pytest.mark.parametrize("raw", SENT, ids=lambda raw: str(sorted(raw))[:60])
def test_an_event_the_api_checked_reads_back_as_the_api_read_it(raw: dict[str, Any]) -> None:
    """Every form an event can come in (flat, every part, Anthropic's uncached input,
    the time's alias, each provider's own response): the worker's read of the message
    is the API's reading, field for field."""
    checked = validate_event(raw, NOW, LIMITS)
    message = checked.to_message()
    assert message[CHECKED] == 1
    assert read_message(message, NOW, LIMITS) == checked


def test_a_client_cannot_send_the_mark(app: Flask, client: FlaskClient) -> None:
    """Only the API's own messages carry it: an event sent with it is refused, naming it."""
    sent = event(**{CHECKED: 1})
    resp = client.post("/v1/usage/events", json={"events": [sent]}, headers=auth(SERVICE_TOKEN))
    [result] = resp.get_json()["results"]
    assert result["status"] == "rejected" and result["error"]["field"] == CHECKED


def test_an_unmarked_event_is_checked_in_full_at_the_worker(app: Flask) -> None:
    """The middleware's events, a spool of an older release: no mark, the whole check."""
    good, bad = event(), event(tokens_input=10, tokens_cache_read=11)
    with app.app_context():
        result = record([bad, good])
    assert [r["field"] for r in result.rejected] == ["tokens_cache_read"]
    assert count_events(app, event_id=good["event_id"]) == 1


def _marked(**changes: Any) -> dict[str, Any]:
    message = validate_event(event(), datetime.now(UTC), LIMITS).to_message()
    return {k: v for k, v in {**message, **changes}.items() if v is not ...}


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"tokens_input": "1200"}, "tokens_input"),
        ({"tokens_output": -1}, "tokens_output"),
        ({"tokens_cache_read": 10**12}, "tokens_cache_read"),
        ({"usage_extra": [1]}, "usage_extra"),
        ({"usage_extra": {"web_searches": 1.5}}, "usage_extra"),
        ({"model": ...}, "model"),
        ({"execution_time": "soon"}, "execution_time"),
        ({"timestamp": "yesterday"}, "timestamp"),
        ({"timestamp": (datetime.now(UTC) - timedelta(days=40)).isoformat()}, "timestamp"),
    ],
)
def test_a_marked_message_gone_wrong_parks_its_event_and_keeps_the_rest(
    app: Flask, changes: dict[str, Any], field: str
) -> None:
    """A message written into Redis by hand, or grown old in a spool past the accepted
    window: its event is parked, naming the field, and never fails its batch (a batch
    that fails is retried for ever); the batch's other event is stored."""
    good, bad = _marked(), _marked(**changes)
    with app.app_context():
        result = record([bad, good])
    assert result.inserted == 1 and [r["field"] for r in result.rejected] == [field]
    assert count_events(app, event_id=good["event_id"]) == 1
    assert parked_events(app, [bad["event_id"]]) == [(bad["event_id"], field)]
