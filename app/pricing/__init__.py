"""Per-token prices: where they come from (``catalog``) and what a call costs (``cost``)."""
