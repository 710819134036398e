"""A local HTTP server that answers the real ``stripe`` SDK as Stripe does.

It checks what Stripe would check for the calls we make: the secret key,
idempotency keys (a replay returns the first answer; a reused key with other
parameters is an error), meter-event identifiers (unique), timestamps (no
older than 35 days, no more than 5 minutes ahead), that the customer exists,
and that values are whole numbers. It answers the meter's event summaries as
Stripe does: the meter's events of one customer summed per window (`day` windows
on UTC midnights), newest first, paged by ``limit`` and ``starting_after``.
Failures can be scripted per path.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl

API_KEY = "sk_test_fake"
METER_EVENT_NAME = "llm_usage"
METER_ID = "mtr_test_fake"
SLOW_SECONDS = 1.5


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int = 0  # 0: no answer reached the client (dropped, or too slow)
    slow: bool = False


@dataclass
class FakeStripeState:
    requests: list[Request] = field(default_factory=list)
    customers: dict[str, dict[str, Any]] = field(default_factory=dict)
    meter_events: list[dict[str, Any]] = field(default_factory=list)
    portal_sessions: list[dict[str, Any]] = field(default_factory=list)
    idempotency: dict[str, tuple[str, dict[str, str], int, dict[str, Any]]] = field(
        default_factory=dict
    )
    failures: dict[str, list[Any]] = field(default_factory=dict)
    failing_customers: set[str] = field(default_factory=set)
    checkout_sessions: dict[str, dict[str, Any]] = field(default_factory=dict)
    payment_intents: dict[str, dict[str, Any]] = field(default_factory=dict)
    declined_methods: set[str] = field(default_factory=set)  # cards that decline


class FakeStripe:
    def __init__(self) -> None:
        self.state = FakeStripeState()
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> FakeStripe:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def reset(self) -> None:
        with self.lock:
            self.state = FakeStripeState()

    def fail_next(self, path: str, *outcomes: Any) -> None:
        """Answer the next requests to ``path`` with these outcomes.

        A status code answers with that error; "drop" closes the connection
        unanswered; "slow" does the work (Stripe records it) but answers only
        after ``SLOW_SECONDS``, past the client's timeout; "recorded 500" does
        the work and answers 500 all the same.
        """
        self.state.failures.setdefault(path, []).extend(outcomes)

    def requests_to(self, path: str) -> list[Request]:
        return [r for r in self.state.requests if r.path == path]

    def add_customer(self, customer_id: str | None = None) -> str:
        customer_id = customer_id or f"cus_{uuid.uuid4().hex[:14]}"
        self.state.customers[customer_id] = {"id": customer_id, "object": "customer"}
        return customer_id

    # -- the API -----------------------------------------------------------------------
    def handle(self, record: Request) -> tuple[int, dict[str, Any]] | str:
        method, path, params, headers = record.method, record.path, record.params, record.headers
        if headers.get("authorization") != f"Bearer {API_KEY}":
            return 401, _error("invalid_request_error", "Invalid API Key provided")
        pending = self.state.failures.get(path)
        if pending:
            outcome = pending.pop(0)
            if outcome == "drop":
                return "drop"
            if outcome == "slow":
                record.slow = True  # done below, answered late
            elif outcome == "recorded 500":
                self._route(method, path, params)
                return 500, _error("api_error", "scripted: recorded, then failed")
            else:
                return outcome, _error(
                    "api_error" if outcome >= 500 else "rate_limit_error", "scripted"
                )
        key = headers.get("idempotency-key")
        if method == "POST" and key:
            seen = self.state.idempotency.get(key)
            if seen is not None:
                if (seen[0], seen[1]) != (path, params):
                    return 400, _error(
                        "idempotency_error",
                        "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                    )
                return seen[2], seen[3]
        status, body = self._route(method, path, params)
        if method == "POST" and key and status < 500:
            self.state.idempotency[key] = (path, params, status, body)
        return status, body

    def _route(self, method: str, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if method == "POST" and path == "/v1/customers":
            customer_id = self.add_customer()
            customer = self.state.customers[customer_id]
            customer.update(
                email=params.get("email"),
                name=params.get("name"),
                metadata={k[9:-1]: v for k, v in params.items() if k.startswith("metadata[")},
            )
            return 200, customer
        if method == "POST" and path == "/v1/billing/meter_events":
            return self._meter_event(params)
        if method == "POST" and path == "/v1/billing_portal/sessions":
            if params.get("customer") not in self.state.customers:
                return 400, _error("invalid_request_error", "No such customer", "customer")
            if not params.get("return_url"):
                return 400, _error("invalid_request_error", "Missing return_url", "return_url")
            session = {
                "id": f"bps_{uuid.uuid4().hex[:14]}",
                "object": "billing_portal.session",
                "customer": params["customer"],
                "return_url": params["return_url"],
                "url": f"https://billing.stripe.test/p/session/{uuid.uuid4().hex}",
            }
            self.state.portal_sessions.append(session)
            return 200, session
        if method == "GET" and path == "/v1/billing/meters":
            meter = {
                "id": METER_ID,
                "object": "billing.meter",
                "event_name": METER_EVENT_NAME,
                "status": "active",
                "default_aggregation": {"formula": "sum"},
            }
            wanted = params.get("status")
            data = [meter] if wanted in (None, "active") else []
            return 200, {"object": "list", "data": data, "has_more": False, "url": path}
        if method == "GET" and path == f"/v1/billing/meters/{METER_ID}/event_summaries":
            return self._event_summaries(path, params)
        if method == "POST" and path == "/v1/checkout/sessions":
            return self._checkout_session(params)
        if method == "POST" and path == "/v1/payment_intents":
            return self._payment_intent(params)
        if method == "GET" and path.startswith("/v1/payment_intents/"):
            intent = self.state.payment_intents.get(path.rsplit("/", 1)[1])
            if intent is None:
                return 404, _error("invalid_request_error", "No such payment_intent", "intent")
            return 200, intent
        return 404, _error("invalid_request_error", f"Unrecognized request URL ({method}: {path})")

    def _checkout_session(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """Checkout in mode payment: the session, unpaid until the customer pays
        (``pay_checkout``), with the metadata it was made with."""
        if params.get("mode") != "payment":
            return 400, _error("invalid_request_error", "mode must be payment", "mode")
        if params.get("customer") not in self.state.customers:
            return 400, _error("invalid_request_error", "No such customer", "customer")
        amount = int(params["line_items[0][price_data][unit_amount]"])
        session_id = f"cs_test_{uuid.uuid4().hex[:20]}"
        session = {
            "id": session_id,
            "object": "checkout.session",
            "mode": "payment",
            "customer": params["customer"],
            "amount_total": amount,
            "currency": "usd",
            "payment_status": "unpaid",
            "status": "open",
            "payment_intent": None,
            "success_url": params.get("success_url"),
            "metadata": _nested(params, "metadata"),
            "saves_card": params.get("payment_intent_data[setup_future_usage]") == "off_session",
            "url": f"https://checkout.stripe.test/c/pay/{session_id}",
        }
        self.state.checkout_sessions[session_id] = session
        return 200, session

    def pay_checkout(self, session_id: str, payment_method: str = "pm_card_visa") -> dict[str, Any]:
        """The customer pays the session: its PaymentIntent succeeds (the card saved for
        later); returns the session as ``checkout.session.completed`` carries it."""
        session = self.state.checkout_sessions[session_id]
        intent = self._new_intent(
            session["customer"], session["amount_total"], payment_method, session["metadata"]
        )
        intent["status"] = "succeeded"
        session.update(payment_status="paid", status="complete", payment_intent=intent["id"])
        return session

    def _new_intent(
        self, customer: str, amount: int, method: str, metadata: dict[str, str]
    ) -> dict[str, Any]:
        intent = {
            "id": f"pi_{uuid.uuid4().hex[:20]}",
            "object": "payment_intent",
            "amount": amount,
            "currency": "usd",
            "customer": customer,
            "payment_method": method,
            "metadata": metadata,
            "status": "processing",
            "last_payment_error": None,
        }
        self.state.payment_intents[intent["id"]] = intent
        return intent

    def _payment_intent(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        """An off-session, confirmed charge: succeeded, or a card_error (402) carrying
        the intent for a card in ``declined_methods``, as Stripe answers."""
        if params.get("customer") not in self.state.customers:
            return 400, _error("invalid_request_error", "No such customer", "customer")
        if params.get("off_session") != "true" or params.get("confirm") != "true":
            return 400, _error("invalid_request_error", "expected off_session and confirm")
        method = params["payment_method"]
        intent = self._new_intent(
            params["customer"], int(params["amount"]), method, _nested(params, "metadata")
        )
        if method in self.state.declined_methods:
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = {
                "code": "card_declined",
                "message": "Your card was declined.",
            }
            error = _error("card_error", "Your card was declined.")
            error["error"].update(code="card_declined", payment_intent=intent)
            return 402, error
        intent["status"] = "succeeded"
        return 200, intent

    def _event_summaries(self, path: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        customer = params.get("customer")
        if customer not in self.state.customers:
            return 400, _error("invalid_request_error", "No such customer", "customer")
        try:
            start, end = int(params["start_time"]), int(params["end_time"])
        except (KeyError, ValueError):
            return 400, _error("invalid_request_error", "start_time and end_time", "start_time")
        window = {"day": 86400, "hour": 3600}.get(params.get("value_grouping_window", ""))
        if start % 60 or end % 60 or (window and (start % window or end % window)):
            return 400, _error("invalid_request_error", "not aligned to the window", "start_time")
        windows = range(start, end, window) if window else range(start, start + 1)
        summaries = []
        for window_start in windows:
            window_end = window_start + window if window else end
            values = [
                float(e["payload"]["value"])
                for e in self.state.meter_events
                if e["payload"]["stripe_customer_id"] == customer
                and window_start <= e["timestamp"] < window_end
            ]
            if values:
                summaries.append(
                    {
                        "id": f"mtrusg_{customer}_{window_start}",
                        "object": "billing.meter_event_summary",
                        "aggregated_value": sum(values),
                        "start_time": window_start,
                        "end_time": window_end,
                        "meter": METER_ID,
                        "livemode": False,
                    }
                )
        summaries.reverse()  # newest first, as Stripe lists them
        after = params.get("starting_after")
        if after:
            ids = [s["id"] for s in summaries]
            summaries = summaries[ids.index(after) + 1 :] if after in ids else []
        limit = int(params.get("limit", "10"))
        page = summaries[:limit]
        return 200, {
            "object": "list",
            "data": page,
            "has_more": len(summaries) > limit,
            "url": path,
        }

    def _meter_event(self, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if params.get("event_name") != METER_EVENT_NAME:
            return 400, _error(
                "invalid_request_error", "No active meter for event_name", "event_name"
            )
        customer = params.get("payload[stripe_customer_id]")
        if customer in self.state.failing_customers:
            return 500, _error("api_error", "scripted failure for this customer")
        if customer not in self.state.customers:
            return 400, _error("invalid_request_error", "No such customer", "payload")
        value = params.get("payload[value]", "")
        if not value.lstrip("-").isdigit():
            return 400, _error("invalid_request_error", "value must be a whole number", "payload")
        identifier = params.get("identifier")
        if identifier and any(e["identifier"] == identifier for e in self.state.meter_events):
            return 400, _error(
                "invalid_request_error",
                "An event with this identifier already exists",
                "identifier",
            )
        timestamp = int(params.get("timestamp") or time.time())
        now = time.time()
        if timestamp < now - 35 * 86400 or timestamp > now + 300:
            return 400, _error("invalid_request_error", "timestamp out of range", "timestamp")
        event = {
            "object": "billing.meter_event",
            "event_name": params["event_name"],
            "identifier": identifier or uuid.uuid4().hex,
            "timestamp": timestamp,
            "payload": {"stripe_customer_id": customer, "value": value},
            "livemode": False,
            "created": int(now),
        }
        self.state.meter_events.append(event)
        return 200, event


def _nested(params: dict[str, str], name: str) -> dict[str, str]:
    """``name[key]=value`` form fields as the dict they encode."""
    prefix = name + "["
    return {
        k[len(prefix) : -1]: v
        for k, v in params.items()
        if k.startswith(prefix) and k.count("[") == 1
    }


def _error(kind: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, "param": param}}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeStripe
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        self._answer("GET", path, dict(parse_qsl(query, keep_blank_values=True)))

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length).decode()
        self._answer("POST", self.path.split("?")[0], dict(parse_qsl(raw, keep_blank_values=True)))

    def _answer(self, method: str, path: str, params: dict[str, str]) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        with self.fake.lock:
            record = Request(method, path, params, headers)
            self.fake.state.requests.append(record)
            answer = self.fake.handle(record)
            record.status = 0 if answer == "drop" or record.slow else answer[0]
        if record.slow:
            time.sleep(SLOW_SECONDS)
        if answer == "drop":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        status, body = answer
        data = json.dumps(body).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Request-Id", f"req_{uuid.uuid4().hex[:12]}")
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up waiting (a "slow" answer)
