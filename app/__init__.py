"""The application factory. Nothing runs at import time."""

from __future__ import annotations

import gc
import logging

from celery import Celery
from flask import Flask

from app.config import Settings
from app.registry import Services

log = logging.getLogger("usage_billing.pricing")


def create_app(settings: Settings | None = None) -> Flask:
    from app.api import register_api
    from app.celery_app import celery_init_app
    from app.cli import billing_cli
    from app.columns import utcnow
    from app.database import (
        MIGRATIONS_DIR,
        QUICK_READS,
        engine_options,
        import_tables,
        prepare_engines,
        quick_read_options,
        release_connections,
        upgrade_database,
    )
    from app.extensions import db, migrate
    from app.ingest.partitions import make_partitions
    from app.registry import install

    settings = settings or Settings.from_env()
    from app.observability.logs import configure_logging

    configure_logging(settings)
    settings.instance_dir.mkdir(parents=True, exist_ok=True)

    app = Flask(__name__, instance_path=str(settings.instance_dir))
    app.config.update(
        SETTINGS=settings,
        SQLALCHEMY_DATABASE_URI=settings.sqlalchemy_url,
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": True, **engine_options(settings)},
        # app.database.quick_read(): one round trip per best-effort read.
        SQLALCHEMY_BINDS={
            QUICK_READS: {"url": settings.sqlalchemy_url, **quick_read_options(settings)}
        },
        MAX_CONTENT_LENGTH=settings.max_body_bytes,
    )
    import_tables()
    db.init_app(app)
    prepare_engines(app)
    migrate.init_app(app, db, directory=MIGRATIONS_DIR)
    celery = celery_init_app(app, settings)
    register_api(app)
    from app.dashboard import register_pages

    register_pages(app, settings)
    app.cli.add_command(billing_cli)

    install(app, _build_services(app, settings, celery))
    if settings.enable_pricing_middleware:
        from app.ingest.meter import UsageMeter

        if settings.enforce_budgets:  # admission runs before the metered view
            from app.budgets.admission import add_rate_limit_headers, admit

            app.before_request(admit)
            app.after_request(add_rate_limit_headers)
        UsageMeter(app)
    if settings.uses_redis:
        from app.budgets.admission import watch_key_changes

        watch_key_changes()
    if settings.demo_execute_endpoint:
        from app.demo import demo_execute

        app.register_blueprint(demo_execute)
    if settings.auto_migrate:
        upgrade_database(app, then=_seed_prices)
        with app.app_context():  # the ledger's weeks (PostgreSQL), as the daily job makes them
            make_partitions(settings, utcnow())
    release_connections(app)
    return app


def _build_services(app: Flask, settings: Settings, celery: Celery) -> Services:
    import redis

    from app.billing.gateway import StripeGateway
    from app.budgets.admission import make_counters, make_leases
    from app.ingest.batch_store import BatchStore
    from app.ingest.meter import make_outbox

    batches = (
        BatchStore(settings.redis_url, settings.meter_batch_ttl_seconds)
        if settings.uses_redis
        else None
    )
    counters = make_counters(settings)
    return Services(
        celery=celery,
        outbox=make_outbox(app, settings, celery, batches),
        stripe=StripeGateway(settings),
        redis=(
            redis.Redis.from_url(settings.redis_url, socket_connect_timeout=1, socket_timeout=1)
            if settings.redis_url
            else None
        ),
        batches=batches,
        budget_counters=counters,
        budget_leases=make_leases(counters, settings),
    )


def _seed_prices() -> None:
    from app.ingest.ledger import latest_event_at
    from app.pricing.book import seed_prices

    result = seed_prices(latest_event_at)
    if result is not None:
        log.info("seeded model prices", extra={"added": result.added})


def create_app_for_serving() -> Flask:
    """``create_app()`` for a long-running process: gunicorn's workers, Celery's.

    What start-up builds (the app, SQLAlchemy's and Celery's machinery, the
    bundled price catalogue: ~130,000 objects) lives as long as the process,
    yet each full collection of the garbage collector walked all of it again
    while requests and batches made garbage. Frozen out of its sight
    (``gc.freeze``), it is no longer walked (docs/performance.md). Celery's pool processes
    are forked after this and inherit the frozen generation. Tests, which build
    many apps in one process, use ``create_app``.
    """
    app = create_app()
    gc.freeze()
    return app
