"""All tables, imported here so Alembic and ``db.create_all`` see every one."""

from app.models.billing import StripeWebhookEvent, UsageReport
from app.models.customers import BillingCustomer
from app.models.events import IngestBatch, RejectedEvent, UsageDaily, UsageEvent
from app.models.jobs import JobRun
from app.models.prices import ModelPrice

__all__ = [
    "BillingCustomer",
    "IngestBatch",
    "JobRun",
    "ModelPrice",
    "RejectedEvent",
    "StripeWebhookEvent",
    "UsageDaily",
    "UsageEvent",
    "UsageReport",
]
