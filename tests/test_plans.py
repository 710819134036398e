"""Price plans' arithmetic against direct computations, over random plans and usage
(hypothesis): graduated and volume tiers at every edge, included units used once
across a mid-period change, a period's daily figures adding up to its charge,
every amount an exact Decimal."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, func, select, text

from app.columns import utcnow
from app.customers.models import BillingCustomer
from app.extensions import db
from app.ingest.models import UsageDaily
from app.plans.charges import (
    ZERO,
    ModelDay,
    Override,
    Terms,
    Tier,
    charge_segment,
    units_of,
    with_minimum,
)
from app.plans.services import assign_plan, create_version
from app.plans.terms import PlanTerms
from app.security import hash_api_key
from tests.factories import event
from tests.helpers import ADMIN_TOKEN, auth, record

DAY = date(2026, 11, 1)
prices = st.decimals(min_value=Decimal("0.000001"), max_value=Decimal("5"), places=6)
amounts = st.decimals(min_value=Decimal(0), max_value=Decimal("50"), places=2)


@st.composite
def tiered_terms(draw: st.DrawFn, mode: str) -> Terms:
    edges = sorted(draw(st.sets(st.integers(1, 5000), min_size=1, max_size=4)))
    tiers = [Tier(Decimal(e), draw(prices), draw(amounts)) for e in edges]
    tiers.append(Tier(None, draw(prices), draw(amounts)))
    included = Decimal(draw(st.integers(0, 3000)))
    return Terms(unit="tokens", mode=mode, tiers=tuple(tiers), included=included)  # type: ignore[arg-type]


def _usage(tokens: int, day: date = DAY, model: str = "m") -> ModelDay:
    return ModelDay(day, "p", model, tokens, 0, 0, 0, Decimal(tokens) * Decimal("0.000003"))


def _direct_graduated(terms: Terms, n: int) -> Fraction:
    """Each unit at its tier's price; a tier's flat once its first charged unit is used."""
    total, start = Fraction(0), 0
    for tier in terms.tiers:
        end = n if tier.up_to is None else int(tier.up_to)
        first = max(start, int(terms.included))
        charged = max(0, min(n, end) - first)
        total += charged * Fraction(tier.unit_price)
        if charged > 0:
            total += Fraction(tier.flat_amount)
        if tier.up_to is None:
            break
        start = int(tier.up_to)
    return total


def _direct_volume(terms: Terms, n: int) -> Fraction:
    for tier in terms.tiers:
        if tier.up_to is None or n <= tier.up_to:
            charged = max(0, n - int(terms.included))
            return charged * Fraction(tier.unit_price) + (
                Fraction(tier.flat_amount) if charged else 0
            )
    raise AssertionError("the last tier has no end")


def _edges(terms: Terms) -> list[int]:
    points = [int(t.up_to) for t in terms.tiers if t.up_to is not None] + [int(terms.included)]
    return sorted({max(0, p + d) for p in points for d in (-1, 0, 1)})


@settings(max_examples=300, deadline=None)
@given(terms=tiered_terms("graduated"))
def test_graduated_tiers_agree_with_a_direct_computation_at_every_edge(terms: Terms) -> None:
    for n in _edges(terms):
        charge = charge_segment(terms, [], [_usage(n)] if n else [])
        assert Fraction(charge.total) == _direct_graduated(terms, n), n
        assert isinstance(charge.total, Decimal)


@settings(max_examples=300, deadline=None)
@given(terms=tiered_terms("volume"))
def test_volume_tiers_agree_with_a_direct_computation_at_every_edge(terms: Terms) -> None:
    for n in _edges(terms):
        charge = charge_segment(terms, [], [_usage(n)] if n else [])
        assert Fraction(charge.total) == _direct_volume(terms, n), n


@settings(max_examples=300, deadline=None)
@given(
    terms=tiered_terms("graduated"),
    days=st.lists(st.integers(0, 2000), min_size=2, max_size=12),
    cut=st.integers(1, 11),
)
def test_included_units_are_used_once_across_a_change_of_plan(
    terms: Terms, days: list[int], cut: int
) -> None:
    """A period cut in two at a change to the same plan costs what it costs uncut: the
    second segment's allowance is what the first left, its tiers continue."""
    usage = [_usage(n, DAY + timedelta(days=i)) for i, n in enumerate(days)]
    cut = min(cut, len(usage) - 1)
    whole = charge_segment(terms, [], usage)
    first = charge_segment(terms, [], usage[:cut])
    second = charge_segment(terms, usage[:cut], usage[cut:])
    assert first.total + second.total == whole.total
    assert first.included_used + second.included_used == min(
        terms.included, sum((Decimal(n) for n in days), ZERO)
    )


