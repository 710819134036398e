"""Scheduled jobs: the Beat schedule, job runs and their lock, cleanup, prices, status."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import time_machine
import yaml
from flask import Flask
from sqlalchemy import func, select, update

from app.columns import utcnow
from app.errors import JobAlreadyRunning
from app.extensions import db
from app.ingest.partitions import Partition, partitions, week_of
from app.jobs.definitions import (
    CLEANUP_JOB,
    RECONCILE_JOB,
    REFRESH_JOB,
    REPORT_JOB,
    days_to_report,
    run_cleanup,
    run_price_refresh,
)
from app.jobs.models import Installation, JobRun
from app.jobs.runner import run_job
from app.pricing.book import price_book
from app.pricing.catalog import PriceSourceError
from app.pricing.models import ModelPrice
from tests.factories import UsageReportFactory, event
from tests.fake_stripe import FakeStripe
from tests.helpers import count_events, project_root, record, wait_for
from tests.processes import REDIS_PERSISTENCE

NOW = datetime(2026, 11, 20, 2, 0, 5, tzinfo=UTC)


def _runs(app: Flask, job: str) -> list[JobRun]:
    with app.app_context():
        rows = list(db.session.scalars(select(JobRun).where(JobRun.job == job).order_by(JobRun.id)))
        for row in rows:
            db.session.expunge(row)
        return rows


def test_beat_schedule_holds_the_three_jobs_at_their_utc_times(app: Flask) -> None:
    schedule = app.extensions["celery"].conf.beat_schedule
    report, refresh, cleanup = (
        schedule[n] for n in ("daily-usage-report", "nightly-price-refresh", "weekly-cleanup")
    )
    assert (report["task"], refresh["task"], cleanup["task"]) == (
        "billing.report_usage",
        "jobs.refresh_prices",
        "jobs.cleanup_usage",
    )
    with time_machine.travel(datetime(2026, 11, 19, 1, 30, tzinfo=UTC), tick=False):
        last = datetime(2026, 11, 18, 2, 0, tzinfo=UTC)
        assert report["schedule"].remaining_estimate(last) == timedelta(minutes=30)
        assert refresh["schedule"].remaining_estimate(
            datetime(2026, 11, 18, 1, 0, tzinfo=UTC)
        ) <= timedelta(0)
        # Weekly: Sunday 2026-11-22 03:00 UTC
        assert cleanup["schedule"].remaining_estimate(
            datetime(2026, 11, 15, 3, 0, tzinfo=UTC)
        ) == timedelta(days=3, hours=1, minutes=30)
    assert app.extensions["celery"].conf.timezone == "UTC"


@pytest.mark.services
def test_beat_uses_redbeat_and_stores_the_schedule_in_redis(app: Flask) -> None:
    from redbeat import RedBeatScheduler
    from redbeat.schedulers import get_redis

    from app.jobs.beat import ResilientRedBeatScheduler

    celery_app = app.extensions["celery"]
    assert celery_app.conf.beat_scheduler == "app.jobs.beat:ResilientRedBeatScheduler"
    assert issubclass(ResilientRedBeatScheduler, RedBeatScheduler)
    scheduler = ResilientRedBeatScheduler(app=celery_app, lazy=True)
    scheduler.setup_schedule()
    keys = get_redis(celery_app).zrange(celery_app.redbeat_conf.schedule_key, 0, -1)
    names = {(k.decode() if isinstance(k, bytes) else k).rsplit(":", 1)[-1] for k in keys}
    assert {"daily-usage-report", "nightly-price-refresh", "weekly-cleanup"} <= names


@pytest.mark.services
@pytest.mark.slow
def test_make_beat_outlives_redis_flushed_restarted_and_away(
    app: Flask, settings: Any, tmp_path: Path
) -> None:
    """``make beat`` on a private Redis: its lock and schedule flushed away, then Redis
    stopped and started again empty. Beat keeps running, takes its lock again and
    goes on sending the minute jobs (as before it exited on LockNotOwnedError)."""
    import redis as redis_client

    from tests.processes import RedisServer, free_port, kill_tree

    server = RedisServer(free_port(), tmp_path)
    server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    env = {
        **{k: v for k, v in os.environ.items() if k.upper() not in {"REDIS_URL"}},
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": url,
        "INSTANCE_DIR": str(tmp_path / "instance"),
        "BEAT_METRICS_PORT": str(free_port()),
        "AUTO_MIGRATE": "false",
    }
    log = (tmp_path / "beat.log").open("ab")
    beat = subprocess.Popen(
        ["make", "--no-print-directory", "beat"],
        cwd=project_root(),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = redis_client.Redis.from_url(url)

    def holds_its_lock_and_schedule() -> bool:
        try:
            return bool(client.exists("redbeat::lock") and client.zcard("redbeat::schedule"))
        except redis_client.RedisError:
            return False

    try:
        wait_for(holds_its_lock_and_schedule, timeout=60, interval=0.5)
        client.flushall()  # the lock and the schedule gone, as a restart without data does
        wait_for(holds_its_lock_and_schedule, timeout=30, interval=0.5)
        server.stop()  # away for a while
        time.sleep(12)
        assert beat.poll() is None, (tmp_path / "beat.log").read_text()[-2000:]
        (tmp_path / "empty").mkdir()
        server = RedisServer(server.port, tmp_path / "empty")
        server.start()
        client = redis_client.Redis.from_url(url)
        wait_for(holds_its_lock_and_schedule, timeout=30, interval=0.5)
        # and it goes on sending: the minute jobs, a minute after they were installed
        wait_for(lambda: client.llen("celery") >= 2, timeout=75, interval=0.5)
        assert beat.poll() is None
    finally:
        kill_tree(beat)
        server.stop()
    printed = (tmp_path / "beat.log").read_text()
    assert "LockNotOwnedError" not in printed and "taking it again" in printed


def test_missed_report_days_are_caught_up(app: Flask) -> None:
    with app.app_context():
        assert days_to_report(date(2026, 11, 20)) == [date(2026, 11, 19)]
        db.session.add(
            JobRun(job=REPORT_JOB, period="2026-11-16", status="succeeded", started_at=NOW)
        )
        db.session.commit()
        assert days_to_report(date(2026, 11, 20)) == [
            date(2026, 11, 17),
            date(2026, 11, 18),
            date(2026, 11, 19),
        ]


def test_report_job_for_a_fixed_date_reports_and_records_a_run(
    app: Flask, stripe_server: FakeStripe, make_customer
) -> None:
    make_customer("key-j", stripe_customer_id=stripe_server.add_customer())
    day = datetime.now(UTC).date() - timedelta(days=2)
    with app.app_context():
        record(
            [
                event(
                    "key-j",
                    timestamp=datetime(day.year, day.month, day.day, 9, tzinfo=UTC).isoformat(),
                    tokens_input=42,
                    tokens_output=0,
                )
            ]
        )
    result = app.test_cli_runner().invoke(args=["billing", "report", "--date", day.isoformat()])
    assert result.exit_code == 0, result.output
    [run] = _runs(app, REPORT_JOB)
    assert (run.period, run.status, run.counts["sent"]) == (day.isoformat(), "succeeded", 1)
    assert stripe_server.state.meter_events[0]["payload"]["value"] == "42"


def test_a_second_concurrent_run_is_refused(app: Flask) -> None:
    started, release = threading.Event(), threading.Event()

    def slow() -> dict:
        started.set()
        release.wait(10)
        return {"done": 1}

    def first() -> None:
        with app.app_context():
            run_job("usage_cleanup", "2026-11-20", slow, timedelta(hours=1))

    thread = threading.Thread(target=first)
    thread.start()
    started.wait(10)
    try:
        with app.app_context(), pytest.raises(JobAlreadyRunning):
            run_job("usage_cleanup", "2026-11-20", lambda: {"done": 2}, timedelta(hours=1))
    finally:
        release.set()
        thread.join()
    assert [(r.status, r.counts) for r in _runs(app, "usage_cleanup")] == [
        ("succeeded", {"done": 1})
    ]


def test_a_run_whose_process_died_is_taken_over_at_once(app: Flask) -> None:
    """``flask billing report`` SIGKILLed part way (Stripe slow to answer): its day's
    lock named a process that is gone, and the next run takes it over at once, not an
    hour later."""
    import signal

    settings = app.config["SETTINGS"]
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "INSTANCE_DIR": str(settings.instance_dir),
        "AUTO_MIGRATE": "false",
    }
    day = (NOW.date() - timedelta(days=3)).isoformat()
    blocker = _hold_lock_script(day)
    proc = subprocess.Popen(
        [sys.executable, "-c", blocker], cwd=project_root(), env=env, start_new_session=True
    )
    try:
        wait_for(lambda: [r.status for r in _runs(app, REPORT_JOB)] == ["running"], timeout=60)
        with app.app_context(), pytest.raises(JobAlreadyRunning):  # alive: its lock holds
            run_job(REPORT_JOB, day, lambda: {}, timedelta(hours=1))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        with app.app_context():
            run = run_job(REPORT_JOB, day, lambda: {"done": 1}, timedelta(hours=1))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert run.status == "succeeded"
    dead = [r for r in _runs(app, REPORT_JOB) if r.status == "failed"]
    assert len(dead) == 1 and "died" in dead[0].error


def _hold_lock_script(day: str) -> str:
    """A process that takes the report's lock for ``day`` and keeps working."""
    return (
        "import time\n"
        "from datetime import timedelta\n"
        "from app import create_app\n"
        "from app.jobs.runner import run_job\n"
        "app = create_app()\n"
        "with app.app_context():\n"
        f"    run_job('{REPORT_JOB}', '{day}', lambda: time.sleep(600) or {{}}, timedelta(hours=1))\n"
    )


