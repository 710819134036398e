"""Prepaid credits: grants, burning them as usage is recorded, topping them up through Stripe."""