@settings(max_examples=200, deadline=None)
@given(
    terms=tiered_terms("graduated"), days=st.lists(st.integers(0, 2000), min_size=1, max_size=15)
)
def test_a_periods_daily_figures_add_up_to_its_charge(terms: Terms, days: list[int]) -> None:
    """What is owed to date, day after day: the differences (what each day's report
    sends) add up to the closed period's charge."""
    usage = [_usage(n, DAY + timedelta(days=i)) for i, n in enumerate(days)]
    owed = [charge_segment(terms, [], usage[: i + 1]).total for i in range(len(usage))]
    reports = [owed[0]] + [later - earlier for earlier, later in zip(owed, owed[1:], strict=False)]
    assert sum(reports, ZERO) == charge_segment(terms, [], usage).total
    assert all(r >= 0 for r in reports)  # graduated: a day never lowers what is owed


def test_markup_overrides_and_the_minimum() -> None:
    usage = [
        ModelDay(DAY, "openai", "gpt-4o", 1_000_000, 100_000, 200_000, 0, Decimal("3.5")),
        ModelDay(DAY, "anthropic", "claude", 10, 10, 0, 0, Decimal("0.000180")),
    ]
    plan = Terms(
        markup_percent=Decimal("20"),
        overrides=(Override("anthropic", None, Decimal("0.00001"), Decimal("0.00002")),),
        minimum=Decimal("10"),
    )
    assert units_of(plan, usage[0]) == Decimal("4.2")  # $3.50 cost + 20 %
    assert units_of(plan, usage[1]) == Decimal("0.0003")  # our own prices
    charge = charge_segment(plan, [], usage)
    assert charge.total == Decimal("4.2003") and charge.cost == Decimal("3.500180")
    closed = with_minimum(charge, plan.minimum)
    assert closed.total == Decimal("10") and closed.lines[-1].kind == "minimum"


# -- plans in the service ----------------------------------------------------------


PRO = {
    "unit": "usd",
    "markup_percent": "25",
    "overrides": [
        {
            "provider": "openai",
            "model": "gpt-4o",
            "input_per_token": "0.000004",
            "output_per_token": "0.00002",
        }
    ],
    "tiers": [{"up_to": "0.01", "unit_price": "1"}, {"up_to": None, "unit_price": "0.5"}],
    "included": "0.002",
}