def test_a_run_elsewhere_keeps_its_lock_while_it_renews_it(app: Flask) -> None:
    """A holder on another host is judged by its lease alone: renewed, it holds; not
    renewed for a lease, it is taken over."""
    day = "2026-11-21"
    lease = timedelta(seconds=60)
    with app.app_context():
        db.session.add(
            JobRun(
                job=CLEANUP_JOB,
                period=day,
                status="running",
                started_at=utcnow() - timedelta(hours=2),
                holder="another-host:4242",
                heartbeat_at=utcnow() - timedelta(seconds=5),
            )
        )
        db.session.commit()
        with pytest.raises(JobAlreadyRunning):
            run_job(CLEANUP_JOB, day, lambda: {}, lease)
        db.session.execute(update(JobRun).values(heartbeat_at=utcnow() - timedelta(seconds=61)))
        db.session.commit()
        assert run_job(CLEANUP_JOB, day, lambda: {"ok": 1}, lease).status == "succeeded"


def test_a_running_job_renews_its_lease(app: Flask) -> None:
    beats = []

    def watch() -> dict:
        for _ in range(3):
            time.sleep(0.2)
            with app.app_context():
                beats.append(_runs(app, CLEANUP_JOB)[0].heartbeat_at)
        return {}

    with app.app_context():
        run_job(CLEANUP_JOB, "2026-11-22", watch, timedelta(seconds=0.3))
    assert len(set(beats)) == 3  # renewed every tenth of a second


