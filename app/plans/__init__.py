"""Price plans: what a customer owes for its usage (markups, our own prices, tiers,
included usage, minimums), effective-dated, versioned, and previewed."""
