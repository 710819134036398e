"""The daily Stripe usage report, the reconciliation, and linking new customers to Stripe."""

from __future__ import annotations

from datetime import date
from typing import Any

from celery import shared_task

from app.celery_app import FlaskTask
from app.customers.models import BillingCustomer
from app.customers.services import LINK_TASK, link_stripe_customer
from app.errors import BillingUnavailable
from app.extensions import db
from app.jobs.definitions import run_reconciliation, run_report
from app.jobs.runner import JobFailed
from app.jobs.timetable import RECONCILE_TASK, REPORT_TASK


@shared_task(
    bind=True,
    name=REPORT_TASK,
    autoretry_for=(JobFailed,),
    retry_backoff=60,
    retry_backoff_max=1800,
    retry_jitter=True,
    max_retries=8,
)
def report_usage(self: FlaskTask, day: str | None = None) -> list[dict[str, Any]]:
    """Report ``day`` (default: every day due, i.e. yesterday plus missed ones).

    A customer that failed makes the run fail and retry later; the ledger makes
    the retry send only what is still owed.
    """
    runs = run_report(self.settings, date.fromisoformat(day) if day else None)
    return [{"period": run.period, "status": run.status, "counts": run.counts} for run in runs]


@shared_task(
    bind=True,
    name=LINK_TASK,
    autoretry_for=(BillingUnavailable,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=None,
)
def link_customer(self: FlaskTask, customer_id: int) -> str | None:
    """Give a customer created locally its Stripe customer; retried until Stripe answers.

    Stripe refusing the customer outright (``BillingRejected``) is not retried:
    it is logged, and the daily report tries again.
    """
    customer = db.session.get(BillingCustomer, customer_id)
    if customer is None:
        return None
    return link_stripe_customer(customer, self.services.stripe)


@shared_task(
    bind=True,
    name=RECONCILE_TASK,
    autoretry_for=(JobFailed, BillingUnavailable),
    retry_backoff=300,
    retry_backoff_max=3600,
    max_retries=6,
)
def reconcile_with_stripe(self: FlaskTask) -> dict[str, Any] | None:
    """Compare what the ledger says was sent with Stripe's meter summaries (daily)."""
    if not self.settings.stripe_api_key:
        return None
    return run_reconciliation(self.settings).counts