def test_a_report_of_a_day_not_over_is_refused(app: Flask) -> None:
    runner = app.test_cli_runner()
    today = utcnow().date().isoformat()
    result = runner.invoke(args=["billing", "report", "--date", today])
    assert result.exit_code != 0 and "is not over yet" in result.output
    with app.app_context():
        assert _runs(app, REPORT_JOB) == []


def test_retention_goes_on_for_every_customer_but_one_whose_report_failed(
    app: Flask, make_customer
) -> None:
    """The last report run failed for one customer (its report is ``failed``): the
    others' old events still go; that customer's stay from its unsettled day."""
    ok = make_customer("key-fine", stripe_customer_id="cus_fine")
    failing = make_customer("key-failing", stripe_customer_id="cus_failing")
    now = datetime.now(UTC)
    old = week_of(now - timedelta(days=120)) + timedelta(hours=1)
    sent = {}
    with app.app_context():
        for key in ("key-fine", "key-failing"):
            sent[key] = event(key, timestamp=old.isoformat())
            record([sent[key]], now=old + timedelta(days=1))
        UsageReportFactory(
            customer_id=failing.id,
            day=old.date(),  # the report of the old event's own day failed
            identifier="ub-failing-0",
            status="failed",
        )
        # Yesterday's run went through every customer, and one of them failed.
        db.session.add(
            JobRun(
                job=REPORT_JOB,
                period=(now - timedelta(days=1)).date().isoformat(),
                status="failed",
                started_at=now,
                counts={"customers": 2, "sent": 1, "failed": 1},
                error=f"customer {failing.id}: Stripe unavailable",
            )
        )
        db.session.commit()
        run = run_cleanup(app.config["SETTINGS"], now)
    assert run.status == "succeeded", run.error
    assert count_events(app, event_id=sent["key-fine"]["event_id"]) == 0
    assert count_events(app, event_id=sent["key-failing"]["event_id"]) == 1
    assert ok.id != failing.id


