"""``python -m app.serve``: the whole service in one command, for the demo.

Runs the API (gunicorn, with the demo ``/v1/execute`` and the metering
middleware on), a Celery worker and Celery Beat as child processes, and prints
where the API listens and a demo key to call it with. Production runs each
process on its own (see docker-compose.yml and the Makefile).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from app import create_app
from app.config import Settings
from app.customers.services import customer_for_key_hash, register_customer
from app.security import hash_api_key

DEMO_API_KEY_FILE = "demo-api-key"


class _Server(BaseApplication):
    """gunicorn serving the app object built here, as ``make api`` serves production's:
    no development server, so the first screen carries no warning about one."""

    def __init__(self, app: Flask, host: str, port: int) -> None:
        self._app = app
        self._options = {
            "bind": f"{host}:{port}",
            "workers": 1,
            "worker_class": "gthread",
            "threads": 4,
            "preload_app": True,  # the app above; its connections were released for the fork
            "graceful_timeout": 5,  # a demo stopped with Ctrl-C stops at once
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self._options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self._app


# Ctrl-C reaches the whole terminal's process group: in a group of their own, the
# Celery processes get one SIGTERM, from us, to their main process. A worker's
# pool processes signalled directly die mid-task and leave it waiting for them.
_own_group: dict[str, Any] = {"start_new_session": True}


def _demo_key(settings: Settings) -> str:
    path = settings.instance_dir / DEMO_API_KEY_FILE
    if not path.exists():
        path.write_text("sk-demo-" + secrets.token_hex(16))
        path.chmod(0o600)
    return path.read_text().strip()


def main() -> int:
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    os.environ.setdefault("ENABLE_PRICING_MIDDLEWARE", "true")
    os.environ.setdefault("DEMO_EXECUTE_ENDPOINT", "true")
    settings = Settings.from_env()
    app = create_app(settings)  # migrates and seeds prices before the children start
    api_key = _demo_key(settings)
    with app.app_context():
        if customer_for_key_hash(hash_api_key(api_key)) is None:
            register_customer(
                email="demo@example.com", name="Demo", api_key_hash=hash_api_key(api_key)
            )
    env = {**os.environ, "AUTO_MIGRATE": "false"}
    celery = [sys.executable, "-m", "celery", "-A", "tasks.worker"]
    children = [
        # Celery's prefork pool, as ``make worker`` runs it.
        subprocess.Popen(
            [*celery, "worker", "--concurrency=2", "--loglevel=INFO"], env=env, **_own_group
        ),
        subprocess.Popen([*celery, "beat", "--loglevel=INFO"], env=env, **_own_group),
    ]
    print(f"\nusage-billing API listening on http://{host}:{port}", flush=True)
    print(f"  database: {settings.sqlalchemy_url.split('@')[-1]}", flush=True)
    print(
        f"  try:  curl -s -X POST http://{host}:{port}/v1/execute"
        f" -H 'Authorization: Bearer {api_key}' -H 'Content-Type: application/json'"
        """ -d '{"prompt": "write fizzbuzz"}'""",
        flush=True,
    )
    # Double quotes: the shell expands $(date …) when the line is pasted as printed.
    print(
        f'  then: curl -s "http://{host}:{port}/v1/billing/usage?start_date=$(date -u +%F)'
        f'&end_date=$(date -u +%F)" -H "Authorization: Bearer {api_key}"',
        flush=True,
    )
    print(f"  or see it at http://{host}:{port}/dashboard/ (sign in with that key)\n", flush=True)
    try:
        _Server(app, host, port).run()
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
