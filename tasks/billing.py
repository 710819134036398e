"""The daily Stripe usage report, and linking new customers to Stripe."""

from __future__ import annotations

from datetime import date

from celery import shared_task
from flask import current_app

from app.customers.models import BillingCustomer
from app.customers.services import LINK_TASK, link_stripe_customer
from app.errors import BillingUnavailable, JobAlreadyRunning
from app.extensions import db
from app.schedule import RECONCILE_TASK
from app.services.jobs import JobFailed
from app.services.scheduled import run_reconciliation, run_report


@shared_task(
    name="billing.report_usage",
    acks_late=True,
    autoretry_for=(JobFailed,),
    retry_backoff=60,
    retry_backoff_max=1800,
    retry_jitter=True,
    max_retries=8,
)
def report_usage(day: str | None = None) -> list[dict]:
    """Report ``day`` (default: every day due, i.e. yesterday plus missed ones).

    A customer that failed makes the run fail and retry later; the ledger makes
    the retry send only what is still owed. A run already in progress elsewhere
    is left alone.
    """
    try:
        runs = run_report(current_app.config["SETTINGS"], date.fromisoformat(day) if day else None)
    except JobAlreadyRunning:
        return []
    return [{"period": run.period, "status": run.status, "counts": run.counts} for run in runs]


@shared_task(
    name=LINK_TASK,
    acks_late=True,
    autoretry_for=(BillingUnavailable,),
    retry_backoff=True,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=None,
)
def link_customer(customer_id: int) -> str | None:
    """Give a customer created locally its Stripe customer; retried until Stripe answers.

    Stripe refusing the customer outright (``BillingRejected``) is not retried:
    it is logged, and the daily report tries again.
    """
    customer = db.session.get(BillingCustomer, customer_id)
    if customer is None:
        return None
    try:
        return link_stripe_customer(customer)
    finally:
        db.session.remove()


@shared_task(
    name=RECONCILE_TASK,
    acks_late=True,
    autoretry_for=(JobFailed, BillingUnavailable),
    retry_backoff=300,
    retry_backoff_max=3600,
    max_retries=6,
)
def reconcile_with_stripe() -> dict | None:
    """Compare what the ledger says was sent with Stripe's meter summaries (daily)."""
    settings = current_app.config["SETTINGS"]
    if not settings.stripe_api_key:
        return None
    try:
        return run_reconciliation(settings).counts
    except JobAlreadyRunning:
        return None
    finally:
        db.session.remove()
