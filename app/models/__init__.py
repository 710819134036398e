"""The tables no single capability owns: Stripe reports and webhooks, job runs, prices.

Each capability keeps its own tables beside it (``app/ingest/models.py``,
``app/customers/models.py``); ``app.database.TABLE_MODULES`` names them all.
"""

from app.models.billing import StripeWebhookEvent, UsageReport
from app.models.jobs import JobRun
from app.models.prices import ModelPrice

__all__ = ["JobRun", "ModelPrice", "StripeWebhookEvent", "UsageReport"]
