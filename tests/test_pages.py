"""The pages: /dashboard (customers) and /admin (operators), driven in headless Chromium.

Each browser test signs in through the form, waits for the page to load its data,
reads the figures as a person sees them and compares them with what the API
answers, downloads the CSV and parses it, fails on any console error or script
dialog, and saves a screenshot under ``test-output/screenshots``. Without
Chromium the browser tests skip, except in CI, where they fail.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.serving import make_server

from app.billing.models import UsageReport
from app.budgets.alerts import queue_notices
from app.config import Settings
from app.credits.ledger import burn_committed
from app.credits.notices import due_notices
from app.customers.models import BillingCustomer
from app.dashboard.models import AdminAction
from app.dashboard.overview import overview
from app.extensions import db
from app.ingest.models import RejectedEvent
from app.jobs.definitions import REPORT_JOB
from app.jobs.models import JobRun
from app.registry import services
from app.security import hash_api_key
from tests.factories import UsageReportFactory, event
from tests.fake_stripe import FakeStripe
from tests.helpers import (
    ADMIN_TOKEN,
    SERVICE_TOKEN,
    auth,
    count_events,
    issue_key,
    measured,
    parked_events,
    project_root,
    record,
    wait_for,
)

CHROMIUM = os.environ.get("CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
HAS_CHROMIUM = Path(CHROMIUM).exists()
SCREENSHOTS = project_root() / "test-output" / "screenshots"
HOSTILE = '<img src=x onerror="alert(1)">'  # a model name is user input
NOW = datetime.now(UTC)

browser = pytest.mark.skipif(
    not HAS_CHROMIUM and os.environ.get("CI", "").lower() != "true",
    reason="needs chromium (apt-get install chromium chromium-driver)",
)


@pytest.fixture(scope="module")
def live_server(app: Flask) -> Iterator[str]:
    """The session's app on a real port, for the browser."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        yield launched
        launched.close()


DESKTOP, PHONE = 1280, 390  # viewport widths, CSS px
OPERATOR = "Ada Operator"  # who signs in to /admin in these tests
_UNAUTHORIZED = (
    "console error: Failed to load resource: the server responded with a status of 401 "
    "(UNAUTHORIZED)"
)


