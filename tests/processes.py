"""Real processes for the fault tests: a private redis-server, and the stack as shipped."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from app.config import Settings
from tests.helpers import project_root, wait_for

SHIPPED_SERVICE_TOKEN = "stack-svc-" + uuid.uuid4().hex
_WORKER_MAIN = r"^\S*python[0-9.]* -m celery -A tasks.worker worker"  # not make
# Settings a developer's shell may export; the shipped stack runs on the defaults.
_APP_SETTINGS = {name.upper() for name in Settings.model_fields}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Persistent, as production's Redis is (docker-compose.yml; a test keeps the two
# equal): a stopped broker keeps the messages it had accepted.
REDIS_PERSISTENCE = ("--appendonly", "yes", "--appendfsync", "always")


class RedisServer:
    """A private redis-server we may stop and start without touching the shared one."""

    def __init__(self, port: int, workdir: Path) -> None:
        self.port, self.workdir, self.proc = port, workdir, None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is required for this test"
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                *REDIS_PERSISTENCE,
                "--dir",
                str(self.workdir),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for(lambda: self._answers(), timeout=10)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
            self.proc = None


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL every process of its group, and reap its leader."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class ShippedStack:
    """``make worker`` and ``make api`` as the README starts them: default settings,
    migrations at start-up, a prefork worker, gunicorn. Only where to find the
    database and Redis, the tokens and a port are given (the smoke check does the same).
    """

    def __init__(
        self,
        database_url: str,
        redis_url: str,
        workdir: Path,
        overrides: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.worker_metrics_port = free_port()
        self.workdir = workdir
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in _APP_SETTINGS},
            "DATABASE_URL": database_url,
            "REDIS_URL": redis_url,
            "SERVICE_TOKEN": SHIPPED_SERVICE_TOKEN,
            "ADMIN_TOKEN": "stack-admin-" + uuid.uuid4().hex,
            "INSTANCE_DIR": str(workdir / "instance"),
            "PORT": str(self.port),
            # Where the worker serves its metrics: a free port, as PORT is (several
            # stacks run side by side in one test run).
            "WORKER_METRICS_PORT": str(self.worker_metrics_port),
            # Only a test of what a setting changes passes one, and says why.
            **(overrides or {}),
        }
        self.worker: subprocess.Popen | None = None
        self.api: subprocess.Popen | None = None

    def _make(self, target: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["make", "--no-print-directory", target],
            cwd=project_root(),
            env=self.env,
            stdout=(self.workdir / f"{target}.log").open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start_worker(self) -> None:
        self.worker = self._make("worker")

    def start_api(self) -> None:
        self.api = self._make("api")
        wait_for(self.ready, timeout=60, interval=0.2)

    def ready(self) -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
            conn.request("GET", "/readyz")
            return conn.getresponse().status == 200
        except OSError:
            return False

    def _worker_main(self) -> int:
        """The Celery worker's main process (make and the pool are not it)."""
        assert self.worker is not None
        found = subprocess.run(
            ["pgrep", "-o", "-s", str(self.worker.pid), "-f", _WORKER_MAIN],
            capture_output=True,
            text=True,
        ).stdout.split()
        assert found, "the worker has no main process"
        return int(found[0])

    def pool_processes(self) -> list[int]:
        """The prefork pool's children (the processes that record batches)."""
        out = subprocess.run(
            ["pgrep", "-P", str(self._worker_main())], capture_output=True, text=True
        ).stdout.split()
        return sorted(int(pid) for pid in out)

    def stop_worker(self, sig: int = signal.SIGTERM) -> None:
        """SIGTERM to ``make``, as ``docker stop`` or a supervisor sends it: make hands
        it to Celery (the recipe ``exec``s), whose warm shutdown finishes its tasks
        and hands back what it prefetched. SIGKILL to every process: a crash."""
        if self.worker is None:
            return
        if sig == signal.SIGTERM:
            os.kill(self.worker.pid, signal.SIGTERM)
            _wait_for_group(self.worker, timeout=60)
        kill_tree(self.worker)
        self.worker = None

    def stop(self) -> None:
        self.stop_worker()
        if self.api is not None:
            _stop_group(self.api, signal.SIGTERM)
            self.api = None

    def post_events(self, events: list[dict[str, Any]]) -> list[str]:
        """POST a batch to the ingest endpoint; the ids of the events it accepted."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.request(
            "POST",
            "/v1/usage/events",
            json.dumps({"events": events}),
            {
                "Authorization": f"Bearer {SHIPPED_SERVICE_TOKEN}",
                "Content-Type": "application/json",
            },
        )
        response = conn.getresponse()
        body = json.loads(response.read() or b"{}")
        return [r["event_id"] for r in body.get("results", []) if r.get("status") == "accepted"]


def _stop_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    _wait_for_group(proc, timeout=60)
    kill_tree(proc)


def _wait_for_group(proc: subprocess.Popen, timeout: float) -> None:
    """Until no process of its group is left, or ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader (make): a zombie still counts as the group's
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


class PrivatePostgres:
    """A PostgreSQL cluster of our own (``initdb`` in a temporary directory), to restart.

    The machine's shared server is never stopped by a test. PostgreSQL refuses to
    run as root, so when the tests run as root the cluster belongs to ``postgres``.
    """

    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path, which only root may enter.
        workdir = Path(tempfile.mkdtemp(prefix="ub-pg-"))
        workdir.chmod(0o755)
        self.workdir = workdir
        self.datadir = workdir / "pgdata"
        self.socket_dir = workdir / "pgsocket"
        self.log = workdir / "postgres.log"
        self.bin = Path(
            sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))[-1].parent
            if Path("/usr/lib/postgresql").exists()
            else Path(shutil.which("initdb") or "initdb").parent
        )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def init(self) -> PrivatePostgres:
        for folder in (self.datadir, self.socket_dir):
            folder.mkdir(parents=True)
            if os.geteuid() == 0:
                shutil.chown(folder, "postgres", "postgres")
        self.log.touch()
        if os.geteuid() == 0:
            shutil.chown(self.log, "postgres", "postgres")
        self._run("initdb", "-D", str(self.datadir), "-U", "postgres", "-A", "trust", "-E", "UTF8")
        return self

    def _pg_ctl(self, *action: str) -> None:
        options = f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1"
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.log), "-o", options, *action)

    def start(self) -> None:
        self._pg_ctl("-w", "start")

    def restart(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "restart")

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)


def shipped_worker(local: Settings, tmp_path: Path, **overrides: str) -> ShippedStack:
    """``make worker`` with its defaults against this test's database and Redis."""
    stack = ShippedStack(local.database_url, local.redis_url, tmp_path, overrides)
    stack.start_worker()
    return stack
