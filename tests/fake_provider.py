"""A model provider over HTTP for the tests: answers each call with a registered
scenario (``tests/provider_responses.py``), as JSON or as a stream of server-sent
events sent chunk by chunk.

The scenario is named by the request's JSON body (``"scenario"``: what the demo's
``/v1/execute`` relays) or by an ``X-Scenario`` header (what the providers' SDKs
send when they are pointed here). A stream may pause after its first events
until the test releases it, so a test can cut it off or time its first byte.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.provider_responses import Scenario


class FakeProvider:
    def __init__(self, scenarios: list[Scenario]) -> None:
        self.scenarios = {s.name: s for s in scenarios}
        self.pause_after: dict[str, int] = {}  # scenario → events sent before the pause
        self.resume = threading.Event()
        self.requests: list[dict[str, Any]] = []
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - the standard library's name
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                provider.requests.append(body)
                name = self.headers.get("X-Scenario") or body.get("scenario")
                scenario = provider.scenarios.get(name or "")
                if scenario is None:
                    self._send(404, b'{"error": "no such scenario"}', "application/json")
                elif scenario.streamed:
                    self._stream(scenario)
                else:
                    data = json.dumps(scenario.body).encode()
                    self._send(200, data, "application/json")

            def _send(self, status: int, data: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _stream(self, scenario: Scenario) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                pause = provider.pause_after.get(scenario.name)
                try:
                    for index, event in enumerate(scenario.sse()):
                        if index == pause:
                            provider.resume.wait(timeout=10)
                        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client went away: what a cut-off stream is
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def start(self) -> FakeProvider:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.resume.set()
        self.server.shutdown()
        self.server.server_close()