def _create(client: FlaskClient, code: str, terms: dict, name: str = "plan") -> dict:
    resp = client.post(
        "/v1/billing/plans",
        json={"code": code, "name": name, "terms": terms},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()


def _customer_billed_from(app: Flask, make_customer, key: str, day: date) -> BillingCustomer:
    """A customer whose billing period began on ``day`` (created then)."""
    customer = make_customer(key)
    with app.app_context():
        row = db.session.get(BillingCustomer, customer.id)
        row.created_at = row.created_at.replace(year=day.year, month=day.month, day=day.day)
        db.session.commit()
    return customer


def _at(day: date) -> str:
    return f"{day.isoformat()}T12:00:00+00:00"


def test_a_plan_is_versioned_never_edited(client: FlaskClient) -> None:
    first = _create(client, "pro", PRO)
    second = _create(client, "pro", {**PRO, "markup_percent": "30"})
    assert (first["version"], second["version"]) == (1, 2)
    listed = client.get("/v1/billing/plans", headers=auth(ADMIN_TOKEN)).get_json()["plans"]
    assert [(p["version"], p["terms"]["markup_percent"]) for p in listed if p["code"] == "pro"] == [
        (1, "25"),
        (2, "30"),
    ]
    bad = client.post(
        "/v1/billing/plans",
        json={
            "code": "x",
            "name": "x",
            "terms": {
                "tiers": [{"up_to": None, "unit_price": "1"}, {"up_to": "5", "unit_price": "1"}]
            },
        },
        headers=auth(ADMIN_TOKEN),
    )
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "tiers"


def test_the_upcoming_invoice_prices_the_period_under_each_plan_in_force(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    """A customer on the standard plan until today, on "pro" from today: yesterday's
    usage at provider cost, today's under pro (our gpt-4o prices, 25 % on the rest,
    the included $0.002 and the first tier counted from yesterday's usage)."""
    today = utcnow().date()
    yesterday = today - timedelta(days=1)
    customer = _customer_billed_from(app, make_customer, "key-planned", yesterday)
    _create(client, "pro", PRO)
    resp = client.post(
        f"/v1/billing/customers/{customer.id}/plan",
        json={"code": "pro", "effective_from": today.isoformat()},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201
    now = utcnow().isoformat()  # today's events: now (the future is refused)
    gpt = {"provider": "openai", "model": "gpt-4o", "tokens_input": 1000, "tokens_output": 100}
    with app.app_context():
        # Claude 3.5 Sonnet, $3 / $15 per million: $0.0045 a call.
        yesterdays = [event("key-planned", timestamp=_at(yesterday)) for _ in range(2)]
        assert record(yesterdays).inserted == 2
        # Today: claude again ($0.0045, + 25 % under pro), and gpt-4o at our prices
        # under pro (1000 × $0.000004 + 100 × $0.00002).
        todays = [event("key-planned", timestamp=now), event("key-planned", timestamp=now, **gpt)]
        assert record(todays).inserted == 2
    invoice = client.get("/v1/billing/invoice/upcoming", headers=auth("key-planned")).get_json()
    assert "cost" not in invoice and "margin" not in invoice
    before = Decimal("0.009")  # yesterday, on the standard plan: the cost
    # Under pro, yesterday's usage measured in pro's unit: 2 × $0.0045 × 1.25.
    pro_before = before * Decimal("1.25")
    pro_units = [Decimal("0.005625"), Decimal("0.006")]  # anthropic (+25 %), openai (ours)
    position, free_left, expected = pro_before, max(ZERO, Decimal("0.002") - pro_before), ZERO
    for units in pro_units:  # the order charges take: provider, then model
        free = min(units, free_left)
        free_left -= free
        rest_start, rest = position + free, units - free
        first_tier = max(ZERO, min(rest, Decimal("0.01") - rest_start))
        expected += first_tier * 1 + (rest - first_tier) * Decimal("0.5")
        position += units
    assert Decimal(invoice["total"]) == before + expected
    assert [p["code"] for p in invoice["plans"]] == (
        ["standard", "pro"] if today.day > 1 else ["pro"]
    )
    admin = client.get(
        f"/v1/billing/customers/{customer.id}/invoice/upcoming", headers=auth(ADMIN_TOKEN)
    ).get_json()
    cost = before + Decimal("0.0045") + Decimal("0.0035")  # gpt-4o: 1000 × 2.5e-6 + 100 × 1e-5
    assert Decimal(admin["cost"]) == cost
    assert Decimal(admin["margin"]) == Decimal(admin["total"]) - cost
    assert admin["lines"] == invoice["lines"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"code": "nope", "effective_from": "2026-11-01"}, "code"),
        ({"code": "standard", "version": 9, "effective_from": "2026-11-01"}, "code"),
        ({"code": "standard", "effective_from": "2020-01-01"}, "effective_from"),
        ({"code": "standard", "effective_from": "2026-13-01"}, "effective_from"),
    ],
)
def test_assigning_refuses_by_name(
    client: FlaskClient, make_customer, body: dict, field: str
) -> None:
    customer = make_customer("key-assign")
    resp = client.post(
        f"/v1/billing/customers/{customer.id}/plan", json=body, headers=auth(ADMIN_TOKEN)
    )
    assert 400 <= resp.status_code < 500 and resp.get_json()["error"]["field"] == field


