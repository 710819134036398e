"""The broker going away, several processes migrating at once, the database down."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy import create_engine, text

from app.config import Settings, with_driver
from app.registry import services
from tests.helpers import (
    auth,
    count_events,
    create_database,
    create_extra_app,
    drop_database,
    measured,
    project_root,
    wait_for,
)
from tests.processes import RedisServer, ShippedStack, free_port


@pytest.fixture()
def private_redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), tmp_path)
    yield server
    server.stop()


@pytest.mark.services
def test_broker_down_does_not_fail_requests_and_events_arrive_when_it_is_back(
    app: Flask, settings: Settings, private_redis: RedisServer, tmp_path: Path
) -> None:
    from tests.helpers import execute_blueprint

    metered = create_extra_app(
        settings.replace(
            redis_url=f"redis://127.0.0.1:{private_redis.port}/0",
            meter_spool_dir=str(tmp_path / "spool"),
            auto_migrate=False,
        ),
        app,
    )
    metered.register_blueprint(execute_blueprint())
    client = metered.test_client()
    execution_ids = []
    for _ in range(25):  # broker down: every request still succeeds
        resp = client.post("/v1/execute/code_generation", json={}, headers=auth("sk-broker-test"))
        assert resp.status_code == 200
        execution_ids.append(resp.get_json()["execution_id"])
    outbox = services(metered).outbox
    outbox.flush()
    spooled = list((tmp_path / "spool").glob("seg-*.jsonl"))
    assert spooled, "events must be kept on disk while the broker is down"

    private_redis.start()
    outbox.flush()
    local = metered.config["SETTINGS"]
    worker = ShippedStack(local.database_url, local.redis_url, tmp_path)
    worker.start_worker()
    try:
        for execution_id in execution_ids:
            wait_for(lambda e=execution_id: count_events(app, execution_id=e) == 1, timeout=60)
    finally:
        worker.stop_worker()
    outbox.close()
    stored = sum(count_events(app, execution_id=e) for e in execution_ids)
    measured(
        f"broker down from the start: sent={len(execution_ids)} stored={stored} "
        f"duplicated={stored - len(set(execution_ids))} lost={len(execution_ids) - stored}"
    )
    assert stored == len(execution_ids)


def _migration_head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(project_root() / "migrations"))
    return ScriptDirectory.from_config(config).get_current_head()


@pytest.mark.services
def test_processes_starting_together_migrate_once(tmp_path: Path) -> None:
    url = create_database()
    try:
        script = (
            "from app import create_app; from app.config import Settings; "
            f"create_app(Settings(database_url={url!r}, instance_dir=__import__('pathlib').Path({str(tmp_path)!r})))"
        )
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", script],
                cwd=project_root(),
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
        engine = create_engine(with_driver(url))
        with engine.connect() as conn:
            head = conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
            dupes = conn.execute(
                text(
                    "SELECT count(*) FROM (SELECT provider, model FROM model_prices "
                    "GROUP BY provider, model HAVING count(*) > 1) d"
                )
            ).scalar_one()
            prices = conn.execute(text("SELECT count(*) FROM model_prices")).scalar_one()
        engine.dispose()
        assert head == _migration_head() and prices > 1000 and dupes == 0
    finally:
        drop_database(url)


def test_database_down_is_a_503_to_retry_not_a_500(
    app: Flask, settings: Settings, tmp_path: Path
) -> None:
    """Nothing listens on port 1: every database read fails to connect."""
    down = settings.replace(
        database_url="postgresql://postgres@127.0.0.1:1/usage_billing",
        redis_url="",
        instance_dir=tmp_path,
        auto_migrate=False,
    )
    client = create_extra_app(down, app).test_client()
    responses = [
        client.get(
            "/v1/billing/usage?start_date=2026-01-01&end_date=2026-01-31", headers=auth("key-a")
        ),
        client.post(
            "/v1/billing/customers",
            json={"api_key": "key-a", "email": "a@example.com", "name": "A"},
            headers=auth(settings.admin_token.get_secret_value()),
        ),
    ]
    for response in responses:
        assert response.status_code == 503, response.get_json()
        assert response.headers["Retry-After"] == "5"
        assert response.get_json()["error"]["code"] == "unavailable"
