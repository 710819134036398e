"""What customers and operators read about usage: the analytics API, its figures
(usage by period and dimension, provider performance, trends and forecast, cost
recommendations) and the raw-event export, all read from the rollups but the export."""