def test_two_customers_on_plans_with_a_change_of_plan_and_of_price_are_reported_to_the_cent(
    app: Flask, client: FlaskClient, stripe_server, make_customer
) -> None:
    """BILLING_QUANTITY=cost in micro-dollars (tokens mode: test_billing). One event a day
    for a week, each $0.001 until a price change on day 3, $0.002 after. A is on "pro"
    (+50 %, $0.005 included): 0.011 × 1.5 − 0.005 = $0.0115. B is on "cheap" (+10 %)
    until day 5, then on pro (its allowance already used by days 0-4, counted in pro's
    unit): 0.007 × 1.1 + 0.004 × 1.5 = $0.0137. Reported every day, the meter events add
    up to exactly that; a plan corrected upwards afterwards sends the difference, one
    corrected downwards records a credit for an operator and sends nothing."""
    from app.billing.models import UsageReport
    from app.jobs.definitions import run_report
    from app.pricing.book import SEED_EFFECTIVE_FROM, price_book, price_row
    from app.pricing.cost import TokenPrice

    settings = app.config["SETTINGS"].replace(
        billing_quantity="cost", billing_cost_unit=Decimal("0.000001")
    )
    today = utcnow().date()
    start = today - timedelta(days=10)
    days = [start + timedelta(days=n) for n in range(7)]
    with app.app_context():
        for price, since in (("0.000001", SEED_EFFECTIVE_FROM), ("0.000002", _midnight(days[3]))):
            per_token = TokenPrice(Decimal(price), ZERO, None, since, "test")
            db.session.add(price_row("acme", "m1", per_token, since))
        db.session.commit()
        price_book.invalidate()
    _create(client, "pro", {"markup_percent": "50", "included": "0.005"})
    _create(client, "cheap", {"markup_percent": "10"})
    customers = {}
    for key, plans in (("key-a", [("pro", 0)]), ("key-b", [("cheap", 0), ("pro", 5)])):
        customer = _customer_billed_from(app, make_customer, key, start)
        with app.app_context():
            row = db.session.get(BillingCustomer, customer.id)
            row.stripe_customer_id = stripe_server.add_customer()
            db.session.commit()
        for code, n in plans:
            _assign(client, customer.id, code, days[n])
        with app.app_context():
            one_a_day = [
                event(
                    key,
                    provider="acme",
                    model="m1",
                    tokens_input=1000,
                    tokens_output=0,
                    timestamp=_at(d),
                )
                for d in days
            ]
            assert record(one_a_day).inserted == 7
        customers[key] = customer
    with app.app_context():
        for day in days:
            run_report(settings, day)

    def billed(customer) -> int:
        return sum(
            int(e["payload"]["value"])
            for e in stripe_server.state.meter_events
            if e["payload"]["stripe_customer_id"] == _stripe_id(app, customer.id)
        )

    assert billed(customers["key-a"]) == 11_500  # $0.0115
    assert billed(customers["key-b"]) == 13_700  # $0.0137
    # A corrected onto "cheap" from the start: 0.011 × 1.1 = $0.0121, 600 more.
    _assign(client, customers["key-a"].id, "cheap", days[0])
    with app.app_context():
        run_report(settings, days[-1])
    assert billed(customers["key-a"]) == 12_100
    # Then onto the standard plan (cost): $0.011, 1,100 less: a credit, never sent.
    _assign(client, customers["key-a"].id, "standard", days[0])
    sent = len(stripe_server.state.meter_events)
    with app.app_context():
        run_report(settings, days[-1])
        [credit] = db.session.scalars(select(UsageReport).where(UsageReport.quantity < 0)).all()
        assert (credit.quantity, credit.status) == (-1_100, "needs_manual")
    assert len(stripe_server.state.meter_events) == sent


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _assign(client: FlaskClient, customer_id: int, code: str, day: date) -> None:
    resp = client.post(
        f"/v1/billing/customers/{customer_id}/plan",
        json={"code": code, "effective_from": day.isoformat()},
        headers=auth(ADMIN_TOKEN),
    )
    assert resp.status_code == 201, resp.get_json()


