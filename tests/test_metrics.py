"""Metrics: every metric moves when its event happens, in one process and in the stack as
the README starts it (gunicorn's workers and Celery's pool summed by multiprocess mode)."""

from __future__ import annotations

import http.client
import json
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client import REGISTRY

from app.extensions import db
from app.ingest.partitions import WEEK, create_partitions, week_of
from app.jobs.definitions import run_reconciliation, run_report
from app.observability.logs import JsonLines
from tests.factories import event
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    SERVICE_TOKEN,
    Samples,
    auth,
    count_events,
    create_database,
    drop_database,
    metric_samples,
    record,
    scrape,
    wait_for,
)
from tests.processes import ShippedStack


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _summed(name: str) -> float:
    """A metric's samples added up over every label."""
    return sum(
        sample.value
        for family in REGISTRY.collect()
        for sample in family.samples
        if sample.name == name
    )


def _metrics(client: FlaskClient) -> Samples:
    resp = client.get("/metrics")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    return metric_samples(resp.get_data(as_text=True))


def test_ingest_metrics_move_with_their_events(
    app: Flask, client: FlaskClient, celery_worker: Any
) -> None:
    accepted = _value("ub_events_accepted_total", source="batch")
    rejected = _value("ub_events_rejected_total", field="tokens_input")
    posted = [event("key-mx"), event("key-mx")]
    body = {"events": [*posted, event("key-mx", tokens_input=-1)]}
    resp = client.post("/v1/usage/events", json=body, headers=auth(SERVICE_TOKEN))
    assert resp.status_code == 202
    assert _value("ub_events_accepted_total", source="batch") == accepted + 2
    assert _value("ub_events_rejected_total", field="tokens_input") == rejected + 1
    # The session's in-thread worker records these two; once they are stored, nothing
    # else moves the recording metrics while this thread measures its own batch.
    for sent in posted:
        wait_for(lambda sent=sent: count_events(app, event_id=sent["event_id"]) == 1)

    measured = (
        "ub_batches_recorded_total",
        "ub_events_recorded_total",
        "ub_events_unpriced_total",
        "ub_events_parked_total",  # by the field at fault: all of them
        "ub_ingest_lag_seconds_count",
    )
    before = {name: _summed(name) for name in measured}
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    with app.app_context():
        record(
            [
                event("key-mx", timestamp=an_hour_ago),
                event("key-mx", model="no-such-model"),
                {"event_id": "broken"},
            ]
        )
    moved = {name: _summed(name) - value for name, value in before.items()}
    assert moved == {
        "ub_batches_recorded_total": 1,
        "ub_events_recorded_total": 2,
        "ub_events_unpriced_total": 1,
        "ub_events_parked_total": 1,
        "ub_ingest_lag_seconds_count": 2,
    }
    # The event of an hour ago lands in the buckets from 3,600 s on.
    assert _value("ub_ingest_lag_seconds_bucket", le="900.0") < _value(
        "ub_ingest_lag_seconds_bucket", le="21600.0"
    )


def test_a_metered_call_counts_as_accepted_from_the_middleware(client: FlaskClient) -> None:
    before = _value("ub_events_accepted_total", source="middleware")
    resp = client.post("/v1/execute/code_generation", json={}, headers=auth("sk-metered-call"))
    assert resp.status_code == 200
    assert _value("ub_events_accepted_total", source="middleware") == before + 1


def test_billing_metrics_and_the_states_read_at_the_scrape(
    app: Flask, client: FlaskClient, stripe_server: FakeStripe, make_customer: Any
) -> None:
    make_customer("key-mb", stripe_customer_id=stripe_server.add_customer())
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    at = datetime(yesterday.year, yesterday.month, yesterday.day, 12, tzinfo=UTC).isoformat()
    with app.app_context():
        record([event("key-mb", timestamp=at), event("key-mb", model="nope", timestamp=at)])
    sent, errors, retries = (
        _value("ub_reports_total", outcome="sent"),
        _value("ub_stripe_errors_total", call="meter event", kind="APIError"),
        _value("ub_stripe_retries_total", call="meter event"),
    )
    stripe_server.fail_next("/v1/billing/meter_events", 500)
    with app.app_context():
        run_report(app.config["SETTINGS"], yesterday)
    assert _value("ub_reports_total", outcome="sent") == sent + 1
    assert _value("ub_stripe_errors_total", call="meter event", kind="APIError") == errors + 1
    assert _value("ub_stripe_retries_total", call="meter event") == retries + 1

    scraped = _metrics(client)
    assert scraped[("ub_reconciliation_open_differences", ())] == 0
    assert scraped[("ub_unpriced_models", ())] == 1
    assert scraped[("ub_reports_needs_manual", ())] == 0
    report_age = scraped[("ub_job_last_success_age_seconds", (("job", "usage_report"),))]
    assert 0 <= report_age < 60
    assert ("ub_job_last_success_age_seconds", (("job", "price_refresh"),)) not in scraped
    stripe_server.state.meter_events.clear()  # Stripe lost the day's event
    with app.app_context():
        run_reconciliation(app.config["SETTINGS"])
    assert _metrics(client)[("ub_reconciliation_open_differences", ())] == 1


