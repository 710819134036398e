"""Extension singletons, bound to an app in ``create_app``, and the app's Redis client."""

from __future__ import annotations

import redis
from flask import Flask
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()


def shared_redis(app: Flask) -> redis.Redis | None:
    """The app's client for what its processes share in Redis (one per app, made on
    first use, short timeouts); None without Redis (the embedded default)."""
    client = app.extensions.get("shared_redis")
    url = app.config["SETTINGS"].redis_url
    if client is None and url:
        client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        app.extensions["shared_redis"] = client
    return client
