"""Budgets: spend limits per customer or key, enforced at admission, and alerts at thresholds."""
