"""The load: bench events, and clients that send them over raw sockets.

Raw sockets, not http.client: its request and header parsing cost the load
generator (which shares the API's two cores) about three times the CPU
(docs/performance.md).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from app.progress import progress_bar
from app.security import hash_api_key
from bench.stack import CUSTOMERS, SERVICE_TOKEN

BATCH = 100  # events per POST /v1/usage/events
MODELS = [
    ("openai", "gpt-4o"),
    ("anthropic", "claude-3-5-sonnet-20241022"),
    ("google", "gemini-2.5-pro"),
]


def make_events(n: int, start: int, when: datetime) -> list[dict[str, Any]]:
    out = []
    for i in range(start, start + n):
        provider, model = MODELS[i % len(MODELS)]
        out.append(
            {
                "event_id": f"b-{i}",
                "api_key_hash": hash_api_key(f"bench-key-{i % CUSTOMERS}"),
                "provider": provider,
                "model": model,
                "tokens_input": 500 + i % 1000,
                "tokens_output": 100 + i % 300,
                "timestamp": when.isoformat(),
                "task_type": "code_generation",
            }
        )
    return out


def _received(sock: socket.socket) -> bytes:
    chunk = sock.recv(65536)
    if not chunk:
        raise RuntimeError("the API closed a kept-alive connection")
    return chunk


def response_status(sock: socket.socket, buffer: bytearray) -> int:
    """Read one response (with a Content-Length) off a kept-alive connection; its status.

    What follows it stays in ``buffer`` for the next call.
    """
    while (end := buffer.find(b"\r\n\r\n")) < 0:
        buffer += _received(sock)
    head = bytes(buffer[:end]).decode("latin-1")
    length = next(
        int(line.split(":", 1)[1])
        for line in head.split("\r\n")[1:]
        if line.lower().startswith("content-length:")
    )
    while len(buffer) < end + 4 + length:
        buffer += _received(sock)
    del buffer[: end + 4 + length]
    return int(head.split(" ", 2)[1])


def ingest_head() -> bytes:
    """A ``POST /v1/usage/events`` request up to its Content-Length's value."""
    return (
        "POST /v1/usage/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nAuthorization: Bearer {SERVICE_TOKEN}\r\n"
        "Content-Length: "
    ).encode()


def post_batches(port: int, bodies: list[bytes], threads: int = 8) -> list[float]:
    """Send every body once over keep-alive connections; returns request latencies."""
    latencies: list[float] = []
    lock = threading.Lock()
    chunks = [bodies[i::threads] for i in range(threads)]
    head = ingest_head()

    def send(chunk: list[bytes]) -> None:
        local = []
        buffer = bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
            for body in chunk:
                t0 = time.perf_counter()
                sock.sendall(b"%s%d\r\n\r\n%s" % (head, len(body), body))
                status = response_status(sock, buffer)
                if status != 202:
                    raise RuntimeError(f"ingest answered {status}")
                local.append(time.perf_counter() - t0)
        with lock:
            latencies.extend(local)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(send, chunks))
    return latencies


def execute_request(key: str, body: bytes = b"{}") -> bytes:
    """A ``/v1/execute`` call with ``key``, on a connection closed after the answer."""
    return (
        "POST /v1/execute HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def one_request(port: int, request: bytes) -> int:
    """One request on a fresh connection, as from a client that does not keep it alive;
    the answer's status."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return int(b"".join(chunks).split(b" ", 2)[1])


def execute_latencies(port: int, key: str, n: int, label: str) -> list[float]:
    """``n`` calls of ``/v1/execute`` in a row on one kept-alive connection; their latencies."""
    return alternating_latencies([(port, key)], n, label)[0]


def alternating_latencies(
    targets: list[tuple[int, str]], n: int, label: str, body: bytes = b'{"prompt": "fizzbuzz"}'
) -> list[list[float]]:
    """``n`` calls of ``/v1/execute`` to each (port, key), alternating call by call, one
    kept-alive connection each: every target meets the machine in the same phase, so
    their latencies compare (apart, minutes apart, a phase change outweighs a 0.3 ms
    difference). Each target's latencies, in ``targets``' order."""
    return [[total for total, _ in calls] for calls in alternating_calls(targets, n, label, body)]


def alternating_calls(
    targets: list[tuple[int, str]], n: int, label: str, body: bytes
) -> list[list[tuple[float, float]]]:
    """``alternating_latencies``, each call timed to its last byte and to its body's
    first (what a client of a stream waits for before it sees anything)."""
    calls = [
        (
            http.client.HTTPConnection("127.0.0.1", port, timeout=10),
            {"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        for port, key in targets
    ]
    out: list[list[tuple[float, float]]] = [[] for _ in targets]
    with progress_bar(label) as progress:
        for done in range(n):
            for (conn, headers), timings in zip(calls, out, strict=True):
                t0 = time.perf_counter()
                conn.request("POST", "/v1/execute", body=body, headers=headers)
                response = conn.getresponse()
                response.read1(1)
                first = time.perf_counter() - t0
                response.read()
                if response.status != 200:
                    raise RuntimeError(f"/v1/execute answered {response.status}")
                timings.append((time.perf_counter() - t0, first))
            if done % 100 == 0:
                progress(done, n)
    return out
