"""The Celery entry point: ``celery -A tasks.worker worker`` / ``beat`` / ``flower``."""

from typing import Any

from celery.signals import worker_process_init

from app import create_app_for_serving
from app.database import forget_inherited_connections
from app.ingest.batch_store import batch_store
from app.pricing.book import price_book

flask_app = create_app_for_serving()
celery_app = flask_app.extensions["celery"]


@worker_process_init.connect
def open_own_connections(**_: Any) -> None:
    """A prefork pool process opens its own sockets: none is shared with the parent.

    ``create_app`` already closed what start-up opened; this drops anything the
    parent opened since, so two processes never write on one connection.
    """
    forget_inherited_connections(flask_app)
    store = batch_store(flask_app)
    if store is not None:
        store.forget_connections()
    price_book.invalidate()
