"""``python -m app.serve``: the whole service in one command, for the demo.

Runs the API (Flask's server, with the demo ``/v1/execute`` and the metering
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

from app import create_app
from app.config import Settings
from app.security import hash_api_key
from app.services.customers import customer_for_key_hash, register_customer

DEMO_API_KEY_FILE = "demo-api-key"


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
        subprocess.Popen([*celery, "worker", "--concurrency=2", "--loglevel=INFO"], env=env),
        subprocess.Popen([*celery, "beat", "--loglevel=INFO"], env=env),
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
        f'&end_date=$(date -u +%F)" -H "Authorization: Bearer {api_key}"\n',
        flush=True,
    )
    try:
        app.run(host=host, port=port, use_reloader=False)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