@pytest.mark.services  # PostgreSQL's weekly partitions
def test_cleanup_removes_old_reported_events_and_keeps_unreported_ones(
    app: Flask, make_customer
) -> None:
    """The reported week past retention goes whole (its partition dropped); a later
    week past retention but not reported stays, and so does a recent one."""
    make_customer("key-a", stripe_customer_id="cus_reported")
    now = datetime.now(UTC)
    week = week_of(now - timedelta(days=110))
    old_reported = week + timedelta(hours=1)
    old_unreported = week + timedelta(days=14, hours=1)  # 96 to 102 days ago
    recent = now - timedelta(days=10)
    events = {}
    for name, at in (
        ("old_reported", old_reported),
        ("old_unreported", old_unreported),
        ("recent", recent),
    ):
        events[name] = event("key-a", timestamp=at.isoformat())
        with app.app_context():
            record([events[name]], now=at)
    with app.app_context():
        # Reports succeeded up to the Tuesday after old_reported's week, and stopped there.
        _reports_succeeded_until(week + timedelta(days=8), now)
        run = run_cleanup(app.config["SETTINGS"], now)
        assert run.status == "succeeded", run.error
        assert Partition(week).name in run.counts["partitions_dropped"]
        attached = partitions(db.session.connection())
        db.session.rollback()
    assert Partition(week) not in attached and Partition(week_of(old_unreported)) in attached
    assert count_events(app, event_id=events["old_reported"]["event_id"]) == 0
    assert count_events(app, event_id=events["old_unreported"]["event_id"]) == 1
    assert count_events(app, event_id=events["recent"]["event_id"]) == 1


def _reports_succeeded_until(day: datetime, now: datetime) -> None:
    db.session.add(
        JobRun(job=REPORT_JOB, period=day.date().isoformat(), status="succeeded", started_at=now)
    )
    db.session.commit()


@pytest.mark.services  # PostgreSQL's weekly partitions
def test_cleanup_keeps_the_events_of_a_customer_whose_days_were_not_reported(
    app: Flask, make_customer
) -> None:
    """The report job ran, but one customer's report of an old day waits for
    manual billing, and another customer was never linked to Stripe: only the
    reported customer's old events go; the others keep every raw event. Their
    two weeks (partitions) stay, and the events that may go are deleted from them."""
    reported = make_customer("key-reported", stripe_customer_id="cus_ok")
    held = make_customer("key-held", stripe_customer_id="cus_held")
    make_customer("key-unlinked")
    now = datetime.now(UTC)
    old = week_of(now - timedelta(days=120)) + timedelta(hours=1)  # a Monday
    sent = {}
    with app.app_context():
        for key in ("key-reported", "key-held", "key-unlinked"):
            sent[key] = [
                event(key, timestamp=(old + timedelta(days=d)).isoformat()) for d in (0, 8)
            ]
            record(sent[key], now=old + timedelta(days=9))
        for customer, status in ((reported, "sent"), (held, "needs_manual")):
            UsageReportFactory(
                customer_id=customer.id,
                day=(old + timedelta(days=10)).date(),
                identifier=f"ub-{customer.id}-old-0",
                status=status,
            )
        _reports_succeeded_until(now - timedelta(days=1), now)
        run = run_cleanup(app.config["SETTINGS"], now)
    assert run.status == "succeeded", run.error
    assert run.counts["deleted"] == 3 and run.counts["customers_held_back"] == 1
    held_weeks = {Partition(week_of(old + timedelta(days=d))).name for d in (0, 8)}
    assert not held_weeks & set(run.counts["partitions_dropped"])
    assert [count_events(app, event_id=e["event_id"]) for e in sent["key-reported"]] == [0, 0]
    # Held back from its first unsettled day (old + 10): the week before it may go.
    assert [count_events(app, event_id=e["event_id"]) for e in sent["key-held"]] == [0, 1]
    assert [count_events(app, event_id=e["event_id"]) for e in sent["key-unlinked"]] == [1, 1]


