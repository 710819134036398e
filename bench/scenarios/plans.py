"""Price plans: what the daily report computes in ``BILLING_QUANTITY=cost``, every
customer's charge under its plan, over the rollups that ``reads`` loaded (90 days
for ``CUSTOMERS`` customers), half of them on a tiered plan with a markup, an
override and included usage. The first run also prices and freezes the periods
no event can reach any more; the second is a day's report in steady state."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench.stack import SCALE_EVENTS, Run, in_process_app, log

ORDER = 55  # after reads, which loads the rollups
ENABLED = SCALE_EVENTS > 0
TERMS = {
    "markup_percent": "20",
    "overrides": [
        {"provider": "google", "input_per_token": "0.000001", "output_per_token": "0.000004"}
    ],
    "tiers": [{"up_to": "100", "unit_price": "1"}, {"up_to": None, "unit_price": "0.9"}],
    "included": "5",
    "minimum": "20",
}


def run(run: Run, results: dict[str, Any]) -> None:
    app = in_process_app(run, BILLING_QUANTITY="cost")
    from sqlalchemy import select

    from app.billing.report import owed_in_units
    from app.customers.models import BillingCustomer
    from app.extensions import db
    from app.plans.services import assign_plan, create_version
    from app.plans.terms import PlanTerms

    settings = app.config["SETTINGS"]
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    with app.app_context():
        customers = db.session.scalars(select(BillingCustomer).order_by(BillingCustomer.id)).all()
        plan = create_version("bench-pro", "Bench pro", PlanTerms.model_validate(TERMS))
        start = yesterday - timedelta(days=120)
        for customer in customers[::2]:
            assign_plan(customer.id, plan, start)
        db.session.commit()
        timings = []
        for _ in range(2):
            # As the report has them: loaded just before (a commit expires them).
            customers = db.session.scalars(
                select(BillingCustomer).order_by(BillingCustomer.id)
            ).all()
            t = time.perf_counter()
            owed = owed_in_units(settings, customers, yesterday)
            db.session.commit()
            timings.append(time.perf_counter() - t)
    log(f"plans: charges of {len(owed):,} customers, {timings[0]:.2f} s then {timings[1]:.2f} s")
    results["plans"] = {
        "customers": len(owed),
        "first_run_s": round(timings[0], 3),
        "report_charges_s": round(timings[1], 3),
    }


def headline(results: dict[str, Any]) -> dict[str, Any]:
    return {"plan_charges_s": results.get("plans", {}).get("report_charges_s")}


def rows(results: dict[str, Any]) -> list[tuple[str, Any, str]]:
    plans = results.get("plans")
    if not plans:
        return []
    return [
        (
            f"charges of {plans['customers']:,} customers under plans, first / steady (s)",
            f"{plans['first_run_s']} / {plans['report_charges_s']}",
            "steady <= 1",
        )
    ]