def _stripe_id(app: Flask, customer_id: int) -> str:
    with app.app_context():
        return db.session.get(BillingCustomer, customer_id).stripe_customer_id


def test_plan_commands_create_versions_list_and_assign(app: Flask, make_customer, tmp_path) -> None:
    customer = make_customer("key-cli-plan")
    terms = tmp_path / "pro.json"
    terms.write_text('{"markup_percent": "20", "included": "1"}')
    runner = app.test_cli_runner()
    args = ["billing", "plans", "create", "--code", "pro", "--name", "Pro", "--terms", str(terms)]
    assert [json.loads(runner.invoke(args=args).output)["version"] for _ in range(2)] == [1, 2]
    listed = runner.invoke(args=["billing", "plans", "list"]).output.splitlines()
    assert {(json.loads(line)["code"], json.loads(line)["version"]) for line in listed} >= {
        ("pro", 1),
        ("pro", 2),
    }
    day = utcnow().date().isoformat()
    assigned = runner.invoke(
        args=[
            "billing",
            "plans",
            "assign",
            "--customer",
            str(customer.id),
            "--code",
            "pro",
            "--version",
            "1",
            "--from",
            day,
        ]
    )
    assert json.loads(assigned.output) == {
        "customer_id": customer.id,
        "code": "pro",
        "version": 1,
        "from": day,
    }
    terms.write_text(
        '{"tiers": [{"up_to": null, "unit_price": "1"}, {"up_to": "5", "unit_price": "1"}]}'
    )
    bad = runner.invoke(args=args)
    assert bad.exit_code != 0 and "tiers" in bad.output
    missing = runner.invoke(
        args=["billing", "plans", "assign", "--customer", "999999", "--code", "pro", "--from", day]
    )
    assert missing.exit_code != 0 and "no customer 999999" in missing.output


def test_a_period_no_event_can_reach_is_priced_once_and_frozen(
    app: Flask, client: FlaskClient, stripe_server, make_customer
) -> None:
    """A customer billed from 100 days ago: the periods that ended more than
    MAX_EVENT_AGE_DAYS ago are frozen by the first report with their minimum, and a
    later change to the plan of those days no longer changes them."""
    from app.billing.report import owed_in_units
    from app.plans.models import PeriodCharge

    settings = app.config["SETTINGS"].replace(
        billing_quantity="cost", billing_cost_unit=Decimal("0.000001")
    )
    today = utcnow().date()
    start = today - timedelta(days=100)
    customer = _customer_billed_from(app, make_customer, "key-old", start)
    _create(client, "floor", {"minimum": "1"})
    _assign(client, customer.id, "floor", start)
    with app.app_context():
        old = event("key-old", timestamp=_at(today - timedelta(days=30)))  # a recent day
        assert record([old]).inserted == 1
        # Rollups of long ago, as they stand after their events were cleaned up.
        from app.ingest.models import UsageDaily
        from app.security import hash_api_key

        for n in (0, 40):
            db.session.add(
                UsageDaily(
                    api_key_hash=hash_api_key("key-old"),
                    day=start + timedelta(days=n),
                    provider="anthropic",
                    model="claude-3-5-sonnet-20241022",
                    events=1,
                    unpriced_events=0,
                    tokens_input=1000,
                    tokens_output=100,
                    tokens_cache_read=0,
                    tokens_total=1100,
                    cost_total=Decimal("0.0045"),
                    updated_at=utcnow(),
                )
            )
        db.session.commit()
        row = db.session.get(BillingCustomer, customer.id)
        first = owed_in_units(settings, [row], today)[customer.id]
        db.session.commit()
        frozen = db.session.scalars(select(PeriodCharge).order_by(PeriodCharge.period_start)).all()
        # Two whole periods ended more than 35 days ago: each topped up to $1.
        assert [(f.period_start, Decimal(f.total)) for f in frozen] == [
            (start, Decimal(1)),
            (frozen[1].period_start, Decimal(1)),
        ]
    _assign(client, customer.id, "standard", start)  # would charge the old periods less
    with app.app_context():
        row = db.session.get(BillingCustomer, customer.id)
        again = owed_in_units(settings, [row], today)[customer.id]
    # Only the recent periods follow the change: $1 + $1 frozen, then $0.0045 at cost
    # instead of the $1 minimum for the period holding the recent event.
    assert first - again == Decimal("1") / Decimal("0.000001") - Decimal("0.0045") / Decimal(
        "0.000001"
    )