def test_cleanup_deletes_in_bounded_batches(app: Flask, make_customer) -> None:
    make_customer("key-a", stripe_customer_id="cus_batches")
    make_customer("key-unlinked")  # holds the week: key-a's rows go one by one
    at = datetime.now(UTC) - timedelta(days=120)
    with app.app_context():
        record([event("key-a", timestamp=at.isoformat()) for _ in range(25)], now=at)
        record([event("key-unlinked", timestamp=at.isoformat())], now=at)
        db.session.add(
            JobRun(
                job=REPORT_JOB,
                period=datetime.now(UTC).date().isoformat(),
                status="succeeded",
                started_at=at,
            )
        )
        db.session.commit()
    small_batches = app.config["SETTINGS"].replace(cleanup_batch_size=10)
    with app.app_context():
        run = run_cleanup(small_batches)
    assert run.counts["deleted"] == 25
    assert Partition(week_of(at)).name not in run.counts["partitions_dropped"]


class _PriceSource:
    def __init__(self) -> None:
        self.body = b""
        source = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(source.body)))
                self.end_headers()
                self.wfile.write(source.body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/prices.json"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture()
def price_source(app: Flask, monkeypatch) -> Iterator[_PriceSource]:
    source = _PriceSource()
    monkeypatch.setitem(
        app.config, "SETTINGS", app.config["SETTINGS"].replace(pricing_source_url=source.url)
    )
    yield source
    source.server.shutdown()
    with app.app_context():  # leave the price table as the session found it
        db.session.query(ModelPrice).filter(ModelPrice.source == source.url).delete()
        db.session.commit()
        price_book.invalidate()


def _price_rows(app: Flask) -> int:
    with app.app_context():
        return db.session.scalar(select(func.count()).select_from(ModelPrice))


def test_price_refresh_adds_a_row_only_where_a_price_changed(
    app: Flask, price_source: _PriceSource
) -> None:
    before = _price_rows(app)
    price_source.body = json.dumps(
        {
            "prices": [
                {
                    "provider": "openai",
                    "model": "gpt-4o-2024-08-06",
                    "input_per_token": "0.000002",
                    "output_per_token": "0.00001",
                    "cache_read_per_token": "0.00000125",
                },
                {
                    "provider": "acme",
                    "model": "coder-1",
                    "input_per_token": "0.000001",
                    "output_per_token": "0.000002",
                },
            ]
        }
    ).encode()
    with app.app_context():
        run = run_price_refresh(app.config["SETTINGS"])
    assert run.status == "succeeded" and run.counts["added"] == 2
    assert _price_rows(app) == before + 2
    with app.app_context():
        assert (
            run_price_refresh(app.config["SETTINGS"], datetime.now(UTC) + timedelta(days=1)).counts[
                "added"
            ]
            == 0
        )
        book = price_book.get()
        assert book.price_at("openai", "gpt-4o", datetime.now(UTC)).input == Decimal("0.000002")
        assert book.price_at(
            "openai", "gpt-4o", datetime.now(UTC) - timedelta(days=1)
        ).input == Decimal("0.0000025")


def test_a_refresh_at_any_hour_adds_no_row_for_a_model_priced_by_the_time_of_day(
    app: Flask,
) -> None:
    """DeepSeek's price at noon is not its price at 17:00 UTC (off-peak), but its rules,
    which the row stores whole, are the same: the nightly refresh, whenever it runs,
    adds nothing. It added a row for every such model whenever it ran in another
    period of the day than the last refresh (CI at 01:00 UTC: 5 rows, none a change)."""
    from app.pricing.catalog import bundled_prices

    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    noon, off_peak = (midnight + timedelta(days=1, hours=h) for h in (12, 17))

    def flat(at: datetime) -> tuple[Any, ...]:
        [price] = [p for pv, m, p in bundled_prices(at) if (pv, m) == ("deepseek", "deepseek-chat")]
        return price.input, price.output, price.cache_read

    assert flat(noon) != flat(off_peak)  # the source still prices it by the hour
    before = _price_rows(app)
    with app.app_context():
        added = [
            run_price_refresh(app.config["SETTINGS"], at).counts["added"] for at in (noon, off_peak)
        ]
    assert added == [0, 0] and _price_rows(app) == before


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b'{"prices": [{"provider": "openai", "model": "gpt-4o", "input_per_token": "-3", "output_per_token": "1"}]}',
    ],
)
def test_a_bad_price_source_changes_no_price(
    app: Flask, price_source: _PriceSource, body: bytes
) -> None:
    before = _price_rows(app)
    price_source.body = body
    with app.app_context(), pytest.raises(PriceSourceError):
        run_price_refresh(app.config["SETTINGS"])
    assert _price_rows(app) == before
    [run] = _runs(app, REFRESH_JOB)
    assert run.status == "failed" and "PriceSourceError" in run.error


