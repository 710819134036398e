"""What operators watch: Prometheus metrics from every process, and the logs' format."""
