"""Per-token prices: where they come from (``catalog``), what a call costs (``cost``), and the
prices in force at any moment, kept in ``model_prices`` (``book``)."""
