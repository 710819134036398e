"""Customers: the account behind an API key, and its link to a Stripe customer."""