@pytest.mark.services  # PostgreSQL's weekly partitions
def test_the_ledger_weeks_made_ahead_are_read_at_the_scrape(
    app: Flask, client: FlaskClient
) -> None:
    ahead = _metrics(client)[("ub_ledger_weeks_ahead", ())]
    assert ahead >= app.config["SETTINGS"].partition_weeks_ahead
    with app.app_context(), db.engine.begin() as conn:  # one more week, far ahead
        create_partitions(conn, [week_of(datetime.now(UTC) + 60 * WEEK)])
    assert _metrics(client)[("ub_ledger_weeks_ahead", ())] == ahead + 1


def test_a_metrics_token_guards_the_scrape(app: Flask, settings: Any) -> None:
    from tests.helpers import create_extra_app

    guarded = create_extra_app(settings.replace(metrics_token="scrape-me", auto_migrate=False), app)
    client = guarded.test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=auth("nope")).status_code == 403
    assert client.get("/metrics", headers=auth("scrape-me")).status_code == 200


def test_json_logs_are_one_object_per_line_with_secrets_masked(
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler = JsonLines()
    logger = logging.getLogger("usage_billing.test_json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("retrying with Bearer sk-live-abcdef123456", extra={"batch": "b-1"})
    finally:
        logger.removeHandler(handler)
    [line] = capsys.readouterr().err.strip().splitlines()
    logged = json.loads(line)
    assert logged["level"] == "WARNING" and logged["batch"] == "b-1"
    assert "sk-live" not in line and "[redacted]" in logged["message"]


@pytest.mark.services
def test_the_shipped_stack_exports_the_api_and_worker_metrics(tmp_path: Path) -> None:
    """``make api`` (gunicorn, 2 workers) and ``make worker`` (prefork): the API's
    /metrics sums its processes, the worker's port sums its pool's."""
    url = create_database()
    stack = ShippedStack(url, "redis://127.0.0.1:6379/13", tmp_path)
    try:
        stack.start_worker()
        stack.start_api()
        sent = []
        for n in range(20):  # several requests: both gunicorn workers take some
            sent += stack.post_events([event(f"key-st-{n % 3}") for _ in range(50)])
        assert len(sent) == 1000

        # A pool process counts a batch's events, then observes their lag: wait for both.
        wanted = ("ub_events_recorded_total", "ub_ingest_lag_seconds_count")
        wait_for(
            lambda: all(scrape(stack.worker_metrics_port).get((n, ())) == 1000 for n in wanted),
            timeout=60,
        )
        lag = scrape(stack.worker_metrics_port)[("ub_ingest_lag_seconds_count", ())]
        api = scrape(stack.port)
        assert api[("ub_events_accepted_total", (("source", "batch"),))] == 1000
        assert api[("ub_spool_segments", ())] >= 0 and ("ub_queue_depth", ()) in api
        # Exported at 0 before any outage, so BudgetChecksUnavailable sees the first one.
        assert api[("ub_budget_admissions_total", (("how", "unchecked"),))] == 0
        assert api[("ub_budget_refusals_total", (("reason", "unavailable"),))] == 0
        # Every series a first event would make is there at 0 before it: a rule's
        # increase() sees the first rejected event, parked event, failed report.
        worker = scrape(stack.worker_metrics_port)
        for process, name, labels in (
            (api, "ub_events_rejected_total", (("field", "tokens_input"),)),
            (api, "ub_events_rejected_total", (("field", "provider_usage"),)),
            (api, "ub_streams_flagged_total", (("flag", "stream_cut_off"),)),
            (worker, "ub_events_parked_total", (("field", "provider_usage"),)),
            (worker, "ub_reports_total", (("outcome", "failed"),)),
            (worker, "ub_stripe_errors_total", (("call", "meter event"), ("kind", "APIError"))),
        ):
            assert process[(name, labels)] == 0, (name, labels)
        assert lag == 1000
        files = list((tmp_path / "instance" / "metrics" / "api").glob("*.db"))
        assert len({f.name.rsplit("_", 1)[-1] for f in files}) >= 2  # both gunicorn workers
    finally:
        stack.stop()
        drop_database(url)


def test_the_alert_rules_parse_and_name_only_metrics_we_export() -> None:
    import re

    import yaml

    from tests.helpers import project_root

    rules = yaml.safe_load((project_root() / "deploy/prometheus/alerts.yml").read_text())
    [group] = rules["groups"]
    names = {rule["alert"] for rule in group["rules"]}
    assert {
        "IngestLagHigh",
        "SpoolBacklogOld",
        "UsageReportNotRun",
        "ReportsNeedManualBilling",
        "StripeDiffersFromLedger",
        "UnpricedModels",
        "LedgerPartitionsRunningOut",
        "BudgetChecksUnavailable",
    } <= names
    # The counted metrics, and the states read at a scrape.
    sources = "".join(
        path.read_text()
        for path in [
            *(project_root() / "app/observability").glob("*.py"),
            project_root() / "app/api/states.py",
        ]
    )
    for rule in group["rules"]:
        for metric in re.findall(r"\bub_[a-z_]+", rule["expr"]):
            base = re.sub(r"_(bucket|count|sum|total)$", "", metric)
            assert f'"{base}"' in sources, (rule["alert"], metric)


@pytest.mark.services
@pytest.mark.parametrize("password", [True, False], ids=["basic-auth", "loopback-default"])
def test_flower_asks_for_its_password(tmp_path: Path, password: bool) -> None:
    """``make flower`` as compose runs it: published, behind basic auth from the env;
    and on the loopback default, without it, its pages open but its HTTP API answers
    401 (docs/operations.md says so)."""
    import base64
    import os
    import signal
    import subprocess

    from tests.helpers import project_root
    from tests.processes import free_port, kill_tree

    port = free_port()
    env = {
        **os.environ,
        "REDIS_URL": "redis://127.0.0.1:6379/13",
        "INSTANCE_DIR": str(tmp_path),
        "FLOWER_PORT": str(port),
        "FLOWER_ADDRESS": "127.0.0.1",
        **({"FLOWER_BASIC_AUTH": "ops:s3cret"} if password else {}),
    }
    if not password:
        env.pop("FLOWER_BASIC_AUTH", None)
    flower = subprocess.Popen(
        ["make", "--no-print-directory", "flower"],
        cwd=project_root(),
        env=env,
        stdout=(tmp_path / "flower.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    def status(headers: dict[str, str], path: str = "/") -> int:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path, headers=headers)
            return conn.getresponse().status
        except OSError:
            return 0

    try:
        if not password:
            assert wait_for(lambda: status({}), timeout=60) == 200
            assert status({}, "/api/workers") == 401
            assert status({}, "/healthcheck") == 200
            return
        assert wait_for(lambda: status({}), timeout=60) == 401
        good = base64.b64encode(b"ops:s3cret").decode()
        assert status({"Authorization": f"Basic {good}"}) == 200
        bad = base64.b64encode(b"ops:wrong").decode()
        assert status({"Authorization": f"Basic {bad}"}) == 401
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        kill_tree(flower)


def test_observing_a_batch_at_once_exposes_what_observing_each_value_does() -> None:
    """``observe_all`` counts the buckets itself (prometheus_client has no batch
    observe): values on and between the bounds, past the last, zero, an empty batch."""
    from prometheus_client import CollectorRegistry, Histogram

    from app.observability.metrics import INGEST_LAG, observe_all

    def exposed(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
        return {
            (sample.name, sample.labels.get("le", "")): sample.value
            for metric in registry.collect()
            for sample in metric.samples
            if not sample.name.endswith("_created")  # when each was made
        }

    bounds = INGEST_LAG._upper_bounds[:-1]  # the shipped buckets, +Inf added again
    values = [0.0, 0.25, 0.2500001, 1, 1.5, 59.9, 86400, 86400.5, 10**7, 3, 3, 0.1]
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    each = Histogram("lag_seconds", "lag", buckets=bounds, registry=one_by_one)
    batch = Histogram("lag_seconds", "lag", buckets=bounds, registry=at_once)
    for group in (values, [], values[:3]):
        for value in group:
            each.observe(value)
        observe_all(batch, iter(group))
        assert exposed(at_once) == exposed(one_by_one)
    assert exposed(at_once)[("lag_seconds_bucket", "0.25")] == 5  # 0, 0.25, 0.1; 0, 0.25
    assert exposed(at_once)[("lag_seconds_count", "")] == 15