@pytest.fixture()
def installed_at(app: Flask) -> Iterator[Callable[[datetime], None]]:
    """Set when the service was installed (the test database's row), restored after."""
    with app.app_context():
        row = db.session.get(Installation, 1)
        kept = row.installed_at
        db.session.rollback()

    def install(when: datetime) -> None:
        with app.app_context():
            db.session.get(Installation, 1).installed_at = when
            db.session.commit()

    yield install
    install(kept)


def test_a_fresh_install_is_healthy_until_a_job_has_been_due(
    app: Flask, installed_at: Callable[[datetime], None]
) -> None:
    """Installed an hour ago, nothing has run: nothing is late, each job says when it
    is due. Eight days on with still nothing run: every job is late, and says why."""
    runner = app.test_cli_runner()
    installed_at(NOW - timedelta(hours=1))
    with time_machine.travel(NOW, tick=False):
        result = runner.invoke(args=["billing", "status"])
        assert result.exit_code == 0, result.output
        jobs = json.loads(result.output)["jobs"]
        assert not any(job["overdue"] for job in jobs.values())
        assert jobs[CLEANUP_JOB]["due_by"] == (NOW + timedelta(days=7, hours=1)).isoformat()
    with time_machine.travel(NOW + timedelta(days=8), tick=False):
        result = runner.invoke(args=["billing", "status"])
        assert result.exit_code == 1
        jobs = json.loads(result.output)["jobs"]
        assert all(job["overdue"] for job in jobs.values())
        assert jobs[CLEANUP_JOB]["why"].startswith("it has never succeeded, and was due by")


