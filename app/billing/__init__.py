"""Everything that reaches Stripe goes through ``app.billing.stripe_gateway``."""

from app.billing.customers import create_stripe_customer

__all__ = ["create_stripe_customer"]