def test_the_usage_endpoint_shows_what_each_day_added_to_the_charge(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    """Under pro (+25 %, $0.002 included): yesterday's $0.009 of cost is charged
    $0.01125 − $0.002; today's $0.0045 adds $0.005625. Days add up to the total."""
    today = utcnow().date()
    yesterday = today - timedelta(days=1)
    customer = _customer_billed_from(app, make_customer, "key-daily", yesterday)
    _create(client, "pro", {"markup_percent": "25", "included": "0.002"})
    _assign(client, customer.id, "pro", yesterday)
    with app.app_context():
        assert (
            record([event("key-daily", timestamp=_at(yesterday)) for _ in range(2)]).inserted == 2
        )
        assert record([event("key-daily", timestamp=utcnow().isoformat())]).inserted == 1
    resp = client.get(
        f"/v1/billing/usage?start_date={yesterday.isoformat()}&end_date={today.isoformat()}",
        headers=auth("key-daily"),
    )
    body = resp.get_json()
    assert [(d["period"], d["cost"], d["charge"]) for d in body["periods"]] == [
        (yesterday.isoformat(), "0.009000000000", "0.00925"),
        (today.isoformat(), "0.004500000000", "0.005625"),
    ]
    assert body["totals"]["charge"] == "0.014875"


@pytest.mark.services
def test_a_batch_committed_while_the_usage_is_read_is_in_both_its_figures_or_neither(
    app: Flask, client: FlaskClient, make_customer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer's charge and its usage are read apart: a worker's batch committed
    between the two reads must not show an event without its charge (on the standard
    plan the charge is the cost). The batch lands after the charges are read."""
    from app.analytics import views

    make_customer("key-race")
    day = utcnow().date().isoformat()
    read_charges = views.daily_charges
    other = create_engine(app.config["SQLALCHEMY_DATABASE_URI"])

    def then_a_batch_commits(*args: Any, **kwargs: Any) -> Any:
        charges = read_charges(*args, **kwargs)
        with other.begin() as conn:  # another process: the worker
            conn.execute(
                text(
                    "INSERT INTO usage_daily (api_key_hash, day, provider, model, events,"
                    " unpriced_events, tokens_input, tokens_output, tokens_cache_read,"
                    " tokens_total, cost_total, updated_at) VALUES (:key, :day, 'openai',"
                    " 'gpt-4o', 1, 0, 10, 10, 0, 20, 0.000125, now())"
                ),
                {"key": hash_api_key("key-race"), "day": day},
            )
        return charges

    monkeypatch.setattr(views, "daily_charges", then_a_batch_commits)
    resp = client.get(
        f"/v1/billing/usage?start_date={day}&end_date={day}", headers=auth("key-race")
    )
    other.dispose()
    totals = resp.get_json()["totals"]
    assert (totals["events"], totals["charge"]) == (0, "0")  # one moment: before the batch


def test_budgets_count_what_the_customer_owes_under_its_plan(app: Flask, make_customer) -> None:
    """A USD budget counts the plan's charge, not the provider cost: at a 100 % markup
    with $0.001 included, twice the cost less the allowance; a key's budget its share
    in proportion to its calls' cost; a tokens budget the tokens. On the standard plan
    a budget counts the cost."""
    from app.budgets.services import BudgetSpec, create_budget
    from app.budgets.spend import spent_in
    from app.customers.keys import issue_key
    from app.periods import period_at

    customer = make_customer("key-owed-1")
    plain = make_customer("key-owed-plain")
    now = datetime.now(UTC)
    with app.app_context():
        second = issue_key(customer.id, "second")
        plan = create_version(
            "owed", "Owed", PlanTerms.model_validate({"markup_percent": "100", "included": "0.001"})
        )
        assign_plan(customer.id, plan, now.date() - timedelta(days=40))
        db.session.commit()
        at = now.isoformat()
        sent = [event("key-owed-1", timestamp=at), event("key-owed-1", timestamp=at)]
        sent += [event(second.raw, timestamp=at), event("key-owed-plain", timestamp=at)]
        record(sent)
        specs = {
            "customer": (customer.id, BudgetSpec("usd", "month", Decimal(10), (), False)),
            "key": (customer.id, BudgetSpec("usd", "month", Decimal(10), (), False, second.key.id)),
            "tokens": (customer.id, BudgetSpec("tokens", "month", Decimal(10**9), (), False)),
            "plain": (plain.id, BudgetSpec("usd", "month", Decimal(10), (), False)),
        }
        budgets = {name: create_budget(cid, spec) for name, (cid, spec) in specs.items()}
        month = period_at("month", now, 1)
        spent = {name: spent_in(b, month) for name, b in budgets.items()}
        costs = {
            key: db.session.scalar(
                select(func.sum(UsageDaily.cost_total)).where(
                    UsageDaily.api_key_hash == hash_api_key(key)
                )
            )
            for key in ("key-owed-1", second.raw, "key-owed-plain")
        }
        tokens = db.session.scalar(
            select(func.sum(UsageDaily.tokens_total)).where(
                UsageDaily.api_key_hash.in_([hash_api_key("key-owed-1"), second.key.key_hash])
            )
        )
        db.session.rollback()
    cost = costs["key-owed-1"] + costs[second.raw]
    owed = 2 * cost - Decimal("0.001")
    assert owed > 0
    assert spent["customer"] == (owed, 3)
    share = (owed * costs[second.raw] / cost).quantize(Decimal("1e-12"), ROUND_CEILING)
    assert spent["key"] == (share, 1)
    assert spent["tokens"] == (Decimal(tokens), 3)
    assert spent["plain"] == (costs["key-owed-plain"], 1)


def test_usage_dated_before_a_customer_was_onboarded_is_its_first_periods_everywhere(
    app: Flask, client: FlaskClient, make_customer
) -> None:
    """A customer onboarded today whose key was metered for 30 days before (events
    dated back): that usage is its first billing period's, charged as of its first
    day. The upcoming invoice, the usage endpoint's charges and what the daily report
    owes agree to the cent (the invoice showed $105.66 where the report sent
    $7,105.38: the earlier days fell in periods before the customer's first)."""
    from app.billing.report import owed_in_units

    today = utcnow().date()
    customer = make_customer("key-onboarded")  # created now: its first period opens today
    _create(client, "pro", {"markup_percent": "25"})
    _assign(client, customer.id, "pro", today)
    with app.app_context():
        back = [
            event("key-onboarded", timestamp=_at(today - timedelta(days=d))) for d in range(1, 31)
        ]
        record(back + [event("key-onboarded", timestamp=utcnow().isoformat())])
    invoice = client.get("/v1/billing/invoice/upcoming", headers=auth("key-onboarded")).get_json()
    start = (today - timedelta(days=30)).isoformat()
    usage = client.get(
        f"/v1/billing/usage?start_date={start}&end_date={today.isoformat()}",
        headers=auth("key-onboarded"),
    ).get_json()
    settings = app.config["SETTINGS"].replace(
        billing_quantity="cost", billing_cost_unit=Decimal("0.000001")
    )
    with app.app_context():
        row = db.session.get(BillingCustomer, customer.id)
        reported = owed_in_units(settings, [row], today)[customer.id] * Decimal("0.000001")
        db.session.rollback()
    every_call = 31 * Decimal("0.0045") * Decimal("1.25")  # claude-3-5-sonnet at +25 %
    assert Decimal(invoice["total"]) == Decimal(usage["totals"]["charge"]) == reported == every_call
    # the earlier days add nothing of their own: it is all on the first period's first day
    charges = {p["period"]: Decimal(p["charge"]) for p in usage["periods"]}
    assert charges[today.isoformat()] == every_call
    assert sum(charges.values()) == every_call
