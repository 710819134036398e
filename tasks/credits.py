"""Prepaid credits: expiries and missed burns each minute, and auto-recharge charges."""

from __future__ import annotations

from celery import shared_task

from app.billing.gateway import StripeGateway
from app.budgets.alerts import DELIVER_TASK, queue_notices
from app.celery_app import FlaskTask
from app.columns import utcnow
from app.credits.ledger import SETTLE_TASK, settle_accounts
from app.credits.models import CreditRecharge, RechargeStatus
from app.credits.notices import every_due_notice
from app.credits.purchases import RECHARGE_TASK, charge
from app.customers.keys import keys_changed
from app.errors import BillingUnavailable
from app.extensions import db


@shared_task(bind=True, name=SETTLE_TASK)
def settle_credits(self: FlaskTask) -> int:
    """Expire grants at their instant and burn what is owed, for every prepaid customer;
    admission is told of each balance that changed, and customers are sent the notices
    they are owed (low balance, credit expiring soon). Returns how many changed."""
    now = utcnow()
    changed = settle_accounts(now, self.settings.max_event_age_days)
    for customer_id in changed:
        keys_changed.send(customer_id)
    if queue_notices(every_due_notice(now, self.settings.credit_expiry_warning_days), now):
        db.session.commit()
        self.services.celery.send_task(DELIVER_TASK)
    return len(changed)


@shared_task(
    bind=True,
    name=RECHARGE_TASK,
    autoretry_for=(BillingUnavailable,),
    retry_backoff=30,
    retry_backoff_max=600,
    retry_jitter=True,
    max_retries=8,
)
def recharge(self: FlaskTask, recharge_id: int) -> str | None:
    """Make a recorded recharge's PaymentIntent (once: its key names the crossing); the
    credit comes with Stripe's ``payment_intent.succeeded``."""
    row = db.session.get(CreditRecharge, recharge_id)
    if row is None or row.status != RechargeStatus.PENDING or row.payment_intent:
        return None
    stripe: StripeGateway = self.services.stripe
    intent = charge(row, stripe)
    db.session.commit()
    return intent
