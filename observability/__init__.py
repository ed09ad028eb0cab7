"""Prometheus scrape configs, the Grafana dashboard of the inference graphs
and the checker that keeps the dashboard's queries on metrics that exist
(`python -m observability.check`). See observability/README.md."""
