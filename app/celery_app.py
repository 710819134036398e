"""Celery bound to the Flask app, as in Flask's "Background Tasks with Celery".

Every task runs inside the app context (``FlaskTask``), so tasks use
``db.session`` like views.
The broker is Redis when ``REDIS_URL`` is set and kombu's filesystem transport
under ``instance/`` otherwise, so the embedded default needs no server.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from flask import Flask

from app.config import Settings
from app.errors import JobAlreadyRunning
from app.extensions import db
from app.ingest import wire
from app.jobs.timetable import beat_schedule
from app.registry import Services, services

log = logging.getLogger("usage_billing.tasks")
TASK_MODULES = ["tasks.ingest", "tasks.billing", "tasks.jobs", "tasks.budgets", "tasks.credits"]


def celery_config(settings: Settings) -> dict[str, Any]:
    config: dict[str, Any] = {
        "include": TASK_MODULES,
        "task_ignore_result": True,
        # Work that must not be lost is acknowledged only after it is done, and a
        # worker killed mid-task hands its message back to the queue.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 4,
        "broker_connection_retry_on_startup": True,
        "timezone": "UTC",
        "enable_utc": True,
        "beat_schedule": beat_schedule(settings),
        "worker_hijack_root_logger": False,
        # Ingest batches travel as orjson (app/ingest/wire.py); everything else as JSON.
        "accept_content": ["json", wire.SERIALIZER],
    }
    if settings.uses_redis:
        config["broker_url"] = settings.redis_url
        # A killed worker's unacknowledged batches go back to the queue after the
        # visibility timeout; sweep for them every ≤10 s instead of kombu's ~100 s.
        config["broker_transport_options"] = {
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_interval": min(10, settings.broker_visibility_timeout),
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 3,
            # Our bodies are JSON text: base64 would only cost the consumer, which
            # decodes every message and writes it again to its unacked hash.
            "body_encoding": None,
        }
        # RedBeat, surviving Redis restarted, flushed or away (app/jobs/beat.py); woken at
        # least every 10 s, so a lost lock is found and taken again within that.
        config["beat_scheduler"] = "app.jobs.beat:ResilientRedBeatScheduler"
        config["beat_max_loop_interval"] = 10
        config["redbeat_redis_url"] = settings.redis_url
        config["redbeat_lock_timeout"] = 300
        config["redbeat_redis_options"] = {"socket_connect_timeout": 5}
    else:
        folder = settings.instance_dir / "broker"
        (folder / "processed").mkdir(parents=True, exist_ok=True)
        config["broker_url"] = "filesystem://"
        config["broker_transport_options"] = {
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
        config["beat_schedule_filename"] = str(settings.instance_dir / "celerybeat-schedule")
    return config


class FlaskTask(Task):  # Celery ships no types: Task is Any
    """The base of every task: the app context, the app's settings and services, and
    no session left behind.

    As Flask's Celery pattern does, each task runs inside the app context. As
    Warehouse's task base does, the session is closed after each one, whatever
    the task did (anything it left uncommitted is rolled back), so no task
    manages the session's end itself. A scheduled job that finds a run of its
    own in progress elsewhere (``JobAlreadyRunning``) leaves the work to it.
    """

    flask_app: Flask

    def __call__(self, *args: object, **kwargs: object) -> object:
        with self.flask_app.app_context():
            try:
                return self.run(*args, **kwargs)
            except JobAlreadyRunning as exc:
                log.info("%s: %s; left to that run", self.name, exc)
                return None
            finally:
                db.session.remove()

    @property
    def settings(self) -> Settings:
        settings: Settings = self.flask_app.config["SETTINGS"]
        return settings

    @property
    def services(self) -> Services:
        return services(self.flask_app)


def celery_init_app(app: Flask, settings: Settings) -> Celery:
    class AppTask(FlaskTask):
        flask_app = app

    wire.register_serializer()
    celery_app = Celery(app.name, task_cls=AppTask)
    celery_app.config_from_object(celery_config(settings))
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app
