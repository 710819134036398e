"""Everything that reaches Stripe goes through ``app.billing.gateway``."""
