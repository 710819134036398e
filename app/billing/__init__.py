"""Everything that reaches Stripe goes through ``app.billing.stripe_gateway``."""
