"""The metering pipeline end to end: API → Celery worker → priced rows."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from unittest.mock import ANY

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, select, update

from app.extensions import db
from app.ingest.ledger import recorded_batches
from app.ingest.models import RejectedEvent, UsageDaily, UsageEvent, UsageEventId
from app.ingest.recording import RecordResult
from app.registry import services
from tests.factories import event
from tests.helpers import (
    SERVICE_TOKEN,
    auth,
    count_events,
    parked_events,
    record,
    stored_events,
    wait_for,
)

API_KEY = "sk-live-" + "a" * 40


def post_events(client: FlaskClient, events: list[dict]) -> tuple[int, dict]:
    resp = client.post("/v1/usage/events", json={"events": events}, headers=auth(SERVICE_TOKEN))
    return resp.status_code, resp.get_json()


def test_metered_execute_call_becomes_one_priced_row(
    app: Flask, client: FlaskClient, celery_worker
) -> None:
    resp = client.post("/v1/execute/code_generation", json={"prompt": "x"}, headers=auth(API_KEY))
    assert resp.status_code == 200
    execution_id = resp.get_json()["execution_id"]
    services(app).outbox.flush()
    wait_for(lambda: count_events(app, execution_id=execution_id) == 1)
    [row] = stored_events(app, execution_id=execution_id)
    # gpt-4o: $2.50 / $10 per MTok, cached input $1.25 per MTok.
    assert row.provider == "openai" and row.model == "gpt-4o-2024-08-06"
    assert row.pricing_status == "priced"
    assert row.model_cost_input == Decimal("0.0000025")
    assert row.model_cost_output == Decimal("0.00001")
    assert row.cost_input == Decimal("800") * Decimal("0.0000025") + 200 * Decimal("0.00000125")
    assert row.cost_output == Decimal("0.005")
    assert row.cost_total == Decimal("0.00725")
    assert row.tokens_total == 1500 and row.tokens_cache_read == 200
    assert row.api_key_hash != API_KEY and len(row.api_key_hash) == 64
    assert row.task_type == "code_generation" and row.execution_time == Decimal("1.250")


def test_duplicate_event_is_stored_once(app: Flask, client: FlaskClient, celery_worker) -> None:
    evt = event()
    assert post_events(client, [evt])[0] == 202
    wait_for(lambda: count_events(app, event_id=evt["event_id"]) == 1)
    status, body = post_events(client, [evt, evt])
    assert status == 202
    assert [r["status"] for r in body["results"]] == ["duplicate", "duplicate"]
    with app.app_context():  # and straight at the worker's service, as a redelivery would
        result = record([evt])
    assert result.inserted == 0 and result.duplicates == 1
    assert count_events(app, event_id=evt["event_id"]) == 1


def test_a_batch_holding_a_stored_event_stores_and_rolls_up_only_its_new_ones(app: Flask) -> None:
    """Both PostgreSQL write paths (app/ingest/ledger.py): an all-new batch is
    appended and rolled up from staging; one holding a stored event fails the
    append and is merged instead."""
    key = "key-merge"
    stored = event(key, tokens_input=1000, tokens_output=100)
    with app.app_context():
        first = record([stored, event(key, model="no-such-model")])
        second = record(
            [stored, event(key, tokens_input=2000, tokens_output=200), event(key, model="nope")]
        )
        rows = db.session.scalars(
            select(UsageDaily)
            .where(UsageDaily.api_key_hash == stored["api_key_hash"])
            .order_by(UsageDaily.model)
        ).all()
    assert (first.inserted, first.unpriced, first.duplicates) == (2, 1, 0)
    assert (second.inserted, second.unpriced, second.duplicates) == (2, 1, 1)
    assert count_events(app, api_key_hash=stored["api_key_hash"]) == 4
    sonnet, unknown, nope = rows
    # claude-3-5-sonnet: $3 / $15 per MTok; the stored event counted once.
    assert (sonnet.events, sonnet.tokens_total) == (2, 3300)
    assert sonnet.cost_total == Decimal("0.0135")
    assert (unknown.model, unknown.events, unknown.unpriced_events) == ("no-such-model", 1, 1)
    assert (nope.model, nope.events, nope.unpriced_events) == ("nope", 1, 1)


def _record_at_once(app: Flask, batches: list[list[dict]]) -> list[RecordResult]:
    """Each batch recorded by its own thread, as by concurrent workers, released together."""
    barrier = threading.Barrier(len(batches))
    results: list[RecordResult] = []

    def record_one(batch: list[dict]) -> None:
        with app.app_context():
            barrier.wait()
            results.append(record(batch))

    threads = [threading.Thread(target=record_one, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_concurrent_batches_sharing_events_store_and_roll_up_each_once(app: Flask) -> None:
    """Two workers appending overlapping batches at once: the second to reach a
    shared event waits on the first's uncommitted row in the unique index, fails
    its append when that commits, and merges (app/ingest/ledger.py)."""
    key_hash = event("key-race")["api_key_hash"]
    for _ in range(5):
        events = [event("key-race", tokens_input=100, tokens_output=10) for _ in range(300)]
        results = _record_at_once(app, [events[:200], events[100:]])
        # Whichever commits first stores all 200; the other stores its other 100.
        assert sorted((r.inserted, r.duplicates) for r in results) == [(100, 100), (200, 0)]
    assert count_events(app, api_key_hash=key_hash) == 1500
    with app.app_context():
        [daily] = db.session.scalars(
            select(UsageDaily).where(UsageDaily.api_key_hash == key_hash)
        ).all()
    assert (daily.events, daily.tokens_total) == (1500, 1500 * 110)


def test_a_timestamp_with_any_utc_offset_is_stored_at_its_utc_instant_and_day(
    app: Flask, client: FlaskClient, celery_worker
) -> None:
    """The API passes an event's timestamp on as the text it came in; the worker
    must read the same instant from it, and roll it up into its UTC day."""
    instant = (datetime.now(UTC) - timedelta(days=1)).replace(hour=23, minute=30, microsecond=0)
    east = event(timestamp=instant.astimezone(timezone(timedelta(hours=2))).isoformat())
    zulu = event(timestamp=instant.isoformat().replace("+00:00", "Z"))
    assert "+02:00" in east["timestamp"] and zulu["timestamp"].endswith("Z")
    assert post_events(client, [east, zulu]) == (202, ANY)
    for evt in (east, zulu):
        wait_for(lambda evt=evt: count_events(app, event_id=evt["event_id"]) == 1)
        [row] = stored_events(app, event_id=evt["event_id"])
        assert row.created_at == instant
    with app.app_context():
        days = db.session.execute(select(UsageDaily.day, UsageDaily.events)).all()
    assert days == [(instant.date(), 2)]  # the UTC day, not the next day of +02:00


def test_unknown_model_is_stored_unpriced(app: Flask, client: FlaskClient, celery_worker) -> None:
    evt = event(provider="openai", model="gpt-does-not-exist-9")
    assert post_events(client, [evt])[0] == 202
    wait_for(lambda: count_events(app, event_id=evt["event_id"]) == 1)
    [row] = stored_events(app, event_id=evt["event_id"])
    assert row.pricing_status == "unpriced"
    assert row.cost_total is None and row.model_cost_input is None
    assert row.tokens_total == 1100


def test_batch_with_bad_events_keeps_the_good_ones(
    app: Flask, client: FlaskClient, celery_worker
) -> None:
    good = [event(), event()]
    bad = [
        event(tokens_input=-5),
        event(tokens_output="12"),
        {**event(), "api_key_hash": "not-a-hash"},
        event(timestamp="2020-13-45"),
    ]
    status, body = post_events(client, [good[0], *bad, good[1]])
    assert status == 202
    assert body["accepted"] == 2 and body["rejected"] == 4
    fields = [r["error"]["field"] for r in body["results"] if r["status"] == "rejected"]
    assert fields == ["tokens_input", "tokens_output", "api_key_hash", "timestamp"]
    for evt in good:
        wait_for(lambda evt=evt: count_events(app, event_id=evt["event_id"]) == 1)
    for evt in bad:
        assert count_events(app, event_id=evt["event_id"]) == 0


def test_a_batch_of_only_bad_events_is_a_400_naming_the_field(client: FlaskClient) -> None:
    status, body = post_events(client, [event(model="")])
    assert status == 400 and body["error"]["field"] == "model"


def test_batch_endpoint_needs_the_service_token(client: FlaskClient) -> None:
    resp = client.post("/v1/usage/events", json={"events": [event()]})
    assert resp.status_code == 401
    resp = client.post("/v1/usage/events", json={"events": [event()]}, headers=auth("wrong"))
    assert resp.status_code == 403 and resp.get_json()["error"]["field"] == "Authorization"


def test_oversize_batch_is_413(app: Flask, client: FlaskClient) -> None:
    limit = app.config["SETTINGS"].max_batch_events
    status, body = post_events(client, [event() for _ in range(limit + 1)])
    assert status == 413 and body["error"]["field"] == "events"


def test_worker_parks_invalid_events_and_keeps_the_rest(app: Flask) -> None:
    good, bad = event(), event(tokens_input=10, tokens_cache_read=11)
    with app.app_context():
        result = record([bad, good])
    assert result.inserted == 1
    assert result.rejected == [
        {
            "event_id": bad["event_id"],
            "field": "tokens_cache_read",
            "reason": "tokens_cache_read (11) cannot exceed tokens_input (10), which includes it",
        }
    ]
    assert count_events(app, event_id=good["event_id"]) == 1


def test_worker_stores_text_and_numbers_exactly_as_sent(app: Flask) -> None:
    """The batch reaches PostgreSQL in COPY's text format: quotes, commas, backslashes,
    a literal ``\\N`` (COPY's NULL) and escaped newlines must come back byte for byte,
    money to the last digit, and timestamps (staged as microseconds since the
    epoch) to the microsecond."""
    tricky = 'a "quoted", comma\\back\\slash; 模型 ✓'
    now = datetime.now(UTC).replace(microsecond=999_999)
    created = (now - timedelta(days=3)).replace(microsecond=123_457)
    sent = event(
        timestamp=created.astimezone(timezone(timedelta(hours=-9, minutes=-30))).isoformat(),
        execution_id=tricky,
        task_type='say "hi", then',
        status="\\N",
        execution_time="12.5",
        tokens_input=1_000_003,
        tokens_cache_read=7,
        tokens_output=999_999_937,
        metadata={"note": tricky, "lines": "one\ntwo\tthree", "empty": "", "n": None, "\\N": 1},
    )
    plain = event(metadata=None, task_type=None)
    with app.app_context():
        assert record([sent, plain], now=now).inserted == 2
    [row] = stored_events(app, event_id=sent["event_id"])
    assert (row.created_at, row.received_at) == (created, now)
    assert (row.execution_id, row.task_type, row.status) == (tricky, 'say "hi", then', "\\N")
    assert row.metadata_ == sent["metadata"]
    assert row.execution_time == Decimal("12.500")
    assert row.cost_total == row.cost_input + row.cost_output
    assert row.cost_output == 999_999_937 * row.model_cost_output  # exact, no rounding
    [row] = stored_events(app, event_id=plain["event_id"])
    assert (row.metadata_, row.task_type, row.execution_time) == (None, None, None)


def _usage(client: FlaskClient, key: str, start: str, end: str):
    return client.get(f"/v1/billing/usage?start_date={start}&end_date={end}", headers=auth(key))


def test_usage_is_isolated_per_key(app: Flask, client: FlaskClient, make_customer) -> None:
    make_customer("key-a")
    make_customer("key-b")
    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=1)
    with app.app_context():
        record(
            [
                event("key-a", timestamp=day.isoformat(), tokens_input=100, tokens_output=10),
                event("key-a", timestamp=day.isoformat(), tokens_input=200, tokens_output=20),
                event("key-b", timestamp=day.isoformat(), tokens_input=5000, tokens_output=500),
            ]
        )
    start = end = day.date().isoformat()
    body_a = _usage(client, "key-a", start, end).get_json()
    body_b = _usage(client, "key-b", start, end).get_json()
    assert body_a["totals"]["tokens_input"] == 300 and body_a["totals"]["events"] == 2
    assert body_b["totals"]["tokens_input"] == 5000 and body_b["totals"]["events"] == 1
    # claude-3-5-sonnet: $3 / $15 per MTok
    assert Decimal(body_a["totals"]["cost"]) == 300 * Decimal("0.000003") + 30 * Decimal("0.000015")
    [day_a] = body_a["periods"]
    assert day_a["period"] == start and day_a["groups"][0]["model"] == "claude-3-5-sonnet-20241022"


def test_usage_bad_parameters_are_400_naming_the_parameter(
    client: FlaskClient, make_customer
) -> None:
    make_customer("key-a")
    cases = {
        "end_date=2026-01-02": "start_date",
        "start_date=2026-01-01": "end_date",
        "start_date=2026-1-1&end_date=2026-01-02": "start_date",
        "start_date=2026-01-01&end_date=yesterday": "end_date",
        "start_date=2026-01-05&end_date=2026-01-01": "end_date",
        "start_date=2020-01-01&end_date=2026-01-01": "end_date",
    }
    for query, field in cases.items():
        resp = client.get(f"/v1/billing/usage?{query}", headers=auth("key-a"))
        assert resp.status_code == 400, query
        assert resp.get_json()["error"]["field"] == field, query


def test_usage_needs_a_known_key(client: FlaskClient) -> None:
    assert _usage(client, "", "2026-01-01", "2026-01-02").status_code == 401
    resp = _usage(client, "never-issued", "2026-01-01", "2026-01-02")
    assert resp.status_code == 401 and resp.get_json()["error"]["code"] == "unauthenticated"


@pytest.mark.services
def test_a_batch_waits_in_redis_until_recorded_and_a_redelivery_changes_nothing(
    app: Flask, caplog
) -> None:
    """The message carries only the batch id (app/ingest/batch_store.py). Once recorded,
    the events leave Redis; the same message delivered again (its worker died
    before acknowledging it) finds the receipt and is not reported as lost."""
    from tasks.ingest import record_events_task

    store = services(app).batches
    assert store is not None
    sent = [event(), event()]
    store.put("stored-batch-0", sent)
    with app.app_context():
        assert record_events_task(None, batch_id="stored-batch-0")["inserted"] == 2
        assert store.take("stored-batch-0") is None
        with caplog.at_level(logging.WARNING, logger="usage_billing.ingest"):
            again = record_events_task(None, batch_id="stored-batch-0")
            lost = record_events_task(None, batch_id="never-stored-0")
    assert again == {"inserted": 0, "duplicates": 0, "rejected": 0, "already_recorded": 1}
    assert lost["missing"] == 1
    assert [r.getMessage() for r in caplog.records] == [
        "batch never-stored-0: its events are gone from the batch store"
    ]
    assert all(count_events(app, event_id=e["event_id"]) == 1 for e in sent)


def test_a_batch_that_fails_for_a_reason_not_its_own_is_retried_never_parked(
    app: Flask, monkeypatch
) -> None:
    """A bug (or a lost connection) fails the whole batch: nothing is committed,
    no receipt, nothing parked, and the task raises so Celery retries it; once
    the cause is gone the same batch stores the good event and parks only the
    bad one, with its own reason."""
    from app.pricing import book
    from tasks.ingest import record_events_task

    good, bad = event(), event(tokens_input=-1)

    def bug() -> None:
        raise RuntimeError("price book unavailable")

    monkeypatch.setattr(book.price_book, "get", bug)
    with pytest.raises(RuntimeError):
        record_events_task([good, bad], batch_id="retried-batch-0")
    monkeypatch.undo()
    assert count_events(app, event_id=good["event_id"]) == 0
    assert parked_events(app) == []
    with app.app_context():
        assert recorded_batches(["retried-batch-0"]) == set()
        result = record_events_task([good, bad], batch_id="retried-batch-0")
        assert recorded_batches(["retried-batch-0"]) == {"retried-batch-0"}
    assert result == {"inserted": 1, "duplicates": 0, "rejected": 1}
    assert count_events(app, event_id=good["event_id"]) == 1
    assert parked_events(app) == [(bad["event_id"], "tokens_input")]


def test_a_parked_event_is_recorded_when_replayed_after_its_cause_is_fixed(app: Flask) -> None:
    """An event whose cost no column can hold (a price entered wrong) is parked
    alone, with the database's reason, and the rest of its batch is stored; once
    the price is corrected, replaying the park stores it."""
    from decimal import Decimal

    from app.pricing.book import SEED_EFFECTIVE_FROM, price_book
    from app.pricing.models import ModelPrice

    with app.app_context():
        db.session.add(
            ModelPrice(
                provider="acme",
                model="typo-model",
                input_price=Decimal("999999"),  # per token: a per-million price typed in
                output_price=Decimal("999999"),
                effective_from=SEED_EFFECTIVE_FROM,
                source="test",
            )
        )
        db.session.commit()
        price_book.invalidate()
        good = event()
        bad = event(provider="acme", model="typo-model", tokens_input=10**9, tokens_output=10**9)
        result = record([good, bad])
        assert (result.inserted, len(result.rejected)) == (1, 1)
        [(event_id, field, reason)] = db.session.execute(
            select(RejectedEvent.event_id, RejectedEvent.field, RejectedEvent.reason)
        ).all()
        assert (event_id, field) == (bad["event_id"], None) and reason
        db.session.execute(
            update(ModelPrice)
            .where(ModelPrice.model == "typo-model")
            .values(input_price=Decimal("0.000001"), output_price=Decimal("0.000002"))
        )
        db.session.commit()
        price_book.invalidate()
    runner = app.test_cli_runner()
    replayed = runner.invoke(args=["billing", "replay-rejected"])
    assert json.loads(replayed.output) == {"stored": 1, "already_stored": 0, "parked_again": 0}
    assert count_events(app, event_id=bad["event_id"]) == 1
    assert parked_events(app) == []


def test_a_replay_takes_the_park_in_chunks_and_meets_no_event_twice(app: Flask) -> None:
    """1,200 parked events replay in chunks of 500, oldest first: the valid ones are
    stored, the still-invalid ones parked again behind them and not taken again
    by the same replay; progress is told after each chunk."""
    from app.ingest.recording import replay_rejected
    from app.ingest.validation import EventLimits

    valid = [event() for _ in range(1100)]
    invalid = [event(tokens_input=-1) for _ in range(100)]
    with app.app_context():
        assert len(record(valid[:300] + invalid + valid[300:]).rejected) == 100
        for table in (UsageEvent, UsageEventId):  # lost: as if parked for a fault since fixed
            db.session.execute(delete(table))
        db.session.add_all(
            RejectedEvent(payload=e, event_id=e["event_id"], reason="test") for e in valid
        )
        db.session.commit()
        told: list[tuple[int, int]] = []
        limits = EventLimits.from_settings(app.config["SETTINGS"])
        result = replay_rejected(10_000, limits, lambda done, total: told.append((done, total)))
    assert (result.inserted, len(result.rejected)) == (1100, 100)
    assert told == [(500, 1200), (1000, 1200), (1200, 1200)]
    assert count_events(app, [e["event_id"] for e in valid + invalid]) == 1100
    assert sorted(p for p, _ in parked_events(app)) == sorted(e["event_id"] for e in invalid)


def test_long_commands_draw_a_progress_bar_on_a_terminal_and_nothing_in_a_pipe(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from app.progress import progress_bar

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, drawn in ((Terminal(), True), (io.StringIO(), False)):
        monkeypatch.setattr(sys, "stderr", stream)
        with progress_bar("replaying parked events") as progress:
            for done in range(0, 11, 5):
                progress(done, 10)
        assert ("replaying parked events" in stream.getvalue()) is drawn
        assert ("100%" in stream.getvalue()) is drawn


def _spooled_and_parked(app: Flask, events: list[dict], bad: list[dict]) -> dict[str, str | None]:
    """Send ``events`` through the outbox as the middleware does; once every one of
    ``bad`` is parked, their event id -> the field named."""
    outbox = services(app).outbox
    outbox.append(events)
    outbox.flush()

    def parked() -> dict[str, str | None]:
        return dict(parked_events(app, [e["event_id"] for e in bad]))

    wait_for(lambda: len(parked()) == len(bad))
    return parked()


def test_values_orjson_refuses_still_reach_the_worker_and_are_parked(
    app: Flask, celery_worker
) -> None:
    """The middleware spools events the API never validated: a lone surrogate or an
    integer past 64 bits (which orjson will not write) takes the standard library's
    path through spool and broker (app/ingest/wire.py), and the worker parks that event,
    not its batch."""
    good = event()
    odd = [event(provider="open\ud800ai"), event(tokens_output=2**70)]
    parked = _spooled_and_parked(app, [good, *odd], odd)
    assert count_events(app, event_id=good["event_id"]) == 1
    assert parked == {odd[0]["event_id"]: "provider", odd[1]["event_id"]: "tokens_output"}


def test_a_metered_response_with_nan_or_infinity_is_parked_not_changed(
    app: Flask, celery_worker
) -> None:
    """orjson writes NaN and Infinity as null, which would store a NaN cache-token
    count as 0 and an infinite execution time as none, and the price source's
    extractors skip a count that is not a number as if absent: the middleware sends
    them as text and the worker parks each event naming its field."""
    from flask import request
    from openai.types.completion_usage import CompletionUsage

    from app.ingest.meter import event_from_response

    usage = CompletionUsage(
        prompt_tokens=9,
        completion_tokens=1,
        total_tokens=10,
        prompt_tokens_details={"cached_tokens": 0},
    ).model_dump(mode="json")
    usage["prompt_tokens_details"]["cached_tokens"] = float("nan")
    flat = {"tokens_input": 9, "tokens_output": 1, "tokens_cache_read": float("nan")}
    bodies = [
        {"provider": "openai", "model": "gpt-4o", "usage": usage},
        {"provider": "openai", "model": "gpt-4o", "usage": flat},
        {
            "provider": "openai",
            "model": "gpt-4o",
            "usage": {"tokens_input": 9, "tokens_output": 1},
            "execution_time": float("inf"),
        },
    ]
    sent = []
    for body in bodies:
        auth_header = {"Authorization": "Bearer key-nan"}
        with app.test_request_context("/v1/execute", method="POST", headers=auth_header):
            response = app.response_class(json.dumps(body), mimetype="application/json")
            sent.append(event_from_response(request, "key-nan", response, datetime.now(UTC)))
    assert _spooled_and_parked(app, sent, sent) == {
        sent[0]["event_id"]: "provider_usage",
        sent[1]["event_id"]: "tokens_cache_read",
        sent[2]["event_id"]: "execution_time",
    }


@pytest.mark.services
def test_id_lookups_refuse_an_id_with_a_comma_rather_than_split_it(app: Flask) -> None:
    """On PostgreSQL the ids of a lookup travel as one comma-joined string
    (app/dialect.py): an id with a comma would be read as two."""
    from sqlalchemy.exc import StatementError

    from app.ingest.ledger import recorded_batches

    with app.app_context():
        assert recorded_batches(["no-such-batch", "nor-this"]) == set()
        with pytest.raises(StatementError, match="cannot contain a comma"):
            recorded_batches(["a,b"])


def test_responses_encode_as_flask_would_for_what_orjson_writes_differently(app: Flask) -> None:
    """The API's JSON provider uses orjson, and Flask's own encoder for values
    orjson would write differently (dates, Decimal, integers past 64 bits)."""
    from flask.json.provider import DefaultJSONProvider

    flask_json = DefaultJSONProvider(app)
    flask_json.sort_keys = False
    values = [
        {"b": 1, "a": ["x", None, True]},
        {"day": datetime(2026, 11, 25, 14, 0, tzinfo=UTC)},
        {"cost": Decimal("0.000012500000")},
        {"big": 2**70},
    ]
    for value in values:
        assert json.loads(app.json.dumps(value)) == json.loads(flask_json.dumps(value))
    assert app.json.dumps(values[0]) == '{"b":1,"a":["x",null,true]}'  # built order, compact


def test_event_rows_carry_every_column_of_usage_events() -> None:
    """``EventRow`` is written out by hand (the COPY unpacks it); a column added to
    the model and not to it would never be filled."""
    from app.ingest.ledger import EventRow
    from app.ingest.models import UsageEvent

    columns = [c.name for c in UsageEvent.__table__.columns if c.name != "id"]
    assert sorted(EventRow._fields) == sorted(columns)


def test_a_receipt_found_without_its_events_does_not_stop_them_being_recorded(
    app: Flask,
) -> None:
    """What the shared-socket bug left behind: a receipt committed without its
    events. The batch's redelivery checks the receipt against the events and
    records the missing ones instead of skipping the batch."""
    from app.ingest.models import IngestBatch

    sent = [event(), event()]
    with app.app_context():
        db.session.add(IngestBatch(batch_id="orphan-receipt-0", events=len(sent)))
        db.session.commit()
        result = record(sent, batch_id="orphan-receipt-0")
    assert not result.already_recorded and result.inserted == 2
    assert all(count_events(app, event_id=e["event_id"]) == 1 for e in sent)
    with app.app_context():  # and now the receipt holds: the next redelivery skips
        assert record(sent, batch_id="orphan-receipt-0").already_recorded


def test_a_batch_whose_events_are_not_all_stored_commits_no_receipt(
    app: Flask, monkeypatch
) -> None:
    """A write that reports fewer rows than the batch holds, with the rest not
    stored before either: the transaction is rolled back, receipt included, and
    the batch is retried (here: run again) until every event is there."""
    from app.errors import LedgerMismatch
    from app.ingest import recording
    from app.ingest.ledger import Written

    sent = [event(), event(), event()]
    monkeypatch.setattr(recording, "insert_events", lambda rows: Written(1, 0))
    with app.app_context(), pytest.raises(LedgerMismatch):
        record(sent, batch_id="short-batch-0")
    monkeypatch.undo()
    with app.app_context():
        db.session.rollback()
        assert recorded_batches(["short-batch-0"]) == set()
        assert record(sent, batch_id="short-batch-0").inserted == 3
        assert recorded_batches(["short-batch-0"]) == {"short-batch-0"}