class Page:
    """A browser page that fails the test on a console error or a script dialog."""

    def __init__(self, chromium: Any, base: str, width: int = DESKTOP) -> None:
        self.width = width
        self.context = chromium.new_context(
            accept_downloads=True, viewport={"width": width, "height": 900}
        )
        self.page = self.context.new_page()
        self.base = base
        self.problems: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on(
            "dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss())
        )

    def open(self, path: str) -> None:
        self.page.goto(self.base + path)

    def sign_in(self, field: str, secret: str) -> None:
        if self.page.query_selector("#operator"):  # an admin says who they are
            self.page.fill("#operator", OPERATOR)
        self.page.fill(f"#{field}", secret)
        self.page.click("button[type=submit]")
        self.page.wait_for_selector("body[data-loaded=true]", timeout=15_000)

    def figure(self, name: str) -> str:
        return self.page.text_content(f'[data-figure="{name}"]') or ""

    def exact(self, name: str) -> Decimal:
        """The exact amount behind a figure shown to the cent."""
        return Decimal(self.page.get_attribute(f'[data-figure="{name}"]', "data-exact") or "")

    def cells_exact(self, table_id: str) -> list[list[str | None]]:
        """Each cell's exact amount (data-exact), None where it shows no money."""
        return self.page.eval_on_selector_all(
            f"#{table_id} tbody tr",
            "rows => rows.map(r => [...r.cells].map(c => c.dataset.exact ?? null))",
        )

    def accessible(self) -> None:
        """axe-core, as the app serves it, finds nothing serious or critical."""
        self.page.add_script_tag(url=f"{self.base}/dashboard/static/vendor/axe.min.js")
        violations = self.page.evaluate(
            """() => axe.run(document, {resultTypes: ["violations"]}).then(r => r.violations
                .filter(v => v.impact === "serious" || v.impact === "critical")
                .map(v => `${v.id} (${v.impact}): ${v.nodes.map(n => n.target.join(" ")).join(", ")}`))"""
        )
        assert violations == [], violations

    def fits(self) -> None:
        """Nothing wider than the viewport: no horizontal scroll."""
        width = self.page.evaluate("document.documentElement.scrollWidth")
        assert width <= self.width, f"the page is {width} px wide in a {self.width} px viewport"

    def table(self, table_id: str) -> list[list[str]]:
        return self.page.eval_on_selector_all(
            f"#{table_id} tbody tr",
            "rows => rows.map(r => [...r.cells].map(c => c.textContent))",
        )

    def screenshot(self, name: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        measured(f"screenshot: {path.relative_to(project_root())}")

    def close(self) -> None:
        self.context.close()
        assert not self.problems, self.problems


def _money(text: str) -> Decimal:
    return Decimal(text.replace("$", "").replace(",", ""))


def _cents(amount: str | Decimal) -> str:
    """An amount as the pages show it to be read: to the cent, rounded half up."""
    value = Decimal(amount)
    rounded = value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
    if rounded == 0 and value != 0:
        return "< $0.01" if value > 0 else "> -$0.01"
    return f"{'-' if rounded < 0 else ''}${abs(rounded):,.2f}"


def _api(client: FlaskClient, key: str, path: str) -> Any:
    resp = client.get(path, headers=auth(key))
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


@pytest.fixture()
def customer_with_usage(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> tuple[BillingCustomer, str]:
    customer = make_customer("key-page")
    second = issue_key(client, customer.id, "ci")
    events = []
    for back in range(0, 6):
        at = max(NOW - timedelta(days=back, hours=1), NOW - timedelta(days=back)).isoformat()
        for model, n in (("claude-3-5-sonnet-20241022", 3), ("claude-3-haiku-20240307", 2)):
            events += [
                event(
                    "key-page",
                    timestamp=at,
                    model=model,
                    execution_time="1.5",
                    execution_id=f"run-{back}-{model[:12]}-{i}",
                )
                for i in range(n)
            ]
        events.append(event(second["key"], timestamp=at, model=HOSTILE, task_type=HOSTILE))
    with app.app_context():
        record(events)
    resp = client.post(
        f"/v1/billing/customers/{customer.id}/budgets",
        json={"metric": "usd", "period": "month", "limit": "1"},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201
    return customer, "key-page"


def _cost_shown(group: dict[str, Any]) -> str:
    """A cost cell as the page writes it: unpriced calls never shown as free."""
    if group["unpriced_events"] and group["unpriced_events"] == group["events"]:
        return "unpriced"
    shown = _cents(group["cost"])
    return f"{shown} + {group['unpriced_events']} unpriced" if group["unpriced_events"] else shown


@browser
def test_the_customer_dashboard_shows_what_the_api_answers(
    chromium: Any, live_server: str, client: FlaskClient, customer_with_usage: Any
) -> None:
    """Every figure equals the API's: to the cent as shown, exactly behind it; unpriced
    usage says so; a budget projected over its limit is marked; the charts are sized,
    scaled, with every model in the legend and the exact amount in the tooltip."""
    customer, key = customer_with_usage
    resp = client.post(  # a budget far past its limit, beside the fixture's on-track one
        f"/v1/billing/customers/{customer.id}/budgets",
        json={"metric": "tokens", "period": "month", "limit": "1000"},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201
    page = Page(chromium, live_server)
    page.open("/dashboard/")
    assert page.page.url.endswith("/dashboard/sign-in")
    page.page.fill("#api_key", "not-a-key")
    with page.page.expect_console_message():  # the form's 401, which the browser logs
        page.page.click("button[type=submit]")
    assert page.problems == [_UNAUTHORIZED]  # expected here, and only here
    page.problems.clear()
    # A wrong key: the field is marked invalid, described by the error, and has focus.
    assert page.page.get_attribute("#api_key", "aria-invalid") == "true"
    assert page.page.get_attribute("#api_key", "aria-describedby") == "sign-in-error"
    assert page.page.evaluate("document.activeElement.id") == "api_key"
    page.accessible()
    page.sign_in("api_key", key)
    assert key not in page.page.url and key not in page.page.content()
    [cookie] = [c for c in page.context.cookies() if c["name"] == "ub_session"]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert key not in cookie["value"] and hash_api_key(key) not in cookie["value"]
    assert page.page.text_content("h1") == "Usage and spend"

    today = NOW.date()
    start = (today - timedelta(days=29)).isoformat()
    between = f"start_date={start}&end_date={today}"
    forecast = _api(client, key, "/v1/billing/forecast")
    for figure in ("month_to_date", "projected_month"):
        assert page.figure(figure) == _cents(forecast["cost"][figure])
        assert page.exact(figure) == Decimal(forecast["cost"][figure])
    usage = _api(client, key, f"/v1/billing/usage?{between}&group_by=model")
    assert page.figure("range_cost") == _cents(usage["totals"]["cost"])
    assert page.exact("range_cost") == Decimal(usage["totals"]["cost"])
    assert (
        page.figure("range_unpriced")
        == f"{usage['totals']['unpriced_events']} calls unpriced, not in this cost"
    )
    assert int(page.figure("range_tokens").replace(",", "")) == usage["totals"]["tokens_total"]

    total = _api(client, key, f"/v1/billing/usage?{between}&granularity=total")
    api_rows = {(g["provider"], g["model"]): g for g in total["periods"][0]["groups"]}
    shown = page.table("breakdown")
    assert {(r[0], r[1]) for r in shown} == set(api_rows)  # the hostile name, as text
    columns = (
        "tokens_input",
        "tokens_cache_read",
        "tokens_cache_write",
        "tokens_input_audio",
        "tokens_output",
        "tokens_output_reasoning",
        "tokens_output_audio",
    )
    for (provider, model, calls, *tokens, cost), exact in zip(
        shown, page.cells_exact("breakdown"), strict=True
    ):
        group = api_rows[(provider, model)]
        assert int(calls) == group["events"]
        assert [int(t.replace(",", "")) for t in tokens] == [group[c] for c in columns]
        assert cost == _cost_shown(group)
        if cost != "unpriced":
            assert Decimal(exact[-1]) == Decimal(group["cost"])
    assert "unpriced" in [row[-1] for row in shown]  # the hostile model has no price

    performance = _api(client, key, f"/v1/billing/performance?{between}")
    by_model = {r[1]: r for r in page.table("model-performance")}
    for model in performance["models"]:
        p50 = model["latency_seconds"]["p50"]
        assert by_model[model["model"]][4] == ("–" if p50 is None else str(p50))
    advice = _api(client, key, "/v1/billing/recommendations?days=30")
    assert page.page.text_content("#recommendations-note") == advice["note"]
    shown_advice = page.table("recommendations")
    expected_advice = [
        [m["model"], _cents(m["cost"]), _cents(m["cost_at_today_prices"])]
        + ([c["model"] + f" ({c['provider']})", _cents(c["cost"]), _cents(c["saving"])])
        for m in advice["models"]
        if m["cost_at_today_prices"] is not None
        for c in m["cheaper_models"]
    ]
    assert expected_advice  # the fixture's Claude models have cheaper Anthropic models
    assert [row[:3] + row[4:] for row in shown_advice if row[4] != "none cheaper"] == (
        expected_advice
    )
    budgets = page.table("budgets")
    classes = page.page.eval_on_selector_all(
        "#budgets tbody tr", "rows => rows.map(r => r.className)"
    )
    states = []
    for row, exact, api_budget, css in zip(
        budgets, page.cells_exact("budgets"), forecast["budgets"], classes, strict=True
    ):
        if api_budget["metric"] == "usd":
            assert row[4] == _cents(api_budget["projected"])
            assert Decimal(exact[4]) == Decimal(api_budget["projected"])
        if Decimal(api_budget["spent"]) >= Decimal(api_budget["effective_limit"]):
            states.append(("limit reached", "over"))
        elif api_budget["projected_over"]:
            states.append(("projected over the limit", "over"))
        else:
            states.append(("on track", ""))
        assert (row[6], css) == states[-1]
    assert ("limit reached", "over") in states and ("on track", "") in states

    # The spend chart: sized, scaled in dollars, every model in its legend, the exact
    # amount in its tooltip.
    spend = page.page.evaluate(
        """() => { const c = Chart.getChart("spend-chart");
        const d = c.data.datasets.findIndex(s => s.exact.some(v => v !== "0"));
        const i = c.data.datasets[d].exact.findIndex(v => v !== "0");
        const item = {dataset: c.data.datasets[d], dataIndex: i, raw: c.data.datasets[d].data[i]};
        return {height: c.height, legend: c.legend.legendItems.map(l => l.text),
                ticks: c.scales.y.ticks.map(t => c.scales.y.getLabelForValue(t.value)),
                yTick: c.options.scales.y.ticks.callback(0.5),
                tooltip: c.options.plugins.tooltip.callbacks.label(item),
                exact: item.dataset.exact[i], label: item.dataset.label}; }"""
    )
    daily = _api(client, key, f"/v1/billing/usage?{between}&group_by=model")
    models = {g["model"] for p in daily["periods"] for g in p["groups"]}
    assert spend["height"] >= 250 and sorted(spend["legend"]) == sorted(models)
    assert len(spend["ticks"]) >= 3 and spend["yTick"] == "$0.5"
    assert spend["tooltip"] == f"{spend['label']}: ${spend['exact'].rstrip('0').rstrip('.')}"
    assert page.page.get_attribute("#spend-chart", "role") == "img"
    assert page.page.text_content("#spend-summary").startswith(_cents(daily["totals"]["cost"]))

    with page.page.expect_download() as download:
        page.page.click("#breakdown-csv")
    rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert {(r["provider"], r["model"]) for r in rows} == set(api_rows)
    for row in rows:
        assert Decimal(row["cost"]) == Decimal(api_rows[(row["provider"], row["model"])]["cost"])
    page.accessible()
    page.fits()
    page.screenshot("dashboard")

    page.page.click("#sign-out")
    page.page.wait_for_url("**/dashboard/sign-in")
    # The browser's own cookies, outside the page (a 401 there is no page error).
    assert page.context.request.get(f"{live_server}/dashboard/data/forecast").status == 401
    page.close()


@browser
def test_a_customer_narrows_the_page_to_a_range_a_key_and_finds_one_call(
    chromium: Any, live_server: str, client: FlaskClient, customer_with_usage: Any
) -> None:
    """Any date range; one key; a call found by its execution id, its cost explained
    line by line (units × rate) as the API answers; a range that cannot be shown is
    said so, its field marked and focused."""
    _, key = customer_with_usage
    today = NOW.date()
    page = Page(chromium, live_server)
    page.open("/dashboard/sign-in")
    page.sign_in("api_key", key)
    second = {
        "id": page.page.evaluate(
            "[...document.querySelectorAll('#key option')].find(o => o.textContent.startsWith('ci')).value"
        )
    }
    first = (today - timedelta(days=2)).isoformat()
    page.page.fill("#start", first)
    page.page.fill("#end", today.isoformat())
    page.page.select_option("#key", second["id"])
    page.page.click("#filters button[type=submit]")
    page.page.wait_for_selector("body[data-loaded=true]")
    assert f"start={first}" in page.page.url and f"key={second['id']}" in page.page.url
    between = f"start_date={first}&end_date={today}"
    mine = _api(client, key, f"/v1/billing/usage?{between}&key={second['id']}")
    assert page.figure("range_tokens").replace(",", "") == str(mine["totals"]["tokens_total"])
    assert {row[1] for row in page.table("breakdown")} == {HOSTILE}  # that key's model only
    assert {row[2] for row in page.table("calls")} == {"ci"}

    page.open("/dashboard/?days=7")
    page.page.wait_for_selector("body[data-loaded=true]")
    week = f"start_date={today - timedelta(days=6)}&end_date={today}"
    latest = _api(client, key, f"/v1/billing/calls?{week}&limit=25")["calls"]
    assert [row[1] for row in page.table("calls")] == [c["execution_id"] or "–" for c in latest]
    wanted = next(c for c in latest if c["lines"])
    page.page.fill("#execution-id", wanted["execution_id"])
    page.page.click("#call-search button[type=submit]")
    page.page.wait_for_function(
        "() => document.getElementById('calls-note').textContent.startsWith('Found')"
    )
    [row] = page.table("calls")
    assert row[1] == wanted["execution_id"] and row[7] == _cents(wanted["cost"])
    lines = page.page.eval_on_selector_all(
        "#calls tbody li", "items => items.map(i => i.textContent)"
    )
    assert len(lines) == len(wanted["lines"])
    for shown, line in zip(lines, wanted["lines"], strict=True):
        assert shown.endswith(
            f"× ${pages_decimal(line['rate'])} = ${pages_decimal(line['amount'])}"
        )
    page.page.fill("#execution-id", "no-such-call")
    page.page.click("#call-search button[type=submit]")
    page.page.wait_for_function(
        "() => document.getElementById('calls-note').textContent.startsWith('Not found')"
    )

    page.open("/dashboard/?start=2026-13-01&end=2026-01-02")
    page.page.wait_for_selector("body[data-loaded=true]")
    assert page.page.get_attribute("#start", "aria-invalid") == "true"
    assert page.page.evaluate("document.activeElement.id") == "start"
    assert "cannot be shown" in (page.page.text_content("#range-error") or "")
    page.accessible()
    page.close()


@browser
def test_a_busy_account_sees_every_model_in_the_legend(
    app: Flask, chromium: Any, live_server: str, make_customer: Callable[..., BillingCustomer]
) -> None:
    """Fourteen models over 40 days (three providers): the spend chart's legend holds
    all fourteen, each its own colour, at desktop and phone widths."""
    make_customer("key-busy")
    models = [("anthropic", f"claude-model-{i}") for i in range(5)]
    models += [("openai", f"gpt-model-{i}") for i in range(5)]
    models += [("google", f"gemini-model-{i}") for i in range(4)]
    with app.app_context():
        record(
            [
                event(
                    "key-busy",
                    provider=provider,
                    model=model,
                    timestamp=(NOW - timedelta(days=(i * 3) % 40, hours=1)).isoformat(),
                )
                for i, (provider, model) in enumerate(models * 3)
            ]
        )
    for width in (DESKTOP, PHONE):
        page = Page(chromium, live_server, width=width)
        page.open("/dashboard/sign-in")
        page.sign_in("api_key", "key-busy")
        page.open("/dashboard/?days=90")
        page.page.wait_for_selector("body[data-loaded=true]")
        legend = page.page.evaluate(
            """() => { const c = Chart.getChart("spend-chart");
            return c.legend.legendItems.map(l => [l.text, l.fillStyle]); }"""
        )
        assert sorted(text for text, _ in legend) == sorted(m for _, m in models)
        assert len({colour for _, colour in legend}) == len(models)
        page.fits()
        page.close()


def pages_decimal(value: str) -> str:
    """A decimal string as the pages write an exact one: trailing zeros dropped."""
    return value.rstrip("0").rstrip(".") if "." in value else value


@browser
@pytest.mark.parametrize("path", ["/dashboard/", "/admin/"])
def test_the_pages_fit_a_phone_and_pass_the_accessibility_check(
    chromium: Any, live_server: str, customer_with_usage: Any, path: str
) -> None:
    """At 390 px: no horizontal scroll (tables become labelled cards), axe-core finds
    nothing serious or critical; a screenshot of each."""
    _, key = customer_with_usage
    page = Page(chromium, live_server, width=PHONE)
    page.open(f"{path}sign-in")
    if path == "/admin/":
        page.sign_in("token", ADMIN_TOKEN)
    else:
        page.sign_in("api_key", key)
    page.fits()
    page.accessible()
    label = page.page.eval_on_selector(
        "table tbody td", "c => getComputedStyle(c, '::before').content"
    )
    assert label not in ("none", "normal", "")  # each cell says which column it is
    page.screenshot(f"{path.strip('/')}-phone")
    page.close()


@browser
def test_a_prepaid_customer_sees_its_credit_as_the_api_answers(
    chromium: Any, live_server: str, app: Flask, client: FlaskClient, customer_with_usage: Any
) -> None:
    """Balance, grants and ledger on /dashboard equal GET /v1/billing/credits, and a
    low-balance notice is listed among the alerts by name."""
    customer, key = customer_with_usage
    path = f"/v1/billing/customers/{customer.id}/credits"
    admin = auth(ADMIN_TOKEN)
    assert (
        client.put(path, json={"overage": "bill", "low_balance_at": "5"}, headers=admin).status_code
        == 200
    )
    expires = (NOW + timedelta(days=30)).isoformat()
    for body in ({"amount": "0.05", "priority": 10}, {"amount": "2.5", "expires_at": expires}):
        assert client.post(f"{path}/grants", json=body, headers=admin).status_code == 201
    with app.app_context():
        record([event(key) for _ in range(4)])
        burn_committed(customer.id, datetime.now(UTC), Settings().max_event_age_days)
        queue_notices(due_notices(customer.id, datetime.now(UTC), 7), datetime.now(UTC))
        db.session.commit()
    credits = _api(client, key, "/v1/billing/credits")
    page = Page(chromium, live_server)
    page.open("/dashboard/sign-in")
    page.sign_in("api_key", key)
    assert page.figure("credit_balance") == _cents(credits["balance"])
    assert page.exact("credit_balance") == Decimal(credits["balance"])
    assert page.figure("credit_overage") == "billed as usage"
    # Under its low-balance threshold ($5): said so, and the card marked.
    assert page.figure("credit_state") == "low: at or under $5.00"
    assert "low" in (
        page.page.get_attribute(".card:has([data-figure=credit_balance])", "class") or ""
    )
    assert page.figure("credit_recharge") == "off"
    grants = page.table("credit-grants")
    assert [(g[2], g[3]) for g in grants] == [
        (_cents(g["amount"]), _cents(g["remaining"])) for g in credits["grants"]
    ]
    assert [(Decimal(g[2]), Decimal(g[3])) for g in page.cells_exact("credit-grants")] == [
        (Decimal(g["amount"]), Decimal(g["remaining"])) for g in credits["grants"]
    ]
    ledger = page.table("credit-ledger")
    assert [(e[1], e[2]) for e in ledger] == [
        (e["kind"], _cents(e["amount"])) for e in credits["entries"]
    ]
    assert [Decimal(e[2]) for e in page.cells_exact("credit-ledger")] == [
        Decimal(e["amount"]) for e in credits["entries"]
    ]
    assert any(row[1] == "low credit balance" for row in page.table("alerts"))
    page.screenshot("dashboard-credits")
    page.close()


@browser
def test_the_operators_page_shows_the_overview(
    app: Flask, chromium: Any, live_server: str, client: FlaskClient, customer_with_usage: Any
) -> None:
    customer, _ = customer_with_usage
    with app.app_context():
        record([event("key-page", model="no-such-model"), {"event_id": "bad", "api_key_hash": 1}])
        parked = db.session.query(RejectedEvent).count()
        db.session.rollback()
    page = Page(chromium, live_server)
    page.open("/admin/")
    assert page.page.url.endswith("/admin/sign-in")
    page.sign_in("token", ADMIN_TOKEN)
    assert ADMIN_TOKEN not in page.page.content()
    assert int(page.figure("parked_events")) == parked > 0
    with app.app_context():
        expected = overview(app.config["SETTINGS"], datetime.now(UTC), None)
        db.session.rollback()
    unpriced = [row[:3] for row in page.table("unpriced")]
    assert unpriced == [
        [m["provider"], m["model"], str(m["events"])] for m in expected["unpriced_models"]
    ]
    assert ["anthropic", HOSTILE] in [row[:2] for row in unpriced]  # shown as text, not markup
    assert ["anthropic", "no-such-model"] in [row[:2] for row in unpriced]
    top = page.table("top")
    assert top[0][0] == str(customer.id)
    assert top[0][2] == _cents(expected["top_customers"]["customers"][0]["cost"])
    assert Decimal(page.cells_exact("top")[0][2]) == Decimal(
        expected["top_customers"]["customers"][0]["cost"]
    )
    assert page.page.text_content("h1") == "Operations"
    assert {row[0] for row in page.table("jobs")} == set(expected["status"]["jobs"])
    assert page.page.get_attribute("#flower", "href") == app.config["SETTINGS"].flower_url
    page.accessible()
    page.fits()
    page.screenshot("admin")
    page.close()


@browser
@pytest.mark.services  # the actions are queued for a worker
def test_an_operator_acts_from_the_page_and_each_action_is_recorded(
    app: Flask,
    chromium: Any,
    live_server: str,
    client: FlaskClient,
    stripe_server: FakeStripe,
    celery_worker: Any,
    make_customer: Callable[..., BillingCustomer],
) -> None:
    """Replay the parked events, mark a manual report resolved, retry linking a
    customer to Stripe, report a day: each through the page's forms (CSRF, the admin
    session), its effect checked in the database, each recorded with who and when."""
    held = make_customer("key-held-report", stripe_customer_id=stripe_server.add_customer())
    unlinked = make_customer("key-unlinked-page")
    yesterday = (NOW - timedelta(days=1)).date()
    # yesterday's, whatever the hour: the report triggered below bills it (NOW - 2 h
    # was yesterday's only when the suite ran before 02:00 UTC, and then its Stripe
    # customer, which the fake did not know, failed the report)
    valid = event("key-held-report", timestamp=f"{yesterday.isoformat()}T12:00:00+00:00")
    with app.app_context():
        db.session.add_all(
            [
                RejectedEvent(
                    event_id=valid["event_id"], reason="a fault since fixed", payload=valid
                ),
                RejectedEvent(
                    event_id="still-bad", reason="bad", payload={"event_id": "still-bad"}
                ),
            ]
        )
        db.session.commit()
        UsageReportFactory(
            customer_id=held.id, day=yesterday, identifier="ub-held-1", status="needs_manual"
        )
    page = Page(chromium, live_server)
    page.open("/admin/sign-in")
    page.sign_in("token", ADMIN_TOKEN)
    assert page.figure("parked_events") == "2"

    page.page.click("#replay-parked")
    page.page.wait_for_selector("body[data-loaded=true]")
    assert "queued for the workers" in (page.page.text_content("#action-result") or "")
    wait_for(lambda: count_events(app, event_id=valid["event_id"]) == 1)
    assert [e for e, _ in parked_events(app)] == ["still-bad"]  # parked again, for its reason

    page.page.fill("#manual input[name=note]", "invoice item ii_123")
    page.page.click("#manual button[type=submit]")
    page.page.wait_for_selector("body[data-loaded=true]")
    with app.app_context():
        report = db.session.scalar(select(UsageReport).where(UsageReport.identifier == "ub-held-1"))
        assert report.status != "needs_manual"
        db.session.rollback()

    [row] = [r for r in page.table("unlinked") if r[0] == str(unlinked.id)]
    page.page.click(f"#unlinked tbody tr:has(td:text-is('{unlinked.id}')) button")
    page.page.wait_for_selector("body[data-loaded=true]")

    def linked() -> bool:
        with app.app_context():
            found = db.session.get(BillingCustomer, unlinked.id).stripe_customer_id
            db.session.rollback()
            return found is not None

    wait_for(linked)

    page.page.fill("#report-day", yesterday.isoformat())
    page.page.click("form[action$='trigger-report'] button")
    page.page.wait_for_selector("body[data-loaded=true]")

    def reported() -> bool:
        with app.app_context():
            found = db.session.scalar(
                select(JobRun).where(JobRun.job == REPORT_JOB, JobRun.period == str(yesterday))
            )
            db.session.rollback()
            return found is not None and found.status == "succeeded"

    wait_for(reported, timeout=30)

    with app.app_context():
        actions = db.session.scalars(select(AdminAction).order_by(AdminAction.id)).all()
        done = [(a.operator, a.action, a.target, a.succeeded) for a in actions]
        assert all(NOW - timedelta(minutes=5) < a.at <= datetime.now(UTC) for a in actions)
        db.session.rollback()
    assert done == [
        (OPERATOR, "replay-parked", None, True),
        (OPERATOR, "resolve-report", "ub-held-1", True),
        (OPERATOR, "link-customer", f"customer {unlinked.id}", True),
        (OPERATOR, "trigger-report", yesterday.isoformat(), True),
    ]
    log = page.table("action-log")
    assert [(r[1], r[2]) for r in log] == [(OPERATOR, a) for _, a, _, _ in reversed(done)]
    page.accessible()
    page.screenshot("admin-actions")
    page.close()


@pytest.mark.services  # through the outbox and a worker, as shipped
def test_the_ingest_lag_runs_from_the_apis_receipt_not_the_events_own_time(
    app: Flask, client: FlaskClient, celery_worker: Any, make_customer: Callable[..., Any]
) -> None:
    """A batch back-dated by a day, and metered calls: the lag /admin shows is the
    seconds from the API taking them to their rows, not the day the client wrote."""
    make_customer("key-lag")
    day_ago = (NOW - timedelta(days=1)).isoformat()
    resp = client.post(
        "/v1/usage/events",
        json={"events": [event("key-lag", timestamp=day_ago) for _ in range(5)]},
        headers=auth(SERVICE_TOKEN),
    )
    assert resp.status_code in (200, 202), resp.get_json()
    for _ in range(3):
        assert (
            client.post("/v1/execute/code_generation", json={}, headers=auth("key-lag")).status_code
            == 200
        )
    services(app).outbox.flush()
    wait_for(lambda: count_events(app, api_key_hash=hash_api_key("key-lag")) == 8)
    _signed_in(client, "/admin", "token", ADMIN_TOKEN)
    lag = client.get("/admin/data").get_json()["ingest_lag"]
    measured(f"ingest lag on /admin, a day-old batch among them: {lag}")
    assert lag["sample"] >= 1 and lag["p99_seconds"] < 60


def test_an_action_needs_the_admin_session_and_its_csrf_token(
    app: Flask, client: FlaskClient
) -> None:
    """No session, or a session without the form's token: 400, nothing done; a
    signed-out session with a token: sent to sign in; a refused action is recorded
    with why."""
    assert client.post("/admin/actions/replay-parked").status_code == 400
    token = _csrf(client, "/admin/sign-in")  # a token, yet no admin session
    resp = client.post("/admin/actions/replay-parked", data={"csrf_token": token})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/admin/sign-in")
    with app.app_context():
        assert db.session.scalars(select(AdminAction)).all() == []
        db.session.rollback()
    _signed_in(client, "/admin", "token", ADMIN_TOKEN)
    assert client.post("/admin/actions/replay-parked", data={}).status_code == 400
    token = _csrf(client, "/admin/")
    resp = client.post(
        "/admin/actions/trigger-report", data={"csrf_token": token, "day": "not-a-day"}
    )
    assert resp.status_code == 302 and "done=" in resp.headers["Location"]
    with app.app_context():
        [action] = db.session.scalars(select(AdminAction)).all()
        assert (action.operator, action.action, action.succeeded) == (
            "Ada Operator",
            "trigger-report",
            False,
        )
        assert action.outcome == "refused: a day, YYYY-MM-DD"
        db.session.rollback()
    assert "refused: a day" in client.get(resp.headers["Location"]).get_data(as_text=True)


# -- Without a browser: sessions, CSRF, headers --------------------------------------------
def _csrf(client: FlaskClient, path: str) -> str:
    html = client.get(path).get_data(as_text=True)
    return html.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]


def test_a_form_without_its_csrf_token_is_refused(
    client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    make_customer("key-csrf")
    resp = client.post("/dashboard/sign-in", data={"api_key": "key-csrf"})
    assert resp.status_code == 400
    resp = client.post("/dashboard/sign-in", data={"api_key": "key-csrf", "csrf_token": "forged"})
    assert resp.status_code == 400
    token = _csrf(client, "/dashboard/sign-in")
    resp = client.post("/dashboard/sign-in", data={"api_key": "key-csrf", "csrf_token": token})
    assert resp.status_code == 302
    assert client.post("/dashboard/sign-out", data={}).status_code == 400  # no token: stays in
    assert client.get("/dashboard/data/forecast").status_code == 200


def test_a_wrong_key_or_token_signs_no_one_in(client: FlaskClient) -> None:
    token = _csrf(client, "/dashboard/sign-in")
    resp = client.post("/dashboard/sign-in", data={"api_key": "nope", "csrf_token": token})
    assert resp.status_code == 401 and "nope" not in resp.get_data(as_text=True)
    assert client.get("/dashboard/data/usage").status_code == 401
    token = _csrf(client, "/admin/sign-in")
    resp = client.post(
        "/admin/sign-in", data={"token": "wrong", "csrf_token": token, "operator": "Eve"}
    )
    assert resp.status_code == 401
    assert client.get("/admin/data").status_code == 401


def test_revoking_the_key_ends_its_session(
    client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    customer = make_customer("key-rev")
    issued = issue_key(client, customer.id, "temp")
    token = _csrf(client, "/dashboard/sign-in")
    client.post("/dashboard/sign-in", data={"api_key": issued["key"], "csrf_token": token})
    assert client.get("/dashboard/data/alerts").status_code == 200
    client.post(f"/v1/billing/keys/{issued['id']}/revoke", headers=auth(ADMIN_TOKEN))
    assert client.get("/dashboard/data/alerts").status_code == 401


def _signed_in(client: FlaskClient, page: str, field: str, secret: str) -> str:
    """Sign in through the form; the session cookie the browser then holds."""
    token = _csrf(client, f"{page}/sign-in")
    form = {field: secret, "csrf_token": token, "operator": "Ada Operator"}
    resp = client.post(f"{page}/sign-in", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)
    cookie = client.get_cookie("ub_session")
    assert cookie is not None
    return cookie.value


def _replayed(app: Flask, cookie: str, path: str) -> int:
    """The status a saved copy of the cookie gets, from another client."""
    thief = app.test_client()
    thief.set_cookie("ub_session", cookie)
    return thief.get(path).status_code


@pytest.mark.parametrize(
    ("page", "field", "data"),
    [("/dashboard", "api_key", "/dashboard/data/usage"), ("/admin", "token", "/admin/data")],
)
def test_signing_out_ends_the_session_for_every_copy_of_its_cookie(
    app: Flask, make_customer: Callable[..., BillingCustomer], page: str, field: str, data: str
) -> None:
    """Sign-out ends the session on the server: the cookie saved before it (by the
    browser, a proxy's log, a thief) reads nothing afterwards."""
    make_customer("key-out")
    client = app.test_client()
    secret = "key-out" if page == "/dashboard" else ADMIN_TOKEN
    saved = _signed_in(client, page, field, secret)
    day = NOW.date().isoformat()
    query = f"?start_date={day}&end_date={day}" if page == "/dashboard" else ""
    assert _replayed(app, saved, data + query) == 200
    token = _csrf(client, page + "/")
    assert client.post(f"{page}/sign-out", data={"csrf_token": token}).status_code == 302
    assert _replayed(app, saved, data + query) == 401


def test_a_changed_admin_token_ends_the_admin_sessions(app: Flask, settings: Any) -> None:
    from tests.helpers import create_extra_app

    saved = _signed_in(app.test_client(), "/admin", "token", ADMIN_TOKEN)
    assert _replayed(app, saved, "/admin/data") == 200
    rotated = create_extra_app(settings.replace(admin_token="adm-rotated"), app)
    assert _replayed(rotated, saved, "/admin/data") == 401
    assert _replayed(app, saved, "/admin/data") == 401  # ended, not only refused there


def test_the_session_cookie_holds_random_tokens_only(
    app: Flask, make_customer: Callable[..., BillingCustomer]
) -> None:
    """Nothing in the cookie is derived from a key, the admin token or a customer: a
    leaked cookie allows no offline guess, and says nothing of who holds it."""
    import hashlib

    from itsdangerous import URLSafeTimedSerializer

    customer = make_customer("key-cookie")
    for page, field, secret in (
        ("/dashboard", "api_key", "key-cookie"),
        ("/admin", "token", ADMIN_TOKEN),
    ):
        cookie = _signed_in(app.test_client(), page, field, secret)
        serializer = URLSafeTimedSerializer(
            app.secret_key, salt="cookie-session", signer_kwargs={"key_derivation": "hmac"}
        )
        held = serializer.loads(cookie)
        assert set(held) - {"_permanent"} == {"session", "csrf_token"}, held  # Flask's flag
        digest = hashlib.sha256(secret.encode()).hexdigest()
        assert digest not in cookie and str(customer.id) not in held.values()


def test_the_session_cookie_is_secure_over_https_and_pages_forbid_foreign_scripts(
    app: Flask, make_customer: Callable[..., BillingCustomer]
) -> None:
    make_customer("key-https")
    secure = app.test_client()
    html = secure.get("/dashboard/sign-in", base_url="https://billing.example.com")
    cookie = html.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    plain = app.test_client().get("/dashboard/sign-in").headers["Set-Cookie"]
    assert "Secure" not in plain
    policy = html.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    page = html.get_data(as_text=True)
    assert "<script>" not in page and "https://cdn" not in page


def test_an_api_call_gets_no_session_while_a_signed_in_page_keeps_its_own(
    app: Flask, make_customer: Callable[..., BillingCustomer]
) -> None:
    """API calls skip Flask's session machinery (app/dashboard/session.py): what they
    answer says nothing of a session, and a page's session still works beside them."""
    make_customer("key-no-session")
    api = app.test_client()
    answer = api.get(
        "/v1/billing/usage?start_date=2026-12-01&end_date=2026-12-01",
        headers={"Authorization": "Bearer key-no-session"},
    )
    assert answer.status_code == 200
    assert "Set-Cookie" not in answer.headers and "Cookie" not in answer.headers.get("Vary", "")
    page = app.test_client()
    token = _csrf(page, "/dashboard/sign-in")
    assert page.get_cookie("ub_session") is not None  # the CSRF token it holds
    signed_in = page.post(
        "/dashboard/sign-in", data={"api_key": "key-no-session", "csrf_token": token}
    )
    assert signed_in.status_code == 302
    assert page.get("/dashboard/").status_code == 200


def test_the_dashboard_data_is_the_api_answer(
    client: FlaskClient, customer_with_usage: Any
) -> None:
    _, key = customer_with_usage
    token = _csrf(client, "/dashboard/sign-in")
    client.post("/dashboard/sign-in", data={"api_key": key, "csrf_token": token})
    today = NOW.date()
    query = f"start_date={today - timedelta(days=6)}&end_date={today}&group_by=model,status"
    for path in (f"usage?{query}", f"performance?{query[: query.index('&group_by')]}", "budgets"):
        api = f"/v1/billing/{path}"
        assert client.get(f"/dashboard/data/{path}").get_json() == _api(client, key, api)
    bad = client.get("/dashboard/data/usage?start_date=2026-13-01&end_date=2026-01-01")
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "start_date"
    assert client.get("/dashboard/data/nothing").status_code == 404


@pytest.mark.services  # the snapshot is kept in Redis
def test_the_top_customers_are_a_snapshot_that_beat_refreshes(
    app: Flask, client: FlaskClient, make_customer: Callable[..., BillingCustomer]
) -> None:
    from app.jobs.timetable import beat_schedule
    from tasks.jobs import refresh_overview

    make_customer("key-top")
    with app.app_context():
        record([event("key-top", tokens_input=1000, tokens_output=0)])
        assert refresh_overview() == 1
    token = _csrf(client, "/admin/sign-in")
    client.post(
        "/admin/sign-in", data={"token": ADMIN_TOKEN, "csrf_token": token, "operator": "Ada"}
    )
    first = client.get("/admin/data").get_json()["top_customers"]
    with app.app_context():
        record([event("key-top", tokens_input=1000, tokens_output=0)])
    assert client.get("/admin/data").get_json()["top_customers"] == first  # the snapshot
    with app.app_context():
        refresh_overview()
    second = client.get("/admin/data").get_json()["top_customers"]
    # claude-3-5-sonnet input: $3 per MTok
    assert Decimal(first["customers"][0]["cost"]) == Decimal("0.003")
    assert Decimal(second["customers"][0]["cost"]) == Decimal("0.006")
    assert second["as_of"] > first["as_of"]
    schedule = beat_schedule(app.config["SETTINGS"])["operators-overview"]
    assert (schedule["task"], schedule["schedule"]) == ("overview.refresh", 300.0)


@pytest.mark.services
@pytest.mark.parametrize("trust_proxy", ["false", "true"])
def test_make_api_believes_a_forwarded_https_only_from_a_trusted_proxy(
    stack: Any, tmp_path: Path, trust_proxy: str
) -> None:
    """gunicorn rewrites the scheme from ``X-Forwarded-Proto`` for requests from its
    ``forwarded_allow_ips`` (127.0.0.1 unless told): with ``TRUST_PROXY=false`` a local
    process could pass a plain request off as https. Both settings, as ``make api`` runs."""
    import http.client

    from tests.processes import ShippedStack

    _, _, local = stack
    shipped = ShippedStack(
        local.database_url,
        local.redis_url,
        tmp_path,
        {"TRUST_PROXY": trust_proxy} if trust_proxy == "true" else None,
    )
    shipped.start_api()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", shipped.port, timeout=10)
        conn.request("GET", "/dashboard/sign-in", headers={"X-Forwarded-Proto": "https"})
        cookie = conn.getresponse().getheader("Set-Cookie") or ""
    finally:
        shipped.stop()
    assert ("Secure" in cookie) is (trust_proxy == "true"), cookie