def test_status_exits_non_zero_when_the_report_is_overdue(
    app: Flask, installed_at: Callable[[datetime], None]
) -> None:
    runner = app.test_cli_runner()
    installed_at(NOW - timedelta(days=30))
    with time_machine.travel(NOW, tick=False):
        assert runner.invoke(args=["billing", "status"]).exit_code == 1  # nothing ever ran
        with app.app_context():
            for job, period in (
                (REPORT_JOB, "2026-11-19"),
                (REFRESH_JOB, "2026-11-20"),
                (CLEANUP_JOB, "2026-11-16"),
                (RECONCILE_JOB, "2026-11-20"),
            ):
                db.session.add(
                    JobRun(
                        job=job,
                        period=period,
                        status="succeeded",
                        started_at=NOW - timedelta(minutes=5),
                        finished_at=NOW,
                    )
                )
            db.session.commit()
        result = runner.invoke(args=["billing", "status"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["healthy"] is True
    with time_machine.travel(NOW + timedelta(days=1, hours=2), tick=False):
        result = runner.invoke(args=["billing", "status"])
        assert result.exit_code == 1
        assert json.loads(result.output)["jobs"][REPORT_JOB]["overdue"] is True


def test_health_and_readiness(client) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    resp = client.get("/readyz")
    assert resp.status_code == 200 and resp.get_json()["checks"] == {
        "database": "ok",
        "broker": "ok",
    }


def test_the_api_and_celery_entry_points_freeze_what_start_up_built(tmp_path: Path) -> None:
    """gunicorn's factory (the Makefile's) and ``tasks.worker`` hide the start-up
    heap from the garbage collector (app/__init__.py), in a real process each."""
    makefile = (project_root() / "Makefile").read_text()
    factory = re.search(r"'app:(\w+)\(\)'", makefile)
    assert factory, "make api names no app factory"
    builds = {
        "api": f"import app; app.{factory.group(1)}()",
        "worker": "import tasks.worker",
    }
    # The embedded default (SQLite, no Redis): what is frozen does not depend on it.
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    for name, build in builds.items():
        frozen = subprocess.run(
            [sys.executable, "-c", f"import gc; {build}; print(gc.get_freeze_count())"],
            cwd=project_root(),
            env={**env, "INSTANCE_DIR": str(tmp_path / name)},
            capture_output=True,
            text=True,
            check=True,
        )
        assert int(frozen.stdout.split()[-1]) > 10_000, name


def test_workflow_and_compose_files_parse_and_run_commands_the_project_has(app: Flask) -> None:
    root = project_root()
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    assert {"postgres", "redis", "api", "worker", "beat", "flower"} <= set(compose["services"])
    redis_command = " ".join(compose["services"]["redis"]["command"])
    assert " ".join(REDIS_PERSISTENCE) in redis_command  # the fault tests' broker is production's
    flower_env = compose["services"]["flower"]["environment"]
    assert flower_env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")  # never open
    makefile = (root / "Makefile").read_text()
    for name in ("api", "worker", "beat", "flower"):
        command = compose["services"][name]["command"]
        assert command[0] == "make" and f"\n{command[1]}:" in makefile
        assert "healthcheck" in compose["services"][name] or name == "beat"
    make = shutil.which("make")
    if make:
        for target in ("api", "worker", "beat", "flower"):
            dry = subprocess.run(
                [make, "-n", target], cwd=root, capture_output=True, text=True, check=True
            )
            assert "tasks.worker" in dry.stdout or "create_app" in dry.stdout
    runner = app.test_cli_runner()
    for path in (root / ".github/workflows").glob("*.yml"):
        workflow = yaml.safe_load(path.read_text())
        assert workflow["jobs"]
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                for line in str(step.get("run", "")).splitlines():
                    line = line.strip()
                    if line.startswith("flask billing"):
                        sub = line.split()[2]
                        assert runner.invoke(args=["billing", sub, "--help"]).exit_code == 0, line
    daily = yaml.safe_load((root / ".github/workflows/daily-billing-report.yml").read_text())
    triggers = daily[True]  # YAML 1.1 reads the key `on` as True
    assert triggers["schedule"][0]["cron"] == "30 3 * * *" and "workflow_dispatch" in triggers
    # It triggers and monitors: the report itself runs on the workers, never in Actions.
    commands = " ".join(str(s.get("run", "")) for s in daily["jobs"]["monitor"]["steps"])
    assert "flask billing trigger-report" in commands and "flask billing report" not in commands


@pytest.mark.services
def test_trigger_report_queues_the_job_for_the_workers(
    app: Flask, stripe_server: FakeStripe, make_customer, celery_worker
) -> None:
    make_customer("key-t", stripe_customer_id=stripe_server.add_customer())
    day = datetime.now(UTC).date() - timedelta(days=3)
    with app.app_context():
        at = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
        record([event("key-t", timestamp=at.isoformat(), tokens_input=9, tokens_output=1)])
    runner = app.test_cli_runner()
    assert runner.invoke(args=["billing", "trigger-report", "--date", "2026-02-30"]).exit_code != 0
    result = runner.invoke(args=["billing", "trigger-report", "--date", day.isoformat()])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["queued"] == "billing.report_usage"
    wait_for(lambda: [r.status for r in _runs(app, REPORT_JOB)] == ["succeeded"])
    assert [e["payload"]["value"] for e in stripe_server.state.meter_events] == ["10"]


@pytest.mark.services
def test_a_report_missed_while_beat_was_down_is_due_when_beat_starts_again(app: Flask) -> None:
    from redbeat import RedBeatScheduler, RedBeatSchedulerEntry

    celery_app = app.extensions["celery"]
    names = ("daily-usage-report", "nightly-price-refresh", "weekly-cleanup")

    def entries() -> dict[str, RedBeatSchedulerEntry]:
        return {
            name: RedBeatSchedulerEntry.from_key(
                RedBeatSchedulerEntry.generate_key(celery_app, name), app=celery_app
            )
            for name in names
        }

    ran = datetime(2026, 11, 18, 3, 0, 1, tzinfo=UTC)  # Wednesday, after every job ran
    with time_machine.travel(ran, tick=False):
        RedBeatScheduler(app=celery_app, lazy=True).setup_schedule()
        for entry in entries().values():
            entry.reschedule(ran)  # what beat stores in Redis when it sends a job
    with time_machine.travel(datetime(2026, 11, 18, 23, 0, tzinfo=UTC), tick=False):
        assert not any(e.is_due().is_due for e in entries().values())
    # Beat was down from then until 05:00 the next day, so it missed 01:00 and 02:00.
    with time_machine.travel(datetime(2026, 11, 19, 5, 0, tzinfo=UTC), tick=False):
        RedBeatScheduler(app=celery_app, lazy=True).setup_schedule()  # the restart
        due = {name: entry.is_due().is_due for name, entry in entries().items()}
    assert due == {
        "daily-usage-report": True,
        "nightly-price-refresh": True,
        "weekly-cleanup": False,  # next due Sunday 03:00
    }
